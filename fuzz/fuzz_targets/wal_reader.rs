//! SQLite WAL files: header parse and commit scan over arbitrary bytes, read
//! through the same file reader capture uses. Nothing may panic, and the scan
//! must agree with itself.
//!
//! Input: one mode byte, then the WAL bytes. With bit 0 set, the header
//! checksum, every whole frame's salts and the running frame checksums are
//! made valid first, so mutations reach the commit grouping rather than
//! stopping at the first checksum.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use walstream::wal::{wal_checksum, WalFile, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

/// One scratch file per fuzzing process (in RAM where possible).
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("walstream-fuzz-{}.wal", std::process::id()))
    })
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn put32(b: &mut [u8], v: u32) {
    b[..4].copy_from_slice(&v.to_be_bytes());
}

/// Makes the header and every whole frame checksum-valid (salts copied from
/// the header), leaving page numbers, commit sizes and pages as they are.
fn fix_checksums(b: &mut [u8]) {
    let hs = WAL_HEADER_SIZE as usize;
    if b.len() < hs {
        return;
    }
    let big_endian = be32(b) & 1 == 1;
    let sum = wal_checksum(big_endian, &b[..24], (0, 0));
    put32(&mut b[24..], sum.0);
    put32(&mut b[28..], sum.1);
    let page_size = be32(&b[8..]) as usize;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return;
    }
    let (salt1, salt2) = (be32(&b[16..]), be32(&b[20..]));
    let frame_size = FRAME_HEADER_SIZE as usize + page_size;
    let mut running = sum;
    let mut off = hs;
    while off + frame_size <= b.len() {
        let f = &mut b[off..off + frame_size];
        put32(&mut f[8..], salt1);
        put32(&mut f[12..], salt2);
        running = wal_checksum(big_endian, &f[..8], running);
        running = wal_checksum(big_endian, &f[FRAME_HEADER_SIZE as usize..], running);
        put32(&mut f[16..], running.0);
        put32(&mut f[20..], running.1);
        off += frame_size;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 {
        fix_checksums(&mut bytes);
    }
    let parsed = WalHeader::parse(&bytes);

    let path = scratch();
    std::fs::write(path, &bytes).expect("writing the scratch WAL");
    let wal = WalFile::open(path).expect("opening the scratch WAL");
    let header = wal.header().expect("reading the header");
    assert_eq!(header, parsed, "file and slice parse differ");
    let Some(h) = header else {
        return;
    };
    let commits = wal
        .scan_commits(&h, 0, h.checksum)
        .expect("scanning the WAL");
    let mut page = vec![0u8; h.page_size as usize];
    let mut prev_end = 0;
    for c in &commits {
        assert!(!c.frames.is_empty());
        assert!(c.end_frame > prev_end);
        assert_eq!(c.frames.last().map(|&(_, f)| f + 1), Some(c.end_frame));
        assert!(c.db_pages > 0);
        // A commit frame's stored checksum is the running checksum after it.
        assert_eq!(
            wal.stored_checksum(&h, c.end_frame - 1)
                .expect("frame header"),
            Some(c.end_checksum)
        );
        let latest = c.latest_frames();
        assert!(latest.windows(2).all(|w| w[0].0 < w[1].0));
        for (_, frame) in latest {
            assert!(wal.read_page(&h, frame, &mut page).expect("reading a page"));
        }
        prev_end = c.end_frame;
    }
    // Scanning from a commit boundary finds exactly the commits after it.
    if let Some(first) = commits.first() {
        let tail = wal
            .scan_commits(&h, first.end_frame, first.end_checksum)
            .expect("scanning the tail");
        assert_eq!(tail, commits[1..]);
    }
});
