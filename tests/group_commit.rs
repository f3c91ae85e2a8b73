//! Capture under load: a burst of commits shares segments (group commit), and a
//! transaction larger than the engine's in-memory segment limit is spooled,
//! shipped and restored byte for byte, in the clear and encrypted.

mod common;

use common::*;
use walstream::crypto::KEY_ENV;

/// Peak resident memory of a process, from `/proc/PID/status`, in MiB.
fn peak_rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

#[test]
fn a_burst_shares_segments_and_every_txid_restores() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_shipped(1);

    // 400 commits back to back: far faster than a segment's two fsyncs each.
    const BURST: u64 = 400;
    let mut states = vec![app.digest()];
    for _ in 0..BURST {
        app.commit_insert_one();
        states.push(app.digest());
    }
    rep.wait_shipped(BURST + 1);
    rep.stop();

    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, BURST + 1)));
    let segs: Vec<Listed> = segments(&list)
        .into_iter()
        .filter(|s| s.max_txid >= 2)
        .collect();
    assert!(
        (segs.len() as u64) < BURST / 2,
        "{BURST} commits in a burst took {} segments",
        segs.len()
    );
    // Every txid at the edges of the shared segments, and a few inside.
    let mut txids: Vec<u64> = segs
        .iter()
        .filter(|s| s.max_txid > s.min_txid)
        .take(4)
        .flat_map(|s| [s.min_txid, (s.min_txid + s.max_txid) / 2, s.max_txid])
        .collect();
    assert!(
        !txids.is_empty(),
        "no segment holds several commits: {segs:?}"
    );
    txids.push(BURST + 1);
    txids.sort_unstable();
    txids.dedup();
    for txid in txids {
        let out = env.path(&format!("txid-{txid}.db"));
        let digest = restore_digest(&replica, &out, &["--txid", &txid.to_string()]);
        assert_eq!(digest, states[(txid - 1) as usize], "txid {txid}");
    }
}

/// One transaction of `blob_mib` MiB between small ones, replicated to
/// `replica` with the given environment; returns the replicator's peak RSS (MiB).
fn large_transaction(env: &Env, replica: &str, blob_mib: usize, vars: &[(&str, &str)]) -> u64 {
    let replica = replica.to_string();
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn_env(&env.db, &replica, &env.path("replicate.log"), vars);
    rep.wait_shipped(1);
    app.commit_insert_one();
    let before = app.digest();
    app.commit_blob("large", blob_mib << 20);
    let large = app.digest();
    app.commit_insert_one();
    let after = app.digest();
    rep.wait_shipped(4);
    let peak = peak_rss_mib(rep.pid());
    rep.stop();

    let list = list_json(&replica);
    let seg = segments(&list)
        .into_iter()
        .find(|s| s.min_txid <= 3 && s.max_txid >= 3)
        .expect("a segment holds txid 3");
    assert_eq!((seg.min_txid, seg.max_txid), (3, 3), "{seg:?}");
    assert!(seg.size > (blob_mib as u64) << 20, "{seg:?}");
    for (txid, want) in [(2u64, &before), (3, &large), (4, &after)] {
        let out = env.path(&format!("txid-{txid}.db"));
        let o = restore_env(&replica, &out, &["--txid", &txid.to_string()], vars);
        o.assert_success();
        assert_eq!(&digest_file(&out), want, "txid {txid}");
    }
    let state = std::fs::read_dir(walstream::capture::state_dir(&env.db)).expect("state dir");
    let left: Vec<_> = state
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("segment-"))
        .collect();
    assert!(left.is_empty(), "spool files left behind: {left:?}");
    peak
}

#[test]
fn a_transaction_larger_than_the_memory_limit_is_spooled_and_restores() {
    const BLOB_MIB: usize = 48;
    let env = Env::new();
    let peak = large_transaction(&env, &env.replica_arg(), BLOB_MIB, &[]);
    // Built in memory, the segment alone would take the blob's size (random
    // bytes do not compress).
    assert!(
        peak < BLOB_MIB as u64,
        "replicator peak RSS {peak} MiB for a {BLOB_MIB} MiB transaction"
    );
}

#[test]
fn a_spooled_transaction_is_sealed_when_encrypted() {
    let key = walstream(["keygen"]).stdout.trim().to_string();
    let env = Env::new();
    large_transaction(&env, &env.replica_arg(), 12, &[(KEY_ENV, &key)]);
    let objects = replica_objects(&env.replica_arg());
    let (_, seg) = objects
        .iter()
        .find(|(k, b)| k.starts_with("segments/") && b.len() > 12 << 20)
        .expect("the large segment");
    let header = walstream::format::ObjectHeader::decode(&mut &seg[..]).expect("a segment header");
    assert!(
        header.is_encrypted(),
        "the spooled segment went out in the clear"
    );
}

#[test]
fn s3_a_spooled_transaction_ships_in_parts_and_restores() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    // Larger than one 8 MiB part of a multipart upload.
    let replica = format!(
        "s3://{}/group-commit/spooled-{:016x}?endpoint={}&force-path-style=true",
        s3.bucket,
        rand::random::<u64>(),
        s3.endpoint
    );
    large_transaction(&env, &replica, 20, &[]);
}
