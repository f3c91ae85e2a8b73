//! End-to-end tests of the `walstream` binary against an S3-compatible server:
//! replicate a live database to `s3://...` while an application commits, stop
//! with SIGTERM, restore (latest, by txid, by time), `verify` and `list`; plus
//! the failures a user meets first: a wrong secret, a missing bucket and an
//! endpoint nobody listens on.
//!
//! The tests run against the server named by `WALSTREAM_TEST_S3_ENDPOINT` and
//! `WALSTREAM_TEST_S3_BUCKET` with the credentials in `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`, normally a throwaway SeaweedFS
//! (`scripts/seaweedfs.sh`). Without `WALSTREAM_TEST_S3_ENDPOINT` they fail when
//! `CI=true` and are skipped, with a message, otherwise. Each test works under
//! a random prefix of its own.
//!
//! Txid arithmetic as in tests/cli_replicate_restore.rs: the first snapshot is
//! txid 1 (`states[0]`); the j-th application commit after it is txid 1 + j.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;

impl S3Env {
    /// `s3://BUCKET/cli-s3/TEST-RANDOM?endpoint=...&force-path-style=true`: a fresh,
    /// empty replica in the test bucket.
    fn replica(&self, test: &str) -> String {
        self.replica_in(&self.bucket, test)
    }

    /// Like [`S3Env::replica`], in another bucket.
    fn replica_in(&self, bucket: &str, test: &str) -> String {
        format!(
            "s3://{bucket}/cli-s3/{test}-{:016x}?endpoint={}&force-path-style=true",
            rand::random::<u64>(),
            self.endpoint
        )
    }
}

/// 200 KB of incompressible bytes in one row.
const BIG_BLOB: usize = 200 * 1024;

// ---------------------------------------------------------------------------
// (a) Continuous replication to S3, SIGTERM, restore by txid and time
// ---------------------------------------------------------------------------

#[test]
fn s3_continuous_replication_restores_every_target() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let replica = s3.replica("continuous");
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_shipped(1);

    const COMMITS: usize = 100;
    // states[j]: content after the j-th commit since replicate started (txid 1 + j).
    let mut states = vec![app.digest()];
    let mut kinds = vec!["(initial snapshot)"];
    // (j, t): t lies strictly between commit j (already shipped) and commit j + 1.
    let mut time_marks: Vec<(usize, SystemTime)> = Vec::new();
    let marks = [7, 55];
    for j in 1..=COMMITS {
        let kind = if j % 10 == 3 {
            app.commit_blob("big", BIG_BLOB);
            "200 KB blob"
        } else {
            app.commit_random()
        };
        states.push(app.digest());
        kinds.push(kind);
        if marks.contains(&j) {
            rep.wait_shipped(1 + j as u64);
            std::thread::sleep(Duration::from_millis(20));
            time_marks.push((j, SystemTime::now()));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        app.commits,
        1 + COMMITS as u64,
        "set-up: one commit per step"
    );
    let final_state = app.digest();

    // SIGTERM right after the last commit: everything must still be shipped.
    rep.stop();

    let list = list_json(&replica);
    assert_eq!(
        window(&list),
        Some((1, 1 + COMMITS as u64)),
        "one txid per committed transaction; list:\n{list:#}\nlog:\n{}",
        rep.log_text()
    );
    let lineages = lineages(&list);
    assert_eq!(lineages.len(), 1, "one lineage: {lineages:?}");
    assert_eq!(snapshots(&list).len(), 1, "only the initial snapshot");
    assert!(!segments(&list).is_empty(), "segments are listed: {list:#}");

    let restores = env.subdir("restores");
    let latest = restores.join("latest.db");
    let got = restore_digest(&replica, &latest, &["--integrity-check", "full"]);
    assert_eq!(got, final_state, "restore of the latest state");
    assert_integrity(&latest);

    for n in [1u64, 2, 4, 50, 74, 101] {
        let j = (n - 1) as usize;
        let out = restores.join(format!("txid-{n}.db"));
        let got = restore_digest(&replica, &out, &["--txid", &n.to_string()]);
        assert_eq!(
            got, states[j],
            "restore --txid {n} must equal the state after commit {j} ({})",
            kinds[j]
        );
    }

    for (j, t) in &time_marks {
        let ts = rfc3339(*t);
        let out = restores.join(format!("time-{j}.db"));
        let got = restore_digest(&replica, &out, &["--timestamp", &ts]);
        assert_eq!(
            got,
            states[*j],
            "restore --timestamp {ts} (between commits {j} and {}) must be txid {}",
            j + 1,
            j + 1
        );
    }

    walstream(["verify", &replica]).assert_success();
}

// ---------------------------------------------------------------------------
// (b) A wrong secret is reported as such and never printed
// ---------------------------------------------------------------------------

#[test]
fn s3_wrong_secret_is_reported_and_never_printed() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let replica = s3.replica("wrong-secret");
    let marker = format!("MARKER-SECRET-{:016x}", rand::random::<u64>());
    let bad = [("AWS_SECRET_ACCESS_KEY", marker.as_str())];
    {
        let mut app = App::create(&env.db);
        app.commit_insert_many(5);
    }
    let db = env.db.display().to_string();
    let runs = [
        vec!["list", replica.as_str()],
        vec!["replicate", db.as_str(), replica.as_str(), "--once"],
    ];
    for args in runs {
        let o = walstream_full(&args, &bad, CMD_TIMEOUT);
        o.assert_failure().assert_mentions("credentials are wrong");
        assert!(
            !o.text().contains(&marker),
            "the secret must never be printed:\n{o}"
        );
    }
    // With the right secret the replica is still empty: nothing got through.
    let list = list_json(&replica);
    assert_eq!(window(&list), None, "{list:#}");
}

// ---------------------------------------------------------------------------
// (c) A missing bucket is named
// ---------------------------------------------------------------------------

#[test]
fn s3_missing_bucket_is_named() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let bucket = format!("walstream-missing-{:016x}", rand::random::<u64>());
    let replica = s3.replica_in(&bucket, "missing-bucket");
    {
        let mut app = App::create(&env.db);
        app.commit_insert_one();
    }
    let db = env.db.display().to_string();
    let runs = [
        vec!["list", replica.as_str()],
        vec!["replicate", db.as_str(), replica.as_str(), "--once"],
    ];
    for args in runs {
        let o = walstream_timeout(&args, CMD_TIMEOUT);
        o.assert_failure()
            .assert_mentions(&bucket)
            .assert_mentions("does not exist");
    }
}

// ---------------------------------------------------------------------------
// (d) An endpoint nobody listens on fails promptly and clearly
// ---------------------------------------------------------------------------

#[test]
fn s3_closed_endpoint_fails_promptly() {
    let Some(s3) = s3_env() else { return };
    // A loopback port that was free a moment ago and has no listener now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        l.local_addr().expect("local address").port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let replica = format!(
        "s3://{}/cli-s3/closed-{:016x}?endpoint={endpoint}&force-path-style=true",
        s3.bucket,
        rand::random::<u64>()
    );
    let started = Instant::now();
    let o = walstream_timeout(["list", replica.as_str()], Duration::from_secs(60));
    let took = started.elapsed();
    o.assert_failure()
        .assert_mentions("could not connect")
        .assert_mentions(&endpoint);
    assert!(took < Duration::from_secs(60), "took {took:?}:\n{o}");
}
