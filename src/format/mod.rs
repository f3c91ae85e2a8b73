//! Byte format of replicated objects (segments and snapshots); see `docs/format.md`.
//!
//! Object = header (with its own CRC32) + body (an LZ4 frame) + trailer (CRC32 of
//! the compressed body). A segment's body holds, per commit, `page_count` records of
//! `pgno u32 BE` + page bytes; a snapshot's body holds pages `1..=db_pages` in order.
//! With flag bit 1 the LZ4 frame is encrypted in chunks (see `crypto`); the
//! header stays readable so listing and planning need no key.

use std::io::{self, Read, Write};

use lz4_flex::frame::{BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use crate::crypto::{CryptoError, KeyId, Keyring, Opener};

mod blocks;
mod records;

pub use records::{RecordReader, Scratch};

pub const SEGMENT_MAGIC: [u8; 4] = *b"WSEG";
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"WSNP";
pub const FORMAT_VERSION: u16 = 1;
/// Body is an LZ4 frame (always set in version 1).
pub const FLAG_LZ4: u16 = 1;
/// Body is encrypted: chunks of the LZ4 frame sealed with AES-256-GCM.
pub const FLAG_ENCRYPTED: u16 = 1 << 1;
/// The header carries the WAL position after the object's last commit.
pub const FLAG_WAL_POSITION: u16 = 1 << 2;
/// The header carries a page index: the page number of every page record of
/// the body, in body order (segments only).
pub const FLAG_PAGE_INDEX: u16 = 1 << 3;
/// Commit record flag: the checksum field is known.
pub const COMMIT_CHECKSUM_KNOWN: u32 = 1;

const FIXED_HEADER: usize = 76;
const COMMIT_RECORD: usize = 36;
/// No object has more commits than this (bounds header allocations on bad input).
pub const MAX_COMMITS: u32 = 1 << 20;
/// No page index has more entries than this (16 MiB of header): a segment
/// with more page records is written without an index.
pub const MAX_INDEXED_PAGES: u64 = 1 << 22;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a walstream object (bad magic)")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    #[error("object uses unsupported flags {0:#x} (written by a newer walstream?)")]
    UnsupportedFlags(u16),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("body checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BodyChecksum { stored: u32, computed: u32 },
    #[error("malformed object: {0}")]
    Malformed(String),
    #[error("object is truncated")]
    Truncated,
    #[error("decompressing body: {0}")]
    Decompress(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Segment,
    Snapshot,
}

/// Where in the source's WAL the object ends: enough to resume reading frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    pub salt1: u32,
    pub salt2: u32,
    pub checkpoint_seq: u32,
    /// Index of the next frame to read.
    pub frame: u32,
    /// Running WAL checksum after the last frame read.
    pub checksum: (u32, u32),
}

/// One committed transaction as recorded in an object header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRecord {
    pub txid: u64,
    /// When walstream observed the commit, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Database size in pages after the commit.
    pub db_pages: u32,
    /// Number of page records this commit has in the body.
    pub page_count: u32,
    /// Whole-database checksum after the commit (see `checksum.rs`), when known.
    pub checksum: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHeader {
    pub kind: ObjectKind,
    pub flags: u16,
    pub key_id: [u8; 8],
    pub lineage: u64,
    pub page_size: u32,
    pub wal: Option<WalPosition>,
    /// In txid order. A snapshot has exactly one.
    pub commits: Vec<CommitRecord>,
    /// The page number of every page record of the body, in body order
    /// (flag bit 3); `None` for snapshots and segments written without one.
    pub page_index: Option<Vec<u32>>,
}

impl ObjectHeader {
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }
    /// The key an encrypted object was sealed with.
    pub fn key_id(&self) -> Option<KeyId> {
        self.is_encrypted().then_some(KeyId(self.key_id))
    }
    pub fn min_txid(&self) -> u64 {
        self.commits.first().map_or(0, |c| c.txid)
    }
    pub fn max_txid(&self) -> u64 {
        self.commits.last().map_or(0, |c| c.txid)
    }
    pub fn last_commit(&self) -> Option<&CommitRecord> {
        self.commits.last()
    }

    /// Number of page records the body holds, from the commit records.
    pub fn page_records(&self) -> u64 {
        self.commits.iter().map(|c| u64::from(c.page_count)).sum()
    }

    /// Length of the serialized header of an object with `commits` commit
    /// records and a page index of `indexed` entries (its trailing CRC32
    /// included).
    pub fn encoded_len(commits: usize, indexed: usize) -> usize {
        FIXED_HEADER + COMMIT_RECORD * commits + 4 * indexed + 4
    }

    /// Serialized header, including its trailing CRC32.
    pub fn encode(&self) -> Vec<u8> {
        let indexed = self.page_index.as_ref().map_or(0, Vec::len);
        let len = Self::encoded_len(self.commits.len(), indexed);
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(match self.kind {
            ObjectKind::Segment => &SEGMENT_MAGIC,
            ObjectKind::Snapshot => &SNAPSHOT_MAGIC,
        });
        b.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        let mut flags = self.flags | FLAG_LZ4;
        if self.wal.is_some() {
            flags |= FLAG_WAL_POSITION;
        }
        if self.page_index.is_some() {
            flags |= FLAG_PAGE_INDEX;
        }
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&self.key_id);
        b.extend_from_slice(&self.lineage.to_be_bytes());
        b.extend_from_slice(&self.page_size.to_be_bytes());
        b.extend_from_slice(&(len as u32).to_be_bytes());
        b.extend_from_slice(&self.min_txid().to_be_bytes());
        b.extend_from_slice(&self.max_txid().to_be_bytes());
        let w = self.wal.unwrap_or(WalPosition {
            salt1: 0,
            salt2: 0,
            checkpoint_seq: 0,
            frame: 0,
            checksum: (0, 0),
        });
        for v in [
            w.salt1,
            w.salt2,
            w.checkpoint_seq,
            w.frame,
            w.checksum.0,
            w.checksum.1,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&(self.commits.len() as u32).to_be_bytes());
        for c in &self.commits {
            b.extend_from_slice(&c.txid.to_be_bytes());
            b.extend_from_slice(&c.time_ms.to_be_bytes());
            b.extend_from_slice(&c.db_pages.to_be_bytes());
            b.extend_from_slice(&c.page_count.to_be_bytes());
            b.extend_from_slice(&c.checksum.unwrap_or(0).to_be_bytes());
            let cflags = if c.checksum.is_some() {
                COMMIT_CHECKSUM_KNOWN
            } else {
                0
            };
            b.extend_from_slice(&cflags.to_be_bytes());
        }
        for pgno in self.page_index.iter().flatten() {
            b.extend_from_slice(&pgno.to_be_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// Reads and validates a header from the start of an object.
    pub fn decode<R: Read>(r: &mut R) -> Result<ObjectHeader, FormatError> {
        let mut fixed = [0u8; FIXED_HEADER];
        read_exact(r, &mut fixed)?;
        let kind = match &fixed[0..4] {
            m if m == SEGMENT_MAGIC => ObjectKind::Segment,
            m if m == SNAPSHOT_MAGIC => ObjectKind::Snapshot,
            _ => return Err(FormatError::BadMagic),
        };
        let version = u16::from_be_bytes([fixed[4], fixed[5]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = u16::from_be_bytes([fixed[6], fixed[7]]);
        let header_len = be32(&fixed[28..]) as usize;
        let count = be32(&fixed[72..]);
        let records_len = FIXED_HEADER + COMMIT_RECORD * count as usize + 4;
        // The index's length is checked against the commit records once they
        // are read; until then it is only bounded.
        let max_index = if flags & FLAG_PAGE_INDEX != 0 {
            4 * MAX_INDEXED_PAGES as usize
        } else {
            0
        };
        if count > MAX_COMMITS
            || header_len < records_len
            || header_len > records_len + max_index
            || !(header_len - records_len).is_multiple_of(4)
        {
            return Err(FormatError::Malformed(format!(
                "header length {header_len} does not match {count} commit records"
            )));
        }
        let mut rest = vec![0u8; header_len - FIXED_HEADER];
        read_exact(r, &mut rest)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fixed);
        hasher.update(&rest[..rest.len() - 4]);
        let computed = hasher.finalize();
        let stored = be32(&rest[rest.len() - 4..]);
        if stored != computed {
            return Err(FormatError::HeaderChecksum { stored, computed });
        }
        if flags & FLAG_LZ4 == 0 || flags >> 4 != 0 {
            return Err(FormatError::UnsupportedFlags(flags));
        }
        if (flags & FLAG_ENCRYPTED != 0) != (fixed[8..16] != [0; 8]) {
            return Err(FormatError::Malformed(
                "the key id must be set exactly when the body is encrypted".into(),
            ));
        }
        let commits_end = COMMIT_RECORD * count as usize;
        let header = ObjectHeader {
            kind,
            flags: flags & !(FLAG_LZ4 | FLAG_WAL_POSITION | FLAG_PAGE_INDEX),
            key_id: fixed[8..16]
                .try_into()
                .map_err(|_| FormatError::Truncated)?,
            lineage: be64(&fixed[16..]),
            page_size: be32(&fixed[24..]),
            wal: (flags & FLAG_WAL_POSITION != 0).then(|| WalPosition {
                salt1: be32(&fixed[48..]),
                salt2: be32(&fixed[52..]),
                checkpoint_seq: be32(&fixed[56..]),
                frame: be32(&fixed[60..]),
                checksum: (be32(&fixed[64..]), be32(&fixed[68..])),
            }),
            commits: rest[..commits_end]
                .chunks_exact(COMMIT_RECORD)
                .map(decode_commit)
                .collect(),
            page_index: (flags & FLAG_PAGE_INDEX != 0).then(|| {
                rest[commits_end..rest.len() - 4]
                    .chunks_exact(4)
                    .map(be32)
                    .collect()
            }),
        };
        header.validate(be64(&fixed[32..]), be64(&fixed[40..]))?;
        // The encoded header is the ciphertext's associated data: it must be
        // exactly the stored bytes, or a change to a field decoding ignores
        // (like a WAL position without its flag) would go unauthenticated.
        if header.is_encrypted() && header.encode() != [&fixed[..], &rest[..]].concat() {
            return Err(FormatError::Malformed(
                "encrypted object with a non-canonical header".into(),
            ));
        }
        Ok(header)
    }

    fn validate(&self, min_txid: u64, max_txid: u64) -> Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::Malformed(m));
        if !(self.page_size.is_power_of_two() && (512..=65536).contains(&self.page_size)) {
            return bad(format!("invalid page size {}", self.page_size));
        }
        if self.commits.is_empty() {
            return bad("no commit records".into());
        }
        if self.kind == ObjectKind::Snapshot && self.commits.len() != 1 {
            return bad("a snapshot must have exactly one commit record".into());
        }
        if min_txid != self.min_txid() || max_txid != self.max_txid() {
            return bad("txid range does not match the commit records".into());
        }
        if let Some(index) = &self.page_index {
            if self.kind == ObjectKind::Snapshot {
                return bad("a snapshot has no page index".into());
            }
            if index.len() as u64 != self.page_records() {
                return bad(format!(
                    "page index has {} entries for {} page records",
                    index.len(),
                    self.page_records()
                ));
            }
            if index.contains(&0) {
                return bad("page index names page 0".into());
            }
        }
        for pair in self.commits.windows(2) {
            if pair[1].txid != pair[0].txid + 1 {
                return bad(format!(
                    "txid {} is followed by {}",
                    pair[0].txid, pair[1].txid
                ));
            }
            if pair[1].time_ms < pair[0].time_ms {
                return bad(format!("time goes backwards at txid {}", pair[1].txid));
            }
        }
        Ok(())
    }
}

fn decode_commit(c: &[u8]) -> CommitRecord {
    let known = be32(&c[32..]) & COMMIT_CHECKSUM_KNOWN != 0;
    CommitRecord {
        txid: be64(&c[0..]),
        time_ms: be64(&c[8..]) as i64,
        db_pages: be32(&c[16..]),
        page_count: be32(&c[20..]),
        checksum: known.then(|| be64(&c[24..])),
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), FormatError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::Truncated,
        _ => FormatError::Io(e),
    })
}

/// Checksums bytes passing through a writer.
pub(crate) struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W> CrcWriter<W> {
    pub(crate) fn new(inner: W) -> CrcWriter<W> {
        CrcWriter {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
    /// The inner writer: bytes written there bypass the checksum.
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
    pub(crate) fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checksums bytes passing through a reader.
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Streams an object body: page records in, LZ4 frame out, then the trailer.
pub struct BodyWriter<W: Write> {
    encoder: FrameEncoder<CrcWriter<W>>,
    kind: ObjectKind,
}

impl<W: Write> BodyWriter<W> {
    /// `out` must already hold the encoded header.
    pub fn new(out: W, kind: ObjectKind) -> BodyWriter<W> {
        let crc = CrcWriter {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        // 64 KiB blocks, independent: what lz4_flex chose by default for
        // every object walstream ever wrote (the first write was at most a
        // page), stated so a reader can decode one block alone.
        let info = FrameInfo::new().block_size(BlockSize::Max64KB);
        BodyWriter {
            encoder: FrameEncoder::with_frame_info(info, crc),
            kind,
        }
    }

    /// Appends one page record (snapshots: pages must come in order 1, 2, 3, ...).
    pub fn write_page(&mut self, pgno: u32, page: &[u8]) -> io::Result<()> {
        if self.kind == ObjectKind::Segment {
            self.encoder.write_all(&pgno.to_be_bytes())?;
        }
        self.encoder.write_all(page)
    }

    /// Ends the LZ4 frame, writes the body CRC and returns the output.
    pub fn finish(self) -> Result<W, FormatError> {
        let mut crc_out = self
            .encoder
            .finish()
            .map_err(|e| FormatError::Io(io::Error::other(e.to_string())))?;
        let crc = crc_out.crc.clone().finalize();
        crc_out.inner.write_all(&crc.to_be_bytes())?;
        Ok(crc_out.inner)
    }
}

/// Encodes a whole segment in memory.
pub fn encode_segment(
    header: &ObjectHeader,
    pages: &[(u32, &[u8])],
) -> Result<Vec<u8>, FormatError> {
    let mut w = BodyWriter::new(header.encode(), ObjectKind::Segment);
    for (pgno, page) in pages {
        w.write_page(*pgno, page)?;
    }
    w.finish()
}

/// Where the LZ4 frame comes from: the stored bytes, or their decryption.
enum Source<R: Read> {
    Plain(CrcReader<R>),
    Sealed(Box<Opener<R>>),
}

impl<R: Read> Source<R> {
    /// The LZ4 frame of the body that `r` holds from here: decrypted with
    /// the key the header names, or the stored bytes checksummed on the way.
    fn open(r: R, header: &ObjectHeader, keys: &Keyring) -> Result<Source<R>, FormatError> {
        Ok(match header.key_id() {
            Some(id) => {
                let key = keys.key_for(id)?;
                Source::Sealed(Box::new(Opener::new(r, key, &header.encode())?))
            }
            None => Source::Plain(CrcReader {
                inner: r,
                crc: crc32fast::Hasher::new(),
            }),
        })
    }

    /// After the frame's last byte: checks the trailer against the body's
    /// CRC and that nothing follows it (encrypted: that the last chunk was
    /// there and no plaintext is left).
    fn finish(&mut self) -> Result<(), FormatError> {
        let crc_reader = match self {
            Source::Plain(r) => r,
            Source::Sealed(opener) => return opener.finish(),
        };
        let computed = crc_reader.crc.clone().finalize();
        let mut trailer = [0u8; 4];
        read_exact(&mut crc_reader.inner, &mut trailer)?;
        let stored = u32::from_be_bytes(trailer);
        if stored != computed {
            return Err(FormatError::BodyChecksum { stored, computed });
        }
        let mut more = [0u8; 1];
        if crc_reader.inner.read(&mut more)? != 0 {
            return Err(FormatError::Malformed("bytes after the trailer".into()));
        }
        Ok(())
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(r) => r.read(buf),
            Source::Sealed(r) => r.read(buf),
        }
    }
}

/// Streams an object's body back out as page records.
pub struct BodyReader<R: Read> {
    decoder: FrameDecoder<Source<R>>,
    header: ObjectHeader,
    commit: usize,
    left_in_commit: u32,
    next_snapshot_page: u32,
    /// Page records read so far (their position in the page index).
    record: usize,
}

/// One page record from a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    /// Index into `header.commits` of the commit this page belongs to.
    pub commit: usize,
    pub pgno: u32,
}

impl<R: Read> BodyReader<R> {
    /// `r` must be positioned right after the header. An encrypted body needs
    /// its key in `keys`; a plain one ignores them.
    pub fn new(r: R, header: ObjectHeader, keys: &Keyring) -> Result<BodyReader<R>, FormatError> {
        let source = Source::open(r, &header, keys)?;
        let left = header.commits.first().map_or(0, |c| c.page_count);
        Ok(BodyReader {
            decoder: FrameDecoder::new(source),
            header,
            commit: 0,
            left_in_commit: left,
            next_snapshot_page: 1,
            record: 0,
        })
    }

    pub fn header(&self) -> &ObjectHeader {
        &self.header
    }

    /// Reads the next page record into `page` (page-size long); `None` at the end of
    /// the records. Call [`BodyReader::finish`] after `None` to check the trailer.
    pub fn next_page(&mut self, page: &mut [u8]) -> Result<Option<PageRef>, FormatError> {
        while self.left_in_commit == 0 {
            if self.commit + 1 >= self.header.commits.len() {
                return Ok(None);
            }
            self.commit += 1;
            self.left_in_commit = self.header.commits[self.commit].page_count;
        }
        let pgno = match self.header.kind {
            ObjectKind::Snapshot => {
                self.next_snapshot_page += 1;
                self.next_snapshot_page - 1
            }
            ObjectKind::Segment => {
                let mut b = [0u8; 4];
                self.read_body(&mut b)?;
                u32::from_be_bytes(b)
            }
        };
        let commit = &self.header.commits[self.commit];
        if pgno == 0 || pgno > commit.db_pages.max(1) && self.header.kind == ObjectKind::Snapshot {
            return Err(FormatError::Malformed(format!(
                "page number {pgno} out of range"
            )));
        }
        check_indexed(&self.header, self.record, pgno)?;
        self.read_body(page)?;
        self.left_in_commit -= 1;
        self.record += 1;
        Ok(Some(PageRef {
            commit: self.commit,
            pgno,
        }))
    }

    fn read_body(&mut self, buf: &mut [u8]) -> Result<(), FormatError> {
        self.decoder.read_exact(buf).map_err(map_decode_err)
    }

    /// Checks that the body ends here and that its CRC matches the trailer
    /// (and, encrypted, that the last chunk was there).
    pub fn finish(mut self) -> Result<(), FormatError> {
        let mut extra = [0u8; 1];
        if self.decoder.read(&mut extra).map_err(map_decode_err)? != 0 {
            return Err(FormatError::Malformed(
                "body longer than its page records".into(),
            ));
        }
        self.decoder.get_mut().finish()
    }
}

/// A page record's page number must be the one the page index names for it.
fn check_indexed(header: &ObjectHeader, record: usize, pgno: u32) -> Result<(), FormatError> {
    match header.page_index.as_ref().and_then(|ix| ix.get(record)) {
        Some(&indexed) if indexed != pgno => Err(FormatError::Malformed(format!(
            "page record {record} is page {pgno}, but the page index says page {indexed}"
        ))),
        _ => Ok(()),
    }
}

fn map_decode_err(e: io::Error) -> FormatError {
    let e = match crate::crypto::unwrap_format_error(e) {
        Ok(f) => return f,
        Err(e) => e,
    };
    match e.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::Truncated,
        _ => FormatError::Decompress(e.to_string()),
    }
}

/// Fully decodes an in-memory object: header, every page record, trailer check.
/// Page records with their bytes.
pub type Pages = Vec<(PageRef, Vec<u8>)>;

pub fn decode_all(bytes: &[u8], keys: &Keyring) -> Result<(ObjectHeader, Pages), FormatError> {
    let mut cursor = bytes;
    let header = ObjectHeader::decode(&mut cursor)?;
    let mut reader = BodyReader::new(cursor, header.clone(), keys)?;
    let mut pages = Vec::new();
    let mut buf = vec![0u8; header.page_size as usize];
    while let Some(r) = reader.next_page(&mut buf)? {
        pages.push((r, buf.clone()));
    }
    reader.finish()?;
    Ok((header, pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ObjectHeader {
        ObjectHeader {
            kind: ObjectKind::Segment,
            flags: 0,
            key_id: [0; 8],
            lineage: 0xabcdef,
            page_size: 512,
            wal: Some(WalPosition {
                salt1: 1,
                salt2: 2,
                checkpoint_seq: 3,
                frame: 4,
                checksum: (5, 6),
            }),
            commits: vec![
                CommitRecord {
                    txid: 7,
                    time_ms: 100,
                    db_pages: 3,
                    page_count: 2,
                    checksum: Some(42),
                },
                CommitRecord {
                    txid: 8,
                    time_ms: 101,
                    db_pages: 2,
                    page_count: 1,
                    checksum: None,
                },
            ],
            page_index: Some(vec![1, 3, 2]),
        }
    }

    fn sample() -> Vec<u8> {
        let p1 = vec![1u8; 512];
        let p2 = vec![2u8; 512];
        let p3 = vec![3u8; 512];
        encode_segment(&header(), &[(1, &p1), (3, &p2), (2, &p3)]).unwrap()
    }

    #[test]
    fn segment_round_trip() {
        let (h, pages) = decode_all(&sample(), &Keyring::default()).unwrap();
        assert_eq!(h, header());
        let got: Vec<(usize, u32, u8)> = pages
            .iter()
            .map(|(r, p)| (r.commit, r.pgno, p[0]))
            .collect();
        assert_eq!(got, vec![(0, 1, 1), (0, 3, 2), (1, 2, 3)]);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(
                decode_all(&bad, &Keyring::default()).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let good = sample();
        for len in 0..good.len() {
            assert!(
                decode_all(&good[..len], &Keyring::default()).is_err(),
                "truncation to {len} went unnoticed"
            );
        }
    }

    /// Without an index an object is byte for byte what walstream wrote
    /// before indexes existed (flag bit 3 clear, no index bytes), and reads.
    #[test]
    fn objects_without_an_index_keep_the_old_layout() {
        let mut h = header();
        h.page_index = None;
        let p = vec![7u8; 512];
        let bytes = encode_segment(&h, &[(1, &p), (3, &p), (2, &p)]).unwrap();
        assert_eq!(be32(&bytes[28..]) as usize, 76 + 36 * 2 + 4);
        assert_eq!(
            u16::from_be_bytes([bytes[6], bytes[7]]) & FLAG_PAGE_INDEX,
            0
        );
        let (got, pages) = decode_all(&bytes, &Keyring::default()).unwrap();
        assert_eq!((got.page_index, pages.len()), (None, 3));

        let indexed = sample();
        assert_eq!(be32(&indexed[28..]) as usize, 76 + 36 * 2 + 4 * 3 + 4);
        assert_ne!(
            u16::from_be_bytes([indexed[6], indexed[7]]) & FLAG_PAGE_INDEX,
            0
        );
    }

    #[test]
    fn an_index_that_disagrees_with_the_body_is_refused() {
        let mut h = header();
        h.page_index = Some(vec![1, 3, 9]);
        let p = vec![7u8; 512];
        let bytes = encode_segment(&h, &[(1, &p), (3, &p), (2, &p)]).unwrap();
        let e = decode_all(&bytes, &Keyring::default()).unwrap_err();
        assert!(e.to_string().contains("page index says page 9"), "{e}");
    }

    #[test]
    fn an_index_of_the_wrong_length_or_on_a_snapshot_is_refused() {
        let mut short = header();
        short.page_index = Some(vec![1, 3]);
        let e = ObjectHeader::decode(&mut &short.encode()[..]).unwrap_err();
        assert!(
            e.to_string().contains("2 entries for 3 page records"),
            "{e}"
        );

        let mut snap = header();
        snap.kind = ObjectKind::Snapshot;
        snap.commits.truncate(1);
        snap.commits[0].page_count = 3;
        let e = ObjectHeader::decode(&mut &snap.encode()[..]).unwrap_err();
        assert!(
            e.to_string().contains("a snapshot has no page index"),
            "{e}"
        );
    }
}
