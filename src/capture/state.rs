//! Reading one database state page by page: the database file overlaid with the
//! WAL frames committed up to a position. While the pin is held, frames past the
//! pin are never checkpointed into the file, so this view is stable.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checksum::PageHashes;
use crate::error::CaptureError;
use crate::wal::{WalCommit, WalFile, WalHeader};

pub struct StateReader<'a> {
    db_path: PathBuf,
    db: Arc<File>,
    wal: &'a WalFile,
    header: Option<WalHeader>,
    overlay: HashMap<u32, u32>,
    pub db_pages: u32,
    pub page_size: u32,
}

impl<'a> StateReader<'a> {
    /// The state after `commits` (all commits of the current WAL generation up to
    /// the wanted position, in order). With no commits, the database file alone.
    /// `db` is the source's own handle on the database file (see
    /// `Source::db_file` for why it is never opened anew).
    pub fn new(
        db_path: &Path,
        db: Arc<File>,
        wal: &'a WalFile,
        header: Option<WalHeader>,
        commits: &[WalCommit],
        page_size: u32,
    ) -> Result<StateReader<'a>, CaptureError> {
        let io = |source| CaptureError::Io {
            path: db_path.to_path_buf(),
            source,
        };
        let mut overlay = HashMap::new();
        for c in commits {
            for &(pgno, frame) in &c.frames {
                overlay.insert(pgno, frame);
            }
        }
        let db_pages = match commits.last() {
            Some(c) => c.db_pages,
            None => file_db_pages(&db, page_size).map_err(io)?,
        };
        Ok(StateReader {
            db_path: db_path.to_path_buf(),
            db,
            wal,
            header,
            overlay,
            db_pages,
            page_size,
        })
    }

    /// Reads page `pgno` of the state into `buf`; pages the file does not reach
    /// read as zeros (SQLite never writes the lock-byte page).
    pub fn read_page(&self, pgno: u32, buf: &mut [u8]) -> Result<(), CaptureError> {
        if let (Some(&frame), Some(h)) = (self.overlay.get(&pgno), self.header.as_ref()) {
            if !self.wal.read_page(h, frame, buf)? {
                return Err(CaptureError::WalShrank {
                    path: self.wal.path().to_path_buf(),
                    frame,
                });
            }
            return Ok(());
        }
        let offset = u64::from(pgno - 1) * u64::from(self.page_size);
        let mut done = 0;
        while done < buf.len() {
            match self.db.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Io {
                        path: self.db_path.clone(),
                        source,
                    })
                }
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Hashes of every page, calling `each` with every page on the way.
    pub fn scan(
        &self,
        mut each: impl FnMut(u32, &[u8]) -> Result<(), CaptureError>,
    ) -> Result<PageHashes, CaptureError> {
        let mut hashes = PageHashes::new(self.page_size);
        let mut buf = vec![0u8; self.page_size as usize];
        for pgno in 1..=self.db_pages {
            self.read_page(pgno, &mut buf)?;
            hashes.set_page(pgno, &buf);
            each(pgno, &buf)?;
        }
        Ok(hashes)
    }
}

/// Database size in pages according to the file: the header's page count when it
/// is valid (change counter equals version-valid-for), else the file length.
fn file_db_pages(db: &File, page_size: u32) -> std::io::Result<u32> {
    let mut hdr = [0u8; 100];
    let len = db.metadata()?.len();
    if len < 100 {
        return Ok(0);
    }
    db.read_exact_at(&mut hdr, 0)?;
    let be = |i: usize| u32::from_be_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (count, change, valid_for) = (be(28), be(24), be(92));
    if count > 0 && change == valid_for {
        Ok(count)
    } else {
        Ok((len / u64::from(page_size)) as u32)
    }
}
