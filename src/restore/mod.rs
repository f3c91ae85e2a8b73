//! Restore: plan (see [`plan`]), then execute into a temporary file that becomes
//! the output only after its checksum and SQLite's own check pass.

mod apply;
pub mod choose;
mod execute;
mod fetch;
mod pagefile;
pub mod plan;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::crypto::Keyring;
use crate::error::RestoreError;
use crate::store::ObjectStore;

pub use execute::{temp_beside, IntegrityCheck, RestoreReport};
pub use plan::{format_time, plan_txid, resolve_target, RestorePlan, Target};

/// Plans made again after planned objects vanished (pruned during the restore).
const MAX_REPLANS: u32 = 3;

/// Called with (bytes of replica objects processed, total bytes planned).
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

#[derive(Clone)]
pub struct RestoreOptions {
    pub output: PathBuf,
    pub target: Target,
    /// Replace an existing output (and remove its stale -wal/-shm/-journal).
    pub force: bool,
    pub integrity_check: IntegrityCheck,
    pub progress: Option<ProgressFn>,
    /// Keys for encrypted objects (empty: the replica must be unencrypted).
    pub keys: Keyring,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("output", &self.output)
            .field("target", &self.target)
            .field("force", &self.force)
            .field("integrity_check", &self.integrity_check)
            .field("keys", &self.keys)
            .finish()
    }
}

/// Plans a restore of `target` without writing anything.
pub async fn plan_restore(
    store: &Arc<dyn ObjectStore>,
    target: Target,
) -> Result<RestorePlan, RestoreError> {
    let catalog = Catalog::load(store).await?;
    if catalog.is_empty() {
        return Err(RestoreError::EmptyReplica {
            replica: store.describe(),
        });
    }
    let txid = resolve_target(store, &catalog, target).await?;
    plan_txid(&catalog, txid, &HashSet::new())
}

/// Restores `opts.target` into `opts.output`. If an object turns out damaged,
/// re-plans around it; a fallback is used only when it reaches the very same
/// txid, and the result is still proven against the recorded checksum.
pub async fn restore(
    store: &Arc<dyn ObjectStore>,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    check_output(&opts.output, opts.force)?;
    let started = std::time::Instant::now();
    let mut catalog = Catalog::load(store).await?;
    tracing::debug!(
        objects = catalog.snapshots.len() + catalog.segments.len(),
        ms = elapsed_ms(started),
        "listed the replica"
    );
    if catalog.is_empty() {
        return Err(RestoreError::EmptyReplica {
            replica: store.describe(),
        });
    }
    let mut txid = resolve_target(store, &catalog, opts.target).await?;
    let mut exclude = HashSet::new();
    let mut replans = 0;
    loop {
        let plan = plan_txid(&catalog, txid, &exclude)?;
        tracing::debug!(
            segments = plan.segments.len(),
            ms = elapsed_ms(started),
            "planned"
        );
        let store2 = Arc::clone(store);
        let opts2 = opts.clone();
        let plan2 = plan.clone();
        let result =
            tokio::task::spawn_blocking(move || execute::execute(&store2, &plan2, &opts2, started))
                .await
                .map_err(|e| RestoreError::Io {
                    path: opts.output.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        match result {
            // Pruning deleted a planned object meanwhile: what the replica holds
            // now may still reach the target (a newer snapshot), so plan again.
            Err(
                execute::Failure::Damaged {
                    error: RestoreError::Store(e),
                    ..
                }
                | execute::Failure::Fatal(RestoreError::Store(e)),
            ) if e.is_not_found() && replans < MAX_REPLANS => {
                replans += 1;
                tracing::warn!(error = %e, "a planned object was deleted meanwhile (pruned?); planning again");
                catalog = Catalog::load(store).await?;
                txid = resolve_target(store, &catalog, opts.target).await?;
                exclude.clear();
            }
            Err(execute::Failure::Damaged { key, error }) => {
                tracing::warn!(%key, error = %error, "damaged object; planning around it");
                if !exclude.insert(key) {
                    return Err(error);
                }
                if plan_txid(&catalog, txid, &exclude).is_err() {
                    return Err(error);
                }
            }
            Err(execute::Failure::Fatal(e)) => return Err(e),
            Ok(mut report) => {
                report.skipped_damaged = exclude.into_iter().collect();
                return Ok(report);
            }
        }
    }
}

/// Milliseconds since `since` (the start of the restore, for every phase
/// the debug log times, so they read on one clock).
pub(super) fn elapsed_ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn check_output(output: &Path, force: bool) -> Result<(), RestoreError> {
    let exists = output.symlink_metadata().is_ok();
    if exists && !force {
        return Err(RestoreError::OutputExists {
            path: output.to_path_buf(),
        });
    }
    Ok(())
}
