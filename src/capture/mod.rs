//! Capture: turning the source database's WAL into shipped segments.
//!
//! The engine runs on its own thread (all SQLite and WAL file work is blocking) and
//! calls the async object store through a runtime handle. See
//! `docs/architecture.md` for why no committed transaction can be lost.

mod compactor;
mod engine;
mod events;
mod lock;
mod sent;
pub(crate) mod source;
mod spool;
mod state;
mod wake;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::error::CaptureError;
use crate::lease::LeaseTimes;
use crate::retention::RetentionPolicy;
use crate::schedule::TimeOfDay;
use crate::store::ObjectStore;

pub use engine::EngineStatus;
pub use lock::{state_dir, work_dir, ReplicationLock};
pub use source::{check_sqlite_version, enable_wal, wal_path, DbFiles};

/// The default [`CaptureOptions::pace_limit`] of a local directory replica.
pub const DEFAULT_PACE_LIMIT: Duration = Duration::from_millis(50);

/// Settings of one replication.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Checkpoint (PASSIVE) once this many frames were shipped since the last one.
    pub checkpoint_pages: u32,
    /// Checkpoint when no commit arrived for this long and shipped frames remain.
    pub idle_checkpoint: Duration,
    /// Safety-net poll when no file event arrives.
    pub poll_interval: Duration,
    /// How long to wait for SQLite locks.
    pub busy_timeout: Duration,
    /// Take a full snapshot when the newest one is older than this.
    pub snapshot_interval: Duration,
    /// Also take one at this time of day (once the newest is older than it).
    pub snapshot_at: Option<TimeOfDay>,
    /// Which snapshots to keep after each snapshot; segments no kept snapshot
    /// needs are deleted.
    pub retention: RetentionPolicy,
    /// Upload batching: shipping waits until the oldest unshipped commit is this
    /// old, so one PUT carries every commit of the interval (each keeps its own
    /// txid and observed time). `None`: the store's default (0 for a local
    /// directory, 1 s for S3). Checkpoints and shutdown ship at once.
    pub upload_interval: Option<Duration>,
    /// Group commit under load: the longest pause after storing segments
    /// before the next store (the pause grows with the commits the last store
    /// carried, see docs/architecture.md). `None` for a replica given by URL:
    /// the store's default, [`DEFAULT_PACE_LIMIT`] for a local directory,
    /// where it spares the application's disk most of a segment's fsyncs, and
    /// none for S3, where the commits arriving during one PUT already share
    /// the next and `upload_interval` is the setting that trades lag for
    /// requests. `None` for a store given as an object: [`DEFAULT_PACE_LIMIT`].
    pub pace_limit: Option<Duration>,
    /// Most page records in one segment, and never more than 2 MiB of pages (a
    /// single larger transaction still makes one segment, spooled to a file).
    pub segment_pages: usize,
    /// Merge every this many shipped segments into one (see
    /// [`crate::compaction`]); below 2, no compaction.
    pub compact_segments: usize,
    /// The replica's single-writer lease (see [`crate::lease`]).
    pub lease: LeaseTimes,
    /// Encrypt every object with this key (see `docs/encryption.md`).
    pub encryption: Option<crate::crypto::Key>,
    /// While the replica fails, the engine keeps its pin so that nothing
    /// committed meanwhile leaves the WAL before it is shipped; the WAL grows
    /// for as long. Once the replica has been failing this long, the engine
    /// lets go of the WAL instead; when the replica answers again it resumes
    /// only if continuity can still be proven, else it starts a new lineage
    /// with a snapshot. `None`: hold it for as long as the outage lasts.
    pub outage_wal_hold: Option<Duration>,
    /// The same, once the WAL file is this large (bytes) during an outage.
    pub outage_wal_max_bytes: Option<u64>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            checkpoint_pages: 1000,
            idle_checkpoint: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            busy_timeout: Duration::from_secs(5),
            snapshot_interval: Duration::from_secs(24 * 3600),
            snapshot_at: None,
            retention: RetentionPolicy::default(),
            segment_pages: 4096,
            upload_interval: None,
            pace_limit: None,
            compact_segments: 512,
            lease: LeaseTimes::default(),
            encryption: None,
            outage_wal_hold: None,
            outage_wal_max_bytes: None,
        }
    }
}

const COMMAND_QUEUE: usize = 64;

pub(crate) enum Command {
    Wake,
    Snapshot(oneshot::Sender<Result<String, String>>),
    /// Ship every commit now; reply with the last shipped txid.
    Flush(oneshot::Sender<Result<u64, String>>),
    Status(oneshot::Sender<EngineStatus>),
    Shutdown,
}

/// How far a replication has come, as its engine publishes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last txid durably in the replica.
    pub shipped_txid: u64,
    /// Every commit the engine saw in its WAL read number `durable_read`, or
    /// in an earlier one, is durable in the replica (see
    /// [`Replication::commit_ticket`]).
    pub durable_read: u64,
    /// The engine's last step failed: it is retrying (the replica is
    /// unreachable or failing).
    pub failing: bool,
}

/// One replica of a database, for [`Replication::start_all`].
#[derive(Clone)]
pub struct ReplicaSpec {
    /// Unique among the database's replicas: 1 to 64 letters, digits, `-`,
    /// `_`, `.` ([`crate::config::valid_name`]).
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
    pub opts: CaptureOptions,
}

impl std::fmt::Debug for ReplicaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSpec")
            .field("name", &self.name)
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

/// The name a replica gets when none is given: its kind (`s3`, `file`).
pub fn default_replica_name(store: &dyn ObjectStore) -> String {
    match store.describe().starts_with("s3://") {
        true => "s3".into(),
        false => "file".into(),
    }
}

/// What an engine needs to know about its place among the database's replicas.
pub(crate) struct Slot {
    pub name: String,
    /// The database's state directory (the owner id of the leases).
    pub state_dir: PathBuf,
    /// This replica's own directory for spools and logs.
    pub work_dir: PathBuf,
    /// The database file handles of every replication of the database.
    pub files: Arc<DbFiles>,
    /// WAL reads started by the engine (see [`Progress::durable_read`]).
    pub reads: Arc<AtomicU64>,
}

impl Slot {
    fn new(db_path: &Path, name: &str, replicas: usize, files: &Arc<DbFiles>) -> Slot {
        Slot {
            name: name.to_string(),
            state_dir: state_dir(db_path),
            work_dir: work_dir(db_path, name, replicas),
            files: Arc::clone(files),
            reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Creates the work directory and clears what a killed process left in it.
    fn prepare(&self) -> Result<(), CaptureError> {
        std::fs::create_dir_all(&self.work_dir).map_err(|source| CaptureError::Io {
            path: self.work_dir.clone(),
            source,
        })?;
        lock::remove_stale_spools(&self.work_dir);
        Ok(())
    }
}

/// A running replication of one database to one replica (see
/// [`Replication::start`] and, for several replicas, [`Replication::start_all`]).
#[derive(Debug)]
pub struct Replication {
    name: String,
    tx: mpsc::SyncSender<Command>,
    thread: std::sync::Mutex<Option<JoinHandle<Result<(), CaptureError>>>>,
    progress: watch::Receiver<Progress>,
    reads: Arc<AtomicU64>,
    _watcher: Option<Arc<events::FileEvents>>,
    /// Shared by the replications of the database: released with the last.
    _lock: Arc<ReplicationLock>,
}

impl Replication {
    /// Opens the database, resumes or starts a lineage in the replica (taking a
    /// snapshot when needed) and starts shipping. Returns once that start-up is
    /// done, so start-up errors (missing database, wrong journal mode, another
    /// replicator running) come back here. Must be called inside a tokio runtime.
    pub async fn start(
        db_path: &Path,
        store: Arc<dyn ObjectStore>,
        opts: CaptureOptions,
    ) -> Result<Replication, CaptureError> {
        let name = default_replica_name(store.as_ref());
        let mut all =
            Replication::start_all(db_path, vec![ReplicaSpec { name, store, opts }]).await?;
        all.pop()
            .ok_or_else(|| CaptureError::Stopped("no replication started".into()))
    }

    /// Replicates one database to several replicas at once: one engine per
    /// replica, each with its own connections and pin, position, retries,
    /// lease and lag, so a failing replica never holds up another (it only
    /// keeps its own frames in the WAL; see `docs/architecture.md`). The
    /// database's lock is taken once and held until the last of them is
    /// dropped. Start-up runs for all replicas at the same time; returns
    /// once each is done, in the order given, or the first error (after
    /// stopping the others).
    pub async fn start_all(
        db_path: &Path,
        specs: Vec<ReplicaSpec>,
    ) -> Result<Vec<Replication>, CaptureError> {
        check_names(&specs)?;
        let db_path = absolute(db_path)?;
        let lock = Arc::new(ReplicationLock::acquire(&db_path)?);
        let n = specs.len();
        if n > 1 {
            // Files a single-replica run left at the top level.
            lock::remove_stale_spools(&state_dir(&db_path));
            // The owner id of the leases, once, before the engines read it.
            owner_id(&db_path)?;
        }
        let files = Arc::new(DbFiles::default());
        // Bounded: file events are coalesced (a full queue already holds a wake-up).
        let channels: Vec<_> = specs
            .iter()
            .map(|_| mpsc::sync_channel(COMMAND_QUEUE))
            .collect();
        let events = events::Prepared::new(&db_path);
        let rearm = events.as_ref().and_then(events::Prepared::rearm);
        let gates: Vec<_> = specs
            .iter()
            .map(|_| Arc::new(wake::WakeGate::new(rearm.clone())))
            .collect();
        let targets: Vec<_> = channels
            .iter()
            .zip(&gates)
            .map(|((tx, _), gate)| (tx.clone(), Arc::clone(gate)))
            .collect();
        let watcher = events.and_then(|e| e.start(targets)).map(Arc::new);
        let rt = tokio::runtime::Handle::current();
        // Every directory ready before any engine runs.
        let mut slots = Vec::new();
        for spec in &specs {
            let slot = Slot::new(&db_path, &spec.name, n, &files);
            slot.prepare()?;
            slots.push(slot);
        }
        let mut started = Vec::new();
        let engines = specs.into_iter().zip(channels).zip(slots).zip(gates);
        for (((spec, (tx, rx)), slot), gate) in engines {
            let poll = if watcher.is_some() {
                spec.opts.poll_interval
            } else {
                spec.opts.poll_interval.min(Duration::from_millis(50))
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            let (progress_tx, progress) = watch::channel(Progress::default());
            let reads = Arc::clone(&slot.reads);
            let links = engine::Links {
                rx,
                ready: ready_tx,
                progress: progress_tx,
                gate,
            };
            let (path, rt, name) = (db_path.clone(), rt.clone(), spec.name.clone());
            let thread = std::thread::Builder::new()
                .name("walstream-capture".into())
                .spawn(move || engine::run(path, spec.store, spec.opts, poll, rt, links, slot))
                .map_err(|source| CaptureError::Io {
                    path: db_path.clone(),
                    source,
                })?;
            let rep = Replication {
                name,
                tx,
                thread: std::sync::Mutex::new(Some(thread)),
                progress,
                reads,
                _watcher: watcher.clone(),
                _lock: Arc::clone(&lock),
            };
            started.push((rep, ready_rx));
        }
        let mut reps = Vec::new();
        let mut failed = None;
        for (rep, ready) in started {
            let outcome = match ready.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(rep.join().err().unwrap_or(e)),
                Err(_) => Err(rep
                    .join()
                    .err()
                    .unwrap_or(CaptureError::Stopped("capture thread ended".into()))),
            };
            match outcome {
                Ok(()) => reps.push(rep),
                Err(e) if failed.is_none() => failed = Some(named(n, &rep.name, e)),
                Err(_) => {}
            }
        }
        if let Some(e) = failed {
            for rep in reps {
                let _ = rep.shutdown().await;
            }
            return Err(e);
        }
        Ok(reps)
    }

    /// The replica's name (unique among the database's replicas).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes a full snapshot now; returns its key.
    pub async fn snapshot(&self) -> Result<String, CaptureError> {
        self.ask(Command::Snapshot).await
    }

    /// Ships every transaction committed before the call now (whatever the
    /// upload interval) and returns the last txid in the replica.
    pub async fn flush(&self) -> Result<u64, CaptureError> {
        self.ask(Command::Flush).await
    }

    /// Sends a command that the engine answers with a result.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, CaptureError> {
        let (tx, rx) = oneshot::channel();
        self.send(command(tx)).await?;
        rx.await
            .map_err(|_| CaptureError::Stopped("capture thread ended".into()))?
            .map_err(CaptureError::Stopped)
    }

    /// Returns once transaction `txid` is durably in the replica (at once if
    /// it already is); an error if replication stops before that.
    pub async fn wait_for_txid(&self, txid: u64) -> Result<(), CaptureError> {
        let mut rx = self.progress.clone();
        let reached = rx.wait_for(|p| p.shipped_txid >= txid).await.is_ok();
        if reached {
            return Ok(());
        }
        Err(CaptureError::Stopped(format!(
            "replication ended before txid {txid} was shipped"
        )))
    }

    /// A ticket for "every transaction committed before now": the number of
    /// the next WAL read the engine starts, which sees all of them. Txids
    /// are the replica's own, so this is how waits across replicas are
    /// expressed. Wakes the engine, so an idle one reads at once.
    pub fn commit_ticket(&self) -> u64 {
        let ticket = self.reads.load(Ordering::SeqCst) + 1;
        let _ = self.tx.try_send(Command::Wake);
        ticket
    }

    /// Whether everything committed before `ticket` was taken is durable in
    /// the replica.
    pub fn ticket_reached(&self, ticket: u64) -> bool {
        self.progress.borrow().durable_read >= ticket
    }

    /// Returns once everything committed before `ticket` was taken is durable
    /// in the replica (respecting the upload interval: nothing is forced);
    /// an error if replication stops before that.
    pub async fn wait_for_ticket(&self, ticket: u64) -> Result<(), CaptureError> {
        let mut rx = self.progress.clone();
        let reached = rx.wait_for(|p| p.durable_read >= ticket).await.is_ok();
        if reached {
            return Ok(());
        }
        Err(CaptureError::Stopped(
            "replication ended before the commits were shipped".into(),
        ))
    }

    /// The last txid durably in the replica, updated as segments are shipped.
    pub fn shipped_txid(&self) -> u64 {
        self.progress.borrow().shipped_txid
    }

    /// The engine's progress as it publishes it (shipped txid, durable reads,
    /// failing or not); `changed()` on it wakes on every update.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// The last step failed and the engine is retrying, or it has ended.
    pub fn is_failing(&self) -> bool {
        self.progress.borrow().failing || self.is_finished()
    }

    /// Positions, lag and the last error.
    pub async fn status(&self) -> Result<EngineStatus, CaptureError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx)).await?;
        rx.await
            .map_err(|_| CaptureError::Stopped("capture thread ended".into()))
    }

    /// Ships every transaction committed so far, then stops. Later calls
    /// return at once.
    pub async fn shutdown(&self) -> Result<(), CaptureError> {
        let _ = self.send(Command::Shutdown).await;
        let thread = self.take_thread();
        tokio::task::spawn_blocking(move || join(thread))
            .await
            .map_err(|e| CaptureError::Stopped(e.to_string()))?
    }

    fn take_thread(&self) -> Option<JoinHandle<Result<(), CaptureError>>> {
        self.thread.lock().map(|mut t| t.take()).unwrap_or(None)
    }

    /// True once the capture thread has ended (it only ends on shutdown or a
    /// fatal error).
    pub fn is_finished(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_none_or(|t| t.is_finished()))
            .unwrap_or(true)
    }

    async fn send(&self, cmd: Command) -> Result<(), CaptureError> {
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(cmd))
            .await
            .map_err(|e| CaptureError::Stopped(e.to_string()))?
            .map_err(|_| CaptureError::Stopped("capture thread ended".into()))
    }

    fn join(&self) -> Result<(), CaptureError> {
        join(self.take_thread())
    }
}

fn join(thread: Option<JoinHandle<Result<(), CaptureError>>>) -> Result<(), CaptureError> {
    match thread {
        None => Ok(()),
        Some(t) => t
            .join()
            .map_err(|_| CaptureError::Stopped("capture thread panicked".into()))?,
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        let _ = self.tx.try_send(Command::Shutdown);
    }
}

/// Names must be valid and distinct: they name directories and are how
/// `status` and `restore --replica` tell replicas apart.
fn check_names(specs: &[ReplicaSpec]) -> Result<(), CaptureError> {
    if specs.is_empty() {
        return Err(CaptureError::ReplicaNames("no replica given".into()));
    }
    for (i, s) in specs.iter().enumerate() {
        if !crate::config::valid_name(&s.name) {
            return Err(CaptureError::ReplicaNames(format!(
                "{:?} is not a replica name: use 1 to 64 letters, digits, '-', '_' or '.', \
                 starting with a letter or digit",
                s.name
            )));
        }
        if specs[..i].iter().any(|o| o.name == s.name) {
            return Err(CaptureError::ReplicaNames(format!(
                "two replicas are named {:?}: give each its own name",
                s.name
            )));
        }
    }
    Ok(())
}

/// Creates the owner id of the database's leases if there is none yet.
fn owner_id(db_path: &Path) -> Result<(), CaptureError> {
    let dir = state_dir(db_path);
    crate::lease::Identity::load_or_create(&dir, db_path)
        .map(|_| ())
        .map_err(|source| CaptureError::Io { path: dir, source })
}

/// With several replicas, errors say which one they are about.
fn named(replicas: usize, name: &str, e: CaptureError) -> CaptureError {
    match replicas {
        0 | 1 => e,
        _ => CaptureError::Replica {
            name: name.to_string(),
            source: Box::new(e),
        },
    }
}

/// One pass: resume or start a lineage, ship everything committed, checkpoint,
/// and with `force_snapshot` take a snapshot. Returns the snapshot key if one was
/// taken by this call.
pub async fn replicate_once(
    db_path: &Path,
    store: Arc<dyn ObjectStore>,
    opts: CaptureOptions,
    force_snapshot: bool,
) -> Result<Option<String>, CaptureError> {
    let name = default_replica_name(store.as_ref());
    replicate_all_once(
        db_path,
        vec![ReplicaSpec { name, store, opts }],
        force_snapshot,
    )
    .await?
    .pop()
    .unwrap_or_else(|| Err(CaptureError::Stopped("no replica given".into())))
}

/// [`replicate_once`] to several replicas of one database, all at the same
/// time (so a failing one does not hold up the others). The outer error is
/// about the database (its lock, the names); the inner ones, in the order
/// given, about each replica.
pub async fn replicate_all_once(
    db_path: &Path,
    specs: Vec<ReplicaSpec>,
    force_snapshot: bool,
) -> Result<Vec<Result<Option<String>, CaptureError>>, CaptureError> {
    check_names(&specs)?;
    let db_path = absolute(db_path)?;
    let _lock = ReplicationLock::acquire(&db_path)?;
    let n = specs.len();
    if n > 1 {
        lock::remove_stale_spools(&state_dir(&db_path));
        owner_id(&db_path)?;
    }
    let files = Arc::new(DbFiles::default());
    let rt = tokio::runtime::Handle::current();
    let mut tasks = Vec::new();
    for spec in specs {
        let slot = Slot::new(&db_path, &spec.name, n, &files);
        let (path, rt) = (db_path.clone(), rt.clone());
        let name = spec.name.clone();
        let task = tokio::task::spawn_blocking(move || {
            slot.prepare()?;
            engine::once(path, spec.store, spec.opts, rt, force_snapshot, slot)
        });
        tasks.push((name, task));
    }
    let mut out = Vec::new();
    for (name, task) in tasks {
        let r = task
            .await
            .map_err(|e| CaptureError::Stopped(e.to_string()))
            .and_then(|r| r);
        out.push(r.map_err(|e| named(n, &name, e)));
    }
    Ok(out)
}

fn absolute(path: &Path) -> Result<PathBuf, CaptureError> {
    std::path::absolute(path).map_err(|source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    })
}
