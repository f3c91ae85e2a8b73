//! Walking an LZ4 frame block by block, so a reader can decode only the
//! blocks that hold the page records it needs (see `docs/format.md`,
//! "Reading selected page records").
//!
//! Every block of a walstream body is independent (lz4_flex's default, and
//! what `BodyWriter` states), so one block decodes alone. How many bytes a
//! block decodes to is not stored in the frame; [`content_len`] finds it by
//! walking the block's sequences without producing output, so the offset of
//! every record stays exact whatever the writer's block sizes were.

use std::io::Read;

use super::{read_exact, FormatError};

const FRAME_MAGIC: u32 = 0x184D_2204;
const FLG_VERSION_MASK: u8 = 0b1100_0000;
const FLG_VERSION: u8 = 0b0100_0000;
const FLG_INDEPENDENT: u8 = 1 << 5;
const FLG_BLOCK_CHECKSUM: u8 = 1 << 4;
const FLG_CONTENT_SIZE: u8 = 1 << 3;
const FLG_CONTENT_CHECKSUM: u8 = 1 << 2;
const FLG_RESERVED: u8 = 1 << 1;
const FLG_DICT_ID: u8 = 1;
/// High bit of a block's size field: the block is stored uncompressed.
const BLOCK_UNCOMPRESSED: u32 = 1 << 31;
/// LZ4's minimum match length.
const MIN_MATCH: usize = 4;

fn malformed(what: impl Into<String>) -> FormatError {
    FormatError::Malformed(format!("LZ4 frame: {}", what.into()))
}

/// One block of a frame, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block<'a> {
    Compressed(&'a [u8]),
    Stored(&'a [u8]),
}

/// How far decoding one block has come: bytes of the stored block consumed
/// (always at a sequence boundary) and content bytes produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    input: usize,
    output: usize,
}

impl Progress {
    /// Content bytes decoded so far.
    pub(crate) fn output(&self) -> usize {
        self.output
    }
}

impl Block<'_> {
    /// How many bytes the block decodes to (at most `max`), found without
    /// decoding it.
    pub(crate) fn content_len(&self, max: usize) -> Result<usize, FormatError> {
        self.finish_len(Progress::default(), max)
    }

    /// The block's whole content length when `p` of it is decoded: the rest
    /// is walked, not decoded.
    pub(crate) fn finish_len(&self, mut p: Progress, max: usize) -> Result<usize, FormatError> {
        let len = match self {
            Block::Stored(b) => b.len(),
            Block::Compressed(b) => {
                sequences(b, &mut p, None, usize::MAX)?;
                p.output
            }
        };
        if len > max {
            return Err(malformed(format!(
                "a block decodes to {len} bytes, more than the frame's maximum {max}"
            )));
        }
        Ok(len)
    }

    /// Decodes more of the block into `out` (its content from offset 0; as
    /// long as the frame's largest block), continuing from `p`, until at
    /// least `need` content bytes are there or the block ends. Returns
    /// whether it ended. A stored block is not copied: its content is the
    /// block itself.
    pub(crate) fn decode_until(
        &self,
        p: &mut Progress,
        out: &mut [u8],
        need: usize,
    ) -> Result<bool, FormatError> {
        match self {
            // A stored block is its own content: nothing to copy, the
            // caller reads it where it lies.
            Block::Stored(b) if b.len() <= out.len() => {
                *p = Progress {
                    input: b.len(),
                    output: b.len(),
                };
                Ok(true)
            }
            Block::Stored(_) => Err(malformed("stored block larger than the frame's maximum")),
            Block::Compressed(b) => sequences(b, p, Some(out), need),
        }
    }
}

/// Runs an LZ4 block's sequences from `p` until `need` content bytes are
/// produced or the block ends (returns whether it ended): decoded into
/// `out`, or, without it, only walked for the length (token, literal length,
/// literals, offset, match length; no byte is copied). Stops at sequence
/// boundaries, so it can be resumed. Fails on a block that is not well
/// formed: lengths past its end, an offset of 0 or before the block's
/// start, content longer than `out`, or a last sequence with a match.
fn sequences(
    block: &[u8],
    p: &mut Progress,
    mut out: Option<&mut [u8]>,
    need: usize,
) -> Result<bool, FormatError> {
    let bad = || malformed("corrupt compressed block");
    while p.output < need && p.input < block.len() {
        let token = block[p.input];
        let mut pos = p.input + 1;
        let literals = extended_len(block, &mut pos, usize::from(token >> 4))?;
        let lit_end = pos.checked_add(literals).filter(|&e| e <= block.len());
        let lit_end = lit_end.ok_or_else(bad)?;
        if let Some(out) = out.as_deref_mut() {
            let dst = out.get_mut(p.output..p.output + literals).ok_or_else(bad)?;
            dst.copy_from_slice(&block[pos..lit_end]);
        }
        let produced = p.output + literals;
        if lit_end == block.len() {
            // The last sequence has literals only.
            *p = Progress {
                input: lit_end,
                output: produced,
            };
            return Ok(true);
        }
        let offset = block.get(lit_end..lit_end + 2).ok_or_else(bad)?;
        let offset = usize::from(u16::from_le_bytes([offset[0], offset[1]]));
        let mut pos = lit_end + 2;
        if offset == 0 || offset > produced {
            return Err(bad());
        }
        let len = extended_len(block, &mut pos, usize::from(token & 0xF))? + MIN_MATCH;
        if pos == block.len() {
            return Err(malformed("compressed block ends with a match"));
        }
        if let Some(out) = out.as_deref_mut() {
            copy_match(out, produced, offset, len).ok_or_else(bad)?;
        }
        *p = Progress {
            input: pos,
            output: produced + len,
        };
    }
    Ok(p.input == block.len())
}

/// LZ4's match copy: `len` bytes at `at` repeat the bytes `offset` before
/// them (overlapping when `offset < len`, which repeats a pattern). `None`
/// when it does not fit in `out`.
fn copy_match(out: &mut [u8], at: usize, offset: usize, len: usize) -> Option<()> {
    let src = at.checked_sub(offset)?;
    if at.checked_add(len)? > out.len() {
        return None;
    }
    // Copy in chunks that never overlap their source: each starts a whole
    // number of periods after `at`, so the bytes from `src` are what comes
    // next, and the chunk can double every time.
    let mut done = 0;
    while done < len {
        let n = (offset + done).min(len - done);
        out.copy_within(src..src + n, at + done);
        done += n;
    }
    Some(())
}

/// The blocks of one LZ4 frame read from `r`, in order.
pub(crate) struct FrameBlocks<R> {
    r: R,
    max_block: usize,
    block_checksums: bool,
    content_checksum: bool,
    ended: bool,
    buf: Vec<u8>,
    /// Whether `buf` holds a block, stored uncompressed or not.
    last: Option<bool>,
}

impl<R: Read> FrameBlocks<R> {
    /// Reads the frame descriptor. Dictionaries and linked blocks are
    /// refused: walstream never wrote them (and lz4_flex reads no dictionary).
    #[cfg(test)]
    pub(crate) fn new(r: R) -> Result<FrameBlocks<R>, FormatError> {
        FrameBlocks::with_buf(r, Vec::new())
    }

    /// As `new`, reading blocks into `buf` (from an earlier `into_buf`).
    pub(crate) fn with_buf(mut r: R, buf: Vec<u8>) -> Result<FrameBlocks<R>, FormatError> {
        let mut head = [0u8; 6];
        read_exact(&mut r, &mut head)?;
        if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != FRAME_MAGIC {
            return Err(malformed("bad magic number"));
        }
        let (flg, bd) = (head[4], head[5]);
        if flg & FLG_VERSION_MASK != FLG_VERSION || flg & FLG_RESERVED != 0 {
            return Err(malformed(format!(
                "unsupported descriptor flags {flg:#04x}"
            )));
        }
        if flg & FLG_DICT_ID != 0 {
            return Err(malformed("frames with a dictionary are not supported"));
        }
        if flg & FLG_INDEPENDENT == 0 {
            return Err(malformed(
                "linked blocks (walstream writes independent blocks)",
            ));
        }
        if bd & 0x8F != 0 {
            return Err(malformed("reserved block size bits set"));
        }
        let max_block = match bd >> 4 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            n => return Err(malformed(format!("invalid block size code {n}"))),
        };
        // Content size (not needed: the header's records say how long the
        // content is) and the descriptor's checksum byte (the trailer CRC
        // covers these bytes) are skipped.
        let mut rest = [0u8; 9];
        let skip = if flg & FLG_CONTENT_SIZE != 0 { 9 } else { 1 };
        read_exact(&mut r, &mut rest[..skip])?;
        Ok(FrameBlocks {
            r,
            max_block,
            block_checksums: flg & FLG_BLOCK_CHECKSUM != 0,
            content_checksum: flg & FLG_CONTENT_CHECKSUM != 0,
            ended: false,
            buf,
            last: None,
        })
    }

    /// The block buffer, for the next frame's `with_buf`.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// The most bytes one block decodes to.
    pub(crate) fn max_block(&self) -> usize {
        self.max_block
    }

    /// The next block as stored; `None` after the end mark (and the content
    /// checksum, if any, which is not verified: the trailer CRC covers it and
    /// the content is proven by the whole-database checksum).
    pub(crate) fn next_block(&mut self) -> Result<Option<Block<'_>>, FormatError> {
        if self.ended {
            return Ok(None);
        }
        let mut word = [0u8; 4];
        read_exact(&mut self.r, &mut word)?;
        let size = u32::from_le_bytes(word);
        if size == 0 {
            self.ended = true;
            self.last = None;
            if self.content_checksum {
                read_exact(&mut self.r, &mut word)?;
            }
            return Ok(None);
        }
        let len = (size & !BLOCK_UNCOMPRESSED) as usize;
        if len > self.max_block + self.max_block / 255 + 16 {
            return Err(malformed(format!("block of {len} bytes is too large")));
        }
        self.buf.resize(len, 0);
        read_exact(&mut self.r, &mut self.buf)?;
        if self.block_checksums {
            read_exact(&mut self.r, &mut word)?;
        }
        self.last = Some(size & BLOCK_UNCOMPRESSED != 0);
        Ok(self.current())
    }

    /// The block [`FrameBlocks::next_block`] returned last, again.
    pub(crate) fn current(&self) -> Option<Block<'_>> {
        self.last.map(|stored| match stored {
            true => Block::Stored(&self.buf),
            false => Block::Compressed(&self.buf),
        })
    }

    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }
}

/// The length an LZ4 block decodes to, found by walking its sequences.
#[cfg(test)]
fn content_len(block: &[u8]) -> Result<usize, FormatError> {
    let mut p = Progress::default();
    sequences(block, &mut p, None, usize::MAX)?;
    Ok(p.output)
}

/// A 4-bit length from a token, extended by following bytes when it is 15.
fn extended_len(block: &[u8], pos: &mut usize, nibble: usize) -> Result<usize, FormatError> {
    let mut len = nibble;
    if nibble == 15 {
        loop {
            let b = *block
                .get(*pos)
                .ok_or_else(|| malformed("corrupt compressed block"))?;
            *pos += 1;
            len += usize::from(b);
            if b != 255 {
                break;
            }
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    use std::io::Write;

    /// Data that mixes runs (long matches), repeats and noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match (i / 3000) % 3 {
                    // A long noisy stretch makes blocks that are stored raw.
                    _ if (200_000..400_000).contains(&i) => x as u8,
                    0 => 0,
                    1 => (i % 251) as u8,
                    _ => x as u8,
                }
            })
            .collect()
    }

    fn frame(data: &[u8], info: FrameInfo) -> Vec<u8> {
        let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// Decoding every block on its own, at the offsets the walked lengths
    /// give, reproduces the content, for every block size and option
    /// lz4_flex writes (block and content checksums included).
    #[test]
    fn blocks_decode_alone_at_their_walked_offsets() {
        let data = sample(700_000);
        let mut stored = 0;
        for info in [
            FrameInfo::new().block_size(BlockSize::Max64KB),
            FrameInfo::new().block_size(BlockSize::Max256KB),
            FrameInfo::new()
                .block_size(BlockSize::Max64KB)
                .block_checksums(true)
                .content_checksum(true)
                .content_size(Some(700_000)),
        ] {
            let bytes = frame(&data, info);
            let mut blocks = FrameBlocks::new(&bytes[..]).unwrap();
            let max = blocks.max_block();
            let mut out = Vec::new();
            let mut kinds = (0, 0);
            while let Some(b) = blocks.next_block().unwrap() {
                match b {
                    Block::Compressed(_) => kinds.0 += 1,
                    Block::Stored(_) => kinds.1 += 1,
                }
                let len = b.content_len(max).unwrap();
                let mut buf = vec![0; max];
                // Decoded in steps, resumed where each stopped, and whole
                // at once: the same content, the same length.
                let mut p = Progress::default();
                let mut need = 0;
                while !b.decode_until(&mut p, &mut buf, need).unwrap() {
                    assert!(p.output() >= need);
                    assert_eq!(b.finish_len(p, max).unwrap(), len);
                    need += 5000;
                }
                assert_eq!(p.output(), len);
                let mut whole = vec![0; max];
                match b {
                    Block::Compressed(c) => {
                        let n = lz4_flex::block::decompress_into(c, &mut whole).unwrap();
                        assert_eq!((n, &whole[..len]), (len, &buf[..len]));
                        out.extend_from_slice(&buf[..len]);
                    }
                    // A stored block is not copied: its bytes are the content.
                    Block::Stored(raw) => out.extend_from_slice(raw),
                }
            }
            assert_eq!(out, data);
            assert!(kinds.0 > 0, "{kinds:?}");
            stored += kinds.1;
            let mut rest = Vec::new();
            blocks.get_mut().read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
        assert!(stored > 0, "no block was stored raw");
    }

    /// Text-like content: short words from a small vocabulary with noise
    /// between them, so a block is mostly short literal runs and short
    /// matches at every distance.
    fn words(len: usize, seed: u64) -> Vec<u8> {
        const VOCAB: [&[u8]; 8] = [
            b"a",
            b"row",
            b"INSERT",
            b"page",
            b"0123456789abcdefXYZ",
            b"wal",
            b"\0\0",
            b"commit",
        ];
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(VOCAB[(x % 8) as usize]);
            for _ in 0..(x >> 8) % 5 {
                out.push((x >> 16) as u8);
                x = x.rotate_left(9);
            }
        }
        out.truncate(len);
        out
    }

    /// Short literals and matches decode as lz4_flex decodes them, into an
    /// output of exactly the content's length and into a larger one holding
    /// stale bytes.
    #[test]
    fn short_sequences_decode_like_lz4_flex() {
        for (len, seed) in [(17, 1), (100, 2), (4096, 3), (65_536, 4), (65_536, 5)] {
            let data = words(len, seed);
            let block = lz4_flex::block::compress(&data);
            for room in [0, 64] {
                let mut out = vec![0xA5; len + room];
                let mut p = Progress::default();
                assert!(sequences(&block, &mut p, Some(&mut out), usize::MAX).unwrap());
                assert_eq!(p.output, len);
                assert_eq!(&out[..len], &data[..], "len {len} seed {seed} room {room}");
            }
            // Too small an output is refused, not overrun.
            let mut short = vec![0; len - 1];
            let mut p = Progress::default();
            assert!(sequences(&block, &mut p, Some(&mut short), usize::MAX).is_err());
        }
    }

    #[test]
    fn linked_frames_and_damaged_blocks_are_refused() {
        let data = sample(200_000);
        let linked = frame(&data, FrameInfo::new().block_mode(BlockMode::Linked));
        let e = FrameBlocks::new(&linked[..]).err().unwrap();
        assert!(e.to_string().contains("linked"), "{e}");

        let good = frame(&data, FrameInfo::new().block_size(BlockSize::Max64KB));
        let mut blocks = FrameBlocks::new(&good[..]).unwrap();
        let first = match blocks.next_block().unwrap().unwrap() {
            Block::Compressed(b) => b.to_vec(),
            Block::Stored(_) => panic!("the first block compresses"),
        };
        // Cut anywhere, the walk fails or finds a different length.
        let full = content_len(&first).unwrap();
        assert_eq!(full, 64 << 10);
        for cut in [1, 2, first.len() / 2, first.len() - 1] {
            assert_ne!(content_len(&first[..cut]).ok(), Some(full), "cut at {cut}");
        }
        // An offset reaching before the start of the block is refused.
        assert!(content_len(&[0x14, b'a', 9, 0, 0x10, b'z']).is_err());
        assert_eq!(content_len(&[0x14, b'a', 1, 0, 0x10, b'z']).unwrap(), 10);
    }
}
