//! Deep verification: restore into a scratch directory and prove the result.
//!
//! The shallow run replays page *hashes*; it never builds a database file. A
//! deep run goes through the real restore path (snapshot streamed to disk,
//! segments applied, file sized, whole-database checksum recomputed from the
//! bytes written) and then asks SQLite itself (`PRAGMA integrity_check`), so
//! it also catches objects whose pages agree with their recorded checksums but
//! do not form a valid database, and any fault in the apply path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::crypto::Keyring;
use crate::error::RestoreError;
use crate::restore::{
    plan_txid, restore, IntegrityCheck, RestoreOptions, RestorePlan, RestoreReport, Target,
};
use crate::store::{ObjectStore, StoreError};

use super::{Severity, VerifyReport};

#[derive(Debug, Clone, Default)]
pub struct DeepOptions {
    /// Random txids of the window restored besides the latest one.
    pub points: usize,
    /// Seed for choosing the points (the same seed picks the same txids).
    pub seed: u64,
    pub keys: Keyring,
    /// Where the scratch directory is made (default: the system temp dir).
    pub scratch: Option<PathBuf>,
}

/// One proven (or failed) restore.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeepCheck {
    pub txid: u64,
    pub snapshot: Option<String>,
    pub segments: usize,
    pub ok: bool,
    pub checksum_verified: bool,
    pub error: Option<String>,
}

/// Restores the latest txid and `opts.points` random txids of the window,
/// each checked against its recorded checksum and by `integrity_check`.
/// Problems go into `report`; `Err` only when the store cannot be read.
pub async fn deep_verify(
    store: &Arc<dyn ObjectStore>,
    opts: &DeepOptions,
    report: &mut VerifyReport,
) -> Result<Vec<DeepCheck>, StoreError> {
    let catalog = Catalog::load(store).await?;
    let Some(window) = catalog.window() else {
        if !catalog.is_empty() {
            report.error(None, "deep: the replica has no restorable state");
        }
        return Ok(Vec::new());
    };
    let targets = pick_targets(window.min_txid, window.max_txid, opts.points, opts.seed);
    let scratch = Scratch::create(opts.scratch.as_deref()).map_err(|e| StoreError::Io {
        store: "deep verify".into(),
        op: "create scratch directory",
        key: String::new(),
        source: e,
    })?;
    let mut checks = Vec::with_capacity(targets.len());
    for txid in targets {
        checks.push(check_one(store, &catalog, txid, opts, &scratch.0, report).await?);
    }
    Ok(checks)
}

async fn check_one(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    txid: u64,
    opts: &DeepOptions,
    dir: &Path,
    report: &mut VerifyReport,
) -> Result<DeepCheck, StoreError> {
    let mut check = DeepCheck {
        txid,
        snapshot: None,
        segments: 0,
        ok: false,
        checksum_verified: false,
        error: None,
    };
    let plan = match plan_txid(catalog, txid, &Default::default()) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("deep: no plan restores txid {txid}: {e}");
            report.error(None, msg.clone());
            check.error = Some(msg);
            return Ok(check);
        }
    };
    check.snapshot = Some(plan.snapshot.key.clone());
    check.segments = plan.segments.len();
    let output = dir.join(format!("txid-{txid}.db"));
    let ropts = RestoreOptions {
        output: output.clone(),
        target: Target::Txid(txid),
        force: true,
        integrity_check: IntegrityCheck::Full,
        progress: None,
        keys: opts.keys.clone(),
    };
    let result = restore(store, &ropts).await;
    let _ = std::fs::remove_file(&output);
    record(result, &plan, &mut check, report)?;
    Ok(check)
}

/// Notes what one restore proved, or why it failed, in `check` and `report`.
/// An unreachable store is returned: that is no verdict on the replica.
fn record(
    result: Result<RestoreReport, RestoreError>,
    plan: &RestorePlan,
    check: &mut DeepCheck,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let txid = check.txid;
    match result {
        Ok(r) => {
            check.checksum_verified = r.checksum_verified;
            check.ok = r.skipped_damaged.is_empty();
            for key in &r.skipped_damaged {
                report.error(
                    Some(key),
                    format!("deep: damaged; the restore of txid {txid} had to plan around it"),
                );
            }
            if !r.checksum_verified {
                report.push(
                    Severity::Warning,
                    Some(&plan.snapshot.key),
                    format!("deep: txid {txid} restored, but no checksum is recorded for it"),
                );
            }
        }
        Err(RestoreError::Store(e)) if !e.is_not_found() => return Err(e),
        Err(e) => {
            let msg = format!(
                "deep: restoring txid {txid} ({} + {} segments) failed: {e}",
                plan.snapshot.key,
                plan.segments.len()
            );
            report.error(Some(&failed_key(&e, plan)), msg.clone());
            check.error = Some(msg);
        }
    }
    Ok(())
}

/// The object a failed restore names, else the last object of the plan (the
/// result as a whole was wrong, and it is the newest state involved).
fn failed_key(e: &RestoreError, plan: &RestorePlan) -> String {
    match e {
        RestoreError::Format { key, .. } | RestoreError::Mismatch { key, .. } => key.clone(),
        _ => plan.segments.last().unwrap_or(&plan.snapshot).key.clone(),
    }
}

/// The latest txid, then `points` distinct others of `min..=max` in txid order,
/// chosen by a SplitMix64 stream from `seed` (stable across versions and
/// platforms, unlike a library RNG's algorithm).
pub fn pick_targets(min: u64, max: u64, points: usize, seed: u64) -> Vec<u64> {
    let mut picked = std::collections::BTreeSet::new();
    let span = max - min; // txids other than the latest
    let wanted = (points as u64).min(span) as usize;
    let mut state = seed;
    while picked.len() < wanted {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        picked.insert(min + z % span);
    }
    let mut out = vec![max];
    out.extend(picked);
    out
}

/// Names of scratch directories start with this.
pub const SCRATCH_PREFIX: &str = "walstream-verify-";

/// A private directory for restored files, removed with everything in it.
struct Scratch(PathBuf);

impl Scratch {
    fn create(base: Option<&Path>) -> std::io::Result<Scratch> {
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = base.join(format!("{SCRATCH_PREFIX}{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_latest_and_distinct_seeded_points() {
        assert_eq!(pick_targets(5, 5, 3, 1), vec![5]);
        let t = pick_targets(1, 100, 3, 42);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0], 100);
        assert!(t[1..].windows(2).all(|w| w[0] < w[1]), "{t:?}");
        assert!(t[1..].iter().all(|&x| (1..100).contains(&x)), "{t:?}");
        assert_eq!(t, pick_targets(1, 100, 3, 42), "same seed, same points");
        assert_eq!(
            pick_targets(1, 3, 10, 7),
            vec![3, 1, 2],
            "capped by the window"
        );
    }
}
