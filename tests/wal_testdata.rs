//! `walstream::wal` against WAL files written by real SQLite.
//!
//! `testdata/wal/*.wal` and `testdata/wal/manifest.json` come from
//! `scripts/make-testdata.py`, which derives every expected value from SQLite
//! itself (its own frame parser cross-checked with `PRAGMA page_count` and with
//! SQLite's recovery of each state), never from walstream. Each manifest entry
//! has its own test below, so one failing case does not hide the others.

use std::path::PathBuf;

use serde_json::Value;
use walstream::wal::{WalCommit, WalFile, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/wal")
}

fn manifest() -> Value {
    let path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json is valid JSON")
}

fn entry(file: &str) -> Value {
    manifest()["files"]
        .as_array()
        .expect("files array")
        .iter()
        .find(|e| e["file"] == file)
        .unwrap_or_else(|| panic!("{file} is not in manifest.json"))
        .clone()
}

fn u32_of(v: &Value) -> u32 {
    let n = v.as_u64().unwrap_or_else(|| panic!("{v} is not a number"));
    u32::try_from(n).expect("fits in u32")
}

fn pair(v: &Value) -> (u32, u32) {
    (u32_of(&v[0]), u32_of(&v[1]))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Every check of one manifest entry.
fn check_file(file: &str) {
    let e = entry(file);
    let path = dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("reading {file}: {err}"));
    assert_eq!(
        bytes.len() as u64,
        e["file_size"].as_u64().unwrap(),
        "{file}: size"
    );

    // Header, parsed from bytes and through WalFile.
    let page_size = u32_of(&e["page_size"]);
    let parsed = WalHeader::parse(&bytes[..WAL_HEADER_SIZE as usize]);
    let h = parsed.unwrap_or_else(|| {
        panic!(
            "{file}: WalHeader::parse rejected a header SQLite wrote and reads \
             (magic {:#010x}, page size word {}, expected page size {page_size})",
            be32(&bytes[0..]),
            be32(&bytes[8..]),
        )
    });
    let wal = WalFile::open(&path).unwrap();
    assert_eq!(wal.header().unwrap(), Some(h), "{file}: WalFile::header");
    assert_eq!(wal.len().unwrap(), bytes.len() as u64, "{file}: len");
    assert!(!wal.is_empty().unwrap(), "{file}: is_empty");
    assert_eq!(wal.path(), path.as_path());
    assert_eq!(
        h.big_endian,
        e["big_endian"].as_bool().unwrap(),
        "{file}: big_endian"
    );
    assert_eq!(h.page_size, page_size, "{file}: page_size");
    assert_eq!(
        h.checkpoint_seq,
        u32_of(&e["checkpoint_seq"]),
        "{file}: checkpoint_seq"
    );
    assert_eq!(h.salt1, u32_of(&e["salt1"]), "{file}: salt1");
    assert_eq!(h.salt2, u32_of(&e["salt2"]), "{file}: salt2");
    assert_eq!(
        h.checksum,
        pair(&e["header_checksum"]),
        "{file}: header checksum"
    );
    let frame_size = u64::from(page_size) + FRAME_HEADER_SIZE;
    assert_eq!(h.frame_size(), frame_size);
    for i in [0u32, 1, 7, 1000] {
        assert_eq!(
            h.frame_offset(i),
            WAL_HEADER_SIZE + u64::from(i) * frame_size
        );
    }

    // Committed transactions.
    let commits = wal.scan_commits(&h, 0, h.checksum).unwrap();
    let want = e["commits"].as_array().unwrap();
    assert_eq!(
        commits.len(),
        want.len(),
        "{file}: number of commits (tail {})",
        e["tail"]
    );
    assert_eq!(
        commits.len() as u64,
        e["sqlite_visible_commits"].as_u64().unwrap(),
        "{file}: SQLite's own recovery sees this many commits"
    );
    let ps = page_size as usize;
    let mut page = vec![0u8; ps];
    for (k, (c, w)) in commits.iter().zip(want).enumerate() {
        let n = k + 1;
        assert_eq!(
            c.db_pages,
            u32_of(&w["db_pages"]),
            "{file}: commit {n} db_pages"
        );
        let pages: Vec<u32> = c.frames.iter().map(|&(p, _)| p).collect();
        let want_pages: Vec<u32> = w["pages"].as_array().unwrap().iter().map(u32_of).collect();
        assert_eq!(pages, want_pages, "{file}: commit {n} page numbers");
        let first = u32_of(&w["first_frame"]);
        let end = u32_of(&w["end_frame"]);
        let indexes: Vec<u32> = c.frames.iter().map(|&(_, i)| i).collect();
        assert_eq!(
            indexes,
            (first..end).collect::<Vec<_>>(),
            "{file}: commit {n} frame indexes"
        );
        assert_eq!(c.end_frame, end, "{file}: commit {n} end_frame");
        assert_eq!(
            c.end_checksum,
            pair(&w["end_checksum"]),
            "{file}: commit {n} end_checksum"
        );
        let latest: Vec<(u32, u32)> = w["latest_frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(pair)
            .collect();
        assert_eq!(
            c.latest_frames(),
            latest,
            "{file}: commit {n} latest_frames"
        );

        // read_page: the bytes at the frame's offset, which are the page as SQLite
        // rebuilds the database after this commit.
        for &(pgno, frame) in &c.frames {
            assert!(
                wal.read_page(&h, frame, &mut page).unwrap(),
                "{file}: frame {frame} is complete"
            );
            let off = (WAL_HEADER_SIZE + u64::from(frame) * frame_size) as usize;
            assert_eq!(be32(&bytes[off..]), pgno, "{file}: frame {frame} header");
            let data = &bytes[off + FRAME_HEADER_SIZE as usize..][..ps];
            assert!(
                page == data,
                "{file}: read_page({frame}) returned other bytes"
            );
        }
        for &(pgno, frame) in &latest {
            wal.read_page(&h, frame, &mut page).unwrap();
            let crc = u32_of(&w["page_crc32"][pgno.to_string()]);
            assert_eq!(
                crc32fast::hash(&page),
                crc,
                "{file}: commit {n} page {pgno} (frame {frame}) differs from SQLite's"
            );
        }

        // The checksum stored in the commit frame is the running checksum.
        assert_eq!(
            wal.stored_checksum(&h, end - 1).unwrap(),
            Some(c.end_checksum),
            "{file}: commit {n} stored_checksum"
        );

        // Resuming after this commit yields exactly the later commits.
        let rest = wal.scan_commits(&h, c.end_frame, c.end_checksum).unwrap();
        assert_eq!(
            rest.as_slice(),
            &commits[n..],
            "{file}: scan resumed after commit {n}"
        );
    }

    // What follows the last commit.
    let (last_end, last_sum) = commits
        .last()
        .map_or((0, h.checksum), |c| (c.end_frame, c.end_checksum));
    assert_eq!(
        wal.stored_checksum(&h, last_end.wrapping_sub(1)).unwrap(),
        commits.last().map(|c| c.end_checksum),
        "{file}: stored_checksum of the last committed frame"
    );
    assert!(
        wal.scan_commits(&h, last_end, last_sum).unwrap().is_empty(),
        "{file}: nothing committed after the last commit"
    );
    let complete = u32_of(&e["complete_frames"]);
    let valid = u32_of(&e["valid_frames"]);
    let uncommitted = u32_of(&e["uncommitted_frames"]);
    assert_eq!(
        valid,
        last_end + uncommitted,
        "{file}: manifest consistency"
    );
    assert!(
        e["torn_tail"].as_bool().unwrap() == (e["tail"] != "clean" && e["tail"] != "stale"),
        "{file}: manifest consistency"
    );
    // Valid but uncommitted frames carry this generation's salts.
    for i in last_end..valid {
        assert!(
            wal.stored_checksum(&h, i).unwrap().is_some(),
            "{file}: uncommitted frame {i} has the header's salts"
        );
    }
    match e["tail"].as_str().unwrap() {
        "clean" => assert_eq!(last_end, complete, "{file}: every frame is committed"),
        "uncommitted" => assert!(uncommitted > 0 && valid == complete),
        "torn" => {
            let partial = e["partial_frame_bytes"].as_u64().unwrap();
            assert!(partial > 0 && partial < frame_size);
            assert!(
                !wal.read_page(&h, complete, &mut page).unwrap(),
                "{file}: read_page of the partial frame {complete} must report it short"
            );
            assert!(
                !wal.read_page(&h, complete + 1, &mut page).unwrap(),
                "{file}: read_page past the end"
            );
        }
        "corrupt" => {
            assert_eq!(e["stop_reason"], "checksum_mismatch");
            assert!(
                valid < complete,
                "{file}: frames after the corrupt one remain"
            );
        }
        "stale" => {
            let stale = u32_of(&e["stale_frames"]);
            assert_eq!(valid + stale, complete, "{file}: manifest consistency");
            for i in valid..complete {
                assert_eq!(
                    wal.stored_checksum(&h, i).unwrap(),
                    None,
                    "{file}: stale frame {i} carries the previous generation's salts"
                );
            }
            let prev = &e["previous_generation"];
            assert_eq!(
                h.salt1,
                u32_of(&prev["salt1"]).wrapping_add(1),
                "{file}: salt1+1"
            );
            assert_eq!(
                h.checkpoint_seq,
                u32_of(&prev["checkpoint_seq"]) + 1,
                "{file}: checkpoint_seq+1"
            );
            assert_ne!(h.salt2, u32_of(&prev["salt2"]), "{file}: fresh salt2");
        }
        other => panic!("{file}: unknown tail kind {other}"),
    }
    assert_eq!(
        wal.stored_checksum(&h, complete + 1).unwrap(),
        None,
        "{file}: stored_checksum past the end"
    );
}

macro_rules! wal_cases {
    ($($name:ident => $file:literal,)*) => {
        const CASES: &[&str] = &[$($file),*];
        $(
            #[test]
            fn $name() {
                check_file($file);
            }
        )*
    };
}

wal_cases! {
    a_page_size_4096_five_commits => "a-ps4096-5tx.wal",
    b_page_size_1024_spill_page_written_twice => "b-ps1024-spill.wal",
    c_page_size_65536 => "c-ps65536-2tx.wal",
    d_restarted_wal_with_stale_frames => "d-restart-stale.wal",
    e_torn_last_frame => "e-torn-tail.wal",
    f_flipped_byte_in_third_commit => "f-flipped-byte.wal",
    g_big_endian_checksums => "g-big-endian.wal",
    h_uncommitted_spilled_frames => "h-ps1024-uncommitted.wal",
}

#[test]
fn manifest_and_directory_list_exactly_the_tested_files() {
    let mut listed: Vec<String> = manifest()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(listed, tested, "every manifest entry has a test");
    assert_eq!(on_disk, tested, "every .wal file has a manifest entry");
}

/// The damaged variants agree with their source on every commit they keep.
#[test]
fn variants_keep_their_sources_commits() {
    for e in manifest()["files"].as_array().unwrap() {
        let Some(src) = e["derived_from"].as_str() else {
            continue;
        };
        if e["big_endian"].as_bool().unwrap() {
            continue; // other checksums, same pages
        }
        let src = entry(src);
        let keep = e["commits"].as_array().unwrap();
        assert_eq!(
            keep.as_slice(),
            &src["commits"].as_array().unwrap()[..keep.len()],
            "{}",
            e["file"]
        );
    }
}

/// The big-endian copy holds the same frames, so the same pages, with other
/// checksums; flipping its magic back must invalidate the header.
#[test]
fn big_endian_variant_differs_only_in_checksums() {
    let le = std::fs::read(dir().join("a-ps4096-5tx.wal")).unwrap();
    let mut be = std::fs::read(dir().join("g-big-endian.wal")).unwrap();
    assert_eq!(le.len(), be.len());
    let (hl, hb) = (
        WalHeader::parse(&le[..32]).unwrap(),
        WalHeader::parse(&be[..32]).unwrap(),
    );
    assert!(!hl.big_endian && hb.big_endian);
    assert_ne!(hl.checksum, hb.checksum);
    let fs = hl.frame_size() as usize;
    for (i, (a, b)) in le[32..].chunks(fs).zip(be[32..].chunks(fs)).enumerate() {
        assert_eq!(
            a[..16],
            b[..16],
            "frame {i}: page number, commit size, salts"
        );
        assert_eq!(a[24..], b[24..], "frame {i}: page data");
        assert_ne!(a[16..24], b[16..24], "frame {i}: checksum");
    }
    be[3] = 0x82; // 0x377f0682: checksum words now read little-endian
    assert!(WalHeader::parse(&be[..32]).is_none());
}

#[test]
fn missing_or_short_files_read_as_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = WalFile::open(&tmp.path().join("nope-wal")).unwrap();
    assert_eq!(missing.header().unwrap(), None);
    assert_eq!(missing.len().unwrap(), 0);
    assert!(missing.is_empty().unwrap());

    let a = std::fs::read(dir().join("a-ps4096-5tx.wal")).unwrap();
    let short = tmp.path().join("short-wal");
    std::fs::write(&short, &a[..31]).unwrap();
    let wal = WalFile::open(&short).unwrap();
    assert_eq!(wal.header().unwrap(), None);
    assert!(wal.is_empty().unwrap());

    // A header alone: valid, no frames, no commits.
    let header_only = tmp.path().join("header-wal");
    std::fs::write(&header_only, &a[..32]).unwrap();
    let wal = WalFile::open(&header_only).unwrap();
    let h = wal.header().unwrap().unwrap();
    assert!(wal.scan_commits(&h, 0, h.checksum).unwrap().is_empty());
    assert_eq!(wal.stored_checksum(&h, 0).unwrap(), None);
}

/// Cutting the 4096-byte-page WAL at every frame boundary and in the middle of
/// every frame: exactly the commits whose commit frame is complete remain.
#[test]
fn every_truncation_keeps_exactly_the_complete_commits() {
    let a = std::fs::read(dir().join("a-ps4096-5tx.wal")).unwrap();
    let h = WalHeader::parse(&a[..32]).unwrap();
    let full = {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &a).unwrap();
        let wal = WalFile::open(tmp.path()).unwrap();
        wal.scan_commits(&h, 0, h.checksum).unwrap()
    };
    let fs = h.frame_size();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let mut cut = 32u64;
    while cut <= a.len() as u64 {
        std::fs::write(tmp.path(), &a[..cut as usize]).unwrap();
        let wal = WalFile::open(tmp.path()).unwrap();
        let got = wal.scan_commits(&h, 0, h.checksum).unwrap();
        let complete = ((cut - 32) / fs) as u32;
        let want: Vec<WalCommit> = full
            .iter()
            .take_while(|c| c.end_frame <= complete)
            .cloned()
            .collect();
        assert_eq!(got, want, "cut at {cut} bytes");
        cut += fs / 2;
    }
}
