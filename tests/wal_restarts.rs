//! WAL restarts by application connections that come and go: the lineage goes
//! on, and the application's last connection never takes the WAL away.

mod common;

use std::time::Duration;

use common::*;

/// A new database with its application and a running `walstream replicate`.
fn started() -> (Env, String, App, Replicator) {
    let env = Env::new();
    let replica = env.replica_arg();
    let app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_started();
    (env, replica, app, rep)
}

/// Only the first snapshot started a lineage.
fn assert_one_lineage(rep: &Replicator) {
    let log = rep.log_text();
    assert_eq!(
        log.matches("starting a new lineage").count(),
        1,
        "only the first snapshot starts a lineage:\n{log}"
    );
}

/// Each of `txids` restores to its recorded state (`states[txid - 1]`).
fn assert_restores(
    env: &Env,
    replica: &str,
    states: &[Digest],
    txids: impl IntoIterator<Item = u64>,
) {
    for txid in txids {
        let out = env.path(&format!("txid-{txid}.db"));
        let t = txid.to_string();
        assert_eq!(
            restore_digest(replica, &out, &["--txid", t.as_str()]),
            states[txid as usize - 1],
            "txid {txid}"
        );
    }
}

#[test]
fn fresh_connections_restarting_the_wal_keep_the_lineage() {
    let (env, replica, mut app, mut rep) = started();
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
    assert_one_lineage(&rep);
}

/// Every TRUNCATE checkpoint restarts the WAL's salts, even of an empty WAL:
/// two in a row while walstream's pin sits behind a fully checkpointed WAL add
/// two to salt-1 before the next commit. Nothing can have been lost in between
/// (found by the torture suite, seed 0xFDC485E3B5645431), so the lineage goes on.
#[test]
fn consecutive_truncate_checkpoints_keep_the_lineage() {
    let (env, replica, mut app, mut rep) = started();
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
    assert_one_lineage(&rep);
    assert_restores(&env, &replica, &states, [1, 20, 21, 41, 42, 61, expected]);
}

/// A connection that never restarted the WAL itself writes the header of an
/// empty WAL with fresh random salts and checkpoint sequence 0, instead of
/// adding one to salt-1. That happens after another connection's TRUNCATE, and
/// again after a rolled-back transaction that spilled uncommitted frames into
/// the empty WAL (the next writer starts at frame 0 once more). With walstream's
/// pin held since everything was shipped, none of this can drop a committed
/// frame, so the lineage goes on (found by the torture suite, seed
/// 0xBC4078EF95561ED9).
#[test]
fn fresh_salts_after_a_truncate_or_a_rolled_back_spill_keep_the_lineage() {
    let (env, replica, mut app, mut rep) = started();
    let mut states = vec![app.digest()];
    for round in 0..3u64 {
        for _ in 0..10 {
            app.commit_insert_one();
            states.push(app.digest());
        }
        rep.wait_shipped(states.len() as u64);
        // walstream's idle checkpoint copies everything and pins behind it, so
        // the application's TRUNCATE can restart the WAL.
        std::thread::sleep(Duration::from_millis(1600));
        let busy: i64 = app
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .expect("checkpoint");
        assert_eq!(busy, 0, "TRUNCATE behind a fully checkpointed WAL succeeds");
        drop(app);
        app = App::open(&env.db, round + 11);
        if round > 0 {
            // Uncommitted frames in the empty WAL, seen by walstream, then undone.
            for _ in 0..round {
                spill_and_roll_back(&mut app, &mut rep);
            }
        }
        app.commit_insert_one();
        states.push(app.digest());
        rep.wait_shipped(states.len() as u64);
    }
    assert!(rep.terminate().success());
    assert_one_lineage(&rep);
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, states.len() as u64)));
    assert_restores(&env, &replica, &states, 1..=states.len() as u64);
}

/// A multi-MB transaction through a small page cache, so SQLite writes its
/// pages into the WAL before the end, rolled back after walstream had time to
/// look at the WAL.
fn spill_and_roll_back(app: &mut App, rep: &mut Replicator) {
    let wal = app.path.with_extension("db-wal");
    let salts = |wal: &std::path::Path| {
        std::fs::read(wal)
            .ok()
            .and_then(|b| b.get(16..24).map(<[u8]>::to_vec))
    };
    let before = salts(&wal);
    app.conn
        .execute_batch("PRAGMA cache_size = -256")
        .expect("cache_size");
    let tx = app.conn.transaction().expect("BEGIN");
    for _ in 0..4 {
        tx.execute(
            "INSERT INTO blobs(tag, data) VALUES ('spill', ?1)",
            [app.rng.bytes(1 << 20)],
        )
        .expect("insert");
    }
    let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(
        size > 1 << 20,
        "the transaction spilled into the WAL ({size} bytes)"
    );
    assert_ne!(salts(&wal), before, "the spill wrote a new WAL header");
    std::thread::sleep(Duration::from_millis(300));
    tx.rollback().expect("ROLLBACK");
    assert!(rep.try_exit().is_none(), "walstream still runs");
}
