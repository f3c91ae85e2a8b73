//! WAL restarts by application connections that come and go: the lineage goes
//! on, and the application's last connection never takes the WAL away.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn fresh_connections_restarting_the_wal_keep_the_lineage() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_started();
    let mut expected = 1;
    for round in 0..3u64 {
        // A new connection each round: its own checkpoint counter starts from
        // scratch, so the WAL header's checkpoint sequence does not move on a
        // restart; salt-1 does.
        app.commit_insert_many(1);
        for _ in 0..30 {
            app.commit_insert_one();
        }
        expected += 31;
        rep.wait_shipped(expected);
        let seed = round + 7;
        drop(app);
        // Closing the only application connection must not checkpoint and delete
        // the WAL while walstream holds it.
        assert!(
            env.path("app.db-wal").exists(),
            "the WAL was deleted when the application closed (round {round})"
        );
        // Let walstream's idle checkpoint copy everything, so the next writer
        // restarts the WAL.
        std::thread::sleep(Duration::from_millis(1600));
        app = App::open(&env.db, seed);
    }
    let final_state = app.digest();
    assert!(rep.terminate().success());
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, expected)));
    assert_eq!(snapshots(&list).len(), 1, "no new lineage: {list}");
    let out = env.path("latest.db");
    assert_eq!(restore_digest(&replica, &out, &[]), final_state);
    assert_eq!(
        rep.log_text().matches("starting a new lineage").count(),
        1,
        "only the first snapshot starts a lineage"
    );
}

/// Every TRUNCATE checkpoint restarts the WAL's salts, even of an empty WAL:
/// two in a row while walstream's pin sits behind a fully checkpointed WAL add
/// two to salt-1 before the next commit. Nothing can have been lost in between
/// (found by the torture suite, seed 0xFDC485E3B5645431), so the lineage goes on.
#[test]
fn consecutive_truncate_checkpoints_keep_the_lineage() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_started();
    let mut expected = 1;
    let mut states = vec![app.digest()];
    for round in 0..3 {
        for _ in 0..20 {
            app.commit_insert_one();
            states.push(app.digest());
        }
        expected += 20;
        rep.wait_shipped(expected);
        // walstream's idle checkpoint copies everything and pins again behind it.
        std::thread::sleep(Duration::from_millis(1600));
        for _ in 0..=round {
            let busy: i64 = app
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .expect("checkpoint");
            assert_eq!(busy, 0, "TRUNCATE behind a fully checkpointed WAL succeeds");
        }
    }
    app.commit_insert_one();
    states.push(app.digest());
    expected += 1;
    rep.wait_shipped(expected);
    assert!(rep.terminate().success());
    assert_eq!(
        rep.log_text().matches("starting a new lineage").count(),
        1,
        "only the first snapshot starts a lineage:\n{}",
        rep.log_text()
    );
    for txid in [1, 20, 21, 41, 42, 61, expected] {
        let out = env.path(&format!("txid-{txid}.db"));
        let t = txid.to_string();
        assert_eq!(
            restore_digest(&replica, &out, &["--txid", t.as_str()]),
            states[txid as usize - 1],
            "txid {txid}"
        );
    }
}
