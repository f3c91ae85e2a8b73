//! Capture: turning the source database's WAL into shipped segments.
//!
//! The engine runs on its own thread (all SQLite and WAL file work is blocking) and
//! calls the async object store through a runtime handle. See
//! `docs/architecture.md` for why no committed transaction can be lost.

mod compactor;
mod engine;
mod lock;
pub(crate) mod source;
mod spool;
mod state;
mod wake;

use std::path::{Path, PathBuf};
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
pub use lock::{state_dir, ReplicationLock};
pub use source::{check_sqlite_version, enable_wal, wal_path};

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
            compact_segments: 512,
            lease: LeaseTimes::default(),
            encryption: None,
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

/// A running replication of one database (see [`Replication::start`]).
#[derive(Debug)]
pub struct Replication {
    tx: mpsc::SyncSender<Command>,
    thread: std::sync::Mutex<Option<JoinHandle<Result<(), CaptureError>>>>,
    /// The last txid durably in the replica, as the engine publishes it.
    shipped: watch::Receiver<u64>,
    _watcher: Option<notify::RecommendedWatcher>,
    _lock: ReplicationLock,
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
        let db_path = absolute(db_path)?;
        let lock = ReplicationLock::acquire(&db_path)?;
        // Bounded: file events are coalesced (a full queue already holds a wake-up).
        let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
        let gate = Arc::new(wake::WakeGate::default());
        let watcher = watch(&db_path, tx.clone(), Arc::clone(&gate));
        let poll = if watcher.is_some() {
            opts.poll_interval
        } else {
            opts.poll_interval.min(Duration::from_millis(50))
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let rt = tokio::runtime::Handle::current();
        let path = db_path.clone();
        let (shipped_tx, shipped) = watch::channel(0);
        let links = engine::Links {
            rx,
            ready: ready_tx,
            shipped: shipped_tx,
            gate,
        };
        let thread = std::thread::Builder::new()
            .name("walstream-capture".into())
            .spawn(move || engine::run(path, store, opts, poll, rt, links))
            .map_err(|source| CaptureError::Io {
                path: db_path.clone(),
                source,
            })?;
        let rep = Replication {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
            shipped,
            _watcher: watcher,
            _lock: lock,
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(rep),
            Ok(Err(e)) => {
                rep.join()?;
                Err(e)
            }
            Err(_) => Err(rep
                .join()
                .err()
                .unwrap_or(CaptureError::Stopped("capture thread ended".into()))),
        }
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
        let mut rx = self.shipped.clone();
        let reached = rx.wait_for(|&t| t >= txid).await.is_ok();
        if reached {
            return Ok(());
        }
        Err(CaptureError::Stopped(format!(
            "replication ended before txid {txid} was shipped"
        )))
    }

    /// The last txid durably in the replica, updated as segments are shipped.
    pub fn shipped_txid(&self) -> watch::Receiver<u64> {
        self.shipped.clone()
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

/// One pass: resume or start a lineage, ship everything committed, checkpoint,
/// and with `force_snapshot` take a snapshot. Returns the snapshot key if one was
/// taken by this call.
pub async fn replicate_once(
    db_path: &Path,
    store: Arc<dyn ObjectStore>,
    opts: CaptureOptions,
    force_snapshot: bool,
) -> Result<Option<String>, CaptureError> {
    let db_path = absolute(db_path)?;
    let _lock = ReplicationLock::acquire(&db_path)?;
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || engine::once(db_path, store, opts, rt, force_snapshot))
        .await
        .map_err(|e| CaptureError::Stopped(e.to_string()))?
}

fn absolute(path: &Path) -> Result<PathBuf, CaptureError> {
    std::path::absolute(path).map_err(|source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// File events on the database's directory wake the engine within milliseconds
/// of a commit. `None` when the platform offers no watcher (polling then).
fn watch(
    db_path: &Path,
    tx: mpsc::SyncSender<Command>,
    gate: Arc<wake::WakeGate>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = db_path.parent()?.to_path_buf();
    let wal = wal_path(db_path);
    let db = db_path.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            // notify's inotify backend also reports IN_OPEN: the engine's own
            // open of the WAL in every sync would wake it again, forever.
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            if ev.paths.iter().any(|p| p == &wal || p == &db) {
                gate.wake(&tx);
            }
        }
    })
    .ok()?;
    match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "file events unavailable, polling instead");
            None
        }
    }
}
