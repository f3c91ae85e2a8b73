//! Whole-object conversions between the plain and the encrypted form. Both
//! stream, so memory stays flat however large a snapshot is.

use std::io::{self, Read, Write};

use super::{CryptoError, KeyId, Keyring, Opener, Sealer};
use crate::format::{CrcWriter, FormatError, ObjectHeader, FLAG_ENCRYPTED};

/// Reads a plain object from `plain` and writes it encrypted with the keyring's
/// current key to `out`. The plain body's CRC is checked on the way, so a
/// damaged spool file is never sealed into an authentic-looking object.
pub fn seal_object<R: Read, W: Write>(
    mut plain: R,
    out: W,
    key: &super::Key,
) -> Result<ObjectHeader, FormatError> {
    let mut header = ObjectHeader::decode(&mut plain)?;
    if header.is_encrypted() {
        return Err(CryptoError::AlreadyEncrypted.into());
    }
    header.flags |= FLAG_ENCRYPTED;
    header.key_id = key.id().0;
    let header_bytes = header.encode();
    let mut out = CrcWriter::new(out);
    out.get_mut().write_all(&header_bytes)?;
    let mut sealer = Sealer::new(&mut out, key, &header_bytes)?;
    copy_checked_body(&mut plain, &mut sealer)?;
    sealer.finish()?;
    let crc = out.crc();
    out.get_mut().write_all(&crc.to_be_bytes())?;
    Ok(header)
}

/// Reads an encrypted object and writes its plain form: the same header with
/// the encrypted flag and key id cleared, the LZ4 body, and its CRC trailer.
pub fn open_object<R: Read, W: Write>(
    mut sealed: R,
    out: W,
    keys: &Keyring,
) -> Result<ObjectHeader, FormatError> {
    let header = ObjectHeader::decode(&mut sealed)?;
    if !header.is_encrypted() {
        return Err(CryptoError::NotEncrypted.into());
    }
    let key = keys.key_for(KeyId(header.key_id))?;
    let mut opener = Opener::new(sealed, key, &header.encode())?;
    let mut plain = header.clone();
    plain.flags &= !FLAG_ENCRYPTED;
    plain.key_id = [0; 8];
    let mut out = CrcWriter::new(out);
    out.get_mut().write_all(&plain.encode())?;
    io::copy(&mut opener, &mut out)
        .map_err(|e| super::stream::unwrap_format_error(e).unwrap_or_else(FormatError::Io))?;
    opener.finish()?;
    let crc = out.crc();
    out.get_mut().write_all(&crc.to_be_bytes())?;
    Ok(plain)
}

/// Copies a plain body to `out`, holding back the last 4 bytes (the trailer)
/// and checking them against the CRC32 of what was copied.
fn copy_checked_body<R: Read, W: Write>(r: &mut R, out: &mut W) -> Result<(), FormatError> {
    const HOLD: usize = 4;
    let mut buf = vec![0u8; 64 * 1024 + HOLD];
    let mut held = 0;
    let mut crc = crc32fast::Hasher::new();
    loop {
        let n = match r.read(&mut buf[held..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let total = held + n;
        let emit = total.saturating_sub(HOLD);
        crc.update(&buf[..emit]);
        out.write_all(&buf[..emit])?;
        buf.copy_within(emit..total, 0);
        held = total - emit;
    }
    if held < HOLD {
        return Err(FormatError::Truncated);
    }
    let stored = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let computed = crc.finalize();
    if stored != computed {
        return Err(FormatError::BodyChecksum { stored, computed });
    }
    Ok(())
}
