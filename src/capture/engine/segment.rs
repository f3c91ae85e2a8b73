//! Building one segment from WAL commits: in memory when it is small, in a
//! spool file in the state directory when a single transaction is larger than
//! [`SEGMENT_BYTES`], so the engine's memory does not grow with transaction
//! size or with a burst of commits.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::{position, Engine, Lineage};
use crate::capture::spool::Spool;
use crate::error::CaptureError;
use crate::format::{BodyWriter, CommitRecord, ObjectHeader, ObjectKind, MAX_INDEXED_PAGES};
use crate::store::{PutMode, StoreError};
use crate::wal::{WalCommit, WalFile, WalHeader};

/// Most page bytes a segment of several commits holds: batches are split
/// before they grow larger, and a single commit larger than this is spooled.
pub(super) const SEGMENT_BYTES: usize = 2 << 20;

/// Segments this large (stored bytes) are not worth merging: merging them
/// would save one object per MiB at the cost of writing every byte twice more.
pub(super) const COMPACT_BELOW: u64 = 1 << 20;

/// A segment's bytes, header included, as built (not sealed).
pub(super) enum SegmentBody {
    Memory(Bytes),
    Spooled(Spool),
}

impl SegmentBody {
    pub(super) fn len(&self) -> u64 {
        match self {
            SegmentBody::Memory(b) => b.len() as u64,
            SegmentBody::Spooled(s) => s.file.metadata().map_or(u64::MAX, |m| m.len()),
        }
    }
}

/// Page bytes a commit writes at most (a page written twice counts twice).
fn page_bytes(c: &WalCommit, page_size: u32) -> usize {
    c.frames.len() * page_size as usize
}

/// Where `commits` is split into segments: each range holds at most
/// `max_pages` frames and [`SEGMENT_BYTES`] of pages, or a single commit.
pub(super) fn split_batches(
    commits: &[WalCommit],
    page_size: u32,
    max_pages: usize,
) -> Vec<std::ops::Range<usize>> {
    let max_pages = max_pages.min(SEGMENT_BYTES / page_size as usize).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < commits.len() {
        let mut end = start + 1;
        let mut pages = commits[start].frames.len();
        while end < commits.len() && pages + commits[end].frames.len() <= max_pages {
            pages += commits[end].frames.len();
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// The commits of one segment and what they are numbered and dated.
pub(super) struct Batch<'a> {
    pub wal: &'a WalFile,
    pub header: &'a WalHeader,
    pub commits: &'a [WalCommit],
    pub first_txid: u64,
    pub times: &'a [i64],
}

/// Encodes `batch` as one segment, updating the lineage's page hashes; a
/// single commit larger than [`SEGMENT_BYTES`] goes to a spool in `spool_dir`.
pub(super) fn build_segment(
    lin: &mut Lineage,
    batch: &Batch,
    spool_dir: &Path,
) -> Result<(ObjectHeader, SegmentBody), CaptureError> {
    let page_size = batch.header.page_size;
    let bytes: usize = batch.commits.iter().map(|c| page_bytes(c, page_size)).sum();
    // The last version of each page every commit wrote: the page records.
    let latest: Vec<Vec<(u32, u32)>> = batch.commits.iter().map(|c| c.latest_frames()).collect();
    let records: usize = latest.iter().map(Vec::len).sum();
    let indexed = if records as u64 <= MAX_INDEXED_PAGES {
        records
    } else {
        0
    };
    let header_len = ObjectHeader::encoded_len(batch.commits.len(), indexed);
    if batch.commits.len() == 1 && bytes > SEGMENT_BYTES {
        return build_spooled(lin, batch, &latest, spool_dir, header_len);
    }
    // Room for the whole body when the pages do not compress: no reallocation.
    let mut out = Vec::with_capacity(header_len + bytes + bytes / 64 + 64);
    out.resize(header_len, 0);
    let (header, mut out) = encode(lin, batch, &latest, out)?;
    out[..header_len].copy_from_slice(&header.encode());
    Ok((header, SegmentBody::Memory(Bytes::from(out))))
}

fn build_spooled(
    lin: &mut Lineage,
    batch: &Batch,
    latest: &[Vec<(u32, u32)>],
    spool_dir: &Path,
    header_len: usize,
) -> Result<(ObjectHeader, SegmentBody), CaptureError> {
    let spool = Spool::create(spool_dir, "segment").map_err(|source| CaptureError::Io {
        path: spool_dir.to_path_buf(),
        source,
    })?;
    let io = |source| CaptureError::Io {
        path: spool.path.clone(),
        source,
    };
    let mut out = BufWriter::with_capacity(1 << 20, spool.file.try_clone().map_err(io)?);
    out.write_all(&vec![0; header_len]).map_err(io)?;
    let (header, out) = encode(lin, batch, latest, out)?;
    let file: File = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.write_all_at(&header.encode(), 0).map_err(io)?;
    // No fsync: the spool is only read back for the upload.
    Ok((header, SegmentBody::Spooled(spool)))
}

/// Writes the body of `batch` (`latest`: each commit's page records) after
/// what `out` holds (the header's room) and returns the header that belongs
/// in front of it, with a page index unless it would exceed
/// [`MAX_INDEXED_PAGES`].
fn encode<W: Write>(
    lin: &mut Lineage,
    batch: &Batch,
    latest: &[Vec<(u32, u32)>],
    out: W,
) -> Result<(ObjectHeader, W), CaptureError> {
    let (wal, h) = (batch.wal, batch.header);
    let mut body = BodyWriter::new(out, ObjectKind::Segment);
    let mut page = vec![0u8; h.page_size as usize];
    let mut commits = Vec::with_capacity(batch.commits.len());
    let records: usize = latest.iter().map(Vec::len).sum();
    let mut index = Vec::with_capacity(records);
    let io = |source| CaptureError::Io {
        path: wal.path().to_path_buf(),
        source,
    };
    for (i, (c, latest)) in batch.commits.iter().zip(latest).enumerate() {
        let tracked = lin.unknown_until.is_none_or(|u| c.end_frame > u);
        for &(pgno, frame) in latest {
            if !wal.read_page(h, frame, &mut page)? {
                return Err(CaptureError::WalShrank {
                    path: wal.path().to_path_buf(),
                    frame,
                });
            }
            if tracked {
                lin.hashes.set_page(pgno, &page);
            }
            body.write_page(pgno, &page).map_err(io)?;
            index.push(pgno);
        }
        if tracked {
            lin.hashes.resize(c.db_pages);
        }
        let known = tracked || lin.unknown_until == Some(c.end_frame);
        commits.push(CommitRecord {
            txid: batch.first_txid + i as u64,
            time_ms: batch.times[i],
            db_pages: c.db_pages,
            page_count: latest.len() as u32,
            checksum: known.then(|| lin.hashes.checksum()),
        });
    }
    let last = &batch.commits[batch.commits.len() - 1];
    let header = ObjectHeader {
        kind: ObjectKind::Segment,
        flags: 0,
        key_id: [0; 8],
        lineage: lin.id,
        page_size: h.page_size,
        wal: Some(position(h, last.end_frame, last.end_checksum)),
        commits,
        page_index: (index.len() as u64 <= MAX_INDEXED_PAGES).then_some(index),
    };
    let out = body.finish().map_err(|e| CaptureError::Format {
        key: "new segment".into(),
        source: e,
    })?;
    Ok((header, out))
}

impl Engine {
    /// Write-once put of a spooled segment, sealed into a second spool when
    /// the replica is encrypted.
    pub(super) fn put_spooled(
        &mut self,
        key: &str,
        header: &ObjectHeader,
        plain: &Spool,
    ) -> Result<(), CaptureError> {
        self.ensure_lease()?;
        let sealed = match self.opts.encryption {
            Some(_) => {
                let dir = crate::capture::state_dir(&self.db_path);
                let s = Spool::create(&dir, "segment").map_err(|source| CaptureError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let mut f = plain.file.try_clone().map_err(|source| CaptureError::Io {
                    path: plain.path.clone(),
                    source,
                })?;
                self.seal_spool(&mut f, &plain.path, &s.file, &s.path)?;
                Some(s)
            }
            None => None,
        };
        let upload = sealed.as_ref().unwrap_or(plain).path.clone();
        let store = self.shipping_store();
        match self.store_call("put", key, store.put_file(key, upload, PutMode::CreateOnly)) {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists { .. }) => self.check_same_header(key, header),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the segment already stored under `key` (a retried write that
    /// had succeeded) is this one, judged by its header without fetching a
    /// large body: the header names the lineage, every txid with its time and
    /// whole-database checksum, and the WAL position after the last commit
    /// (salts, frame and the running checksum over every frame before it),
    /// which only the very same frames produce.
    fn check_same_header(&mut self, key: &str, header: &ObjectHeader) -> Result<(), CaptureError> {
        let indexed = header.page_index.as_ref().map_or(0, Vec::len);
        let len = ObjectHeader::encoded_len(header.commits.len(), indexed) as u64;
        let store = self.shipping_store();
        let bytes = self.store_call("get", key, store.get_range(key, 0, len))?;
        let same = ObjectHeader::decode(&mut &bytes[..]).is_ok_and(|mut stored| {
            // Sealing sets these two; everything else must match.
            stored.flags = header.flags;
            stored.key_id = header.key_id;
            stored == *header
        });
        if same {
            Ok(())
        } else {
            Err(CaptureError::Conflict {
                key: key.to_string(),
            })
        }
    }
}
