//! The capture engine: ship commits, checkpoint; start-up in `start`, snapshots
//! in `snapshot`.

mod checkpoint;
mod encrypt;
mod lease;
mod scan;
mod segment;
mod snapshot;
mod start;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use super::compactor::{Compactor, CompactorContext};
use super::sent::SentRecord;
use super::source::Source;
use super::state::StateReader;
use super::{CaptureOptions, Command, Progress, Slot};
use crate::catalog::{fetch_header, segment_key, snapshot_key, Catalog};
use crate::checksum::PageHashes;
use crate::error::CaptureError;
use crate::format::{ObjectHeader, WalPosition};
use crate::retention;
use crate::store::{ObjectStore, PutMode, StoreError};
use crate::wal::{WalCommit, WalFile, WalHeader};
use segment::SegmentBody;

/// What the engine reports about itself.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EngineStatus {
    pub lineage: Option<String>,
    /// Last txid durably in the replica.
    pub last_shipped_txid: u64,
    pub last_shipped_time_ms: Option<i64>,
    /// Committed transactions in the WAL not yet in the replica.
    pub pending_commits: u64,
    /// Age of the oldest unshipped commit, when there is one.
    pub lag_ms: u64,
    pub wal_bytes: u64,
    pub last_snapshot_key: Option<String>,
    pub last_snapshot_time_ms: Option<i64>,
    pub checkpoints: u64,
    pub last_error: Option<String>,
    /// WAL bytes (frames with their headers) of the unshipped commits.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Failed engine steps since start (each is retried).
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub last_snapshot_duration_ms: Option<u64>,
    /// The last whole PASSIVE checkpoint cycle.
    #[serde(default)]
    pub last_checkpoint_duration_ms: Option<u64>,
    /// How long the application's writers were held in all since start, in
    /// microseconds (one short moment per checkpoint cycle, see
    /// docs/architecture.md).
    #[serde(default)]
    pub writers_held_us: u64,
    /// The replica failed past `outage_wal_hold` or `outage_wal_max_mb` and
    /// no longer holds the WAL (until it starts again).
    #[serde(default)]
    pub wal_released: bool,
}

#[derive(Debug, Clone, Copy)]
enum Pos {
    /// Next frame to read in a known WAL generation.
    Known(WalPosition),
    /// No WAL yet: the first header that appears starts at frame 0.
    Fresh,
}

#[derive(Debug)]
struct Lineage {
    id: u64,
    page_size: u32,
    pos: Pos,
    /// The pin was taken under the write lock with everything shipped and held
    /// since, so a WAL restart seen now cannot have dropped an unshipped frame.
    reset_safe: bool,
    hashes: PageHashes,
    /// Commits ending at or before this frame were caught up after a restart
    /// whose start state could not be rebuilt: `hashes` already describes the
    /// state at this frame, and their own checksums are unknown.
    unknown_until: Option<u32>,
    last_time_ms: i64,
    /// When each commit read but not shipped yet was observed: (end frame, ms),
    /// in frame order (the WAL is read forwards).
    observed: Vec<(u32, i64)>,
    /// Frame position at the last checkpoint (same generation as `pos`).
    checkpoint_frame: u32,
    last_snapshot_ms: i64,
}

impl Lineage {
    /// When the commit ending at `end_frame` was first observed (now, if it was
    /// not seen before). Times never decrease.
    fn observed_time(&mut self, end_frame: u32) -> i64 {
        // A binary search: under load thousands of commits wait here while a
        // segment is written, and every look at the WAL asks for each of them.
        if let Ok(i) = self
            .observed
            .binary_search_by_key(&end_frame, |&(end, _)| end)
        {
            return self.observed[i].1;
        }
        let floor = self.observed.last().map_or(self.last_time_ms, |&(_, t)| t);
        let t = now_ms().max(floor).max(self.last_time_ms);
        self.observed.push((end_frame, t));
        t
    }
}

struct Engine {
    db_path: PathBuf,
    store: Arc<dyn ObjectStore>,
    /// The store's form for this thread ([`ObjectStore::for_own_thread`]),
    /// see [`Engine::shipping_store`].
    own_store: Arc<dyn ObjectStore>,
    opts: CaptureOptions,
    rt: Handle,
    src: Option<Source>,
    lin: Option<Lineage>,
    next_txid: u64,
    last_commit_seen: Instant,
    status: EngineStatus,
    unshipped_since: Option<Instant>,
    lease: Option<crate::lease::Lease>,
    compactor: Option<Compactor>,
    /// The newest commit time the replica holds: a new lineage's snapshot is
    /// never dated before it, even after the clock moved backwards.
    time_floor_ms: i64,
    /// When the last commits were stored, and how long storing them took.
    last_ship: Option<(Instant, Duration, usize)>,
    /// A look at the WAL was put off (see [`Engine::held_back_until`]).
    deferred: bool,
    /// When the WAL was last looked at for new commits.
    last_look: Option<Instant>,
    /// The earliest moment a commit the current look finds can have been
    /// made (see [`unseen_since`]).
    look_floor: Option<Instant>,
    /// File events wake the engine through this (none in `once`).
    gate: Option<Arc<super::wake::WakeGate>>,
    slot: Slot,
    /// Every commit seen by this WAL read (or an earlier one) is durable.
    durable_read: u64,
    /// A new lineage's snapshot that could not be stored yet.
    pub(super) pending_lineage: Option<start::PendingLineage>,
    /// While the application's writers are held for a checkpoint: when a
    /// store request must have answered (see [`LOCKED_STORE_BUDGET`]).
    writers_held_until: Option<Instant>,
    /// A store request ran out of that time.
    locked_budget_spent: bool,
    /// Frames set aside at the end of a checkpoint cycle, not shipped yet.
    tail: Option<checkpoint::Tail>,
    /// When the last whole checkpoint cycle started.
    last_cycle: Option<Instant>,
    /// Segments with txids up to this one may still land in the replica after
    /// it was listed: one of this process's segment uploads failed after it
    /// may have been sent, or (`u64::MAX`, txids unknown) the process before
    /// stopped without settling its uploads. Meanwhile the database file
    /// alone proves no continuity (see `Engine::try_resume`). Cleared once
    /// what may land repeats what was shipped since: a later upload reached
    /// past it, or a resume shipped the whole WAL the uploads were read from;
    /// or once a new lineage starts (late objects of older ones yield to it).
    uploads_may_land: Option<u64>,
    /// The highest txid its segment uploads carried, for the next process.
    sent: SentRecord,
    /// Commits found past the shipped position by earlier looks.
    scanned: Option<scan::Scanned>,
}

/// Under load the pause after storing grows with the commits the last store
/// carried, up to this many times its duration: storing then takes a small
/// share of the disk an application committing with `synchronous=FULL`
/// fsyncs on (docs/benchmarks.md), while a lone commit still ships at once.
const MAX_PACE_FACTOR: usize = 30;

/// With `upload_interval` above zero, the longest pause between two looks at
/// the WAL while shipping is not due: a twentieth of the interval, at most
/// this. Each commit is timed at the look that finds it, so its recorded time
/// is at most this late; without the pause every commit was a wake-up, a WAL
/// open and a scan (docs/benchmarks.md, CPU at a low commit rate).
const MAX_OBSERVE_INTERVAL: Duration = Duration::from_millis(50);

/// How long a checkpoint cycle waits for the store while it holds the
/// application's writers (to ship the last moment's commits). A slower store
/// postpones the checkpoint instead: the application's own busy timeout (often
/// 5 s) must never run out because a store is slow.
const LOCKED_STORE_BUDGET: Duration = Duration::from_millis(750);

/// Most WAL restarts (salt-1 increments) accepted between two looks at the
/// WAL; more means another process replaced it.
const MAX_UNSEEN_RESTARTS: u32 = 64;

/// The pause between looks at the WAL with this upload interval: a
/// twentieth of it, at most [`MAX_OBSERVE_INTERVAL`] (zero with none).
fn observe_pause(upload_interval: Duration) -> Duration {
    (upload_interval / 20).min(MAX_OBSERVE_INTERVAL)
}

/// The earliest next look at the WAL after one at `last` with this upload
/// interval, `unshipped_since` the oldest commit waiting; `None` with no
/// interval (every write is looked at when it happens).
fn next_look(
    last: Instant,
    upload_interval: Duration,
    unshipped_since: Option<Instant>,
) -> Option<Instant> {
    if upload_interval.is_zero() {
        return None;
    }
    let next = last + observe_pause(upload_interval);
    Some(match unshipped_since {
        Some(since) => next.min(since + upload_interval),
        None => next,
    })
}

/// The earliest moment a commit first found by a look at `now` can have been
/// made, the previous look having been at `prev`: a commit the previous look
/// did not find came after it. A look put off by the pause between looks
/// finds commits up to that pause old, so the upload interval is counted from
/// then and batching does not add the pause to the lag.
fn unseen_since(prev: Option<Instant>, now: Instant, upload_interval: Duration) -> Instant {
    match (prev, now.checked_sub(observe_pause(upload_interval))) {
        (Some(p), Some(floor)) => p.clamp(floor, now),
        _ => now,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The engine's ends of its channels to the `Replication`.
pub(crate) struct Links {
    pub rx: Receiver<Command>,
    /// The outcome of start-up.
    pub ready: oneshot::Sender<Result<(), CaptureError>>,
    /// How far the engine has come.
    pub progress: watch::Sender<Progress>,
    /// Taken before each look at the WAL, so file events from then on wake it again.
    pub gate: Arc<super::wake::WakeGate>,
}

pub(crate) fn run(
    db_path: PathBuf,
    store: Arc<dyn ObjectStore>,
    opts: CaptureOptions,
    poll: Duration,
    rt: Handle,
    links: Links,
    slot: Slot,
) -> Result<(), CaptureError> {
    let Links {
        rx,
        ready,
        progress,
        gate,
    } = links;
    let _close = super::wake::CloseOnDrop(Arc::clone(&gate));
    let mut eng = Engine::new(db_path, store, opts, rt, slot);
    eng.gate = Some(gate);
    // Waiters (`Replication::wait_for_txid`, `wait_for_ticket`) see each txid
    // once it is durable.
    let publish = |eng: &Engine, failures: u32| {
        let now = Progress {
            shipped_txid: eng.status.last_shipped_txid,
            durable_read: eng.durable_read,
            failing: failures > 0,
        };
        progress.send_if_modified(|v| std::mem::replace(v, now) != now);
    };
    let mut failures = 0u32;
    // Since when every step failed (the outage, for `outage_wal_hold`).
    let mut failing_since = None;
    match eng.start_retrying() {
        Ok(()) => {}
        // An outage of the store is not a reason to stop: hold the WAL so what is
        // committed meanwhile stays there, and start as soon as the store answers.
        Err(e) if e.is_transient() => {
            eng.record_error(&e);
            eng.hold_wal();
            failures = 1;
            failing_since = Some(Instant::now());
        }
        Err(e) => {
            eng.release_lease();
            let _ = ready.send(Err(e));
            return Ok(());
        }
    }
    publish(&eng, failures);
    let _ = ready.send(Ok(()));
    loop {
        let wait = if failures > 0 {
            retry_delay(failures)
        } else {
            eng.next_wait(poll)
        };
        let mut cmds = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(c) => cmds.push(c),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => cmds.push(Command::Shutdown),
        }
        cmds.extend(rx.try_iter());
        let mut shutdown = false;
        let mut snapshots = Vec::new();
        let mut flushes = Vec::new();
        for c in cmds {
            match c {
                Command::Wake => {}
                Command::Shutdown => shutdown = true,
                Command::Snapshot(reply) => snapshots.push(reply),
                Command::Flush(reply) => flushes.push(reply),
                Command::Status(reply) => {
                    let _ = reply.send(eng.current_status());
                }
            }
        }
        if shutdown {
            let r = eng.final_sync();
            publish(&eng, u32::from(r.is_err()));
            eng.drop_tail();
            eng.stop_compactor();
            eng.release_lease();
            return r;
        }
        match eng.step() {
            Ok(()) => {
                failures = 0;
                failing_since = None;
            }
            Err(e) if e.is_fatal() => {
                eng.record_error(&e);
                publish(&eng, 1);
                return Err(e);
            }
            Err(e) => {
                failures += 1;
                eng.record_error(&e);
                let since = *failing_since.get_or_insert_with(Instant::now);
                eng.maybe_release_wal(since);
            }
        }
        for reply in snapshots {
            let r = eng.snapshot_now("requested");
            if let Err(e) = &r {
                eng.record_error(e);
            }
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
        for reply in flushes {
            // Ships at once, whatever the upload interval.
            let r = eng.sync().map(|()| eng.status.last_shipped_txid);
            if let Err(e) = &r {
                eng.record_error(e);
            }
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
        publish(&eng, failures);
    }
}

pub(crate) fn once(
    db_path: PathBuf,
    store: Arc<dyn ObjectStore>,
    opts: CaptureOptions,
    rt: Handle,
    force_snapshot: bool,
    slot: Slot,
) -> Result<Option<String>, CaptureError> {
    let mut eng = Engine::new(db_path, store, opts, rt, slot);
    let r = eng.one_pass(force_snapshot);
    eng.drop_tail();
    eng.stop_compactor();
    eng.release_lease();
    r
}

/// Backoff after `failures` failed steps in a row: doubling from 200 ms up to
/// 10 s (a returning store is noticed within seconds), with jitter so that many
/// replicas do not retry in lockstep.
fn retry_delay(failures: u32) -> Duration {
    let base = Duration::from_millis(100 << failures.min(7)).min(Duration::from_secs(10));
    base.mul_f64(rand::random_range(0.75..1.25))
}

impl Engine {
    fn new(
        db_path: PathBuf,
        store: Arc<dyn ObjectStore>,
        opts: CaptureOptions,
        rt: Handle,
        slot: Slot,
    ) -> Engine {
        let compactor = (opts.compact_segments >= 2).then(|| {
            Compactor::start(CompactorContext {
                store: Arc::clone(&store),
                rt: rt.clone(),
                state_dir: slot.work_dir.clone(),
                key: opts.encryption.clone(),
                segments: opts.compact_segments,
            })
        });
        Engine {
            db_path,
            own_store: store.for_own_thread().unwrap_or_else(|| Arc::clone(&store)),
            store,
            opts,
            rt,
            src: None,
            lin: None,
            next_txid: 1,
            last_commit_seen: Instant::now(),
            status: EngineStatus::default(),
            unshipped_since: None,
            lease: None,
            compactor,
            time_floor_ms: 0,
            last_ship: None,
            deferred: false,
            last_look: None,
            look_floor: None,
            gate: None,
            durable_read: 0,
            pending_lineage: None,
            writers_held_until: None,
            locked_budget_spent: false,
            tail: None,
            last_cycle: None,
            uploads_may_land: None,
            sent: SentRecord::open(&slot.work_dir),
            scanned: None,
            slot,
        }
    }

    /// Waits for a merge in progress, so nothing is written after the lease
    /// is released.
    fn stop_compactor(&mut self) {
        if let Some(c) = self.compactor.as_mut() {
            c.shutdown();
        }
    }

    fn one_pass(&mut self, force_snapshot: bool) -> Result<Option<String>, CaptureError> {
        let before = self.status.last_snapshot_key.clone();
        self.start_retrying()?;
        self.sync()?;
        self.checkpoint_cycle()?;
        if force_snapshot {
            return self.snapshot_now("requested").map(Some);
        }
        self.maybe_snapshot()?;
        Ok(self
            .status
            .last_snapshot_key
            .clone()
            .filter(|k| Some(k) != before.as_ref()))
    }

    /// While the replica cannot be reached at start, pin the WAL so that the
    /// transactions committed meanwhile stay in it until they are shipped.
    fn hold_wal(&mut self) {
        let held = match self.src.as_mut() {
            Some(src) => src.pin(),
            None => Source::open(&self.db_path, self.opts.busy_timeout, &self.slot.files).and_then(
                |mut src| {
                    src.pin()?;
                    self.src = Some(src);
                    Ok(())
                },
            ),
        };
        if let Err(e) = held {
            tracing::warn!(db = %self.db_path.display(), error = %e, "could not pin the WAL while waiting for the replica");
        }
        // What was committed before is unknown until the replica answers: the
        // lag is counted from now.
        self.unshipped_since.get_or_insert_with(Instant::now);
    }

    /// During an outage longer than `outage_wal_hold`, or once the WAL is
    /// larger than `outage_wal_max_bytes`, stops holding the WAL: the pin
    /// and the lineage go, so checkpoints (the other replicas', the
    /// application's) may move past what this replica has not shipped. When
    /// the replica answers again, start-up resumes the lineage only if it can
    /// still prove continuity, else it takes a snapshot: nothing is guessed.
    fn maybe_release_wal(&mut self, failing_since: Instant) {
        let holding = self.lin.is_some() || self.src.as_ref().is_some_and(|s| s.is_pinned());
        if !holding {
            return;
        }
        let too_long = self
            .opts
            .outage_wal_hold
            .is_some_and(|limit| failing_since.elapsed() >= limit);
        let wal_bytes =
            std::fs::metadata(crate::capture::wal_path(&self.db_path)).map_or(0, |m| m.len());
        let too_big = self
            .opts
            .outage_wal_max_bytes
            .is_some_and(|limit| wal_bytes >= limit);
        if !(too_long || too_big) {
            return;
        }
        tracing::warn!(db = %self.db_path.display(), replica = %self.slot.name,
            failing_s = failing_since.elapsed().as_secs(), wal_bytes,
            "the replica has been failing too long: no longer holding the WAL for it; \
             it resumes when it answers if continuity can still be proven, else it starts \
             a new lineage with a snapshot");
        if let Some(l) = &self.lin {
            self.time_floor_ms = self.time_floor_ms.max(l.last_time_ms);
        }
        self.lin = None;
        self.drop_source();
        self.drop_tail();
        self.status.wal_released = true;
    }

    fn record_error(&mut self, e: &CaptureError) {
        tracing::error!(db = %self.db_path.display(), replica = %self.slot.name, error = %e, "replication error; retrying");
        self.status.last_error = Some(e.to_string());
        self.status.errors += 1;
    }

    fn src(&mut self) -> Result<&mut Source, CaptureError> {
        self.src
            .as_mut()
            .ok_or_else(|| CaptureError::Stopped("source not open".into()))
    }

    fn lin(&mut self) -> Result<&mut Lineage, CaptureError> {
        self.lin
            .as_mut()
            .ok_or_else(|| CaptureError::Stopped("no active lineage".into()))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The store a shipping request goes to. While writers are held, the
    /// shared one: its requests run elsewhere (a local directory's on the
    /// blocking pool), so [`Engine::store_call`] can abandon one at the end of
    /// [`LOCKED_STORE_BUDGET`]. Otherwise the form working in this thread,
    /// which spares a thread hand-off per segment.
    fn shipping_store(&self) -> Arc<dyn ObjectStore> {
        let held = self.writers_held_until.is_some();
        Arc::clone(shipping_store(held, &self.store, &self.own_store))
    }

    /// A store request of the shipping path; while writers are held it gets
    /// what is left of [`LOCKED_STORE_BUDGET`] (the request is abandoned after
    /// that; should it still land, it is the same object shipped again).
    fn store_call<T>(
        &mut self,
        op: &'static str,
        key: &str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(deadline) = self.writers_held_until else {
            return self.block_on(f);
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        // Built inside the runtime: a timer needs its context.
        match self.block_on(async move { tokio::time::timeout_at(deadline, f).await }) {
            Ok(r) => r,
            Err(_) => {
                self.locked_budget_spent = true;
                Err(StoreError::Remote(Box::new(crate::store::RemoteError {
                    store: self.store.describe(),
                    op,
                    key: key.to_string(),
                    code: "Timeout".into(),
                    message: format!(
                        "no answer within {LOCKED_STORE_BUDGET:?} while the application's writers \
                         were held; the checkpoint is postponed"
                    ),
                    transient: true,
                })))
            }
        }
    }

    /// Time until the engine should look again without an event.
    fn next_wait(&self, poll: Duration) -> Duration {
        if let Some(until) = self.held_back_until().filter(|_| self.deferred) {
            let left = until.saturating_duration_since(Instant::now());
            return poll.min(left.max(Duration::from_millis(1)));
        }
        if let Some(since) = self.unshipped_since {
            let left = self.upload_interval().saturating_sub(since.elapsed());
            return poll.min(left.max(Duration::from_millis(1)));
        }
        let pending_idle = self.lin.as_ref().is_some_and(|l| match l.pos {
            Pos::Known(p) => p.frame > l.checkpoint_frame,
            Pos::Fresh => false,
        });
        if pending_idle {
            let left = self
                .opts
                .idle_checkpoint
                .saturating_sub(self.last_commit_seen.elapsed());
            poll.min(left.max(Duration::from_millis(10)))
        } else {
            poll
        }
    }

    fn step(&mut self) -> Result<(), CaptureError> {
        self.ensure_lease()?;
        if self.lin.is_none() {
            self.start()?;
            self.status.wal_released = false;
        }
        let paced = self.paced_until().is_some_and(|t| Instant::now() < t);
        if self.checkpoint_due() && !paced {
            // The cycle's roll is this moment's ship.
            self.checkpoint_step()?;
        } else {
            self.sync_batched()?;
            if !self.deferred {
                self.maybe_checkpoint()?;
            }
        }
        self.maybe_snapshot()
    }

    fn final_sync(&mut self) -> Result<(), CaptureError> {
        let mut last = None;
        for attempt in 0..5u32 {
            let r = if self.lin.is_none() {
                self.start()
            } else {
                self.sync()
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.record_error(&e);
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
            }
        }
        Err(last.unwrap_or_else(|| CaptureError::Stopped("final sync failed".into())))
    }

    /// Ships every commit that appeared since the last call.
    fn sync(&mut self) -> Result<(), CaptureError> {
        self.sync_inner(true)
    }

    /// Like [`Engine::sync`], but while the oldest unshipped commit is younger
    /// than `upload_interval` it only notes when each commit was observed, so
    /// one PUT carries many commits, each with its own txid and time.
    fn sync_batched(&mut self) -> Result<(), CaptureError> {
        self.sync_inner(false)
    }

    /// Group commit under load: after storing segments the engine waits as
    /// long as that took, times the commits it carried (at most
    /// [`MAX_PACE_FACTOR`] times, and at most `pace_limit`) before it stores
    /// more, so that commits arriving meanwhile share the next segment and its
    /// fsyncs. A commit after a quiet spell longer than that ships at once.
    fn paced_until(&self) -> Option<Instant> {
        self.last_ship.map(|(end, took, commits)| {
            let factor = commits.clamp(1, MAX_PACE_FACTOR) as u32;
            end + (took * factor).min(self.pace_limit())
        })
    }

    /// Until when file events are left untaken: the group-commit pause
    /// ([`Engine::paced_until`]) and, while commits wait for
    /// `upload_interval`, the pause between looks ([`Engine::observe_until`]).
    fn held_back_until(&self) -> Option<Instant> {
        match (self.paced_until(), self.observe_until()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next look at the WAL with `upload_interval` above zero: at most
    /// [`MAX_OBSERVE_INTERVAL`] after the last one, and never after shipping
    /// is due.
    fn observe_until(&self) -> Option<Instant> {
        next_look(
            self.last_look?,
            self.upload_interval(),
            self.unshipped_since,
        )
    }

    /// One WAL read (numbered, see `Progress::durable_read`), shipping what
    /// it found unless batching or pacing holds it back.
    fn sync_inner(&mut self, force: bool) -> Result<(), CaptureError> {
        if !force && self.held_back_until().is_some_and(|t| Instant::now() < t) {
            // The wake-up stays untaken: the watcher waits instead of waking
            // the engine for every write until then.
            self.deferred = true;
            return Ok(());
        }
        self.deferred = false;
        let now = Instant::now();
        let prev = self.last_look.replace(now);
        self.look_floor = Some(unseen_since(prev, now, self.upload_interval()));
        // Before the WAL is read: any write after this sends a new wake-up.
        if let Some(g) = &self.gate {
            g.taken();
        }
        let read = self.slot.reads.fetch_add(1, Ordering::SeqCst) + 1;
        self.sync_read(force)?;
        if self.unshipped_since.is_none() {
            self.durable_read = self.durable_read.max(read);
        }
        Ok(())
    }

    fn sync_read(&mut self, force: bool) -> Result<(), CaptureError> {
        if self.src()?.replaced()? {
            return self.new_lineage("the database file was replaced");
        }
        self.ship_tail()?;
        let path = self.src()?.wal_path.clone();
        self.read_wal(&path, force)
    }

    /// Reads the WAL at `path` (or a copy of its frames) from the shipped
    /// position, shipping what it finds unless batching holds it back.
    fn read_wal(&mut self, path: &std::path::Path, force: bool) -> Result<(), CaptureError> {
        let wal = WalFile::open(path)?;
        let header = wal.header()?;
        let lin = self.lin()?;
        let (h, start, seed) = match (lin.pos, header) {
            (Pos::Known(p), None) if p.frame > 0 && !lin.reset_safe => {
                return self.new_lineage("the WAL was emptied before its frames were read");
            }
            (_, None) => return Ok(()),
            (Pos::Known(p), Some(h)) if h.salt1 == p.salt1 && h.salt2 == p.salt2 => {
                if p.frame > 0 && wal.stored_checksum(&h, p.frame - 1)? != Some(p.checksum) {
                    return self.new_lineage("WAL frames were overwritten before they were read");
                }
                (h, p.frame, p.checksum)
            }
            // With the pin taken after everything was shipped and held since, no
            // new WAL generation can have dropped a committed frame: frames
            // appended after the pin cannot be checkpointed past it, and a WAL
            // that is not fully checkpointed cannot restart. So a second restart
            // can only follow an empty generation, and that stays true after
            // this one (the pin is still held): `reset_safe` stays set.
            (Pos::Known(p), Some(h)) if lin.reset_safe && is_new_generation(&p, &h) => {
                lin.checkpoint_frame = 0;
                lin.observed.clear();
                lin.pos = Pos::Known(position(&h, 0, h.checksum));
                (h, 0, h.checksum)
            }
            (Pos::Fresh, Some(h)) => {
                lin.checkpoint_frame = 0;
                lin.observed.clear();
                lin.pos = Pos::Known(position(&h, 0, h.checksum));
                (h, 0, h.checksum)
            }
            (Pos::Known(p), Some(h)) => {
                tracing::debug!(
                    shipped = ?(p.salt1, p.salt2, p.checkpoint_seq, p.frame),
                    now = ?(h.salt1, h.salt2, h.checkpoint_seq),
                    reset_safe = lin.reset_safe,
                    "unexpected WAL header"
                );
                return self.new_lineage("the WAL was restarted or replaced by another process");
            }
        };
        if h.page_size != lin.page_size {
            return self.new_lineage("the page size changed");
        }
        let scanned = scan::scan_from(self.scanned.take(), &wal, path, &h, start, seed)?;
        let commits = scanned.commits();
        if commits.is_empty() {
            self.unshipped_since = None;
            return Ok(());
        }
        self.last_commit_seen = Instant::now();
        let floor = self.look_floor.unwrap_or_else(Instant::now);
        let waiting = *self.unshipped_since.get_or_insert(floor);
        let lin = self.lin()?;
        // Commits an earlier look found were timed then.
        let timed = lin.observed.last().map_or(0, |&(end, _)| {
            commits.partition_point(|c| c.end_frame <= end)
        });
        for c in &commits[timed..] {
            lin.observed_time(c.end_frame);
        }
        if !force && waiting.elapsed() < self.upload_interval() {
            self.scanned = Some(scanned);
            return Ok(());
        }
        let lin = self.lin()?;
        let times: Vec<i64> = commits
            .iter()
            .map(|c| lin.observed_time(c.end_frame))
            .collect();
        let started = Instant::now();
        self.ship(&wal, &h, commits, &times)?;
        self.last_ship = Some((Instant::now(), started.elapsed(), commits.len()));
        self.unshipped_since = None;
        Ok(())
    }

    fn pace_limit(&self) -> Duration {
        self.opts.pace_limit.unwrap_or(super::DEFAULT_PACE_LIMIT)
    }

    fn upload_interval(&self) -> Duration {
        self.opts.upload_interval.unwrap_or(Duration::ZERO)
    }

    fn ship(
        &mut self,
        wal: &WalFile,
        h: &WalHeader,
        commits: &[WalCommit],
        times: &[i64],
    ) -> Result<(), CaptureError> {
        for r in segment::split_batches(commits, h.page_size, self.opts.segment_pages) {
            let batch = segment::Batch {
                wal,
                header: h,
                commits: &commits[r.clone()],
                first_txid: self.next_txid,
                times: &times[r],
            };
            self.ship_segment(&batch)?;
        }
        Ok(())
    }

    fn ship_segment(&mut self, batch: &segment::Batch) -> Result<(), CaptureError> {
        let (wal, h) = (batch.wal, batch.header);
        let spool_dir = self.slot.work_dir.clone();
        let lin = self.lin()?;
        let (first_time, time) = (batch.times[0], batch.times[batch.times.len() - 1]);
        lin.hashes.begin();
        let last = &batch.commits[batch.commits.len() - 1];
        // The frames must still be the ones validated when read: a second guard
        // behind the pin against shipping pages of a restarted WAL.
        let built = segment::build_segment(lin, batch, &spool_dir).and_then(|b| {
            if wal.header()? == Some(*h)
                && wal.stored_checksum(h, last.end_frame - 1)? == Some(last.end_checksum)
            {
                Ok(b)
            } else {
                Err(CaptureError::Stopped(
                    "the WAL changed while frames were read; reading again".into(),
                ))
            }
        });
        let (header, body) = match built {
            Ok(b) => b,
            Err(e) => {
                lin.hashes.rollback();
                return Err(e);
            }
        };
        let key = segment_key(
            header.min_txid(),
            header.max_txid(),
            header.lineage,
            first_time,
            time,
        );
        let stored = self
            .sent
            .sending(header.max_txid())
            .and_then(|()| match &body {
                SegmentBody::Memory(plain) => self.put_create_only(&key, plain.clone()),
                SegmentBody::Spooled(spool) => self.put_spooled(&key, &header, spool),
            });
        if let Err(e) = stored {
            // A request that failed may still have been sent and land later.
            self.may_land_up_to(header.max_txid());
            self.lin()?.hashes.rollback();
            return Err(e);
        }
        self.note_for_compaction(&key, &header, &body);
        let lin = self.lin()?;
        lin.hashes.commit();
        lin.pos = Pos::Known(position(h, last.end_frame, last.end_checksum));
        if lin.unknown_until.is_some_and(|u| u <= last.end_frame) {
            lin.unknown_until = None;
        }
        lin.last_time_ms = time;
        lin.observed.retain(|&(end, _)| end > last.end_frame);
        if self.uploads_may_land <= Some(header.max_txid()) {
            self.uploads_may_land = None;
        }
        self.next_txid = header.max_txid() + 1;
        self.status.last_shipped_txid = header.max_txid();
        self.status.last_shipped_time_ms = Some(time);
        tracing::debug!(%key, commits = batch.commits.len(), bytes = body.len(), "segment shipped");
        Ok(())
    }

    /// Uploads with txids up to `txid` may still land (see `uploads_may_land`).
    fn may_land_up_to(&mut self, txid: u64) {
        self.uploads_may_land = Some(self.uploads_may_land.map_or(txid, |t| t.max(txid)));
    }

    /// Small segments go to the compactor's log; a large one is not worth
    /// merging (and is not copied once more into the log).
    fn note_for_compaction(&mut self, key: &str, header: &ObjectHeader, body: &SegmentBody) {
        let Some(c) = self.compactor.as_mut() else {
            return;
        };
        match body {
            SegmentBody::Memory(plain) if (plain.len() as u64) < segment::COMPACT_BELOW => {
                c.shipped(key, header, plain);
            }
            _ => c.skipped(),
        }
    }

    /// Write-once put; an identical object already there (a retried write that
    /// had succeeded) counts as success.
    fn put_create_only(&mut self, key: &str, plain: Bytes) -> Result<(), CaptureError> {
        self.ensure_lease()?;
        let body = self.seal_segment(key, &plain)?;
        let store = self.shipping_store();
        match self.store_call("put", key, store.put(key, body, PutMode::CreateOnly)) {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists { .. }) => {
                let existing = self.store_call("get", key, store.get(key))?;
                if self.holds_same(&existing, &plain) {
                    Ok(())
                } else {
                    Err(CaptureError::Conflict {
                        key: key.to_string(),
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Adds the time the writers were held since the last call to the status;
    /// the duration of that time.
    pub(super) fn account_held(&mut self) -> Duration {
        let held = self.src.as_mut().map_or(Duration::ZERO, Source::take_held);
        self.status.writers_held_us += held.as_micros() as u64;
        held
    }

    /// Closes the database connections, keeping the account of their holds.
    pub(super) fn drop_source(&mut self) {
        self.account_held();
        self.src = None;
    }

    fn current_status(&mut self) -> EngineStatus {
        self.account_held();
        let mut s = self.status.clone();
        s.lag_ms = self
            .unshipped_since
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        if let Some(src) = &self.src {
            s.wal_bytes = std::fs::metadata(&src.wal_path).map_or(0, |m| m.len());
            (s.pending_commits, s.pending_bytes) = self.pending_commits().unwrap_or((0, 0));
        }
        s
    }

    /// Commits (and their WAL bytes) not shipped yet, read from the files
    /// rather than from the engine's last look, which pacing may have put
    /// off: what the WAL holds past the shipped position, or all of a WAL
    /// started since then plus the frames set aside before it started.
    fn pending_commits(&self) -> Result<(u64, u64), CaptureError> {
        let (Some(src), Some(lin)) = (&self.src, &self.lin) else {
            return Ok((0, 0));
        };
        let wal = WalFile::open(&src.wal_path)?;
        let header = wal.header()?;
        let p = match (lin.pos, &header) {
            (Pos::Known(p), Some(h)) if h.salt1 == p.salt1 && h.salt2 == p.salt2 => {
                let commits = wal.scan_commits(h, p.frame, p.checksum)?;
                return Ok(count_commits(&commits, h.page_size));
            }
            (Pos::Known(p), _) => Some(p),
            (Pos::Fresh, _) => None,
        };
        let mut n = (0, 0);
        if let Some(h) = header {
            n = count_commits(&wal.scan_commits(&h, 0, h.checksum)?, h.page_size);
        }
        if let (Some(p), Some(t)) = (p, &self.tail) {
            let aside = WalFile::open(&t.path)?;
            if let Some(h) = aside.header()? {
                let commits = aside.scan_commits(&h, p.frame, p.checksum)?;
                let (c, b) = count_commits(&commits, h.page_size);
                n = (n.0 + c, n.1 + b);
            }
        }
        Ok(n)
    }
}

/// How many commits, and how many WAL bytes their frames take.
fn count_commits(commits: &[WalCommit], page_size: u32) -> (u64, u64) {
    let frames: usize = commits.iter().map(|c| c.frames.len()).sum();
    let bytes = frames as u64 * (24 + u64::from(page_size));
    (commits.len() as u64, bytes)
}

/// Whether `h` is a header SQLite writes when it starts the WAL over after
/// the generation of `p`. A restart adds one to salt-1 (kept in the shared
/// wal-index); so does every TRUNCATE checkpoint, even of an empty WAL, so two
/// in a row add two. But a connection that has not restarted the WAL itself
/// (its own checkpoint count is 0) draws both salts at random whenever it
/// writes the first frame, and writes checkpoint sequence 0: after another
/// connection's TRUNCATE, or again after a rolled-back transaction that had
/// spilled frames into the empty WAL. Other checkpoint sequences are not
/// compared: each connection counts its own.
fn is_new_generation(p: &WalPosition, h: &WalHeader) -> bool {
    h.checkpoint_seq == 0 || (1..=MAX_UNSEEN_RESTARTS).contains(&h.salt1.wrapping_sub(p.salt1))
}

/// See [`Engine::shipping_store`].
fn shipping_store<'a>(
    writers_held: bool,
    shared: &'a Arc<dyn ObjectStore>,
    own_thread: &'a Arc<dyn ObjectStore>,
) -> &'a Arc<dyn ObjectStore> {
    if writers_held {
        shared
    } else {
        own_thread
    }
}

fn position(h: &WalHeader, frame: u32, checksum: (u32, u32)) -> WalPosition {
    WalPosition {
        salt1: h.salt1,
        salt2: h.salt2,
        checkpoint_seq: h.checkpoint_seq,
        frame,
        checksum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_with_writers_held_go_to_the_store_that_can_be_abandoned() {
        let shared: Arc<dyn ObjectStore> = Arc::new(crate::store::LocalStore::new("/replica"));
        let own = shared
            .for_own_thread()
            .expect("a local store's own-thread form");
        assert!(Arc::ptr_eq(shipping_store(true, &shared, &own), &shared));
        assert!(Arc::ptr_eq(shipping_store(false, &shared, &own), &own));
    }

    #[test]
    fn looks_are_paused_only_with_an_upload_interval() {
        let t = Instant::now();
        assert_eq!(next_look(t, Duration::ZERO, Some(t)), None);
        let ms = Duration::from_millis;
        // A twentieth of the interval, at most MAX_OBSERVE_INTERVAL.
        assert_eq!(next_look(t, ms(100), None), Some(t + ms(5)));
        assert_eq!(next_look(t, ms(1000), None), Some(t + ms(50)));
        assert_eq!(
            next_look(t, ms(60_000), None),
            Some(t + MAX_OBSERVE_INTERVAL)
        );
        // Never past the moment the oldest waiting commit is due to ship.
        let waiting = t - ms(990);
        assert_eq!(next_look(t, ms(1000), Some(waiting)), Some(t + ms(10)));
        assert_eq!(next_look(t, ms(1000), Some(t)), Some(t + ms(50)));
    }

    #[test]
    fn batching_counts_from_the_look_before() {
        let ms = Duration::from_millis;
        let now = Instant::now() + ms(10_000);
        // No interval, or no earlier look: the look itself.
        assert_eq!(unseen_since(Some(now - ms(3)), now, Duration::ZERO), now);
        assert_eq!(unseen_since(None, now, ms(1000)), now);
        // A look put off by the pause: from the look before it.
        assert_eq!(
            unseen_since(Some(now - ms(30)), now, ms(1000)),
            now - ms(30)
        );
        // After a quiet spell the write woke the engine at once: at most
        // one pause earlier.
        assert_eq!(
            unseen_since(Some(now - ms(9_000)), now, ms(1000)),
            now - ms(50)
        );
        assert_eq!(
            unseen_since(Some(now - ms(9_000)), now, ms(100)),
            now - ms(5)
        );
    }
}
