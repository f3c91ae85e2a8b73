//! The checkpoint cycle: keeps the WAL bounded by checkpointing what was
//! shipped, and lets the application restart the WAL, while its writers wait
//! only for one short moment.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Engine, Pos};
use crate::capture::source::Source;
use crate::error::CaptureError;
use crate::wal::WalFile;

/// The file (in the replica's work directory) holding frames set aside at
/// the end of a cycle; the `segment-` prefix and `.tmp` suffix make a killed
/// process's copy a stale spool, removed at the next start.
const TAIL_FILE: &str = "segment-waltail.tmp";

/// Shortest time between two whole checkpoint cycles under a steady stream
/// of commits. Each holds the application's writers once, and a writer that
/// finds the lock taken sleeps at least 1 ms in SQLite's busy handler: at most
/// ten a second keep that near 1 % of its time.
const MIN_CYCLE_INTERVAL: Duration = Duration::from_millis(100);

/// Largest set of frames set aside; more are shipped with writers held.
const TAIL_MAX_BYTES: u64 = 16 << 20;

/// Frames of the WAL copied aside with writers held (at their own offsets,
/// see [`WalFile::copy_frames`]): once the writers go on, the application may
/// restart the WAL over them, so they are shipped from the copy before the
/// WAL is read again.
#[derive(Debug)]
pub(super) struct Tail {
    pub path: PathBuf,
    salts: (u32, u32),
    end_frame: u32,
}

/// What step 3 of the cycle did.
enum Held<T> {
    Done(T),
    /// The application held the write lock past the busy timeout.
    Busy,
    /// The frames to ship were not set aside: ship them with writers held.
    ShipLocked,
}

impl Engine {
    pub(super) fn maybe_checkpoint(&mut self) -> Result<(), CaptureError> {
        if self.checkpoint_due() {
            self.checkpoint_step()?;
        }
        Ok(())
    }

    /// A due checkpoint: the whole cycle, or only its first two steps (no
    /// writer waits) while the last whole cycle is younger than
    /// [`MIN_CYCLE_INTERVAL`] and commits keep coming. Under a fast writer the
    /// WAL then grows between restarts, but it stays checkpointed up to the
    /// pin, so the application's own auto-checkpoint finds nothing to copy.
    pub(super) fn checkpoint_step(&mut self) -> Result<(), CaptureError> {
        let recent = self
            .last_cycle
            .is_some_and(|t| t.elapsed() < MIN_CYCLE_INTERVAL);
        if !recent || self.idle() {
            return self.checkpoint_cycle();
        }
        if !self.roll_pin()? {
            return Ok(());
        }
        self.src()?.checkpoint_behind_pin()?;
        let lin = self.lin()?;
        if let Pos::Known(p) = lin.pos {
            lin.checkpoint_frame = p.frame;
        }
        Ok(())
    }

    /// `checkpoint_pages` frames were shipped since the last checkpoint, or
    /// some were and no commit came for `idle_checkpoint`.
    pub(super) fn checkpoint_due(&self) -> bool {
        let Some(lin) = &self.lin else {
            return false;
        };
        let Pos::Known(p) = lin.pos else {
            return false;
        };
        let since = p.frame.saturating_sub(lin.checkpoint_frame);
        since >= self.opts.checkpoint_pages || (self.idle() && since > 0)
    }

    /// No commit came for `idle_checkpoint`.
    fn idle(&self) -> bool {
        self.last_commit_seen.elapsed() >= self.opts.idle_checkpoint
    }

    /// Checkpoints what was shipped and keeps the WAL bounded, holding writers
    /// off only for one moment:
    /// 1. writers running: move the pin to the WAL's end ([`Engine::roll_pin`]);
    /// 2. writers running: PASSIVE checkpoint up to the pin (the bulk of the
    ///    copying and its fsyncs);
    /// 3. writers held: set aside the frames committed meanwhile, drop the
    ///    pin, PASSIVE checkpoint the rest, pin again;
    /// 4. writers running: ship what was set aside.
    ///
    /// After step 3 every frame in the WAL was shipped or set aside when the
    /// pin was taken, so a WAL restart from then on drops nothing unshipped.
    pub(super) fn checkpoint_cycle(&mut self) -> Result<(), CaptureError> {
        let started = Instant::now();
        self.last_cycle = Some(started);
        if !self.roll_pin()? {
            return Ok(());
        }
        self.src()?.checkpoint_behind_pin()?;
        let done = match self.checkpoint_held()? {
            Held::Done(r) => Some(r),
            Held::Busy => None,
            Held::ShipLocked => self.with_writers_held(checkpoint_all)?,
        };
        let Some((log, copied)) = done else {
            return Ok(());
        };
        let end = self.wal_end();
        self.lin()?.reset_safe = true;
        // Step 4; a failure leaves the frames set aside for the next look.
        self.sync()?;
        self.status.checkpoints += 1;
        self.status.last_checkpoint_duration_ms = Some(started.elapsed().as_millis() as u64);
        let lin = self.lin()?;
        if let (Pos::Known(p), Some((salts, frame))) = (lin.pos, end) {
            if (p.salt1, p.salt2) == salts {
                lin.checkpoint_frame = frame;
            }
        }
        let held_us = self.account_held().as_micros() as u64;
        tracing::debug!(log, copied, held_us, "checkpoint");
        Ok(())
    }

    /// Where the WAL ended at the checkpoint: the frames set aside, or else
    /// the shipped position.
    fn wal_end(&self) -> Option<((u32, u32), u32)> {
        if let Some(t) = &self.tail {
            return Some((t.salts, t.end_frame));
        }
        match self.lin.as_ref()?.pos {
            Pos::Known(p) => Some(((p.salt1, p.salt2), p.frame)),
            Pos::Fresh => None,
        }
    }

    /// Moves the pin to the WAL's end with writers running: a new read
    /// transaction starts at the end while the old pin is kept, every commit up
    /// to it is shipped, then the old pin ends. A WAL restart needs every frame
    /// checkpointed and no reader past read mark 0; the new pin either sits
    /// past mark 0 (no restart while it is held) or on mark 0, which stops all
    /// checkpointing, so a restart can then only follow a WAL that gained no
    /// frame since the pin was taken: all of them shipped. Without a pin to
    /// keep, the pin is taken with writers held instead. False when the
    /// lineage changed or writers could not be held.
    fn roll_pin(&mut self) -> Result<bool, CaptureError> {
        if !self.src()?.begin_roll()? {
            return Ok(self.with_writers_held(|src| src.pin())?.is_some());
        }
        let lineage = self.lin()?.id;
        let shipped = self.sync();
        let same = self.lin.as_ref().is_some_and(|l| l.id == lineage);
        if shipped.is_err() || !same {
            self.src()?.cancel_roll()?;
            return shipped.map(|()| false);
        }
        self.src()?.finish_roll()?;
        self.lin()?.reset_safe = true;
        Ok(true)
    }

    /// Step 3 of the cycle. Nothing is shipped while writers wait: a store
    /// request (a round trip to S3) would hold them for its whole length.
    fn checkpoint_held(&mut self) -> Result<Held<(i64, i64)>, CaptureError> {
        if !self.src()?.lock_writers()? {
            tracing::debug!("writers busy; checkpoint postponed");
            return Ok(Held::Busy);
        }
        let r = self.set_aside_tail().and_then(|set| {
            if !set {
                return Ok(Held::ShipLocked);
            }
            checkpoint_all(self.src()?).map(Held::Done)
        });
        if r.is_err() {
            // The pin may be gone: a restart seen later is not known safe.
            if let Some(l) = self.lin.as_mut() {
                l.reset_safe = false;
            }
        }
        self.src()?.unlock_writers()?;
        r
    }

    /// Copies the committed frames not shipped yet aside (see [`Tail`]).
    /// False, with nothing copied, outside the plain case: frames already set
    /// aside, a WAL of another generation than the one shipped from, or more
    /// than [`TAIL_MAX_BYTES`].
    fn set_aside_tail(&mut self) -> Result<bool, CaptureError> {
        let (Some(lin), None) = (&self.lin, &self.tail) else {
            return Ok(false);
        };
        let (Pos::Known(p), page_size) = (lin.pos, lin.page_size) else {
            return Ok(false);
        };
        let wal = WalFile::open(&self.src()?.wal_path)?;
        let Some(h) = wal.header()? else {
            return Ok(false);
        };
        let same = h.salt1 == p.salt1 && h.salt2 == p.salt2 && h.page_size == page_size;
        if !same || (p.frame > 0 && wal.stored_checksum(&h, p.frame - 1)? != Some(p.checksum)) {
            return Ok(false);
        }
        let Some(last) = wal.scan_commits(&h, p.frame, p.checksum)?.pop() else {
            return Ok(true);
        };
        // From the frame before: the copy proves it continues the position.
        let from = p.frame.saturating_sub(1);
        if u64::from(last.end_frame - from) * h.frame_size() > TAIL_MAX_BYTES {
            return Ok(false);
        }
        let path = self.tail_path();
        if let Err(e) = wal.copy_frames(&h, from, last.end_frame, &path) {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        self.tail = Some(Tail {
            path,
            salts: (h.salt1, h.salt2),
            end_frame: last.end_frame,
        });
        Ok(true)
    }

    /// Ships the frames set aside, first of all reads of the WAL. Should the
    /// position not reach their end after all, a WAL restart is no longer
    /// taken as safe (it would start a new lineage rather than skip them).
    pub(super) fn ship_tail(&mut self) -> Result<(), CaptureError> {
        let Some(path) = self.tail.as_ref().map(|t| t.path.clone()) else {
            return Ok(());
        };
        self.read_wal(&path, true)?;
        let Some(t) = self.tail.take() else {
            return Ok(());
        };
        // The file stays, to be written over by the next cycle's copy (see
        // `WalFile::copy_frames`): creating one inside every hold of the
        // writers cost more than the copy itself.
        if let Some(lin) = self.lin.as_mut() {
            let reached = matches!(lin.pos, Pos::Known(p)
                if (p.salt1, p.salt2) == t.salts && p.frame >= t.end_frame);
            if !reached {
                lin.reset_safe = false;
            }
        }
        Ok(())
    }

    /// Forgets frames set aside (their lineage ended, or the engine stops:
    /// a copy is no use to another process) and removes the copy's file.
    pub(super) fn drop_tail(&mut self) {
        self.tail = None;
        let _ = std::fs::remove_file(self.tail_path());
    }

    /// Where frames are set aside: one file per replica, written over by
    /// each cycle.
    fn tail_path(&self) -> PathBuf {
        self.slot.work_dir.join(TAIL_FILE)
    }

    /// Runs `f` after shipping every committed frame, with SQLite's write lock
    /// held so none can be added. `None` when the application held the lock past
    /// the busy timeout, or when shipping started a new lineage (which re-pinned
    /// under the lock itself).
    pub(super) fn with_writers_held<T>(
        &mut self,
        f: impl FnOnce(&mut Source) -> Result<T, CaptureError>,
    ) -> Result<Option<T>, CaptureError> {
        // Ship what is there first, with writers running: only the commits of
        // the next moments are shipped under the lock, and a store that fails
        // or is slow right now fails here, before any writer waits on it.
        self.sync()?;
        if !self.src()?.lock_writers()? {
            tracing::debug!("writers busy; checkpoint postponed");
            return Ok(None);
        }
        self.writers_held_until = Some(Instant::now() + super::LOCKED_STORE_BUDGET);
        let r = self.sync().and_then(|()| {
            let src = self.src()?;
            if !src.is_locked() {
                return Ok(None);
            }
            f(src).map(Some)
        });
        self.writers_held_until = None;
        self.src()?.unlock_writers()?;
        if std::mem::take(&mut self.locked_budget_spent) {
            tracing::debug!(
                "the store answered too slowly while writers were held; checkpoint postponed"
            );
            return Ok(None);
        }
        r
    }
}

/// With writers held: drops the pin, checkpoints everything, pins again (on
/// read mark 0 when everything was copied, so the application's next write
/// may restart the WAL).
fn checkpoint_all(src: &mut Source) -> Result<(i64, i64), CaptureError> {
    src.unpin()?;
    let r = src.checkpoint_passive();
    src.pin()?;
    r
}
