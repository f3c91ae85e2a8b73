//! Store outages while replicating to S3, through a fault-injecting proxy in
//! front of the test server (`tests/common/fault_proxy.rs`): throttling, server
//! errors, latency, dropped connections and the store down for a minute while
//! the application keeps writing; and a store that is down when `replicate`
//! starts. Afterwards every committed transaction is in the replica, in one
//! lineage (the pinned WAL kept them), and the latest restore equals the
//! application's database.
//!
//! The outage length is `WALSTREAM_OUTAGE_SECS` (default 60). Server settings as
//! in tests/cli_s3.rs.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy};
use common::*;
use serde_json::Value;

/// The same replica through the proxy (what walstream uses) and directly (what
/// the test checks with).
struct Replicas {
    proxied: String,
    direct: String,
}

fn replicas(s3: &S3Env, proxy: &FaultProxy, test: &str) -> Replicas {
    let prefix = format!("outage/{test}-{:016x}", rand::random::<u64>());
    let url = |endpoint: &str| {
        format!(
            "s3://{}/{prefix}?endpoint={endpoint}&force-path-style=true&max-attempts=2",
            s3.bucket
        )
    };
    Replicas {
        proxied: url(&proxy.endpoint),
        direct: url(&s3.endpoint),
    }
}

fn outage() -> Duration {
    let secs = std::env::var("WALSTREAM_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// `walstream status --json` through the proxied URL: while the store is down
/// it must still answer from the running process.
fn live_status(db: &std::path::Path, replica: &str) -> Value {
    let o = walstream_timeout(
        [
            std::ffi::OsStr::new("status"),
            std::ffi::OsStr::new("--json"),
            p(db),
            std::ffi::OsStr::new(replica),
        ],
        CMD_TIMEOUT,
    );
    o.assert_status_answered();
    o.json()
}

/// Stops the replicator, then checks that the replica is one lineage whose
/// window ends at `last_txid` (when given) and restores to the application's
/// database.
fn check_everything_restores(
    env: &Env,
    r: &Replicas,
    rep: &mut Replicator,
    app: App,
    last_txid: Option<u64>,
) {
    let committed_digest = app.digest();
    drop(app);
    rep.stop();
    let list = list_json(&r.direct);
    assert_eq!(
        lineages(&list).len(),
        1,
        "one lineage despite the outage: {list:#}"
    );
    let (_, max) = window(&list).expect("a restorable window");
    let out = env.path("restored.db");
    assert_eq!(restore_digest(&r.direct, &out, &[]), committed_digest);
    assert_integrity(&out);
    walstream(["verify", r.direct.as_str()]).assert_success();
    if let Some(last) = last_txid {
        assert_eq!(
            max, last,
            "every committed transaction has its txid: {list:#}"
        );
    }
}

#[test]
fn s3_store_faults_and_a_long_outage_lose_nothing() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let proxy = FaultProxy::start(&s3.endpoint);
    let r = replicas(&s3, &proxy, "faults");
    let mut app = App::create(&env.db);
    app.commit_insert_many(20);
    let mut rep = Replicator::spawn(&env.db, &r.proxied, &env.path("replicate.log"));
    rep.wait_started();
    let before = app.commits;
    let writer = AppWriter::start(app, Duration::from_millis(5));
    writer.wait_for(50);
    let phases = [
        (Fault::SlowDown, Duration::from_secs(3)),
        (Fault::InternalError, Duration::from_secs(2)),
        (
            Fault::Latency(Duration::from_millis(150)),
            Duration::from_secs(3),
        ),
        (Fault::Drop, Duration::from_secs(3)),
        (Fault::Pass, Duration::from_secs(1)),
    ];
    for (fault, how_long) in phases {
        proxy.set(fault);
        thread::sleep(how_long);
        assert!(
            rep.try_exit().is_none(),
            "replicate exited during {fault:?}:\n{}",
            rep.log_text()
        );
    }

    // The store goes away for a long time while the application keeps writing.
    proxy.set(Fault::Drop);
    let down = Instant::now();
    let committed_at_down = writer.committed();
    let mut lags = Vec::new();
    while down.elapsed() < outage() {
        thread::sleep(Duration::from_secs(5).min(outage()));
        let s = live_status(&env.db, &r.proxied);
        assert_eq!(s["replicating"], true, "{s:#}");
        assert!(
            s["last_error"].is_string(),
            "the outage shows as an error: {s:#}"
        );
        lags.push(s["lag_ms"].as_u64().unwrap_or(0));
        assert!(
            rep.try_exit().is_none(),
            "replicate exited during the outage:\n{}",
            rep.log_text()
        );
    }
    assert!(
        lags.windows(2).all(|w| w[1] >= w[0]) && lags.last() > lags.first(),
        "the lag grows while the store is down: {lags:?}"
    );
    assert!(
        *lags.last().unwrap_or(&0) >= outage().as_millis() as u64 / 2,
        "the lag covers the outage: {lags:?}"
    );

    proxy.set(Fault::Pass);
    let back = Instant::now();
    let committed_at_return = writer.committed();
    // The first snapshot is txid 1; each of the writer's commits is one more.
    wait_shipped_within(
        &env.db,
        &r.direct,
        1 + committed_at_return,
        Duration::from_secs(120),
    );
    eprintln!(
        "{} commits made during the outage were in the replica {:?} after the store returned",
        committed_at_return - committed_at_down,
        back.elapsed()
    );
    let app = writer.stop();
    let committed = 1 + (app.commits - before);
    check_everything_restores(&env, &r, &mut rep, app, Some(committed));
}

#[test]
fn s3_unreachable_at_start_keeps_running_and_catches_up() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let proxy = FaultProxy::start(&s3.endpoint);
    let r = replicas(&s3, &proxy, "start-down");
    let mut app = App::create(&env.db);
    app.commit_insert_many(10);
    proxy.set(Fault::Drop);
    let mut rep = Replicator::spawn(&env.db, &r.proxied, &env.path("replicate.log"));
    rep.wait_started();
    let writer = AppWriter::start(app, Duration::from_millis(10));
    thread::sleep(Duration::from_secs(5));
    assert!(
        rep.try_exit().is_none(),
        "replicate must wait for the store:\n{}",
        rep.log_text()
    );
    let s = live_status(&env.db, &r.proxied);
    assert!(s["last_error"].is_string(), "{s:#}");
    assert!(s["lag_ms"].as_u64().unwrap_or(0) >= 4000, "{s:#}");
    assert!(writer.committed() > 50, "the application was never held up");
    proxy.set(Fault::Pass);
    let app = writer.stop();
    let wait_from = Instant::now();
    // Start-up (a snapshot) and then the catch-up; the retry backoff is at most 30 s.
    loop {
        let list = list_json(&r.direct);
        if window(&list).is_some() {
            break;
        }
        assert!(
            wait_from.elapsed() < Duration::from_secs(90),
            "never started:\n{}",
            rep.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    check_everything_restores(&env, &r, &mut rep, app, None);
}
