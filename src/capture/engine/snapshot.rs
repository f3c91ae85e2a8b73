//! Snapshots: streaming one database state into a snapshot object, and
//! pruning what no kept snapshot needs afterwards.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::*;
use crate::capture::spool::Spool;
use crate::format::{BodyWriter, CommitRecord, ObjectKind};
use crate::schedule::SnapshotSchedule;

impl Engine {
    pub(super) fn after_snapshot(
        &mut self,
        key: String,
        txid: u64,
        time: i64,
    ) -> Result<(), CaptureError> {
        tracing::info!(db = %self.db_path.display(), %key, txid, "snapshot stored");
        self.status.last_shipped_txid = self.status.last_shipped_txid.max(txid);
        self.status.last_snapshot_key = Some(key);
        self.status.last_snapshot_time_ms = Some(time);
        self.prune()
    }

    pub(super) fn prune(&mut self) -> Result<(), CaptureError> {
        let catalog = self.block_on(Catalog::load(&self.store))?;
        let pins = self.block_on(retention::load_pins(&self.store))?;
        let plan = retention::plan(&catalog, &self.opts.retention, &pins, now_ms());
        if !plan.delete.is_empty() {
            tracing::info!(
                objects = plan.delete.len(),
                "pruning objects no kept snapshot needs"
            );
            self.block_on(retention::execute(&self.store, &plan))?;
        }
        Ok(())
    }

    /// Streams the state (database file + `overlay` frames) into a snapshot object.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_snapshot(
        &mut self,
        lineage: u64,
        page_size: u32,
        txid: u64,
        time: i64,
        pos: Pos,
        wal_header: Option<WalHeader>,
        overlay: &[WalCommit],
    ) -> Result<(String, PageHashes), CaptureError> {
        let built =
            self.build_snapshot(lineage, page_size, txid, time, pos, wal_header, overlay)?;
        self.store_snapshot(&built)?;
        Ok((built.key, built.hashes))
    }

    /// Stores a snapshot built by [`Engine::build_snapshot`].
    pub(super) fn store_snapshot(&mut self, built: &BuiltSnapshot) -> Result<(), CaptureError> {
        self.ensure_lease()?;
        let upload = built.sealed.as_ref().unwrap_or(&built.spool).path.clone();
        let put = self.store.put_file(&built.key, upload, PutMode::CreateOnly);
        match self.block_on(put) {
            // Same txid, lineage and time: this very state is already stored.
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams the state (database file + `overlay` frames) into a spool file,
    /// sealed when encrypting, ready to store.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build_snapshot(
        &mut self,
        lineage: u64,
        page_size: u32,
        txid: u64,
        time: i64,
        pos: Pos,
        wal_header: Option<WalHeader>,
        overlay: &[WalCommit],
    ) -> Result<BuiltSnapshot, CaptureError> {
        let src = self.src()?;
        let (db_path, wal_path, db_file) =
            (src.db_path.clone(), src.wal_path.clone(), src.db_file());
        let wal = WalFile::open(&wal_path)?;
        let reader = StateReader::new(&db_path, db_file, &wal, wal_header, overlay, page_size)?;
        let spool = snapshot_spool(&self.slot.work_dir)?;
        let mut header = ObjectHeader {
            kind: ObjectKind::Snapshot,
            flags: 0,
            key_id: [0; 8],
            lineage,
            page_size,
            wal: match pos {
                Pos::Known(p) => Some(p),
                Pos::Fresh => None,
            },
            commits: vec![CommitRecord {
                txid,
                time_ms: time,
                db_pages: reader.db_pages,
                page_count: reader.db_pages,
                checksum: Some(0),
            }],
            page_index: None,
        };
        let io = |source| CaptureError::Io {
            path: spool.path.clone(),
            source,
        };
        let mut out = BufWriter::new(spool.file.try_clone().map_err(io)?);
        out.write_all(&header.encode()).map_err(io)?;
        let mut body = BodyWriter::new(out, ObjectKind::Snapshot);
        let hashes = reader.scan(|pgno, page| body.write_page(pgno, page).map_err(io))?;
        let out = body.finish().map_err(|e| CaptureError::Format {
            key: spool.path.display().to_string(),
            source: e,
        })?;
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        header.commits[0].checksum = Some(hashes.checksum());
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header.encode()).map_err(io)?;
        // No fsync: the spool is only read back for the upload and discarded
        // after a crash, and flushing hundreds of MB at once would stall the
        // application's own commits behind it on the same disk.
        // With no overlay the state came from the database file alone, which the
        // pin keeps from being checkpointed into: a WAL restart cannot touch it.
        if !overlay.is_empty() {
            self.verify_wal_unchanged(&wal_path, pos)?;
        }
        let sealed = match self.opts.encryption {
            Some(_) => {
                let s = snapshot_spool(&self.slot.work_dir)?;
                self.seal_spool(&mut file, &spool.path, &s.file, &s.path)?;
                Some(s)
            }
            None => None,
        };
        Ok(BuiltSnapshot {
            key: snapshot_key(txid, lineage, time),
            db_pages: header.commits[0].db_pages,
            hashes,
            spool,
            sealed,
        })
    }

    /// The frames a snapshot read must still be the ones it read.
    pub(super) fn verify_wal_unchanged(
        &self,
        wal_path: &Path,
        pos: Pos,
    ) -> Result<(), CaptureError> {
        let Pos::Known(p) = pos else { return Ok(()) };
        if p.frame == 0 {
            return Ok(());
        }
        let wal = WalFile::open(wal_path)?;
        let intact = match wal.header()? {
            Some(h) if h.salt1 == p.salt1 && h.salt2 == p.salt2 => {
                wal.stored_checksum(&h, p.frame - 1)? == Some(p.checksum)
            }
            _ => false,
        };
        if intact {
            Ok(())
        } else {
            Err(CaptureError::Stopped(
                "the WAL was restarted while a snapshot was read; the snapshot will be retried"
                    .into(),
            ))
        }
    }

    pub(super) fn maybe_snapshot(&mut self) -> Result<(), CaptureError> {
        let schedule = SnapshotSchedule {
            interval: self.opts.snapshot_interval,
            at: self.opts.snapshot_at,
        };
        if schedule.due(self.lin()?.last_snapshot_ms, now_ms()) {
            self.snapshot_now("scheduled")?;
        }
        Ok(())
    }

    /// A snapshot of the state at the last shipped txid, in the current lineage.
    pub(super) fn snapshot_now(&mut self, why: &str) -> Result<String, CaptureError> {
        if self.lin.is_none() {
            self.start()?;
        }
        self.sync()?;
        let txid = self.next_txid - 1;
        let wal = WalFile::open(&self.src()?.wal_path)?;
        let header = wal.header()?;
        let lin = self.lin()?;
        let (id, page_size, pos, time, expected) = (
            lin.id,
            lin.page_size,
            lin.pos,
            lin.last_time_ms,
            lin.hashes.checksum(),
        );
        let overlay = match (pos, header) {
            (Pos::Known(p), Some(h)) if h.salt1 == p.salt1 && h.salt2 == p.salt2 => {
                let all = wal.scan_commits(&h, 0, h.checksum)?;
                all.into_iter()
                    .take_while(|c| c.end_frame <= p.frame)
                    .collect()
            }
            _ => Vec::new(),
        };
        tracing::info!(db = %self.db_path.display(), txid, why, "taking a snapshot");
        let started = Instant::now();
        let (key, hashes) =
            self.write_snapshot(id, page_size, txid, time, pos, header, &overlay)?;
        self.status.last_snapshot_duration_ms = Some(started.elapsed().as_millis() as u64);
        if hashes.checksum() != expected {
            tracing::error!(%key, txid, "snapshot checksum differs from the tracked state; tracking the snapshot's");
            self.lin()?.hashes = hashes;
        }
        self.lin()?.last_snapshot_ms = now_ms();
        self.after_snapshot(key.clone(), txid, time)?;
        Ok(key)
    }
}

/// A snapshot in its spool file (and its sealed copy when encrypting); both
/// are removed when this is dropped.
pub(super) struct BuiltSnapshot {
    pub key: String,
    pub db_pages: u32,
    pub hashes: PageHashes,
    spool: Spool,
    sealed: Option<Spool>,
}

/// A snapshot spool file in the state directory.
fn snapshot_spool(dir: &Path) -> Result<Spool, CaptureError> {
    Spool::create(dir, "snapshot").map_err(|source| CaptureError::Io {
        path: dir.to_path_buf(),
        source,
    })
}
