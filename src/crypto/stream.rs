//! The chunked (STREAM-style) construction: the body is cut into chunks, each
//! sealed on its own with a nonce that carries its position and whether it is
//! the last, so chunks cannot be reordered, dropped or cut short unnoticed, and
//! memory stays one chunk whatever the object's size.
//!
//! Encrypted body = preamble ‖ sealed chunk ‖ sealed chunk ‖ … (then the
//! object's 4-byte CRC trailer). Bytes are specified in `docs/format.md`.

use std::io::{self, Read, Write};

use aes_gcm::aead::{AeadInOut, Nonce};
use aes_gcm::Aes256Gcm;

use super::{CryptoError, Key};
use crate::format::FormatError;

/// Scheme byte: AES-256-GCM, HKDF-SHA256 object keys, chunked as below.
const SCHEME: u8 = 1;
/// Plaintext bytes per chunk written (readers accept any size up to the max).
pub(crate) const CHUNK_SIZE: u32 = 64 * 1024;
/// Bounds a reader's buffer on hostile input.
const MAX_CHUNK_SIZE: u32 = 16 << 20;
const SALT_LEN: usize = 16;
const PREFIX_LEN: usize = 7;
pub(crate) const PREAMBLE_LEN: usize = 1 + 4 + SALT_LEN + PREFIX_LEN;
pub(crate) const TAG_LEN: usize = 16;
/// The object's CRC trailer follows the last chunk.
const TRAILER_LEN: usize = 4;

/// Per-object parameters, stored in clear at the start of the body.
struct Preamble {
    chunk_size: u32,
    salt: [u8; SALT_LEN],
    prefix: [u8; PREFIX_LEN],
}

impl Preamble {
    fn random(chunk_size: u32) -> Preamble {
        Preamble {
            chunk_size,
            salt: rand::random(),
            prefix: rand::random(),
        }
    }

    fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[0] = SCHEME;
        b[1..5].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[5..5 + SALT_LEN].copy_from_slice(&self.salt);
        b[5 + SALT_LEN..].copy_from_slice(&self.prefix);
        b
    }

    fn decode(b: &[u8; PREAMBLE_LEN]) -> Result<Preamble, CryptoError> {
        if b[0] != SCHEME {
            return Err(CryptoError::UnsupportedScheme(b[0]));
        }
        let chunk_size = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(CryptoError::BadChunkSize(chunk_size));
        }
        let mut p = Preamble {
            chunk_size,
            salt: [0; SALT_LEN],
            prefix: [0; PREFIX_LEN],
        };
        p.salt.copy_from_slice(&b[5..5 + SALT_LEN]);
        p.prefix.copy_from_slice(&b[5 + SALT_LEN..]);
        Ok(p)
    }
}

/// Seals or opens the chunks of one object, in order.
struct ChunkCipher {
    aead: Aes256Gcm,
    prefix: [u8; PREFIX_LEN],
    /// Header bytes ‖ preamble: binds every chunk to this object.
    aad: Vec<u8>,
    counter: u32,
    /// Set once the last chunk went through; nothing may follow it.
    ended: bool,
}

impl ChunkCipher {
    fn new(key: &Key, header: &[u8], p: &Preamble) -> ChunkCipher {
        let mut aad = Vec::with_capacity(header.len() + PREAMBLE_LEN);
        aad.extend_from_slice(header);
        aad.extend_from_slice(&p.encode());
        ChunkCipher {
            aead: key.object_cipher(&p.salt),
            prefix: p.prefix,
            aad,
            counter: 0,
            ended: false,
        }
    }

    fn nonce(&self, last: bool) -> Nonce<Aes256Gcm> {
        let mut n = [0u8; 12];
        n[..PREFIX_LEN].copy_from_slice(&self.prefix);
        n[PREFIX_LEN..11].copy_from_slice(&self.counter.to_be_bytes());
        n[11] = u8::from(last);
        n.into()
    }

    fn advance(&mut self, last: bool) -> Result<(), CryptoError> {
        self.ended = last;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(CryptoError::TooManyChunks)?;
        Ok(())
    }

    /// Encrypts `buf` in place and appends the tag.
    fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        if self.ended {
            return Err(CryptoError::TooManyChunks);
        }
        let nonce = self.nonce(last);
        self.aead
            .encrypt_in_place(&nonce, &self.aad, buf)
            .map_err(|_| CryptoError::TooManyChunks)?;
        self.advance(last)
    }

    /// Checks the tag at the end of `buf`, decrypts in place, drops the tag.
    fn open(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        let nonce = self.nonce(last);
        self.aead
            .decrypt_in_place(&nonce, &self.aad, buf)
            .map_err(|_| CryptoError::Authentication)?;
        self.advance(last)
    }
}

fn crypto_io(e: CryptoError) -> io::Error {
    io::Error::other(e)
}

/// Encrypts what is written to it; [`Sealer::finish`] seals the last chunk.
pub(crate) struct Sealer<W: Write> {
    out: W,
    cipher: ChunkCipher,
    chunk_size: usize,
    pending: Vec<u8>,
}

impl<W: Write> Sealer<W> {
    /// Writes the preamble at once. `header` is the object's encoded header.
    pub(crate) fn new(out: W, key: &Key, header: &[u8]) -> io::Result<Sealer<W>> {
        Sealer::with_chunk_size(out, key, header, CHUNK_SIZE)
    }

    pub(crate) fn with_chunk_size(
        mut out: W,
        key: &Key,
        header: &[u8],
        chunk_size: u32,
    ) -> io::Result<Sealer<W>> {
        let p = Preamble::random(chunk_size);
        out.write_all(&p.encode())?;
        Ok(Sealer {
            out,
            cipher: ChunkCipher::new(key, header, &p),
            chunk_size: chunk_size as usize,
            pending: Vec::with_capacity(chunk_size as usize + TAG_LEN),
        })
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        self.cipher
            .seal(&mut self.pending, last)
            .map_err(crypto_io)?;
        self.out.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    /// Seals what is pending as the last chunk (possibly empty) and returns the
    /// output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.emit(true)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // A full chunk is sealed only once more data arrives: only `finish`
        // knows which chunk is the last.
        if self.pending.len() == self.chunk_size {
            self.emit(false)?;
        }
        let n = buf.len().min(self.chunk_size - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Decrypts an encrypted body read from `inner` (positioned at the preamble),
/// checking each chunk before releasing any of its bytes. Also consumes the
/// object's CRC trailer, which it checks in [`Opener::finish`].
pub(crate) struct Opener<R: Read> {
    inner: R,
    cipher: ChunkCipher,
    chunk_size: usize,
    /// Raw bytes read ahead: telling the last chunk needs to see the end.
    raw: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    crc: crc32fast::Hasher,
    trailer: Option<u32>,
}

impl<R: Read> Opener<R> {
    pub(crate) fn new(mut inner: R, key: &Key, header: &[u8]) -> Result<Opener<R>, FormatError> {
        let mut b = [0u8; PREAMBLE_LEN];
        inner.read_exact(&mut b).map_err(eof_is_truncation)?;
        let p = Preamble::decode(&b)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&b);
        let chunk_size = p.chunk_size as usize;
        Ok(Opener {
            inner,
            cipher: ChunkCipher::new(key, header, &p),
            chunk_size,
            raw: Vec::with_capacity(chunk_size + TAG_LEN + TRAILER_LEN + 1),
            plain: Vec::with_capacity(chunk_size + TAG_LEN),
            pos: 0,
            crc,
            trailer: None,
        })
    }

    /// Reads until `raw` holds `target` bytes or the input ends.
    fn fill(&mut self, target: usize) -> io::Result<()> {
        let mut len = self.raw.len();
        self.raw.resize(target.max(len), 0);
        while len < target {
            match self.inner.read(&mut self.raw[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.raw.truncate(len);
                    return Err(e);
                }
            }
        }
        self.raw.truncate(len);
        Ok(())
    }

    /// Decrypts the next chunk into `plain`. The last chunk is the one after
    /// which only the trailer remains.
    fn next_chunk(&mut self) -> Result<(), FormatError> {
        let sealed = self.chunk_size + TAG_LEN;
        self.fill(sealed + TRAILER_LEN + 1)?;
        let last = self.raw.len() <= sealed + TRAILER_LEN;
        let take = if last {
            match self.raw.len().checked_sub(TRAILER_LEN) {
                Some(n) if n >= TAG_LEN => n,
                _ => return Err(FormatError::Truncated),
            }
        } else {
            sealed
        };
        self.crc.update(&self.raw[..take]);
        self.plain.clear();
        self.plain.extend(self.raw.drain(..take));
        self.pos = 0;
        self.cipher.open(&mut self.plain, last)?;
        if last {
            let t = &self.raw[..TRAILER_LEN];
            self.trailer = Some(u32::from_be_bytes([t[0], t[1], t[2], t[3]]));
            self.raw.clear();
        }
        Ok(())
    }

    /// Checks that no plaintext is left, that the last chunk was seen and that
    /// the trailer matches the CRC32 of the encrypted body.
    pub(crate) fn finish(&mut self) -> Result<(), FormatError> {
        loop {
            if self.pos < self.plain.len() {
                return Err(FormatError::Malformed(
                    "body longer than its page records".into(),
                ));
            }
            if self.trailer.is_some() {
                break;
            }
            self.next_chunk()?;
        }
        let computed = self.crc.clone().finalize();
        match self.trailer {
            Some(stored) if stored != computed => {
                Err(FormatError::BodyChecksum { stored, computed })
            }
            _ => Ok(()),
        }
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.trailer.is_some() {
                return Ok(0);
            }
            self.next_chunk().map_err(io::Error::other)?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn eof_is_truncation(e: io::Error) -> FormatError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::Truncated,
        _ => FormatError::Io(e),
    }
}

/// Recovers a [`FormatError`] that crossed a `Read` boundary as an
/// `io::Error` (the LZ4 decoder passes its input's errors through).
pub(crate) fn unwrap_format_error(e: io::Error) -> Result<FormatError, io::Error> {
    if !e.get_ref().is_some_and(|i| i.is::<FormatError>()) {
        return Err(e);
    }
    let kind = e.kind();
    match e.into_inner() {
        Some(inner) => inner
            .downcast::<FormatError>()
            .map(|f| *f)
            .map_err(|other| io::Error::new(kind, other)),
        None => Err(io::Error::from(kind)),
    }
}
