//! One writer per replica location: a second `walstream replicate` of another
//! database (a copied config, a second host) into a replica that a running
//! process holds is refused with a message naming the holder, and nothing of
//! it reaches the replica. A clean stop releases the replica at once; a
//! crashed process's own restart reclaims it at once. Local directory and S3.

mod common;

use std::time::Duration;

use common::*;

/// Runs the scenario against `replica` (empty).
fn second_writer_is_refused(env: &Env, replica: &str) {
    let other_db = env.path("other.db");
    {
        let mut a = App::create(&env.db);
        a.commit_insert_many(5);
        let mut b = App::create(&other_db);
        b.commit_insert_many(7);
    }
    let mut first = Replicator::spawn(&env.db, replica, &env.path("first.log"));
    first.wait_started();
    let before = list_json(replica);
    let other = other_db.display().to_string();
    for once in [false, true] {
        let mut args = vec!["replicate", other.as_str(), replica];
        if once {
            args.push("--once");
        }
        let o = walstream_timeout(args, CMD_TIMEOUT);
        o.assert_failure()
            .assert_mentions("in use by another walstream")
            .assert_mentions(&env.db.display().to_string());
    }
    assert_eq!(
        list_json(replica),
        before,
        "the refused process wrote nothing to the replica"
    );

    // SIGKILL: the same database's next replicate reclaims the replica at once.
    first.signal(libc::SIGKILL);
    first.wait(SHIP_TIMEOUT);
    let mut again = Replicator::spawn(&env.db, replica, &env.path("again.log"));
    again.wait_started();
    let list = list_json(replica);
    assert_eq!(lineages(&list).len(), 1, "{list:#}");

    // A clean stop releases it: another database may now use the location.
    again.stop();
    let o = walstream_timeout(
        ["replicate", other.as_str(), replica, "--once"],
        CMD_TIMEOUT,
    );
    o.assert_success();
    let list = list_json(replica);
    assert_eq!(lineages(&list).len(), 2, "{list:#}");
    let out = env.path("restored.db");
    assert_eq!(
        restore_digest(replica, &out, &[]),
        App::open(&other_db, 0).digest(),
        "the newest lineage is the other database's"
    );
}

#[test]
fn local_replica_has_one_writer() {
    let env = Env::new();
    second_writer_is_refused(&env, &env.replica_arg());
}

#[test]
fn s3_replica_has_one_writer() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let replica = format!(
        "s3://{}/single-writer/{:016x}?endpoint={}&force-path-style=true",
        s3.bucket,
        rand::random::<u64>(),
        s3.endpoint
    );
    second_writer_is_refused(&env, &replica);
    // The lease lives beside the data, never inside snapshots/ or segments/.
    let o = walstream_timeout(["verify", replica.as_str()], Duration::from_secs(60));
    o.assert_success();
}
