//! Start-up: resume the replica's lineage when its continuity can be proven,
//! otherwise start a new one with a snapshot.

use std::time::Duration;

use super::snapshot::BuiltSnapshot;
use super::*;

impl Engine {
    /// [`Engine::start`], retried a few times when it failed for a passing
    /// reason (the application held the write lock, or restarted or truncated
    /// the WAL while a snapshot was read: a PASSIVE checkpoint of its own can
    /// finish the backfill between the engine's checkpoint and its new pin,
    /// which then sits on read lock 0 and does not stop a TRUNCATE).
    pub(super) fn start_retrying(&mut self) -> Result<(), CaptureError> {
        let mut attempt = 0u32;
        loop {
            match self.start() {
                Err(e @ (CaptureError::Stopped(_) | CaptureError::WalShrank { .. }))
                    if attempt < 5 =>
                {
                    tracing::info!(why = %e, "start-up interrupted; retrying");
                    std::thread::sleep(Duration::from_millis(50 << attempt));
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Opens the source and resumes the replica's lineage when its continuity can
    /// be proven, otherwise starts a new lineage with a snapshot.
    ///
    /// Writers are held off from the moment the pin is taken until the
    /// transactions committed while walstream was down are shipped: on a WAL the
    /// application checkpointed completely meanwhile, the pin sits on read lock 0,
    /// which does not stop the next writer from restarting the WAL over them.
    pub(super) fn start(&mut self) -> Result<(), CaptureError> {
        self.lin = None;
        self.drop_tail();
        // A source kept open (and pinned) while the replica was unreachable is
        // reused, so the WAL it held stays held.
        let reusable = self
            .src
            .as_ref()
            .is_some_and(|s| !s.is_locked() && matches!(s.replaced(), Ok(false)));
        if !reusable {
            self.drop_source();
            self.src = Some(Source::open(
                &self.db_path,
                self.opts.busy_timeout,
                &self.slot.files,
            )?);
        }
        // After the database checks, so a wrong path or mode is reported as such.
        self.ensure_lease()?;
        // The replica first: listing and reading a header may take a while.
        let catalog = self.block_on(Catalog::load(&self.store))?;
        self.next_txid = catalog.max_txid() + 1;
        self.time_floor_ms = catalog
            .snapshots
            .iter()
            .chain(&catalog.segments)
            .chain(catalog.superseded.iter().map(|s| &s.object))
            .map(|o| o.max_time_ms)
            .fold(self.time_floor_ms, i64::max);
        self.status.last_shipped_txid = catalog.max_txid();
        if let Some(mut p) = self.pending_lineage.take() {
            if reusable {
                if let Some(pos) = self.pending_start(&p)? {
                    tracing::info!(db = %self.db_path.display(), replica = %self.slot.name, txid = p.txid,
                        "storing the snapshot taken before the store failed; what was committed since ships one transaction at a time");
                    p.pos = pos;
                    return self.store_new_lineage(p, false);
                }
            }
        }
        let last_snapshot = catalog.snapshots.last().cloned();
        if let Some(s) = &last_snapshot {
            self.status.last_snapshot_key = Some(s.key.clone());
            self.status.last_snapshot_time_ms = Some(s.max_time_ms);
        }
        let newest = match catalog.newest() {
            Some(o) => Some(
                self.block_on(fetch_header(&self.store, o))
                    .map_err(|e| e.into_capture())?,
            ),
            None => None,
        };
        self.check_encryption_continuity(newest.as_ref())?;
        let src = self.src()?;
        if !src.lock_writers()? {
            return Err(CaptureError::Stopped(
                "the application held the write lock longer than the busy timeout".into(),
            ));
        }
        let snapshot_ms = last_snapshot.map_or(0, |s| s.max_time_ms);
        let r = src
            .pin()
            .and_then(|()| self.resume_locked(newest.as_ref(), snapshot_ms));
        self.src()?.unlock_writers()?;
        let reason = match r? {
            Ok(()) => {
                // Also when the snapshot kept from a failed attempt had landed
                // after all: it was the newest object and is resumed from.
                self.pending_lineage = None;
                return Ok(());
            }
            Err(reason) => reason,
        };
        self.new_lineage(&reason)
    }

    /// With writers held: resume from `newest` and ship what is pending, then
    /// pin again. `Ok(Err(reason))` when continuity cannot be proven.
    fn resume_locked(
        &mut self,
        newest: Option<&ObjectHeader>,
        last_snapshot_ms: i64,
    ) -> Result<Result<(), String>, CaptureError> {
        let Some(h) = newest else {
            return Ok(Err("the replica is empty".into()));
        };
        let mut lin = match self.try_resume(h)? {
            Ok(lin) => lin,
            Err(reason) => return Ok(Err(reason)),
        };
        tracing::info!(db = %self.db_path.display(), lineage = %format!("{:016x}", lin.id),
            txid = self.next_txid - 1, "resuming the replica's lineage");
        self.status.lineage = Some(format!("{:016x}", lin.id));
        lin.last_snapshot_ms = last_snapshot_ms;
        self.lin = Some(lin);
        self.sync()?;
        // With uploads that may land the resume came through the WAL they
        // were read from, now shipped to its end: they can only repeat it.
        self.uploads_may_land = None;
        let src = self.src()?;
        if src.is_locked() {
            // Everything in the WAL is shipped and no writer can add to it: a
            // restart from here on cannot drop anything unshipped.
            src.pin()?;
            self.lin()?.reset_safe = true;
        }
        Ok(Ok(()))
    }

    /// `Ok(Err(reason))` when continuity cannot be proven.
    pub(super) fn try_resume(
        &mut self,
        h: &ObjectHeader,
    ) -> Result<Result<Lineage, String>, CaptureError> {
        let Some(last) = h.last_commit().copied() else {
            return Ok(Err("the newest replica object records no commit".into()));
        };
        // No recorded WAL position (the WAL was empty or absent then): only the
        // database file alone can prove continuity, as after a WAL reset.
        let p = h.wal.unwrap_or(crate::format::WalPosition {
            salt1: 0,
            salt2: 0,
            checkpoint_seq: 0,
            frame: 0,
            checksum: (0, 0),
        });
        let no_position = h.wal.is_none();
        let src = self.src()?;
        let page_size = src.page_size()?;
        if page_size != h.page_size {
            return Ok(Err(format!(
                "page size changed from {} to {page_size}",
                h.page_size
            )));
        }
        let (db_path, db_file) = (src.db_path.clone(), src.db_file());
        let wal = WalFile::open(&src.wal_path)?;
        let header = wal.header()?;
        let same_generation = match header {
            Some(_) if no_position => false,
            Some(w) if w.salt1 == p.salt1 && w.salt2 == p.salt2 => {
                p.frame == 0 || wal.stored_checksum(&w, p.frame - 1)? == Some(p.checksum)
            }
            _ => false,
        };
        let mut lin = Lineage {
            id: h.lineage,
            page_size,
            pos: Pos::Known(p),
            reset_safe: false,
            hashes: PageHashes::new(page_size),
            unknown_until: None,
            last_time_ms: last.time_ms,
            checkpoint_frame: 0,
            observed: Vec::new(),
            last_snapshot_ms: 0,
        };
        if let (true, Some(w)) = (same_generation, header) {
            let all = wal.scan_commits(&w, 0, w.checksum)?;
            let prefix: Vec<WalCommit> = all
                .iter()
                .take_while(|c| c.end_frame <= p.frame)
                .cloned()
                .collect();
            let at_boundary = prefix.last().map_or(p.frame == 0, |c| {
                c.end_frame == p.frame && c.end_checksum == p.checksum
            });
            if !at_boundary {
                return Ok(Err(
                    "the shipped WAL position is not a commit in the current WAL".into(),
                ));
            }
            let hashes =
                StateReader::new(&db_path, db_file.clone(), &wal, header, &prefix, page_size)?
                    .scan(|_, _| Ok(()))?;
            if Some(hashes.checksum()) == last.checksum {
                lin.hashes = hashes;
                return Ok(Ok(lin));
            }
            let end = all.last().map_or(p.frame, |c| c.end_frame);
            if end == p.frame {
                return Ok(Err(
                    "the database no longer matches the last shipped state".into()
                ));
            }
            // The WAL chain is intact but the database file was checkpointed past the
            // shipped position: the state at the WAL's end is still exact.
            lin.hashes =
                StateReader::new(&db_path, db_file.clone(), &wal, header, &all, page_size)?
                    .scan(|_, _| Ok(()))?;
            lin.unknown_until = Some(end);
            return Ok(Ok(lin));
        }
        // The WAL was restarted or removed while walstream was not running. That is
        // harmless only if the database file alone still holds the shipped state.
        let reader = StateReader::new(&db_path, db_file, &wal, None, &[], page_size)?;
        if reader.db_pages != last.db_pages {
            return Ok(Err(
                "the WAL was reset while walstream was not running".into()
            ));
        }
        let hashes = reader.scan(|_, _| Ok(()))?;
        if Some(hashes.checksum()) != last.checksum {
            return Ok(Err(
                "the WAL was reset while walstream was not running and the database changed".into(),
            ));
        }
        // Equal contents prove nothing when later segments of this lineage may
        // still land: a database put back to this state (a restore in place)
        // would number its next transactions like them, with other pages.
        if self.uploads_may_land.is_some_and(|t| t >= self.next_txid) {
            return Ok(Err(
                "the WAL was reset while walstream was not running, and uploads of the lineage may \
                 still land (the process before stopped without releasing the replica, or an upload \
                 failed), so the database file alone does not prove continuity"
                    .into(),
            ));
        }
        lin.hashes = hashes;
        lin.pos = match header {
            Some(w) => Pos::Known(position(&w, 0, w.checksum)),
            None => Pos::Fresh,
        };
        Ok(Ok(lin))
    }

    /// Starts a new lineage: a full snapshot at the next txid.
    pub(super) fn new_lineage(&mut self, reason: &str) -> Result<(), CaptureError> {
        tracing::warn!(db = %self.db_path.display(), replica = %self.slot.name, reason, "starting a new lineage with a full snapshot");
        if let Some(l) = &self.lin {
            self.time_floor_ms = self.time_floor_ms.max(l.last_time_ms);
        }
        self.lin = None;
        self.drop_tail();
        // A fresh snapshot replaces one kept from a failed attempt.
        self.pending_lineage = None;
        if self
            .src
            .as_ref()
            .is_none_or(|s| s.replaced().unwrap_or(true))
        {
            self.drop_source();
            let mut src = Source::open(&self.db_path, self.opts.busy_timeout, &self.slot.files)?;
            src.pin()?;
            self.src = Some(src);
        }
        let src = self.src()?;
        let page_size = src.page_size()?;
        // Inside a checkpoint cycle the lock is already held; either way it is
        // released before the snapshot is streamed.
        if !src.is_locked() && !src.lock_writers()? {
            return Err(CaptureError::Stopped(
                "the application held the write lock longer than the busy timeout; retrying".into(),
            ));
        }
        let locked = (|| {
            src.unpin()?;
            let (log, done) = src.checkpoint_passive()?;
            src.pin()?;
            let wal = WalFile::open(&src.wal_path)?;
            let header = wal.header()?;
            let commits = match header {
                Some(h) => wal.scan_commits(&h, 0, h.checksum)?,
                None => Vec::new(),
            };
            Ok::<_, CaptureError>((log >= 0 && log == done, header, commits))
        })();
        src.unlock_writers()?;
        let (backfilled, header, commits) = locked?;
        let pos = match header {
            Some(h) => {
                let (frame, sum) = commits
                    .last()
                    .map_or((0, h.checksum), |c| (c.end_frame, c.end_checksum));
                Pos::Known(position(&h, frame, sum))
            }
            None => Pos::Fresh,
        };
        // A fully checkpointed WAL may be restarted by the next writer at any moment,
        // but then the database file alone holds the state.
        let overlay: &[WalCommit] = if backfilled { &[] } else { &commits };
        let id = rand::random::<u64>();
        let txid = self.next_txid;
        let time = now_ms().max(self.time_floor_ms);
        let built = self.build_snapshot(id, page_size, txid, time, pos, header, overlay)?;
        let pending = PendingLineage {
            built,
            id,
            page_size,
            txid,
            time,
            pos,
        };
        self.store_new_lineage(pending, true)
    }

    /// Where the lineage of a snapshot kept from a failed attempt goes on, if
    /// it still can: nothing was stored since, the pin was held throughout
    /// (the source was kept and not pinned again), and either the WAL still
    /// holds, unchanged, the frames the snapshot read up to, or the WAL was
    /// restarted once after them and the database file alone is still the
    /// snapshot's state (the pin on a fully checkpointed WAL stops any
    /// checkpoint into it). Every later commit is then still in the WAL.
    fn pending_start(&mut self, p: &PendingLineage) -> Result<Option<Pos>, CaptureError> {
        if p.txid != self.next_txid || p.time < self.time_floor_ms {
            return Ok(None);
        }
        let src = self.src()?;
        if src.page_size()? != p.page_size {
            return Ok(None);
        }
        let (db_path, db_file) = (src.db_path.clone(), src.db_file());
        let wal = WalFile::open(&src.wal_path)?;
        let header = wal.header()?;
        if let (Pos::Known(pos), Some(h)) = (p.pos, header) {
            if h.salt1 == pos.salt1
                && h.salt2 == pos.salt2
                && (pos.frame == 0 || wal.stored_checksum(&h, pos.frame - 1)? == Some(pos.checksum))
            {
                return Ok(Some(p.pos));
            }
        }
        let reader = StateReader::new(&db_path, db_file, &wal, None, &[], p.page_size)?;
        if reader.db_pages != p.built.db_pages {
            return Ok(None);
        }
        if reader.scan(|_, _| Ok(()))?.checksum() != p.built.hashes.checksum() {
            return Ok(None);
        }
        Ok(Some(match header {
            Some(w) => Pos::Known(position(&w, 0, w.checksum)),
            None => Pos::Fresh,
        }))
    }

    /// Stores the new lineage's snapshot and starts the lineage from it. When
    /// storing fails, the snapshot is kept for the next attempt (see
    /// [`Engine::pending_holds`]), so the commits made while the store fails
    /// stay restorable one by one instead of folding into a later snapshot.
    fn store_new_lineage(
        &mut self,
        p: PendingLineage,
        reset_safe: bool,
    ) -> Result<(), CaptureError> {
        if let Err(e) = self.store_snapshot(&p.built) {
            self.pending_lineage = Some(p);
            return Err(e);
        }
        let PendingLineage {
            built,
            id,
            page_size,
            txid,
            time,
            pos,
        } = p;
        let BuiltSnapshot { key, hashes, .. } = built;
        // Late uploads of older lineages yield to this one (docs/format.md).
        self.uploads_may_land = None;
        self.next_txid = txid + 1;
        let frame = match pos {
            Pos::Known(p) => p.frame,
            Pos::Fresh => 0,
        };
        self.lin = Some(Lineage {
            id,
            page_size,
            pos,
            reset_safe,
            hashes,
            unknown_until: None,
            last_time_ms: time,
            checkpoint_frame: frame,
            observed: Vec::new(),
            last_snapshot_ms: time,
        });
        self.status.lineage = Some(format!("{id:016x}"));
        self.after_snapshot(key, txid, time)
    }
}

/// A new lineage's snapshot, built and not stored yet.
pub(super) struct PendingLineage {
    built: BuiltSnapshot,
    id: u64,
    page_size: u32,
    txid: u64,
    time: i64,
    pos: Pos,
}
