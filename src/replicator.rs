//! [`Replicator`]: walstream embedded in an application's own tokio runtime.
//! A builder, then backups on demand, the list of backups, status, waiting
//! for a transaction to be durable, and a graceful shutdown. No global state,
//! no printing: logs go through `tracing`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::capture::{default_replica_name, CaptureOptions, ReplicaSpec, Replication};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::crypto::{Key, KeyError, Keyring};
use crate::error::{CaptureError, RestoreError};
use crate::health::Thresholds;
use crate::monitor::{spawn_verifier, DbMonitor, DbReport, MonitorConfig};
use crate::replica::{ReplicaUrl, UrlError};
use crate::restore::choose::{self, Candidate};
use crate::restore::{IntegrityCheck, RestoreOptions, RestoreReport, Target};
use crate::status::{Status, WindowJson};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error("no replica given for {db}: call .replica(URL) or .store(STORE) (once per replica)")]
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

/// Where a replica is: a URL opened at start, or a store already open.
#[derive(Clone)]
enum ReplicaSource {
    Url(String),
    Parsed(ReplicaUrl),
    Store(Arc<dyn ObjectStore>),
}

/// One replica given to the builder.
#[derive(Clone)]
struct ReplicaEntry {
    name: Option<String>,
    source: ReplicaSource,
    upload_interval: Option<Duration>,
}

/// Builds a [`Replicator`]; see [`Replicator::builder`].
#[derive(Clone)]
pub struct ReplicatorBuilder {
    db: PathBuf,
    replicas: Vec<ReplicaEntry>,
    opts: CaptureOptions,
    thresholds: Thresholds,
    keys: Keyring,
    restore_if_missing: bool,
    verify_interval: Option<Duration>,
}

impl std::fmt::Debug for ReplicatorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatorBuilder")
            .field("db", &self.db)
            .field("replicas", &self.replicas.len())
            .field("opts", &self.opts)
            .field("restore_if_missing", &self.restore_if_missing)
            .field("verify_interval", &self.verify_interval)
            .finish_non_exhaustive()
    }
}

impl ReplicatorBuilder {
    /// Adds a replica given as a URL (`/dir`, `file:///dir`, `s3://…`,
    /// `r2://…`), named after its scheme (`file`, `s3`, `r2`). Call it (or
    /// [`ReplicatorBuilder::replica_named`]) once per replica.
    pub fn replica(mut self, url: impl Into<String>) -> Self {
        self.replicas.push(ReplicaEntry {
            name: None,
            source: ReplicaSource::Url(url.into()),
            upload_interval: None,
        });
        self
    }

    /// Adds a replica with a name of its own (needed when two replicas
    /// would get the same default name, like two S3 buckets).
    pub fn replica_named(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.replicas.push(ReplicaEntry {
            name: Some(name.into()),
            source: ReplicaSource::Url(url.into()),
            upload_interval: None,
        });
        self
    }

    /// Adds a replica as a store the caller opened (named `s3` or `file`
    /// after its kind).
    pub fn store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.replicas.push(ReplicaEntry {
            name: None,
            source: ReplicaSource::Store(store),
            upload_interval: None,
        });
        self
    }

    /// Adds a store the caller opened, with a name of its own.
    pub fn store_named(mut self, name: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        self.replicas.push(ReplicaEntry {
            name: Some(name.into()),
            source: ReplicaSource::Store(store),
            upload_interval: None,
        });
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
    /// this database (every `[[db.replica]]` of it) or has a
    /// `[storage.backup]` without `database`, the replicas: they replace
    /// any given before.
    pub fn config(mut self, config: &Config) -> Result<Self, ReplicatorError> {
        self.opts = config.capture.clone();
        self.thresholds = config.monitor.thresholds;
        self.verify_interval = config.monitor.verify_interval;
        let table = config.encryption.clone().unwrap_or_default();
        let settings = table.resolve(|name| std::env::var(name).ok())?;
        self.opts.encryption = settings.encrypt_with;
        self.keys = settings.keyring;
        let named = config
            .dbs
            .iter()
            .find(|d| same_file(&d.path, &self.db))
            .map(|d| d.replicas.clone())
            .or_else(|| config.backup_replica.clone().map(|r| vec![r]));
        if let Some(replicas) = named {
            self.replicas = replicas
                .into_iter()
                .map(|r| ReplicaEntry {
                    name: Some(r.name),
                    source: ReplicaSource::Parsed(r.url),
                    upload_interval: r.upload_interval,
                })
                .collect();
        }
        Ok(self)
    }

    /// Restores the latest state of each replica into its state directory
    /// this often and proves it, as `walstream replicate` does (default:
    /// daily, the first run within 10 minutes of start; `None`: never). The
    /// outcome shows in [`Replicator::status`] (`last_verification`) and
    /// [`Replicator::health`]; a failed one is logged as an error.
    pub fn verify_interval(mut self, every: Option<Duration>) -> Self {
        self.verify_interval = every;
        self
    }

    /// When the database file does not exist and a replica has data,
    /// restore the latest state first, from the most advanced replica
    /// (default: off).
    pub fn restore_if_missing(mut self, yes: bool) -> Self {
        self.restore_if_missing = yes;
        self
    }

    /// Opens the replicas, restores if asked, and starts replication to every
    /// replica. Must be called inside a tokio runtime; returns once start-up
    /// is done.
    pub async fn start(self) -> Result<Replicator, ReplicatorError> {
        if self.replicas.is_empty() {
            return Err(ReplicatorError::NoReplica { db: self.db });
        }
        let mut specs = Vec::new();
        for entry in &self.replicas {
            let (store, url, default_name) = match &entry.source {
                ReplicaSource::Store(s) => (Arc::clone(s), None, default_replica_name(s.as_ref())),
                ReplicaSource::Url(u) => {
                    let url = ReplicaUrl::parse(u)?;
                    (
                        url.open()?,
                        Some(url),
                        crate::config::default_name(u).to_string(),
                    )
                }
                ReplicaSource::Parsed(u) => {
                    let s = u.open()?;
                    let name = default_replica_name(s.as_ref());
                    (s, Some(u.clone()), name)
                }
            };
            let mut opts = self.opts.clone();
            opts.upload_interval = entry.upload_interval.or(opts.upload_interval);
            if let Some(url) = &url {
                url.apply_defaults(&mut opts);
            }
            specs.push(ReplicaSpec {
                name: entry.name.clone().unwrap_or(default_name),
                store,
                opts,
            });
        }
        if self.restore_if_missing {
            let candidates: Vec<Candidate> = specs
                .iter()
                .map(|s| Candidate {
                    name: s.name.clone(),
                    store: Arc::clone(&s.store),
                })
                .collect();
            restore_if_missing_from(&self.db, &candidates, &self.keys)
                .await
                .map_err(|source| ReplicatorError::Restore {
                    db: self.db.clone(),
                    source,
                })?;
        }
        let stores: Vec<_> = specs.iter().map(|s| Arc::clone(&s.store)).collect();
        let n = specs.len();
        let reps = Replication::start_all(&self.db, specs).await?;
        let db = std::path::absolute(&self.db).unwrap_or(self.db);
        let monitors = reps
            .into_iter()
            .zip(stores)
            .map(|(rep, store)| {
                let dir = crate::capture::work_dir(&db, rep.name(), n);
                let m = DbMonitor::new(db.clone(), Arc::new(rep), store, self.thresholds);
                Arc::new(m.with_work_dir(dir))
            })
            .collect::<Vec<_>>();
        let verifiers = match self.verify_interval {
            Some(every) => monitors
                .iter()
                .map(|m| spawn_verifier(m, every, self.keys.clone()).abort_handle())
                .collect(),
            None => Vec::new(),
        };
        Ok(Replicator {
            db,
            replicas: Arc::from(monitors),
            verifiers: Arc::from(verifiers),
        })
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs(a) == abs(b)
}

/// Restores the latest state into `db` when it does not exist and one of the
/// replicas has data: from the most advanced one (see
/// [`crate::restore::choose::most_advanced`]). `Ok(None)`: nothing to do (the
/// file exists, or every replica is empty).
pub async fn restore_if_missing_from(
    db: &Path,
    candidates: &[Candidate],
    keys: &Keyring,
) -> Result<Option<RestoreReport>, RestoreError> {
    if db.exists() {
        return Ok(None);
    }
    let store = match candidates {
        [one] => Arc::clone(&one.store),
        _ => {
            let survey = choose::most_advanced(candidates).await;
            for note in survey.notes() {
                tracing::warn!(db = %db.display(), "{note}");
            }
            match survey.into_chosen(candidates) {
                Ok(i) => {
                    tracing::info!(db = %db.display(), replica = %candidates[i].name,
                        "restoring from the most advanced replica");
                    Arc::clone(&candidates[i].store)
                }
                Err(RestoreError::EmptyReplica { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    };
    restore_if_missing(db, &store, keys).await
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

/// A running replication of one database to one or more replicas, embedded
/// in an application.
///
/// With several replicas each has its own engine (position, retries, lease,
/// lag); txids are each replica's own. Where a method answers with one txid
/// or one status, it is the **first** replica's (the first `.replica(…)`, or
/// the first `[[db.replica]]`), and the waiting methods wait for every
/// replica that is not failing ([`Replicator::wait_for_txid`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), walstream::ReplicatorError> {
/// let rep = walstream::Replicator::builder("app.db")
///     .replica("/var/backups/app")
///     .replica_named("offsite", "s3://backups/app")
///     .start()
///     .await?;
/// // ... the application commits a transaction ...
/// let txid = rep.committed_txid().await?;
/// rep.wait_for_txid(txid).await?; // in every healthy replica
/// let key = rep.backup_now().await?;
/// rep.shutdown().await?;
/// # let _ = key; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Replicator {
    db: PathBuf,
    /// At least one, in the order given.
    replicas: Arc<[Arc<DbMonitor>]>,
    /// Scheduled verification, one task per replica; stopped by `shutdown`.
    verifiers: Arc<[tokio::task::AbortHandle]>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, &str)> = self
            .replicas
            .iter()
            .map(|m| (m.name.as_str(), m.replica.as_str()))
            .collect();
        f.debug_struct("Replicator")
            .field("db", &self.db)
            .field("replicas", &names)
            .finish()
    }
}

/// One snapshot: a state that restores on its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    /// The name of the replica holding it.
    pub replica: String,
    pub key: String,
    pub lineage: u64,
    /// The last transaction it holds (in its replica's numbering).
    pub txid: u64,
    /// When that transaction was observed (ms since the epoch) ...
    pub time_ms: i64,
    /// ... and as RFC 3339.
    pub time: String,
    /// Bytes in the replica (compressed, maybe encrypted).
    pub size: u64,
}

/// The snapshots of every replica, oldest first, and the window any txid or
/// time of which restores (`None` while the replica is empty).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backups {
    /// Every replica's snapshots, oldest first.
    pub backups: Vec<BackupInfo>,
    /// The restorable window of the first replica that answered.
    pub window: Option<WindowJson>,
    /// Each replica's window, or why it could not be listed.
    pub replicas: Vec<ReplicaBackups>,
}

/// One replica's part of [`Backups`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaBackups {
    pub name: String,
    pub replica: String,
    pub snapshots: usize,
    pub window: Option<WindowJson>,
    pub error: Option<String>,
}

/// What one replica answered to [`Replicator::backup_now_each`].
#[derive(Debug)]
pub struct ReplicaOutcome<T> {
    pub name: String,
    pub result: Result<T, ReplicatorError>,
}

impl Replicator {
    /// Starts building a replication of the SQLite file at `db` (WAL mode).
    pub fn builder(db: impl AsRef<Path>) -> ReplicatorBuilder {
        ReplicatorBuilder {
            db: db.as_ref().to_path_buf(),
            replicas: Vec::new(),
            opts: CaptureOptions::default(),
            thresholds: Thresholds::default(),
            keys: Keyring::default(),
            restore_if_missing: false,
            verify_interval: MonitorConfig::default().verify_interval,
        }
    }

    pub fn database(&self) -> &Path {
        &self.db
    }

    fn first(&self) -> &Arc<DbMonitor> {
        &self.replicas[0]
    }

    /// The first replica's store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.first().store
    }

    /// The first replica's replication, for what this type does not wrap.
    pub fn replication(&self) -> &Arc<Replication> {
        &self.first().rep
    }

    /// Every replica (name, store, replication, monitoring), in the order given.
    pub fn replicas(&self) -> &[Arc<DbMonitor>] {
        &self.replicas
    }

    /// The replica named `name`.
    pub fn replica(&self, name: &str) -> Option<&Arc<DbMonitor>> {
        self.replicas.iter().find(|m| m.name == name)
    }

    /// Runs `f` for every replica at the same time; the results in order.
    async fn each<T, F, Fut>(&self, f: F) -> Vec<ReplicaOutcome<T>>
    where
        T: Send + 'static,
        F: Fn(Arc<DbMonitor>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ReplicatorError>> + Send + 'static,
    {
        let tasks: Vec<_> = self
            .replicas
            .iter()
            .map(|m| (m.name.clone(), tokio::spawn(f(Arc::clone(m)))))
            .collect();
        let mut out = Vec::new();
        for (name, task) in tasks {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(CaptureError::Stopped(e.to_string()).into()),
            };
            out.push(ReplicaOutcome { name, result });
        }
        out
    }

    /// Takes a full snapshot now (after shipping what is committed) in every
    /// replica at once; returns the key in the first replica that succeeded.
    /// Fails only when every replica failed (each outcome:
    /// [`Replicator::backup_now_each`]).
    pub async fn backup_now(&self) -> Result<String, ReplicatorError> {
        first_success(self.backup_now_each().await)
    }

    /// A snapshot in every replica at once; what each answered.
    pub async fn backup_now_each(&self) -> Vec<ReplicaOutcome<String>> {
        self.each(|m| async move { Ok(m.rep.snapshot().await?) })
            .await
    }

    /// The snapshots in every replica and the restorable windows. Fails only
    /// when no replica could be listed.
    pub async fn list_backups(&self) -> Result<Backups, ReplicatorError> {
        let listed = self
            .each(|m| async move { Ok(Catalog::load(&m.store).await?) })
            .await;
        let mut out = Backups {
            backups: Vec::new(),
            window: None,
            replicas: Vec::new(),
        };
        let mut last_error = None;
        for (m, l) in self.replicas.iter().zip(listed) {
            let catalog = match l.result {
                Ok(c) => c,
                Err(e) => {
                    out.replicas.push(ReplicaBackups {
                        name: m.name.clone(),
                        replica: m.replica.clone(),
                        snapshots: 0,
                        window: None,
                        error: Some(e.to_string()),
                    });
                    last_error = Some(e);
                    continue;
                }
            };
            let window: Option<WindowJson> = catalog.window().map(Into::into);
            if out.replicas.iter().all(|r| r.error.is_some()) {
                out.window = window.clone();
            }
            out.replicas.push(ReplicaBackups {
                name: m.name.clone(),
                replica: m.replica.clone(),
                snapshots: catalog.snapshots.len(),
                window,
                error: None,
            });
            out.backups
                .extend(catalog.snapshots.iter().map(|o| BackupInfo {
                    replica: m.name.clone(),
                    key: o.key.clone(),
                    lineage: o.lineage,
                    txid: o.max_txid,
                    time_ms: o.max_time_ms,
                    time: crate::restore::format_time(o.max_time_ms),
                    size: o.size,
                }));
        }
        if let (true, Some(e)) = (out.replicas.iter().all(|r| r.error.is_some()), last_error) {
            return Err(e);
        }
        out.backups.sort_by_key(|b| b.time_ms);
        Ok(out)
    }

    /// The first replica's positions, lag, last snapshot, window and health,
    /// as `walstream status` (every replica's: [`Replicator::statuses`]).
    pub async fn status(&self) -> Result<Status, ReplicatorError> {
        status_of(self.first(), &self.db, true).await
    }

    /// Every replica's status, in order (each as [`Replicator::status`]; an
    /// engine busy for more than a moment, its store not answering, reports
    /// its last status).
    pub async fn statuses(&self) -> Vec<ReplicaOutcome<Status>> {
        let db = self.db.clone();
        self.each(move |m| {
            let db = db.clone();
            async move { status_of(&m, &db, false).await }
        })
        .await
    }

    /// The first replica's health report (every replica's:
    /// [`Replicator::health_all`]).
    pub async fn health(&self) -> DbReport {
        self.first().report().await
    }

    /// The health report of every replica, as `/health` and the metrics
    /// endpoint give them.
    pub async fn health_all(&self) -> Vec<DbReport> {
        let mut out = Vec::new();
        for m in self.replicas.iter() {
            out.push(m.report().await);
        }
        out
    }

    /// The first replica's monitor.
    pub fn monitor(&self) -> &Arc<DbMonitor> {
        self.first()
    }

    /// The txid of the newest transaction committed to the database so far
    /// (shipped or not), as the first replica's engine counts them: call it
    /// after a commit, then [`Replicator::wait_for_txid`] to know that commit
    /// is durable. The engine counts the commits in the WAL after its
    /// position; when the WAL was just restarted by a checkpoint it has not
    /// seen yet, the count may lag by the commits of the new WAL until the
    /// engine's next look; [`Replicator::sync`] has no such gap.
    pub async fn committed_txid(&self) -> Result<u64, ReplicatorError> {
        let s = self.first().rep.status().await?;
        Ok(s.last_shipped_txid + s.pending_commits)
    }

    /// Returns once transaction `txid` (a txid of the first replica, as
    /// [`Replicator::committed_txid`] and [`Replicator::sync`] give them) is
    /// durable off-site.
    ///
    /// With one replica: once the replica holds it. With several: once every
    /// replica that is not failing holds it, and at least one does. A replica
    /// counts as failing while its last step failed (it is retrying an
    /// unreachable or failing store) or after it stopped: waiting for it
    /// would hold the application's answer for as long as the outage lasts,
    /// which is what a second destination is meant to prevent, while the
    /// commit is already safe in another replica (the failing one still
    /// ships it when it recovers, and `status`, `/health` and the lag metrics
    /// report it meanwhile). Replicas other than the first are waited for
    /// with "everything committed before this call" (their txids differ), so
    /// call it after the commit.
    ///
    /// Fails only when every replica stopped before holding it.
    pub async fn wait_for_txid(&self, txid: u64) -> Result<(), ReplicatorError> {
        if self.replicas.len() == 1 {
            return Ok(self.first().rep.wait_for_txid(txid).await?);
        }
        let tickets: Vec<u64> = self
            .replicas
            .iter()
            .map(|m| m.rep.commit_ticket())
            .collect();
        let reached = |i: usize, m: &DbMonitor| match i {
            0 => m.rep.shipped_txid() >= txid,
            _ => m.rep.ticket_reached(tickets[i]),
        };
        let mut watches: Vec<_> = self.replicas.iter().map(|m| m.rep.progress()).collect();
        loop {
            for w in watches.iter_mut() {
                w.borrow_and_update();
            }
            let mut held = 0;
            let mut waiting = 0;
            let mut running = 0;
            for (i, m) in self.replicas.iter().enumerate() {
                running += usize::from(!m.rep.is_finished());
                if reached(i, m) {
                    held += 1;
                } else if !m.rep.is_failing() {
                    waiting += 1;
                }
            }
            if held > 0 && waiting == 0 {
                return Ok(());
            }
            if running == 0 {
                return Err(CaptureError::Stopped(format!(
                    "replication ended before txid {txid} was shipped"
                ))
                .into());
            }
            // A failing replica that recovers, or one that stops, publishes
            // no progress of its own: look again now and then.
            let _ =
                tokio::time::timeout(Duration::from_millis(500), any_changed(&mut watches)).await;
        }
    }

    /// Ships everything committed before the call now (without waiting for
    /// the upload interval) and returns the last txid in the first replica.
    ///
    /// With several replicas, every replica that is not failing ships at
    /// once (all of them when all are failing); fails only when every replica
    /// that tried failed. The txid is then one that
    /// [`Replicator::wait_for_txid`] takes for "everything committed before
    /// this call".
    pub async fn sync(&self) -> Result<u64, ReplicatorError> {
        if self.replicas.len() == 1 {
            return Ok(self.first().rep.flush().await?);
        }
        let all_failing = self.replicas.iter().all(|m| m.rep.is_failing());
        let flushed = self
            .each(move |m| async move {
                if m.rep.is_failing() && !all_failing {
                    // The commits still count: the txid they will have there
                    // (a busy engine answers with its last status).
                    let s = match m.engine_status().await {
                        Some(s) => s,
                        None => m.rep.status().await?,
                    };
                    return Ok((false, s.last_shipped_txid + s.pending_commits));
                }
                Ok((true, m.rep.flush().await?))
            })
            .await;
        let mut first = None;
        let mut any_flushed = false;
        let mut last_error = None;
        for (i, o) in flushed.into_iter().enumerate() {
            match o.result {
                Ok((done, txid)) => {
                    any_flushed |= done;
                    if i == 0 {
                        first = Some(txid);
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (any_flushed, first, last_error) {
            (true, Some(txid), _) => Ok(txid),
            (true, None, _) => self.committed_txid().await,
            (false, _, Some(e)) => Err(e),
            (false, _, None) => Err(CaptureError::Stopped("no replica shipped".into()).into()),
        }
    }

    /// Ships every transaction committed so far to every replica (at the
    /// same time), then stops. Later calls return at once. The database's
    /// lock is released when the last clone of this `Replicator` is dropped.
    /// Fails when a replica's final shipping failed (the others still
    /// finished theirs).
    pub async fn shutdown(&self) -> Result<(), ReplicatorError> {
        for v in self.verifiers.iter() {
            v.abort();
        }
        let done = self
            .each(|m| async move { Ok(m.rep.shutdown().await?) })
            .await;
        let n = done.len();
        for o in done {
            if let Err(e) = o.result {
                return Err(match (n, e) {
                    (1, e) => e,
                    (_, ReplicatorError::Capture(e)) => {
                        ReplicatorError::Capture(CaptureError::Replica {
                            name: o.name,
                            source: Box::new(e),
                        })
                    }
                    (_, e) => e,
                });
            }
        }
        Ok(())
    }
}

/// `fresh`: the engine's own answer however long it takes; else a busy
/// engine's last answer after a moment (so it never holds up the others').
async fn status_of(m: &DbMonitor, db: &Path, fresh: bool) -> Result<Status, ReplicatorError> {
    let answer = match fresh {
        true => None,
        false => m.engine_status().await,
    };
    let live = match answer {
        Some(s) => s,
        None => m.rep.status().await?,
    };
    let mut s = crate::status::status(db, &m.store, Some(live)).await?;
    s.replica_name = Some(m.name.clone());
    // This process holds the lock, so replication is running while it answers.
    s.replicating = !m.rep.is_finished();
    s.last_verification = m.state().last_verify;
    s.assess(chrono::Utc::now().timestamp_millis(), &m.thresholds);
    Ok(s)
}

fn first_success<T>(outcomes: Vec<ReplicaOutcome<T>>) -> Result<T, ReplicatorError> {
    let mut first_error = None;
    for o in outcomes {
        match o.result {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(replica = %o.name, error = %e, "replica failed");
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| CaptureError::Stopped("no replica".into()).into()))
}

/// Resolves when any of the watches has a new value (or lost its sender).
async fn any_changed(watches: &mut [tokio::sync::watch::Receiver<crate::capture::Progress>]) {
    let mut futures: Vec<_> = watches.iter_mut().map(|w| Box::pin(w.changed())).collect();
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
