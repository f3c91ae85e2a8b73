//! Reading chosen page records of an object body, decoding only the LZ4
//! blocks that hold them (see `docs/format.md`, "Reading selected page
//! records").
//!
//! Page records have a fixed length (4 + page size in a segment, the page
//! size in a snapshot), so record `i` is at content offset `i × length`.
//! Blocks before it are walked, not decoded; every stored byte still passes
//! through the trailer's CRC (or the decryption's tags), so skipping a block
//! proves as much about its integrity as decoding it did.

use std::io::Read;

use super::blocks::{Block, FrameBlocks, Progress};
use super::{check_indexed, FormatError, ObjectHeader, ObjectKind, Source};
use crate::crypto::Keyring;

/// The buffers of a `RecordReader`, handed from one reader to the next: a
/// restore reads hundreds of small segments, and zeroing fresh 64 KiB
/// buffers for each cost more than decoding them.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Decoded block content.
    block: Vec<u8>,
    /// A block as stored.
    stored: Vec<u8>,
}

/// Reads page records by number, in increasing order, from one body.
pub struct RecordReader<R: Read> {
    blocks: FrameBlocks<Source<R>>,
    header: ObjectHeader,
    record_len: u64,
    records: u64,
    /// The current block (the one `blocks` returned last), when there is
    /// one: where its content starts, how much of it is decoded into
    /// `block`, and whether that is all of it.
    current: bool,
    block_start: u64,
    progress: Progress,
    block_done: bool,
    block: Vec<u8>,
    /// The lowest record number that may still be read.
    next_record: u64,
    /// Blocks decoded (in part) and blocks only walked, for the debug log.
    decoded: u64,
    walked: u64,
}

impl<R: Read> RecordReader<R> {
    /// `r` must be positioned right after the header. An encrypted body needs
    /// its key in `keys`.
    pub fn new(r: R, header: ObjectHeader, keys: &Keyring) -> Result<RecordReader<R>, FormatError> {
        RecordReader::with_scratch(r, header, keys, Scratch::default())
    }

    /// As `new`, with the buffers an earlier reader gave back.
    pub fn with_scratch(
        r: R,
        header: ObjectHeader,
        keys: &Keyring,
        scratch: Scratch,
    ) -> Result<RecordReader<R>, FormatError> {
        let Scratch { mut block, stored } = scratch;
        let blocks = FrameBlocks::with_buf(Source::open(r, &header, keys)?, stored)?;
        block.resize(blocks.max_block(), 0);
        let page_size = u64::from(header.page_size);
        let record_len = match header.kind {
            ObjectKind::Segment => 4 + page_size,
            ObjectKind::Snapshot => page_size,
        };
        Ok(RecordReader {
            block,
            blocks,
            record_len,
            records: header.page_records(),
            header,
            current: false,
            block_start: 0,
            progress: Progress::default(),
            block_done: false,
            next_record: 0,
            decoded: 0,
            walked: 0,
        })
    }

    pub fn header(&self) -> &ObjectHeader {
        &self.header
    }

    /// Blocks decoded (in part) and blocks only walked so far.
    pub fn blocks_read(&self) -> (u64, u64) {
        (self.decoded, self.walked)
    }

    /// Reads page record `i` (0-based, in body order) into `page`, which is
    /// page-size long, and returns its page number: the one the record
    /// holds in a segment (checked against the page index, when there is
    /// one), `i + 1` in a snapshot. Records must be read in increasing order.
    pub fn read(&mut self, i: u64, page: &mut [u8]) -> Result<u32, FormatError> {
        if i < self.next_record || i >= self.records {
            return Err(FormatError::Malformed(format!(
                "page record {i} read out of order or out of range"
            )));
        }
        self.next_record = i + 1;
        let start = i * self.record_len;
        let end = start + self.record_len;
        // A segment's record is the page number, then the page: bytes go
        // straight from the block to where they belong.
        let prefix: u64 = match self.header.kind {
            ObjectKind::Segment => 4,
            ObjectKind::Snapshot => 0,
        };
        let mut number = [0u8; 4];
        let mut pos = start;
        while pos < end {
            if !self.current {
                self.advance(pos)?;
                continue;
            }
            let have = self.block_start + self.progress.output() as u64;
            if pos < have {
                let to = end.min(have);
                let mut src = self.content(pos - self.block_start, to - self.block_start)?;
                let mut at = pos - start;
                if at < prefix {
                    let n = ((prefix - at) as usize).min(src.len());
                    number[at as usize..at as usize + n].copy_from_slice(&src[..n]);
                    src = &src[n..];
                    at += n as u64;
                }
                if !src.is_empty() {
                    let at = (at - prefix) as usize;
                    page[at..at + src.len()].copy_from_slice(src);
                }
                pos = to;
            } else if !self.block_done {
                // Decode only as far as this record reaches into the block.
                let need = (end - self.block_start).min(self.block.len() as u64) as usize;
                let block = self.blocks.current().ok_or_else(short)?;
                self.block_done = block.decode_until(&mut self.progress, &mut self.block, need)?;
            } else {
                self.advance(pos)?;
            }
        }
        if prefix == 0 {
            return u32::try_from(i + 1)
                .map_err(|_| FormatError::Malformed("too many pages".into()));
        }
        let pgno = u32::from_be_bytes(number);
        if pgno == 0 {
            return Err(FormatError::Malformed(
                "page number 0 in a page record".into(),
            ));
        }
        check_indexed(&self.header, i as usize, pgno)?;
        Ok(pgno)
    }

    /// Bytes `from..to` of the current block's decoded content: a stored
    /// block is read where it lies, a compressed one from what was decoded.
    fn content(&self, from: u64, to: u64) -> Result<&[u8], FormatError> {
        let (from, to) = (from as usize, to as usize);
        match self.blocks.current().ok_or_else(short)? {
            Block::Stored(b) => b.get(from..to).ok_or_else(short),
            Block::Compressed(_) => Ok(&self.block[from..to]),
        }
    }

    /// Where the content after the current block starts (its undecoded rest
    /// is walked for its length); 0 before the first block.
    fn leave_current(&mut self) -> Result<u64, FormatError> {
        if !self.current {
            return Ok(self.block_start);
        }
        self.current = false;
        let len = match self.block_done {
            true => self.progress.output(),
            false => {
                let block = self.blocks.current().ok_or_else(short)?;
                block.finish_len(self.progress, self.block.len())?
            }
        };
        self.block_start += len as u64;
        Ok(self.block_start)
    }

    /// Moves to the block that may hold content offset `pos`: the blocks
    /// before it are walked for their length, not decoded (the blocks
    /// walstream writes are all full but the last, so the first block that
    /// starts less than a maximum block before `pos` is the one).
    fn advance(&mut self, pos: u64) -> Result<(), FormatError> {
        let mut start = self.leave_current()?;
        let max = self.block.len();
        loop {
            let block = self.blocks.next_block()?.ok_or_else(short)?;
            if pos < start + max as u64 {
                self.decoded += 1;
                self.current = true;
                self.block_start = start;
                self.progress = Progress::default();
                self.block_done = false;
                return Ok(());
            }
            self.walked += 1;
            start += block.content_len(max)? as u64;
            self.block_start = start;
        }
    }

    /// Walks the rest of the frame without decoding it, checks that the
    /// content is exactly the page records, then the trailer (encrypted:
    /// every chunk's tag and the last chunk).
    pub fn finish(&mut self) -> Result<(), FormatError> {
        let mut end = self.leave_current()?;
        let max = self.block.len();
        while let Some(block) = self.blocks.next_block()? {
            self.walked += 1;
            end += block.content_len(max)? as u64;
        }
        let expected = self.records * self.record_len;
        if end != expected {
            return Err(FormatError::Malformed(format!(
                "body holds {end} bytes of page records, its header {expected}"
            )));
        }
        self.blocks.get_mut().finish()
    }

    /// The buffers, for the next reader's `with_scratch`.
    pub fn into_scratch(self) -> Scratch {
        Scratch {
            block: self.block,
            stored: self.blocks.into_buf(),
        }
    }
}

fn short() -> FormatError {
    FormatError::Malformed("body shorter than its page records".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_all, encode_segment, BodyWriter, CommitRecord};

    /// Pages that compress a little (several LZ4 blocks, some stored raw).
    fn pages(n: u32, page_size: usize) -> Vec<Vec<u8>> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|i| {
                (0..page_size)
                    .map(|j| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if (i % 3 == 0) || j % 4 == 0 {
                            x as u8
                        } else {
                            i as u8
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn segment(page_size: u32, pgnos: &[u32], indexed: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
        let data = pages(pgnos.len() as u32, page_size as usize);
        let header = ObjectHeader {
            kind: ObjectKind::Segment,
            flags: 0,
            key_id: [0; 8],
            lineage: 1,
            page_size,
            wal: None,
            commits: vec![CommitRecord {
                txid: 5,
                time_ms: 1,
                db_pages: 1000,
                page_count: pgnos.len() as u32,
                checksum: None,
            }],
            page_index: indexed.then(|| pgnos.to_vec()),
        };
        let refs: Vec<(u32, &[u8])> = pgnos
            .iter()
            .copied()
            .zip(data.iter().map(|p| &p[..]))
            .collect();
        (encode_segment(&header, &refs).unwrap(), data)
    }

    fn open(bytes: &[u8]) -> RecordReader<&[u8]> {
        let mut cursor = bytes;
        let header = ObjectHeader::decode(&mut cursor).unwrap();
        RecordReader::new(cursor, header, &Keyring::default()).unwrap()
    }

    /// A reader handed an earlier reader's buffers (larger pages, other
    /// content) reads exactly what a fresh one reads.
    #[test]
    fn reused_buffers_read_like_fresh_ones() {
        let mut scratch = Scratch::default();
        for page_size in [65536, 4096, 512, 4096] {
            let count = (1 << 20) / page_size as usize;
            let pgnos: Vec<u32> = (1..=count as u32).collect();
            let (bytes, data) = segment(page_size, &pgnos, true);
            let mut cursor = &bytes[..];
            let header = ObjectHeader::decode(&mut cursor).unwrap();
            let mut reader =
                RecordReader::with_scratch(cursor, header, &Keyring::default(), scratch).unwrap();
            let mut page = vec![0; page_size as usize];
            for r in (0..count).step_by(3) {
                let pgno = reader.read(r as u64, &mut page).unwrap();
                assert_eq!(
                    (pgno, &page),
                    (pgnos[r], &data[r]),
                    "page size {page_size} record {r}"
                );
            }
            reader.finish().unwrap();
            scratch = reader.into_scratch();
            assert!(scratch.block.len() >= page_size as usize);
        }
    }

    /// Any increasing choice of records reads back what a full decode gives,
    /// at page sizes where records straddle one or several blocks, with or
    /// without a page index.
    #[test]
    fn chosen_records_equal_the_full_decode() {
        for (page_size, indexed) in [(512, true), (4096, false), (65536, true)] {
            let count = (1 << 21) / page_size as usize;
            let pgnos: Vec<u32> = (0..count as u32).map(|i| (i * 7) % 97 + 1).collect();
            let (bytes, data) = segment(page_size, &pgnos, indexed);
            let (_, full) = decode_all(&bytes, &Keyring::default()).unwrap();
            for step in [1, 5, 33] {
                let mut reader = open(&bytes);
                let mut page = vec![0; page_size as usize];
                for r in (step / 2..count).step_by(step) {
                    let pgno = reader.read(r as u64, &mut page).unwrap();
                    assert_eq!((pgno, &page), (full[r].0.pgno, &data[r]), "record {r}");
                }
                reader.finish().unwrap();
            }
            // Nothing read: the whole body is only walked, and checked.
            open(&bytes).finish().unwrap();
        }
    }

    #[test]
    fn snapshot_records_are_pages_in_order() {
        let data = pages(300, 1024);
        let header = ObjectHeader {
            kind: ObjectKind::Snapshot,
            flags: 0,
            key_id: [0; 8],
            lineage: 1,
            page_size: 1024,
            wal: None,
            commits: vec![CommitRecord {
                txid: 1,
                time_ms: 1,
                db_pages: 300,
                page_count: 300,
                checksum: Some(0),
            }],
            page_index: None,
        };
        let mut w = BodyWriter::new(header.encode(), ObjectKind::Snapshot);
        for (i, p) in data.iter().enumerate() {
            w.write_page(i as u32 + 1, p).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut reader = open(&bytes);
        let mut page = vec![0; 1024];
        for r in [0u64, 63, 64, 65, 299] {
            assert_eq!(reader.read(r, &mut page).unwrap(), r as u32 + 1);
            assert_eq!(page, data[r as usize]);
        }
        reader.finish().unwrap();
    }

    /// A damaged byte anywhere is caught: by the block walk, the decode, the
    /// index check or the trailer, whether or not its block was decoded.
    #[test]
    fn damage_is_caught_whatever_is_read() {
        let pgnos: Vec<u32> = (1..=200).collect();
        let (good, _) = segment(512, &pgnos, true);
        let header_len = ObjectHeader::decode(&mut &good[..])
            .map(|h| h.encode().len())
            .unwrap();
        for i in (header_len..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            let caught = (|| {
                let mut cursor = &bad[..];
                let header = ObjectHeader::decode(&mut cursor)?;
                let mut reader = RecordReader::new(cursor, header, &Keyring::default())?;
                let mut page = vec![0; 512];
                reader.read(150, &mut page)?;
                reader.finish()
            })();
            assert!(caught.is_err(), "flip at byte {i} went unnoticed");
        }
        let mut reader = open(&good);
        let mut page = vec![0; 512];
        reader.read(10, &mut page).unwrap();
        assert!(reader.read(10, &mut page).is_err(), "out of order");
    }

    /// Random damage to the body with the trailer CRC made right again, so
    /// it reaches the LZ4 decoding: reading every record block by block
    /// never panics, and where it and the full decode both succeed they
    /// give the same records.
    #[test]
    fn damaged_bodies_never_panic_and_agree_with_the_full_decode() {
        let pgnos: Vec<u32> = (0..40).map(|i| i % 7 + 1).collect();
        let (good, _) = segment(512, &pgnos, true);
        let header_len = ObjectHeader::decode(&mut &good[..])
            .map(|h| h.encode().len())
            .unwrap();
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut agreed = 0;
        for _ in 0..3000 {
            let mut bad = good.clone();
            for _ in 0..1 + next() % 3 {
                let i = header_len + (next() as usize) % (bad.len() - header_len - 4);
                bad[i] ^= 1 << (next() % 8);
            }
            let body_end = bad.len() - 4;
            let crc = crc32fast::hash(&bad[header_len..body_end]);
            bad[body_end..].copy_from_slice(&crc.to_be_bytes());
            let full = decode_all(&bad, &Keyring::default());
            let read = (|| {
                let mut cursor = &bad[..];
                let header = ObjectHeader::decode(&mut cursor)?;
                let mut reader = RecordReader::new(cursor, header, &Keyring::default())?;
                let mut page = vec![0; 512];
                let mut out = Vec::new();
                for i in 0..pgnos.len() as u64 {
                    out.push((reader.read(i, &mut page)?, page.clone()));
                }
                reader.finish()?;
                Ok::<_, FormatError>(out)
            })();
            if let (Ok((_, want)), Ok(got)) = (&full, &read) {
                agreed += 1;
                assert_eq!(got.len(), want.len());
                for ((pgno, page), (r, data)) in got.iter().zip(want) {
                    assert_eq!((*pgno, page), (r.pgno, data));
                }
            }
        }
        assert!(
            agreed > 0,
            "some damage leaves a readable body (literal bytes)"
        );
    }
}
