//! Applying a plan newest object first (see `docs/architecture.md`,
//! "Restore").
//!
//! Only the newest version of each page at or before the target ends up in
//! the output, so the objects are read from the target back to the snapshot
//! and a page is written only if no newer version was: every page is written
//! once, and with a page index (docs/format.md) the superseded versions are
//! not even decoded. A page also survives only if no commit between its
//! version and the target shrank the database below it (the file's length
//! is the target's from the start; what no object writes stays zero), so
//! the result is byte for byte what applying every commit in order gives.
//! The snapshot comes last and fills what no segment wrote.

use std::fs::File;
use std::path::Path;

use super::execute::{damaged, Failure};
use super::fetch::ObjectStream;
use super::pagefile::{PageFile, CACHE_BYTES};
use crate::catalog::{check_name, ObjectInfo};
use crate::crypto::Keyring;
use crate::error::RestoreError;
use crate::format::{
    BodyReader, CommitRecord, FormatError, ObjectHeader, ObjectKind, RecordReader, Scratch,
};

/// The output while objects are applied, newest first.
pub(super) struct Output<'a> {
    path: &'a Path,
    keys: &'a Keyring,
    lineage: u64,
    target_txid: u64,
    /// Until the first object's header names the page size.
    file: Option<File>,
    pages: Option<PageFile>,
    /// The target commit, from the newest object.
    target: Option<CommitRecord>,
    page_size: u32,
    /// Pages holding their final content: a version at or before the
    /// target and newer than anything still to come was written.
    written: Vec<u64>,
    /// The smallest database size from the oldest commit applied so far up
    /// to the target: an older version of a page beyond it does not survive.
    floor: u32,
    /// The oldest txid applied so far (the target + 1 before anything).
    low: u64,
    /// Buffers passed from one segment's reader to the next.
    scratch: Scratch,
}

/// What the output holds once every object is applied.
pub(super) struct Finished {
    pub file: File,
    pub checksum: u64,
    pub target: CommitRecord,
    pub page_size: u32,
}

impl<'a> Output<'a> {
    pub(super) fn new(
        file: File,
        path: &'a Path,
        keys: &'a Keyring,
        lineage: u64,
        target_txid: u64,
    ) -> Output<'a> {
        Output {
            path,
            keys,
            lineage,
            target_txid,
            file: Some(file),
            pages: None,
            target: None,
            page_size: 0,
            written: Vec::new(),
            floor: 0,
            low: target_txid + 1,
            scratch: Scratch::default(),
        }
    }

    fn io(&self, source: std::io::Error) -> Failure {
        Failure::Fatal(RestoreError::Io {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// Reads and checks the header of the next object (newest first); the
    /// first one sizes the output from the target commit it holds.
    fn header(
        &mut self,
        stream: &mut ObjectStream,
        info: &ObjectInfo,
        kind: ObjectKind,
    ) -> Result<ObjectHeader, Failure> {
        let key = info.key.as_str();
        let header = ObjectHeader::decode(stream).map_err(|e| damaged(key, e))?;
        check_name(info, &header)
            .map_err(|e| damaged(key, FormatError::Malformed(e.to_string())))?;
        if header.kind != kind || header.lineage != self.lineage {
            return Err(damaged(
                key,
                FormatError::Malformed("object kind or lineage differs from the plan".into()),
            ));
        }
        if header.max_txid() + 1 < self.low {
            return Err(damaged(
                key,
                FormatError::Malformed(format!(
                    "ends at txid {}, but txid {} is needed next",
                    header.max_txid(),
                    self.low - 1
                )),
            ));
        }
        if self.target.is_none() {
            let target = header
                .commits
                .iter()
                .find(|c| c.txid == self.target_txid)
                .copied()
                .ok_or_else(|| {
                    damaged(
                        key,
                        FormatError::Malformed(format!("txid {} is missing", self.target_txid)),
                    )
                })?;
            self.start(target, header.page_size)?;
        } else if header.page_size != self.page_size {
            return Err(damaged(
                key,
                FormatError::Malformed("page size differs from the newer objects'".into()),
            ));
        }
        Ok(header)
    }

    /// The output from the target commit: its length in pages, zero-filled.
    fn start(&mut self, target: CommitRecord, page_size: u32) -> Result<(), Failure> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let mut pages = PageFile::new(file, page_size, CACHE_BYTES);
        pages.set_len(target.db_pages).map_err(|e| self.io(e))?;
        self.pages = Some(pages);
        self.target = Some(target);
        self.page_size = page_size;
        self.floor = target.db_pages;
        self.written = vec![0; target.db_pages as usize / 64 + 1];
        Ok(())
    }

    fn is_written(&self, pgno: u32) -> bool {
        self.written[pgno as usize / 64] & (1 << (pgno % 64)) != 0
    }

    fn mark_written(&mut self, pgno: u32) {
        self.written[pgno as usize / 64] |= 1 << (pgno % 64);
    }

    /// Writes page `pgno` (one of the pages' buffers).
    fn put(&mut self, pgno: u32, page: Vec<u8>) -> Result<(), Failure> {
        let pages = self.pages.as_mut().ok_or_else(not_started)?;
        pages
            .put(pgno, page)
            .map_err(|e| Failure::Fatal(io_error(self.path, e)))
    }

    fn buffer(&mut self) -> Result<Vec<u8>, Failure> {
        Ok(self.pages.as_mut().ok_or_else(not_started)?.buffer())
    }

    fn recycle(&mut self, page: Vec<u8>) {
        if let Some(p) = self.pages.as_mut() {
            p.recycle(page);
        }
    }

    /// Applies the commits of one segment that are older than those applied
    /// so far and newer than the snapshot (`snapshot_txid`).
    pub(super) fn apply_segment(
        &mut self,
        mut stream: ObjectStream,
        info: &ObjectInfo,
        snapshot_txid: u64,
    ) -> Result<(), Failure> {
        let header = self.header(&mut stream, info, ObjectKind::Segment)?;
        let commits = &header.commits;
        let first = commits.partition_point(|c| c.txid <= snapshot_txid);
        let end = commits.partition_point(|c| c.txid < self.low);
        if first >= end {
            return Ok(()); // everything here is applied already (an overlap)
        }
        // floors[j]: the smallest database size from commit first + j to the target.
        let mut floors = vec![0; end - first];
        for j in (first..end).rev() {
            self.floor = self.floor.min(commits[j].db_pages);
            floors[j - first] = self.floor;
        }
        // Reading stops after the last commit applied: the target commit's
        // recorded checksum proves the result instead of the trailer.
        let left_early = end < commits.len() && self.target.is_some_and(|t| t.checksum.is_some());
        let low = commits[first].txid;
        let span = Span {
            first,
            end,
            floors: &floors,
            left_early,
        };
        let key = info.key.as_str();
        match &header.page_index {
            Some(index) => {
                let wanted = self.choose_indexed(&header, index, &span);
                self.apply_records(stream, header, key, &wanted, !left_early)?;
            }
            None => self.apply_decoded(stream, header, key, &span)?,
        }
        self.low = low;
        Ok(())
    }

    /// The page records of `span` to write, in body order: going backwards,
    /// each page's newest version that survives to the target, unless a
    /// newer object wrote the page. Marks them written.
    fn choose_indexed(&mut self, header: &ObjectHeader, index: &[u32], span: &Span) -> Vec<u64> {
        let mut start = 0u64;
        let starts: Vec<u64> = header
            .commits
            .iter()
            .map(|c| {
                let s = start;
                start += u64::from(c.page_count);
                s
            })
            .collect();
        let mut wanted = Vec::new();
        for j in (span.first..span.end).rev() {
            let floor = span.floors[j - span.first];
            let records = starts[j]..starts[j] + u64::from(header.commits[j].page_count);
            for r in records.rev() {
                let pgno = index[r as usize];
                if pgno <= floor && !self.is_written(pgno) {
                    self.mark_written(pgno);
                    wanted.push(r);
                }
            }
        }
        wanted.reverse();
        wanted
    }

    /// Decodes page records `wanted` (in body order) and writes them; with
    /// `check_end`, walks the rest of the body and checks its trailer.
    fn apply_records(
        &mut self,
        stream: ObjectStream,
        header: ObjectHeader,
        key: &str,
        wanted: &[u64],
        check_end: bool,
    ) -> Result<(), Failure> {
        let scratch = std::mem::take(&mut self.scratch);
        let mut reader = RecordReader::with_scratch(stream, header, self.keys, scratch)
            .map_err(|e| damaged(key, e))?;
        for &r in wanted {
            let mut page = self.buffer()?;
            match reader.read(r, &mut page) {
                Ok(pgno) => self.put(pgno, page)?,
                Err(e) => return Err(damaged(key, e)),
            }
        }
        let (decoded, walked) = reader.blocks_read();
        tracing::debug!(
            key,
            records = wanted.len(),
            decoded,
            walked,
            "read selected page records"
        );
        if check_end {
            reader.finish().map_err(|e| damaged(key, e))?;
        }
        self.scratch = reader.into_scratch();
        Ok(())
    }

    /// A segment without a page index: every record is decoded (its page
    /// number is in the record), in order, and a later version of a page
    /// within the segment replaces an earlier one in the output. Pages count
    /// as written for older objects only once the whole segment is applied.
    fn apply_decoded(
        &mut self,
        stream: ObjectStream,
        header: ObjectHeader,
        key: &str,
        span: &Span,
    ) -> Result<(), Failure> {
        let mut body = BodyReader::new(stream, header, self.keys).map_err(|e| damaged(key, e))?;
        let mut here = Vec::new();
        let mut stopped = false;
        loop {
            let mut page = self.buffer()?;
            let Some(r) = body.next_page(&mut page).map_err(|e| damaged(key, e))? else {
                self.recycle(page);
                break;
            };
            if r.commit >= span.end && span.left_early {
                self.recycle(page);
                stopped = true;
                break;
            }
            let applies = (span.first..span.end).contains(&r.commit)
                && r.pgno <= span.floors[r.commit - span.first]
                && !self.is_written(r.pgno);
            if applies {
                self.put(r.pgno, page)?;
                here.push(r.pgno);
            } else {
                self.recycle(page);
            }
        }
        if !stopped {
            body.finish().map_err(|e| damaged(key, e))?;
        }
        for pgno in here {
            self.mark_written(pgno);
        }
        Ok(())
    }

    /// Fills every page no segment wrote from the snapshot, which must be
    /// the state right before the oldest commit applied.
    pub(super) fn apply_snapshot(
        &mut self,
        mut stream: ObjectStream,
        info: &ObjectInfo,
    ) -> Result<(), Failure> {
        let header = self.header(&mut stream, info, ObjectKind::Snapshot)?;
        let key = info.key.as_str();
        let snap = header.commits[0];
        if snap.txid + 1 != self.low {
            return Err(damaged(
                key,
                FormatError::Malformed(format!(
                    "snapshot at txid {}, but the segments start at {}",
                    snap.txid, self.low
                )),
            ));
        }
        self.floor = self.floor.min(snap.db_pages);
        let wanted: Vec<u64> = (1..=self.floor)
            .filter(|&p| !self.is_written(p))
            .map(|p| u64::from(p) - 1)
            .collect();
        self.apply_records(stream, header, key, &wanted, true)?;
        self.low = snap.txid;
        Ok(())
    }

    /// Writes what is cached and sets the final length; returns the file,
    /// its whole-database checksum and the target commit.
    pub(super) fn finish(self) -> Result<Finished, Failure> {
        let (Some(pages), Some(target)) = (self.pages, self.target) else {
            return Err(Failure::Fatal(not_started()));
        };
        let (file, checksum) = pages
            .finish(target.db_pages)
            .map_err(|e| Failure::Fatal(io_error(self.path, e)))?;
        Ok(Finished {
            file,
            checksum,
            target,
            page_size: self.page_size,
        })
    }
}

/// The commits of one segment that are applied.
struct Span<'f> {
    /// Index of the first commit applied, and one past the last.
    first: usize,
    end: usize,
    floors: &'f [u32],
    /// Reading stops after the last applied commit's pages.
    left_early: bool,
}

fn io_error(path: &Path, source: std::io::Error) -> RestoreError {
    RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn not_started() -> RestoreError {
    RestoreError::NoChain {
        target: "the plan".into(),
        reason: "no object was applied".into(),
    }
}
