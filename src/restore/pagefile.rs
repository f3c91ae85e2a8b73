//! The restore's output file.
//!
//! Pages go into a bounded cache first and are written in page order,
//! adjacent pages in one `pwritev`, straight from the buffers the pages were
//! decoded into (a restore writes them newest first, in no particular page
//! order; see `apply`).
//!
//! Every change made to the file (a page written, the length set) goes through
//! [`PageFile`], which applies the same change to a [`PageHashes`] mirror at the
//! same moment. The mirror is therefore the per-page hashes of exactly the bytes
//! handed to the kernel at exactly those offsets, with zeros wherever nothing
//! was written, so its checksum is the whole-database checksum of the file
//! without reading it back (see `docs/architecture.md`, "Restore").

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

use crate::checksum::PageHashes;

/// Page cache of a restore, in bytes (4 MiB: 1024 pages of 4 KiB).
pub(super) const CACHE_BYTES: usize = 1 << 20;

/// At most this many pages go into one `pwritev` (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;

/// Bytes written between two requests to start writeback, so the final fsync
/// finds most of the file already on its way to the disk.
const WRITEBACK_STEP: u64 = 16 << 20;

pub(super) struct PageFile {
    file: File,
    page_size: u32,
    /// Hashes of the file's pages as written; `hashes.pages()` is always the
    /// file's length in pages.
    hashes: PageHashes,
    /// The last version of each page not written yet.
    cache: BTreeMap<u32, Vec<u8>>,
    cache_pages: usize,
    /// Page buffers to decode into, recycled from written or replaced pages.
    spare: Vec<Vec<u8>>,
    unsynced: u64,
}

impl PageFile {
    /// `file` must be empty; `cache_bytes` bounds the pages held in memory.
    pub(super) fn new(file: File, page_size: u32, cache_bytes: usize) -> PageFile {
        PageFile {
            file,
            page_size,
            hashes: PageHashes::new(page_size),
            cache: BTreeMap::new(),
            cache_pages: (cache_bytes / page_size as usize).max(1),
            spare: Vec::new(),
            unsynced: 0,
        }
    }

    /// A page-sized buffer to decode a page into, then pass to [`PageFile::put`].
    pub(super) fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| vec![0; self.page_size as usize])
    }

    /// Returns a buffer from [`PageFile::buffer`] that was not used.
    pub(super) fn recycle(&mut self, page: Vec<u8>) {
        self.spare.push(page);
    }

    /// Page `pgno` (1-based) holds `page` from now on.
    pub(super) fn put(&mut self, pgno: u32, page: Vec<u8>) -> io::Result<()> {
        debug_assert!(pgno >= 1 && page.len() == self.page_size as usize);
        if let Some(old) = self.cache.insert(pgno, page) {
            self.spare.push(old);
        }
        if self.cache.len() >= self.cache_pages {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every cached page into the file.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let cache = std::mem::take(&mut self.cache);
        let mut run: Vec<(u32, Vec<u8>)> = Vec::with_capacity(cache.len().min(MAX_IOV));
        for (pgno, page) in cache {
            let adjacent = run.last().is_some_and(|(last, _)| *last + 1 == pgno);
            if !run.is_empty() && (!adjacent || run.len() == MAX_IOV) {
                self.write_run(&mut run)?;
            }
            run.push((pgno, page));
        }
        if !run.is_empty() {
            self.write_run(&mut run)?;
        }
        self.start_writeback();
        Ok(())
    }

    /// Writes everything, sets the length to `pages` and checks that the
    /// file's length is what the mirror says. Returns the file and its
    /// whole-database checksum.
    pub(super) fn finish(mut self, pages: u32) -> io::Result<(File, u64)> {
        self.flush()?;
        self.set_len(pages)?;
        let len = self.file.metadata()?.len();
        let expected = u64::from(pages) * u64::from(self.page_size);
        if len != expected {
            return Err(io::Error::other(format!(
                "restored file is {len} bytes, expected {expected}"
            )));
        }
        Ok((self.file, self.hashes.checksum()))
    }

    /// Sets the file's length to `pages` (zero-filled when it grows). Cached
    /// pages are not dropped: call it before any page past `pages` is put.
    pub(super) fn set_len(&mut self, pages: u32) -> io::Result<()> {
        self.file
            .set_len(u64::from(pages) * u64::from(self.page_size))?;
        self.hashes.resize(pages);
        Ok(())
    }

    /// Writes adjacent pages with one call (more if the kernel writes less),
    /// then records their hashes and recycles the buffers.
    fn write_run(&mut self, run: &mut Vec<(u32, Vec<u8>)>) -> io::Result<()> {
        let Some(&(first, _)) = run.first() else {
            return Ok(());
        };
        let offset = u64::from(first - 1) * u64::from(self.page_size);
        let mut slices: Vec<IoSlice<'_>> = run.iter().map(|(_, p)| IoSlice::new(p)).collect();
        pwritev_all(&self.file, &mut slices, offset)?;
        for (pgno, page) in run.drain(..) {
            self.hashes.set_page(pgno, &page);
            self.unsynced += u64::from(self.page_size);
            self.spare.push(page);
        }
        Ok(())
    }

    /// Asks the kernel to start writing back what was written since the last
    /// step, without waiting: the fsync before publishing then waits for less.
    fn start_writeback(&mut self) {
        if self.unsynced < WRITEBACK_STEP {
            return;
        }
        self.unsynced = 0;
        // SAFETY: sync_file_range on a descriptor we own; it only starts
        // writeback. A failure is harmless: the fsync before publishing is
        // what makes the file durable.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

/// `pwritev` until every byte of `slices` is written at `offset`.
fn pwritev_all(file: &File, mut slices: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    while !slices.is_empty() {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::other("file offset out of range"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (documented
        // by std); the slices borrow live buffers for the duration of the call
        // and there are at most MAX_IOV of them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                slices.len() as libc::c_int,
                off,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut slices, n as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::page_hash;

    const PS: u32 = 512;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PS as usize]
    }

    /// Checksum of the file as it is on disk, page by page.
    fn disk_checksum(path: &std::path::Path) -> (u64, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.len() % PS as usize, 0);
        let sum = bytes
            .chunks(PS as usize)
            .enumerate()
            .filter(|(i, _)| *i as u32 + 1 != crate::checksum::lock_page(PS))
            .map(|(i, p)| page_hash(i as u32 + 1, p))
            .fold(0, |a, b| a ^ b);
        (sum, (bytes.len() / PS as usize) as u32)
    }

    /// Random writes and rewrites through a tiny cache (so the cache is
    /// written many times, in runs and alone) into a file sized first, as a
    /// restore does: the file ends with the last version of every page, zeros
    /// in holes, and the mirror's checksum equals one computed by reading the
    /// file back.
    #[test]
    fn mirror_equals_the_file_and_last_writes_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        for cache_pages in [1usize, 3, 64] {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            let mut pf = PageFile::new(file, PS, cache_pages * PS as usize);
            let final_pages = 70;
            pf.set_len(final_pages as u32).unwrap();
            let mut model: Vec<Vec<u8>> = vec![page(0); final_pages];
            let mut seed = 0x9E37_79B9_u32;
            let mut next = |m: u32| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed % m
            };
            for step in 0..400u32 {
                let pgno = next(60) + 1;
                let fill = (step % 251) as u8 + 1;
                let mut buf = pf.buffer();
                buf.fill(fill);
                pf.put(pgno, buf).unwrap();
                model[pgno as usize - 1] = page(fill);
            }
            let (_file, checksum) = pf.finish(final_pages as u32).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), model.concat());
            assert_eq!(disk_checksum(&path), (checksum, final_pages as u32));
        }
    }
}
