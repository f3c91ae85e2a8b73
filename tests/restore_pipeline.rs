//! The restore pipeline: objects are opened and read ahead several at a time
//! while the one before is applied, pages go through a bounded cache where
//! the last version of a page wins, and the whole-database checksum is taken
//! from the pages as they are written instead of reading the file back.
//!
//! A history of many one-commit segments that rewrite the same pages, grow the
//! file and shrink it (VACUUM), more segments than are read ahead at once:
//! every txid must restore to exactly the state recorded after that commit,
//! and the checksum the restore proved must be the checksum of the file on
//! disk, read back page by page. Local directory and S3.
//!
//! Txids: `replicate --once` after each commit; the first run's snapshot is
//! txid 1 (`states[0]`), the j-th commit after it txid 1 + j.

mod common;

use std::path::Path;

use common::*;
use walstream::checksum::{lock_page, page_hash};
use walstream::replica::ReplicaUrl;
use walstream::{IntegrityCheck, RestoreOptions, Target};

const COMMITS: usize = 36;

/// One commit of the history, chosen so pages are rewritten again and again
/// and the database both grows and shrinks.
fn commit(app: &mut App, j: usize) -> &'static str {
    match j % 9 {
        // Larger than what the restore fetches whole (1 MiB): read ahead
        // in chunks, between segments fetched whole.
        0 => {
            app.commit_blobs("big", 3, 400_000);
            "large blobs"
        }
        4 => {
            app.commit_blobs("big", 3, 9000);
            "blobs"
        }
        3 => {
            app.commit_delete_blobs("big");
            "delete blobs"
        }
        8 => {
            app.vacuum();
            "vacuum"
        }
        _ => app.commit_random(),
    }
}

fn build_history(env: &Env, replica: &str) -> Vec<Digest> {
    let mut app = App::create(&env.db);
    replicate_once(&env.db, replica);
    let mut states = vec![app.digest()];
    for j in 1..=COMMITS {
        let kind = commit(&mut app, j);
        replicate_once(&env.db, replica);
        assert_eq!(
            last_shipped_txid(&env.db, replica),
            1 + j as u64,
            "commit {j} ({kind}) is one txid"
        );
        states.push(app.digest());
    }
    let list = list_json(replica);
    let large = segments(&list).iter().filter(|s| s.size > 1 << 20).count();
    assert!(large >= 3, "segments over 1 MiB: {large}\n{list:#}");
    states
}

/// Whole-database checksum of the file at `path`, read back from the disk.
fn disk_checksum(path: &Path, page_size: u32) -> (u64, u32) {
    let bytes = std::fs::read(path).expect("reading the restored file");
    let ps = page_size as usize;
    assert_eq!(bytes.len() % ps, 0, "{} is whole pages", path.display());
    let sum = bytes
        .chunks(ps)
        .zip(1u32..)
        .filter(|(_, pgno)| *pgno != lock_page(page_size))
        .fold(0, |acc, (page, pgno)| acc ^ page_hash(pgno, page));
    (sum, (bytes.len() / ps) as u32)
}

fn restore_every_txid(env: &Env, replica: &str, states: &[Digest]) {
    let store = ReplicaUrl::parse(replica)
        .expect("replica url")
        .open()
        .expect("opening the replica");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let outs = env.subdir("restores");
    let mut longest_chain = 0;
    for (j, state) in states.iter().enumerate() {
        let txid = 1 + j as u64;
        let out = outs.join(format!("txid-{txid}.db"));
        let opts = RestoreOptions {
            output: out.clone(),
            target: Target::Txid(txid),
            force: false,
            integrity_check: IntegrityCheck::Quick,
            progress: None,
            keys: Default::default(),
        };
        let report = rt
            .block_on(walstream::restore(&store, &opts))
            .unwrap_or_else(|e| panic!("restore --txid {txid}: {e}"));
        assert_eq!(report.txid, txid);
        assert_eq!(
            restore_leftovers(&out),
            [format!("txid-{txid}.db")],
            "only the output itself is left"
        );
        assert!(
            report.checksum_verified,
            "txid {txid} has a recorded checksum"
        );
        assert_eq!(
            disk_checksum(&out, report.page_size),
            (report.checksum, report.db_pages),
            "txid {txid}: the proven checksum is the file's"
        );
        assert_eq!(
            &digest_file(&out),
            state,
            "restore --txid {txid} must equal the state after commit {j}"
        );
        longest_chain = longest_chain.max(report.segments);
    }
    // More segments than the restore opens ahead at once (8), so objects
    // are handed over in order across many refills of the read-ahead.
    assert!(
        longest_chain >= 3 * 8,
        "the history should be one long chain of segments, longest was {longest_chain}"
    );
}

#[test]
fn many_segments_with_overlapping_pages_restore_every_txid() {
    let env = Env::new();
    let replica = env.replica_arg();
    let states = build_history(&env, &replica);
    restore_every_txid(&env, &replica, &states);
}

#[test]
fn s3_many_segments_with_overlapping_pages_restore_every_txid() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let replica = s3.fresh_replica("restore-pipeline");
    let states = build_history(&env, &replica);
    restore_every_txid(&env, &replica, &states);
}

/// Rewrites the segment at `path` with `index` as its page index (`None`:
/// as walstream wrote segments before page indexes existed).
fn rewrite_index(path: &Path, index: impl FnOnce(Vec<u32>) -> Option<Vec<u32>>) {
    use walstream::format::{decode_all, encode_segment};
    let bytes = std::fs::read(path).expect("reading a segment");
    let (mut header, pages) = decode_all(&bytes, &Default::default()).expect("decoding it");
    let written = header
        .page_index
        .take()
        .expect("new segments carry a page index");
    header.page_index = index(written);
    let refs: Vec<(u32, &[u8])> = pages.iter().map(|(r, p)| (r.pgno, p.as_slice())).collect();
    let out = encode_segment(&header, &refs).expect("encoding it");
    std::fs::write(path, out).expect("rewriting it");
}

/// A replica whose segments alternate between carrying a page index and
/// not (an old replica that a newer walstream continued): restore reads the
/// indexed ones selectively and the others whole, newest first, and every
/// txid still restores byte for byte.
#[test]
fn segments_with_and_without_a_page_index_restore_every_txid() {
    let env = Env::new();
    let replica = env.replica_arg();
    let states = build_history(&env, &replica);
    let segs = segments(&list_json(&replica));
    for (i, seg) in segs.iter().enumerate() {
        let path = env.replica.join(&seg.key);
        rewrite_index(&path, |ix| (i % 2 == 0).then_some(ix));
    }
    restore_every_txid(&env, &replica, &states);
}

/// A page index that names the wrong page for a record (its header CRC
/// recomputed, so only the index is wrong): `verify` names the object, and
/// a restore through it fails and leaves nothing.
#[test]
fn a_page_index_that_disagrees_with_its_body_is_caught() {
    let env = Env::new();
    let replica = env.replica_arg();
    build_history(&env, &replica);
    let seg = segments(&list_json(&replica)).pop().expect("a segment");
    rewrite_index(&env.replica.join(&seg.key), |mut ix| {
        ix[0] = ix[0] % 3 + 1 + ix[0];
        Some(ix)
    });
    let o = walstream(["verify", &replica]);
    o.assert_failure()
        .assert_mentions(&seg.key)
        .assert_mentions("page index says page");
    let out = env.path("restored.db");
    let o = walstream(["restore", "-o", out.to_str().expect("utf-8 path"), &replica]);
    o.assert_failure();
    assert!(!out.exists(), "no output after a failed restore");
}
