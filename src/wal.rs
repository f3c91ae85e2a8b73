//! Reading SQLite's write-ahead log (`-wal` file) directly.
//!
//! The layout is SQLite's documented WAL format: a 32-byte header followed by
//! frames of a 24-byte header plus one page. A frame counts only when its salts equal
//! the header's and its checksum equals the running checksum seeded by the frame
//! before it; only frames up to the last valid commit frame are committed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const WAL_HEADER_SIZE: u64 = 32;
pub const FRAME_HEADER_SIZE: u64 = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const FORMAT_VERSION: u32 = 3_007_000;
/// Bytes read and written at a time by [`WalFile::copy_frames`].
const COPY_CHUNK: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("reading WAL file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing a copy of WAL frames to {path}: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The WAL file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksum words are big-endian (magic 0x377f0683) rather than little-endian.
    pub big_endian: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Checksum over the first 24 header bytes; seeds the first frame's checksum.
    pub checksum: (u32, u32),
}

impl WalHeader {
    /// Parses and validates a header; `None` when the bytes are not a valid WAL
    /// header (wrong magic, version, page size or checksum), which SQLite treats as
    /// an empty WAL.
    pub fn parse(buf: &[u8]) -> Option<WalHeader> {
        if buf.len() < WAL_HEADER_SIZE as usize {
            return None;
        }
        let word = |i: usize| be32(&buf[i * 4..]);
        let big_endian = match word(0) {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return None,
        };
        if word(1) != FORMAT_VERSION {
            return None;
        }
        // Unlike the database header (where 65536 is stored as 1), the WAL header
        // holds the page size itself; SQLite's recovery accepts 512..=65536.
        let page_size = match word(2) {
            n if (512..=65536).contains(&n) && n.is_power_of_two() => n,
            _ => return None,
        };
        let checksum = wal_checksum(big_endian, &buf[..24], (0, 0));
        if checksum != (word(6), word(7)) {
            return None;
        }
        Some(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: word(3),
            salt1: word(4),
            salt2: word(5),
            checksum,
        })
    }

    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + u64::from(self.page_size)
    }

    /// Byte offset of frame `index` (0-based).
    pub fn frame_offset(&self, index: u32) -> u64 {
        WAL_HEADER_SIZE + u64::from(index) * self.frame_size()
    }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), seeded with `seed`.
pub fn wal_checksum(big_endian: bool, data: &[u8], seed: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = seed;
    for pair in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(&pair[0..]), be32(&pair[4..]))
        } else {
            (le32(&pair[0..]), le32(&pair[4..]))
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// One committed transaction found in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalCommit {
    /// Frame indexes (0-based) of the transaction, in log order, one per page
    /// write: a page written twice in one transaction appears twice.
    pub frames: Vec<(u32, u32)>,
    /// Database size in pages after the commit.
    pub db_pages: u32,
    /// Index of the frame after the commit frame.
    pub end_frame: u32,
    /// Running checksum after the commit frame.
    pub end_checksum: (u32, u32),
}

impl WalCommit {
    /// The last frame written for each page, sorted by page number.
    pub fn latest_frames(&self) -> Vec<(u32, u32)> {
        let mut by_page: std::collections::BTreeMap<u32, u32> = Default::default();
        for &(pgno, frame) in &self.frames {
            by_page.insert(pgno, frame);
        }
        by_page.into_iter().collect()
    }
}

/// Read access to one WAL file.
#[derive(Debug)]
pub struct WalFile {
    path: PathBuf,
    file: Option<File>,
}

impl WalFile {
    /// Opens the WAL at `path`; a missing file reads as empty.
    pub fn open(path: &Path) -> Result<WalFile, WalError> {
        let file = match File::open(path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(WalError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(WalFile {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, source: io::Error) -> WalError {
        WalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Current file length (0 when missing).
    pub fn len(&self) -> Result<u64, WalError> {
        match &self.file {
            None => Ok(0),
            Some(f) => f.metadata().map(|m| m.len()).map_err(|e| self.io_err(e)),
        }
    }

    pub fn is_empty(&self) -> Result<bool, WalError> {
        Ok(self.len()? < WAL_HEADER_SIZE)
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, WalError> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
        Ok(done)
    }

    /// The header, or `None` when the file is missing, short or not a valid header.
    pub fn header(&self) -> Result<Option<WalHeader>, WalError> {
        let mut buf = [0u8; WAL_HEADER_SIZE as usize];
        let n = self.read_at(&mut buf, 0)?;
        Ok(if n < buf.len() {
            None
        } else {
            WalHeader::parse(&buf)
        })
    }

    /// Reads page data of frame `index` into `page` (`page.len()` == page size).
    /// Returns false when the file ends before the frame does.
    pub fn read_page(
        &self,
        header: &WalHeader,
        index: u32,
        page: &mut [u8],
    ) -> Result<bool, WalError> {
        let offset = header.frame_offset(index) + FRAME_HEADER_SIZE;
        Ok(self.read_at(page, offset)? == page.len())
    }

    /// Scans valid frames from frame `start` (whose predecessor's running checksum
    /// is `seed`) to the end of the valid log and returns the committed
    /// transactions in order. Frames after the last commit frame are ignored: they
    /// belong to a transaction still being written.
    pub fn scan_commits(
        &self,
        header: &WalHeader,
        start: u32,
        seed: (u32, u32),
    ) -> Result<Vec<WalCommit>, WalError> {
        let mut commits = Vec::new();
        let mut pending: Vec<(u32, u32)> = Vec::new();
        let mut checksum = seed;
        let frame_size = header.frame_size() as usize;
        let mut frames = FrameChunks::new(frame_size);
        let mut index = start;
        while let Some(frame) = frames.frame(self, header, index)? {
            let Some((pgno, commit_size, next)) = check_frame(header, frame, checksum) else {
                break;
            };
            checksum = next;
            pending.push((pgno, index));
            index += 1;
            if commit_size > 0 {
                commits.push(WalCommit {
                    frames: std::mem::take(&mut pending),
                    db_pages: commit_size,
                    end_frame: index,
                    end_checksum: checksum,
                });
            }
        }
        Ok(commits)
    }

    /// Writes the header and frames `from..to` to `dest`, each at its own
    /// offset, so the copy reads as the same WAL generation from frame `from`
    /// on. The copy is not fsynced: it only has to outlive a WAL restart
    /// within this process. An existing `dest` is written over in place, not
    /// truncated (creating a file per copy cost more than the copy on ext4):
    /// frames an earlier copy left past `to` belong to an earlier generation,
    /// with other salts, so they end the copy the way they end a WAL that
    /// SQLite restarted over its old frames.
    pub fn copy_frames(
        &self,
        header: &WalHeader,
        from: u32,
        to: u32,
        dest: &Path,
    ) -> Result<(), WalError> {
        let write_err = |source| WalError::Copy {
            path: dest.to_path_buf(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dest)
            .map_err(write_err)?;
        let mut buf = vec![0u8; WAL_HEADER_SIZE as usize];
        self.read_exact_at(&mut buf, 0)?;
        out.write_all_at(&buf, 0).map_err(write_err)?;
        let frame_size = header.frame_size();
        let per_chunk = (COPY_CHUNK / frame_size).max(1) as u32;
        let mut index = from;
        while index < to {
            let n = per_chunk.min(to - index);
            let offset = header.frame_offset(index);
            buf.resize((u64::from(n) * frame_size) as usize, 0);
            self.read_exact_at(&mut buf, offset)?;
            out.write_all_at(&buf, offset).map_err(write_err)?;
            index += n;
        }
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), WalError> {
        if self.read_at(buf, offset)? < buf.len() {
            return Err(self.io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends before byte {}", offset + buf.len() as u64),
            )));
        }
        Ok(())
    }

    /// The running checksum stored in frame `index`'s header, if the frame exists
    /// and carries the header's salts. Used to prove that a previously read frame
    /// is still in place.
    pub fn stored_checksum(
        &self,
        header: &WalHeader,
        index: u32,
    ) -> Result<Option<(u32, u32)>, WalError> {
        let mut fh = [0u8; FRAME_HEADER_SIZE as usize];
        if self.read_at(&mut fh, header.frame_offset(index))? < fh.len() {
            return Ok(None);
        }
        if be32(&fh[8..]) != header.salt1 || be32(&fh[12..]) != header.salt2 {
            return Ok(None);
        }
        Ok(Some((be32(&fh[16..]), be32(&fh[20..]))))
    }
}

/// Consecutive frames read a chunk at a time. Chunks start at a few frames
/// (a look after one small commit reads little of a reused, longer file) and
/// double up to 256 KiB, so a long run costs one system call per 64 pages of
/// 4 KiB.
struct FrameChunks {
    buf: Vec<u8>,
    frame_size: usize,
    /// Index of the frame at the start of `buf`, and how many whole frames it holds.
    first: u32,
    count: u32,
}

impl FrameChunks {
    const MAX_BYTES: usize = 256 << 10;
    const FIRST_FRAMES: usize = 4;

    fn new(frame_size: usize) -> FrameChunks {
        FrameChunks {
            buf: vec![0; Self::FIRST_FRAMES * frame_size],
            frame_size,
            first: 0,
            count: 0,
        }
    }

    /// Frame `index` (read with the ones after it when not in the chunk), or
    /// `None` when the file ends before it does.
    fn frame(
        &mut self,
        wal: &WalFile,
        header: &WalHeader,
        index: u32,
    ) -> Result<Option<&[u8]>, WalError> {
        if !(self.first..self.first + self.count).contains(&index) {
            if self.count > 0 && self.buf.len() < Self::MAX_BYTES {
                let frames = (self.buf.len() * 2).min(Self::MAX_BYTES) / self.frame_size;
                self.buf.resize(frames.max(1) * self.frame_size, 0);
            }
            let n = wal.read_at(&mut self.buf, header.frame_offset(index))?;
            self.first = index;
            self.count = (n / self.frame_size) as u32;
            if self.count == 0 {
                return Ok(None);
            }
        }
        let at = (index - self.first) as usize * self.frame_size;
        Ok(Some(&self.buf[at..at + self.frame_size]))
    }
}

/// Validates one frame (header + page) against the WAL header and the running
/// checksum. Returns (page number, commit size, new running checksum).
fn check_frame(
    header: &WalHeader,
    frame: &[u8],
    seed: (u32, u32),
) -> Option<(u32, u32, (u32, u32))> {
    let pgno = be32(&frame[0..]);
    let commit_size = be32(&frame[4..]);
    if pgno == 0 || be32(&frame[8..]) != header.salt1 || be32(&frame[12..]) != header.salt2 {
        return None;
    }
    let sum = wal_checksum(header.big_endian, &frame[..8], seed);
    let sum = wal_checksum(header.big_endian, &frame[FRAME_HEADER_SIZE as usize..], sum);
    if sum != (be32(&frame[16..]), be32(&frame[20..])) {
        return None;
    }
    Some((pgno, commit_size, sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_reference_values() {
        // Two words per step: s0 += x0 + s1; s1 += x1 + s0.
        let data = [0u8, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(wal_checksum(true, &data, (0, 0)), (1, 3));
        assert_eq!(
            wal_checksum(false, &data, (0, 0)),
            (1 << 24, (2 << 24) + (1 << 24))
        );
    }

    #[test]
    fn rejects_bad_magic() {
        assert!(WalHeader::parse(&[0u8; 32]).is_none());
    }

    /// A WAL of `n` one-row commits, kept from being checkpointed.
    fn wal_with_commits(dir: &Path, n: usize) -> PathBuf {
        let db = dir.join("a.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute_batch("CREATE TABLE t(v BLOB)").unwrap();
        for _ in 0..n {
            c.execute_batch("INSERT INTO t VALUES (randomblob(3000))")
                .unwrap();
        }
        let wal = dir.join("a.db-wal");
        // Kept: the connection would checkpoint and delete the WAL on close.
        std::fs::copy(&wal, dir.join("kept-wal")).unwrap();
        dir.join("kept-wal")
    }

    #[test]
    fn a_copy_of_frames_reads_as_the_same_generation_from_its_first_frame() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalFile::open(&wal_with_commits(dir.path(), 12)).unwrap();
        let h = wal.header().unwrap().unwrap();
        let all = wal.scan_commits(&h, 0, h.checksum).unwrap();
        assert!(all.len() >= 12);
        let from = &all[4];
        let start = all[3].end_frame;
        let end = all.last().unwrap().end_frame;
        let dest = dir.path().join("tail");
        wal.copy_frames(&h, start - 1, end, &dest).unwrap();
        let copy = WalFile::open(&dest).unwrap();
        assert_eq!(copy.header().unwrap(), Some(h));
        assert_eq!(
            copy.stored_checksum(&h, start - 1).unwrap(),
            Some(all[3].end_checksum)
        );
        let again = copy.scan_commits(&h, start, all[3].end_checksum).unwrap();
        assert_eq!(again.len(), all.len() - 4);
        assert_eq!(again[0].frames, from.frames);
        assert_eq!(
            again.last().unwrap().end_checksum,
            all.last().unwrap().end_checksum
        );
        let (mut a, mut b) = (
            vec![0u8; h.page_size as usize],
            vec![0u8; h.page_size as usize],
        );
        for i in start..end {
            assert!(wal.read_page(&h, i, &mut a).unwrap());
            assert!(copy.read_page(&h, i, &mut b).unwrap());
            assert_eq!(a, b, "frame {i}");
        }
        // Frames before the copied range are not there.
        assert_eq!(copy.stored_checksum(&h, 0).unwrap(), None);
    }

    #[test]
    fn a_copy_over_a_longer_copy_of_another_generation_ends_where_it_does() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let long = WalFile::open(&wal_with_commits(one.path(), 40)).unwrap();
        let short = WalFile::open(&wal_with_commits(two.path(), 3)).unwrap();
        let (hl, hs) = (
            long.header().unwrap().unwrap(),
            short.header().unwrap().unwrap(),
        );
        assert_ne!((hl.salt1, hl.salt2), (hs.salt1, hs.salt2));
        let want = short.scan_commits(&hs, 0, hs.checksum).unwrap();
        let end_long = long.scan_commits(&hl, 0, hl.checksum).unwrap();
        let end_long = end_long.last().unwrap().end_frame;
        let end = want.last().unwrap().end_frame;
        assert!(end_long > end + 10);
        let dest = one.path().join("tail");
        long.copy_frames(&hl, 0, end_long, &dest).unwrap();
        short.copy_frames(&hs, 0, end, &dest).unwrap();
        let copy = WalFile::open(&dest).unwrap();
        assert_eq!(copy.header().unwrap(), Some(hs));
        let got = copy.scan_commits(&hs, 0, hs.checksum).unwrap();
        assert_eq!(got.len(), want.len());
        assert_eq!(got.last().unwrap().end_frame, end);
        assert_eq!(copy.stored_checksum(&hs, end).unwrap(), None);
    }

    #[test]
    fn copying_past_the_end_of_the_wal_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal_with_commits(dir.path(), 2);
        let wal = WalFile::open(&path).unwrap();
        let h = wal.header().unwrap().unwrap();
        let err = wal
            .copy_frames(&h, 0, 10_000, &dir.path().join("tail"))
            .unwrap_err();
        assert!(err.to_string().contains("kept-wal"), "{err}");
    }
}
