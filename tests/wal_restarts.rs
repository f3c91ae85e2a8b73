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
