//! The highest txid a replica's segment uploads ever carried, kept in its work
//! directory: after a kill, the next process on the host knows whether an
//! upload that may still land can hold txids past what it lists.
//!
//! Written before every segment upload, not synced: a killed process's page
//! cache survives it, and the record names the boot it was written in, so a
//! record that a power loss may have left behind is never believed.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::CaptureError;

const FILE_NAME: &str = "uploads-sent";
const MAGIC: &str = "walstream-uploads-sent-v1";

/// This replica's record. Every process writes it when it claims the replica
/// (so a missing record means no process of this boot did), then before each
/// segment upload; the value never decreases within a boot.
#[derive(Debug)]
pub(crate) struct SentRecord {
    path: PathBuf,
    file: Option<File>,
    boot: Option<String>,
    /// What the record said when this process opened it.
    previous: Option<u64>,
    highest: u64,
}

impl SentRecord {
    pub(crate) fn open(work_dir: &Path) -> SentRecord {
        let path = work_dir.join(FILE_NAME);
        let boot = boot_id();
        let previous = read(&path, boot.as_deref());
        SentRecord {
            path,
            file: None,
            boot,
            previous,
            highest: previous.unwrap_or(0),
        }
    }

    /// The highest txid an upload of an earlier process of this boot
    /// carried (0: it uploaded no segment); `None` when that is unknown (no
    /// process of this boot claimed the replica, or the host has no boot id).
    pub(crate) fn previous(&self) -> Option<u64> {
        self.previous
    }

    /// Writes the record as it stands, when the replica is claimed.
    pub(crate) fn claimed(&mut self) -> Result<(), CaptureError> {
        self.sending(self.highest)
    }

    /// Records that an upload carrying txids up to `txid` is about to be sent.
    /// An error means the record cannot be trusted; the upload must not go.
    pub(crate) fn sending(&mut self, txid: u64) -> Result<(), CaptureError> {
        self.write(txid).map_err(|source| CaptureError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn write(&mut self, txid: u64) -> std::io::Result<()> {
        let Some(boot) = &self.boot else {
            return Ok(());
        };
        self.highest = self.highest.max(txid);
        // Fixed width, so each record overwrites the last one whole.
        let line = format!("{MAGIC} {boot:<36} {:016x}\n", self.highest);
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&self.path)?,
            ),
        };
        let r = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(line.as_bytes()));
        if r.is_err() {
            // A half-written record must not be read as a smaller txid.
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
        r
    }
}

fn read(path: &Path, boot: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    if fields.next() != Some(MAGIC) || fields.next() != Some(boot?) {
        return None;
    }
    u64::from_str_radix(fields.next()?, 16).ok()
}

/// An id of the running boot of the host: records from another boot say
/// nothing (a power loss may have dropped the last ones).
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_txid_sent_in_this_boot_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = SentRecord::open(dir.path());
        assert_eq!(r.previous(), None, "no process claimed the replica yet");
        if r.boot.is_none() {
            // No boot id on this system: nothing is ever believed.
            r.sending(7).unwrap();
            assert_eq!(SentRecord::open(dir.path()).previous(), None);
            return;
        }
        r.claimed().unwrap();
        assert_eq!(SentRecord::open(dir.path()).previous(), Some(0));
        r.sending(0x1_0000_0000).unwrap();
        r.sending(9).unwrap();
        let mut next = SentRecord::open(dir.path());
        assert_eq!(next.previous(), Some(0x1_0000_0000), "never decreases");
        next.claimed().unwrap();
        next.sending(3).unwrap();
        assert_eq!(SentRecord::open(dir.path()).previous(), Some(0x1_0000_0000));
    }

    #[test]
    fn a_record_of_another_boot_or_garbled_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let boot = "11111111-2222-3333-4444-555555555555";
        std::fs::write(&path, format!("{MAGIC} {boot} 0000000000000005\n")).unwrap();
        assert_eq!(read(&path, Some(boot)), Some(5));
        assert_eq!(
            read(&path, Some("66666666-2222-3333-4444-555555555555")),
            None
        );
        assert_eq!(read(&path, None), None);
        std::fs::write(&path, format!("{MAGIC} {boot}")).unwrap();
        assert_eq!(read(&path, Some(boot)), None);
        std::fs::write(&path, format!("other {boot} 0000000000000005")).unwrap();
        assert_eq!(read(&path, Some(boot)), None);
    }
}
