//! Micro-benchmarks of the hot paths: reading and checksumming WAL frames,
//! the whole-database page hash, and encoding/decoding segments with and
//! without encryption (the per-page work of shipping and of restore).
//!
//!     cargo bench --bench micro
//!
//! One bench target with small inputs, so `cargo build --all-targets` stays cheap.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walstream::checksum::{page_hash, PageHashes};
use walstream::crypto::seal_object;
use walstream::format::{decode_all, encode_segment, CommitRecord, ObjectHeader, ObjectKind};
use walstream::wal::{wal_checksum, WalFile};
use walstream::{Key, Keyring};

const PAGE: usize = 4096;
const PAGES: u32 = 256; // 1 MiB of pages per segment

/// Pages that look like table leaves: half random-ish bytes, half zeros, so LZ4
/// has something (but not everything) to gain.
fn pages(n: u32) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            let mut p = vec![0u8; PAGE];
            for b in p[..PAGE / 2].iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            p
        })
        .collect()
}

fn segment_header(n: u32) -> ObjectHeader {
    ObjectHeader {
        kind: ObjectKind::Segment,
        flags: 0,
        key_id: [0; 8],
        lineage: 1,
        page_size: PAGE as u32,
        wal: None,
        commits: vec![CommitRecord {
            txid: 2,
            time_ms: 0,
            db_pages: n,
            page_count: n,
            checksum: Some(0),
        }],
        page_index: Some((1..=n).collect()),
    }
}

fn wal(c: &mut Criterion) {
    let data = pages(1).remove(0);
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Bytes(PAGE as u64));
    g.bench_function("frame_checksum_4k", |b| {
        b.iter(|| wal_checksum(false, black_box(&data), (1, 2)))
    });
    g.bench_function("page_hash_4k", |b| {
        b.iter(|| page_hash(black_box(7), black_box(&data)))
    });
    g.bench_function("page_hashes_set_page_4k", |b| {
        let mut h = PageHashes::new(PAGE as u32);
        h.resize(PAGES);
        let mut pgno = 0;
        b.iter(|| {
            pgno = pgno % PAGES + 1;
            h.set_page(pgno, black_box(&data));
        })
    });

    // A real WAL written by SQLite: 1000 one-row commits of ~1 KB.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    conn.execute_batch("CREATE TABLE t(v BLOB)").unwrap();
    for _ in 0..1000 {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(1000))", [])
            .unwrap();
    }
    let wal_file = WalFile::open(&db.with_extension("db-wal")).unwrap();
    let header = wal_file.header().unwrap().unwrap();
    let commits = wal_file.scan_commits(&header, 0, header.checksum).unwrap();
    let frames: u64 = commits.iter().map(|c| c.frames.len() as u64).sum();
    g.throughput(Throughput::Bytes(frames * header.frame_size()));
    g.bench_function("scan_commits_wal", |b| {
        b.iter(|| {
            wal_file
                .scan_commits(&header, 0, header.checksum)
                .unwrap()
                .len()
        })
    });
    g.finish();
    drop(conn);
}

fn segments(c: &mut Criterion) {
    let pages = pages(PAGES);
    let refs: Vec<(u32, &[u8])> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32 + 1, p.as_slice()))
        .collect();
    let header = segment_header(PAGES);
    let plain = encode_segment(&header, &refs).unwrap();
    let key = Key::from_bytes([7; 32]);
    let mut sealed = Vec::new();
    seal_object(plain.as_slice(), &mut sealed, &key).unwrap();
    let none = Keyring::default();
    let keys = Keyring::new(Some(key.clone()), Vec::new());

    let mut g = c.benchmark_group("segment_1MiB");
    g.throughput(Throughput::Bytes(u64::from(PAGES) * PAGE as u64));
    g.bench_function("encode", |b| {
        b.iter(|| encode_segment(&header, black_box(&refs)).unwrap().len())
    });
    g.bench_function("encode_and_seal", |b| {
        b.iter(|| {
            let plain = encode_segment(&header, black_box(&refs)).unwrap();
            let mut out = Vec::with_capacity(plain.len() + 4096);
            seal_object(plain.as_slice(), &mut out, &key).unwrap();
            out.len()
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_all(black_box(&plain), &none).unwrap().1.len())
    });
    g.bench_function("decode_encrypted", |b| {
        b.iter(|| decode_all(black_box(&sealed), &keys).unwrap().1.len())
    });
    // Restore's per-page work beyond decoding: hash every page into the
    // whole-database checksum.
    g.bench_function("decode_and_hash", |b| {
        b.iter_batched(
            || PageHashes::new(PAGE as u32),
            |mut h| {
                for (r, page) in decode_all(black_box(&plain), &none).unwrap().1 {
                    h.set_page(r.pgno, &page);
                }
                h.checksum()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = wal, segments
}
criterion_main!(benches);
