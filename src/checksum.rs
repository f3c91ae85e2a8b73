//! The whole-database checksum.
//!
//! A database state's checksum is the XOR, over every page `p` in `1..=n` except
//! SQLite's lock-byte page, of `XXH3-64(page bytes, seed = p)`. XOR makes it
//! incremental: replacing one page costs two page hashes, so capture can record
//! the checksum of every commit without rereading the database, and a restore can
//! prove it rebuilt exactly the state the source had.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Hash of one page in the database checksum.
pub fn page_hash(pgno: u32, page: &[u8]) -> u64 {
    xxh3_64_with_seed(page, u64::from(pgno))
}

/// The page that holds byte offset 2^30; SQLite never stores data in it.
pub fn lock_page(page_size: u32) -> u32 {
    (0x4000_0000u64 / u64::from(page_size)) as u32 + 1
}

/// Per-page hashes of one database state, kept up to date as pages change.
/// Memory: 8 bytes per page.
#[derive(Debug, Clone)]
pub struct PageHashes {
    page_size: u32,
    lock_page: u32,
    zero_page: Vec<u8>,
    hashes: Vec<u64>,
    checksum: u64,
    undo: Option<Undo>,
}

/// What [`PageHashes::rollback`] needs to return to the state at [`PageHashes::begin`].
#[derive(Debug, Clone)]
struct Undo {
    len: usize,
    checksum: u64,
    changed: Vec<(usize, u64)>,
}

impl PageHashes {
    pub fn new(page_size: u32) -> PageHashes {
        PageHashes {
            page_size,
            lock_page: lock_page(page_size),
            zero_page: vec![0; page_size as usize],
            hashes: Vec::new(),
            checksum: 0,
            undo: None,
        }
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Number of pages in the tracked state.
    pub fn pages(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Checksum of the tracked state.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    fn contribution(&self, pgno: u32, hash: u64) -> u64 {
        if pgno == self.lock_page {
            0
        } else {
            hash
        }
    }

    /// Records new content for page `pgno` (1-based), growing the state with zero
    /// pages if it lies beyond the current end.
    pub fn set_page(&mut self, pgno: u32, page: &[u8]) {
        self.set_hash(pgno, page_hash(pgno, page));
    }

    /// Like [`PageHashes::set_page`] with the page's hash already computed.
    pub fn set_hash(&mut self, pgno: u32, hash: u64) {
        if pgno > self.pages() {
            // Zero pages up to the one before; the new page itself is never
            // zero-hashed only to be replaced (appending is the common case).
            self.resize(pgno - 1);
            self.hashes.push(hash);
            self.checksum ^= self.contribution(pgno, hash);
            return;
        }
        let idx = (pgno - 1) as usize;
        self.log_change(idx);
        let old = self.contribution(pgno, self.hashes[idx]);
        self.hashes[idx] = hash;
        self.checksum ^= old ^ self.contribution(pgno, hash);
    }

    /// Sets the state's size in pages: pages past the end are dropped, new pages
    /// are zero-filled (a restore writes zeros where nothing was written).
    pub fn resize(&mut self, pages: u32) {
        while self.pages() > pages {
            let pgno = self.pages();
            self.log_change(pgno as usize - 1);
            if let Some(h) = self.hashes.pop() {
                self.checksum ^= self.contribution(pgno, h);
            }
        }
        while self.pages() < pages {
            let pgno = self.pages() + 1;
            let h = page_hash(pgno, &self.zero_page);
            self.hashes.push(h);
            self.checksum ^= self.contribution(pgno, h);
        }
    }
}

impl PageHashes {
    /// Starts recording changes so that [`PageHashes::rollback`] can undo them
    /// (used while a segment is built: if shipping it fails, nothing happened).
    pub fn begin(&mut self) {
        self.undo = Some(Undo {
            len: self.hashes.len(),
            checksum: self.checksum,
            changed: Vec::new(),
        });
    }

    /// Keeps every change since [`PageHashes::begin`].
    pub fn commit(&mut self) {
        self.undo = None;
    }

    /// Returns to the state at [`PageHashes::begin`].
    pub fn rollback(&mut self) {
        if let Some(u) = self.undo.take() {
            self.hashes.resize(u.len.max(self.hashes.len()), 0);
            for (idx, old) in u.changed.into_iter().rev() {
                self.hashes[idx] = old;
            }
            self.hashes.truncate(u.len);
            self.checksum = u.checksum;
        }
    }

    fn log_change(&mut self, idx: usize) {
        if let Some(u) = &mut self.undo {
            if idx < u.len {
                u.changed.push((idx, self.hashes[idx]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(pages: &[Vec<u8>]) -> u64 {
        pages
            .iter()
            .enumerate()
            .map(|(i, p)| page_hash(i as u32 + 1, p))
            .fold(0, |a, b| a ^ b)
    }

    #[test]
    fn incremental_equals_full_recompute() {
        let mut pages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 512]).collect();
        let mut h = PageHashes::new(512);
        for (i, p) in pages.iter().enumerate() {
            h.set_page(i as u32 + 1, p);
        }
        assert_eq!(h.checksum(), full(&pages));
        pages[2] = vec![9; 512];
        h.set_page(3, &pages[2]);
        assert_eq!(h.checksum(), full(&pages));
        pages.truncate(3);
        h.resize(3);
        assert_eq!(h.checksum(), full(&pages));
        pages.push(vec![0; 512]);
        h.resize(4);
        assert_eq!(h.checksum(), full(&pages));
    }

    #[test]
    fn rollback_restores_everything() {
        let mut h = PageHashes::new(512);
        for p in 1..=4u32 {
            h.set_page(p, &[p as u8; 512]);
        }
        let before = h.clone();
        h.begin();
        h.set_page(2, &[9; 512]);
        h.resize(1);
        h.set_page(6, &[5; 512]);
        h.set_page(3, &[8; 512]);
        assert_ne!(h.checksum(), before.checksum());
        h.rollback();
        assert_eq!(h.checksum(), before.checksum());
        assert_eq!(h.hashes, before.hashes);
    }

    #[test]
    fn page_number_matters() {
        let p = vec![1u8; 512];
        assert_ne!(page_hash(1, &p), page_hash(2, &p));
    }

    #[test]
    fn lock_page_is_excluded() {
        let mut h = PageHashes::new(65536);
        let lock = lock_page(65536);
        assert_eq!(lock, 16385);
        h.resize(lock);
        let before = h.checksum();
        h.set_page(lock, &vec![7u8; 65536]);
        assert_eq!(h.checksum(), before);
    }
}
