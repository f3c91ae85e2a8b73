//! [`Replicator`]: walstream embedded in an application's own tokio runtime.
//! A builder, then backups on demand, the list of backups, status, waiting
//! for a transaction to be durable, and a graceful shutdown. No global state,
//! no printing: logs go through `tracing`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::capture::{CaptureOptions, Replication};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::crypto::{Key, KeyError, Keyring};
use crate::error::{CaptureError, RestoreError};
use crate::health::Thresholds;
use crate::monitor::{DbMonitor, DbReport};
use crate::replica::{ReplicaUrl, UrlError};
use crate::restore::{IntegrityCheck, RestoreOptions, RestoreReport, Target};
use crate::status::{Status, WindowJson};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error("no replica given for {db}: call .replica(URL) or .store(STORE)")]
    NoReplica { db: PathBuf },
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("restoring {db} before replication: {source}")]
    Restore {
        db: PathBuf,
        #[source]
        source: RestoreError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Where the replica is: a URL opened at start, or a store already open.
#[derive(Clone)]
enum ReplicaSource {
    Url(String),
    Parsed(ReplicaUrl),
    Store(Arc<dyn ObjectStore>),
}

/// Builds a [`Replicator`]; see [`Replicator::builder`].
#[derive(Clone)]
pub struct ReplicatorBuilder {
    db: PathBuf,
    replica: Option<ReplicaSource>,
    opts: CaptureOptions,
    thresholds: Thresholds,
    keys: Keyring,
    restore_if_missing: bool,
}

impl std::fmt::Debug for ReplicatorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatorBuilder")
            .field("db", &self.db)
            .field("opts", &self.opts)
            .field("restore_if_missing", &self.restore_if_missing)
            .finish_non_exhaustive()
    }
}

impl ReplicatorBuilder {
    /// The replica as a URL (`/dir`, `file:///dir`, `s3://…`, `r2://…`).
    pub fn replica(mut self, url: impl Into<String>) -> Self {
        self.replica = Some(ReplicaSource::Url(url.into()));
        self
    }

    /// The replica as a store the caller opened.
    pub fn store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.replica = Some(ReplicaSource::Store(store));
        self
    }

    pub fn options(mut self, opts: CaptureOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Health thresholds of [`Replicator::status`] and [`Replicator::health`].
    pub fn thresholds(mut self, t: Thresholds) -> Self {
        self.thresholds = t;
        self
    }

    /// Encrypt new objects with `key` (and decrypt with it).
    pub fn encryption_key(mut self, key: Key) -> Self {
        self.opts.encryption = Some(key.clone());
        self.keys = Keyring::new(Some(key), Vec::new());
        self
    }

    /// Takes capture options, thresholds, encryption (resolved against the
    /// environment, like the command line does) and, when the config names
    /// this database or has a `[storage.backup]` without `database`, the replica.
    pub fn config(mut self, config: &Config) -> Result<Self, ReplicatorError> {
        self.opts = config.capture.clone();
        self.thresholds = config.monitor.thresholds;
        let table = config.encryption.clone().unwrap_or_default();
        let settings = table.resolve(|name| std::env::var(name).ok())?;
        self.opts.encryption = settings.encrypt_with;
        self.keys = settings.keyring;
        let named = config
            .dbs
            .iter()
            .find(|d| same_file(&d.path, &self.db))
            .map(|d| d.replica.clone())
            .or_else(|| config.backup_replica.clone());
        if let Some(url) = named {
            self.replica = Some(ReplicaSource::Parsed(url));
        }
        Ok(self)
    }

    /// When the database file does not exist and the replica has data,
    /// restore the latest state first (default: off).
    pub fn restore_if_missing(mut self, yes: bool) -> Self {
        self.restore_if_missing = yes;
        self
    }

    /// Opens the replica, restores if asked, and starts replication. Must be
    /// called inside a tokio runtime; returns once start-up is done.
    pub async fn start(self) -> Result<Replicator, ReplicatorError> {
        let (store, default_upload) = match self.replica.clone() {
            None => return Err(ReplicatorError::NoReplica { db: self.db }),
            Some(ReplicaSource::Store(s)) => (s, None),
            Some(ReplicaSource::Url(u)) => open(ReplicaUrl::parse(&u)?)?,
            Some(ReplicaSource::Parsed(u)) => open(u)?,
        };
        let mut opts = self.opts;
        if opts.upload_interval.is_none() {
            opts.upload_interval = default_upload;
        }
        if self.restore_if_missing {
            restore_if_missing(&self.db, &store, &self.keys)
                .await
                .map_err(|source| ReplicatorError::Restore {
                    db: self.db.clone(),
                    source,
                })?;
        }
        let rep = Arc::new(Replication::start(&self.db, Arc::clone(&store), opts).await?);
        let db = std::path::absolute(&self.db).unwrap_or(self.db);
        let monitor = DbMonitor::new(db.clone(), Arc::clone(&rep), store, self.thresholds);
        Ok(Replicator {
            db,
            monitor: Arc::new(monitor),
        })
    }
}

fn open(
    url: ReplicaUrl,
) -> Result<(Arc<dyn ObjectStore>, Option<std::time::Duration>), StoreError> {
    Ok((url.open()?, Some(url.default_upload_interval())))
}

fn same_file(a: &Path, b: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs(a) == abs(b)
}

/// Restores the latest state into `db` when it does not exist and the replica
/// has data. `Ok(None)`: nothing to do (the file exists, or the replica is empty).
pub async fn restore_if_missing(
    db: &Path,
    store: &Arc<dyn ObjectStore>,
    keys: &Keyring,
) -> Result<Option<RestoreReport>, RestoreError> {
    if db.exists() {
        return Ok(None);
    }
    let opts = RestoreOptions {
        output: db.to_path_buf(),
        target: Target::Latest,
        force: false,
        integrity_check: IntegrityCheck::Quick,
        progress: None,
        keys: keys.clone(),
    };
    match crate::restore::restore(store, &opts).await {
        Ok(report) => {
            tracing::info!(db = %db.display(), "restored the missing database from the replica");
            Ok(Some(report))
        }
        Err(RestoreError::EmptyReplica { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A running replication of one database, embedded in an application.
///
/// ```no_run
/// # async fn demo() -> Result<(), walstream::ReplicatorError> {
/// let rep = walstream::Replicator::builder("app.db")
///     .replica("/var/backups/app")
///     .start()
///     .await?;
/// // ... the application commits a transaction ...
/// let txid = rep.sync().await?; // everything committed is in the replica
/// rep.wait_for_txid(txid).await?; // (already true here)
/// let key = rep.backup_now().await?;
/// rep.shutdown().await?;
/// # let _ = key; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Replicator {
    db: PathBuf,
    monitor: Arc<DbMonitor>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("db", &self.db)
            .field("replica", &self.monitor.replica)
            .finish()
    }
}

/// One snapshot: a state that restores on its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    pub key: String,
    pub lineage: u64,
    /// The last transaction it holds.
    pub txid: u64,
    /// When that transaction was observed (ms since the epoch) ...
    pub time_ms: i64,
    /// ... and as RFC 3339.
    pub time: String,
    /// Bytes in the replica (compressed, maybe encrypted).
    pub size: u64,
}

/// Every snapshot, oldest first, and the window any txid or time of which
/// restores (`None` while the replica is empty).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backups {
    pub backups: Vec<BackupInfo>,
    pub window: Option<WindowJson>,
}

impl Replicator {
    /// Starts building a replication of the SQLite file at `db` (WAL mode).
    pub fn builder(db: impl AsRef<Path>) -> ReplicatorBuilder {
        ReplicatorBuilder {
            db: db.as_ref().to_path_buf(),
            replica: None,
            opts: CaptureOptions::default(),
            thresholds: Thresholds::default(),
            keys: Keyring::default(),
            restore_if_missing: false,
        }
    }

    pub fn database(&self) -> &Path {
        &self.db
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.monitor.store
    }

    /// The replication itself, for what this type does not wrap.
    pub fn replication(&self) -> &Arc<Replication> {
        &self.monitor.rep
    }

    /// Takes a full snapshot now (after shipping what is committed); its key.
    pub async fn backup_now(&self) -> Result<String, ReplicatorError> {
        Ok(self.monitor.rep.snapshot().await?)
    }

    /// The snapshots in the replica and the restorable window.
    pub async fn list_backups(&self) -> Result<Backups, ReplicatorError> {
        let catalog = Catalog::load(&self.monitor.store).await?;
        let backups = catalog
            .snapshots
            .iter()
            .map(|o| BackupInfo {
                key: o.key.clone(),
                lineage: o.lineage,
                txid: o.max_txid,
                time_ms: o.max_time_ms,
                time: crate::restore::format_time(o.max_time_ms),
                size: o.size,
            })
            .collect();
        Ok(Backups {
            backups,
            window: catalog.window().map(Into::into),
        })
    }

    /// Positions, lag, last snapshot, window and health, as `walstream status`.
    pub async fn status(&self) -> Result<Status, ReplicatorError> {
        let live = self.monitor.rep.status().await?;
        let mut s = crate::status::status(&self.db, &self.monitor.store, Some(live)).await?;
        // This process holds the lock, so replication is running while it answers.
        s.replicating = !self.monitor.rep.is_finished();
        s.assess(
            chrono::Utc::now().timestamp_millis(),
            &self.monitor.thresholds,
        );
        Ok(s)
    }

    /// The health report of `/health` and the metrics endpoint.
    pub async fn health(&self) -> DbReport {
        self.monitor.report().await
    }

    /// The monitor the metrics endpoint, webhooks and verification use.
    pub fn monitor(&self) -> &Arc<DbMonitor> {
        &self.monitor
    }

    /// The txid of the newest transaction committed to the database so far
    /// (shipped or not), as the engine counts them: call it after a commit,
    /// then [`Replicator::wait_for_txid`] to know that commit is durable.
    /// The engine counts the commits in the WAL after its position; when the
    /// WAL was just restarted by a checkpoint it has not seen yet, the count
    /// may lag by the commits of the new WAL until the engine's next look;
    /// [`Replicator::sync`] has no such gap.
    pub async fn committed_txid(&self) -> Result<u64, ReplicatorError> {
        let s = self.monitor.rep.status().await?;
        Ok(s.last_shipped_txid + s.pending_commits)
    }

    /// Returns once transaction `txid` is durably in the replica.
    pub async fn wait_for_txid(&self, txid: u64) -> Result<(), ReplicatorError> {
        Ok(self.monitor.rep.wait_for_txid(txid).await?)
    }

    /// Ships everything committed before the call now (without waiting for
    /// the upload interval) and returns the last txid in the replica.
    pub async fn sync(&self) -> Result<u64, ReplicatorError> {
        Ok(self.monitor.rep.flush().await?)
    }

    /// Ships every transaction committed so far, then stops. Later calls
    /// return at once. The database's lock is released when the last clone
    /// of this `Replicator` is dropped.
    pub async fn shutdown(&self) -> Result<(), ReplicatorError> {
        Ok(self.monitor.rep.shutdown().await?)
    }
}
