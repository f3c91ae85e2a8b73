//! Encryption on the way out: segments and snapshots are built plain (a
//! snapshot's header is final only after every page was read, and the header
//! is the ciphertext's associated data), then sealed before they are stored.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::*;
use crate::crypto::{open_object, seal_object, Keyring};

impl Engine {
    /// The bytes to store for a plain segment.
    pub(super) fn seal_segment(&self, key: &str, plain: &Bytes) -> Result<Bytes, CaptureError> {
        let Some(k) = &self.opts.encryption else {
            return Ok(plain.clone());
        };
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 1024 + 64);
        seal_object(&plain[..], &mut out, k).map_err(|source| CaptureError::Format {
            key: key.to_string(),
            source,
        })?;
        Ok(Bytes::from(out))
    }

    /// Whether `existing` (already in the replica) holds `plain`. Sealing is
    /// randomised, so a retried write that had succeeded is recognised by
    /// its decrypted content, not its bytes.
    pub(super) fn holds_same(&self, existing: &[u8], plain: &[u8]) -> bool {
        let Some(k) = &self.opts.encryption else {
            return existing == plain;
        };
        let keys = Keyring::new(Some(k.clone()), Vec::new());
        let mut opened = Vec::with_capacity(plain.len());
        open_object(existing, &mut opened, &keys).is_ok() && opened == plain
    }

    /// Seals a finished plain snapshot spool into `out` (another spool file).
    pub(super) fn seal_spool(
        &self,
        plain: &mut File,
        plain_path: &Path,
        out: &File,
        out_path: &Path,
    ) -> Result<(), CaptureError> {
        let Some(k) = &self.opts.encryption else {
            return Ok(());
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaptureError::Io { path, source }
        };
        plain.seek(SeekFrom::Start(0)).map_err(io(plain_path))?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        seal_object(BufReader::with_capacity(1 << 20, &*plain), &mut w, k).map_err(|source| {
            CaptureError::Format {
                key: plain_path.display().to_string(),
                source,
            }
        })?;
        // Like the plain spool, read back for the upload only: no fsync.
        w.flush().map_err(io(out_path))
    }

    /// Refuses to continue an encrypted replica in the clear: a restart that
    /// lost its key configuration must not start shipping readable pages.
    pub(super) fn check_encryption_continuity(
        &self,
        newest: Option<&ObjectHeader>,
    ) -> Result<(), CaptureError> {
        match (newest.and_then(ObjectHeader::key_id), &self.opts.encryption) {
            (Some(id), None) => Err(CaptureError::EncryptionRequired {
                key_id: id.to_string(),
            }),
            _ => Ok(()),
        }
    }
}
