//! Several replicas per database (`[[db.replica]]` more than once): two
//! databases, each replicated by one `walstream replicate --config` to a local
//! directory and to S3 behind the fault proxy (tests/common/fault_proxy.rs).
//! While S3 is down the local replicas keep shipping every commit at once;
//! when it comes back the S3 replicas catch up; every replica restores to its
//! database; `restore --config` picks the most advanced replica, or the one
//! `--replica NAME` names. Server settings as in tests/cli_s3.rs.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy};
use common::*;

/// One database of the test and its two replicas.
struct Db {
    path: PathBuf,
    local: String,
    /// Through the proxy (what walstream uses) ...
    s3_proxied: String,
    /// ... and directly (what the test checks with).
    s3_direct: String,
}

fn s3_urls(s3: &S3Env, proxy: &FaultProxy, name: &str) -> (String, String) {
    let prefix = format!("replicas/{name}-{:016x}", rand::random::<u64>());
    let url = |endpoint: &str| {
        format!(
            "s3://{}/{prefix}?endpoint={endpoint}&force-path-style=true&max-attempts=2",
            s3.bucket
        )
    };
    (url(&proxy.endpoint), url(&s3.endpoint))
}

/// The config: `a` lists its local replica first, `b` its S3 replica first.
fn write_config(env: &Env, a: &Db, b: &Db) -> PathBuf {
    let text = format!(
        "verify_interval = \"off\"\n\
         [[db]]\npath = \"{}\"\n\
         [[db.replica]]\nname = \"local\"\nurl = \"{}\"\n\
         [[db.replica]]\nname = \"offsite\"\nurl = \"{}\"\n\
         [[db]]\npath = \"{}\"\n\
         [[db.replica]]\nname = \"offsite\"\nurl = \"{}\"\n\
         [[db.replica]]\nname = \"local\"\nurl = \"{}\"\n",
        a.path.display(),
        a.local,
        a.s3_proxied,
        b.path.display(),
        b.s3_proxied,
        b.local,
    );
    let path = env.path("walstream.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// Waits until the log says both databases replicate to both replicas.
fn wait_all_started(rep: &mut Replicator, dbs: &[&Db]) {
    let deadline = Instant::now() + SHIP_TIMEOUT;
    loop {
        let log = rep.log_text();
        let started = log
            .lines()
            .filter(|l| l.contains("replicating db="))
            .count();
        if started == 2 * dbs.len() {
            return;
        }
        assert!(
            rep.try_exit().is_none() && Instant::now() < deadline,
            "not every replica started; log:\n{log}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn restore_config(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("restore"),
        OsStr::new("--config"),
        p(config),
        OsStr::new("-o"),
        p(out),
    ];
    args.extend(extra.iter().map(OsStr::new));
    walstream(args)
}

#[test]
fn two_databases_two_replicas_one_destination_down() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let proxy = FaultProxy::start(&s3.endpoint);
    let mk = |name: &str| {
        let (s3_proxied, s3_direct) = s3_urls(&s3, &proxy, name);
        Db {
            path: env.path(&format!("{name}.db")),
            local: env.subdir(&format!("{name}-local")).display().to_string(),
            s3_proxied,
            s3_direct,
        }
    };
    let (a, b) = (mk("a"), mk("b"));
    let mut apps = [App::create(&a.path), App::create_seeded(&b.path, 7)];
    for app in apps.iter_mut() {
        app.commit_insert_many(10);
    }
    let config = write_config(&env, &a, &b);
    let mut rep = Replicator::spawn_config(&config, &env.path("replicate.log"), &[]);
    wait_all_started(&mut rep, &[&a, &b]);
    let dbs = [&a, &b];
    // Txid 1 is each replica's first snapshot; each commit after it is one more.
    for db in dbs {
        wait_shipped(&db.path, &db.local, 1);
        wait_shipped(&db.path, &db.s3_direct, 1);
    }

    // S3 goes down. The application keeps committing to both databases, and
    // each commit is in the local replicas at once.
    proxy.set(Fault::Drop);
    let mut txid = 1;
    let mut slowest = Duration::ZERO;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(8) {
        txid += 1;
        for (app, db) in apps.iter_mut().zip(dbs) {
            app.commit_random();
            // S3 stays down throughout: a local replica held up by the S3
            // one would never ship, and this would time out.
            let t = Instant::now();
            wait_shipped(&db.path, &db.local, txid);
            slowest = slowest.max(t.elapsed());
        }
    }
    eprintln!(
        "during the outage: {} commits per database, the slowest in its local replica after {slowest:?}",
        txid - 1
    );
    assert!(
        rep.try_exit().is_none(),
        "replicate exited:\n{}",
        rep.log_text()
    );
    let digests_at_outage: Vec<Digest> = apps.iter().map(App::digest).collect();

    // `status --config`: one entry per database and replica; the failing ones
    // say so, the healthy ones are current.
    let o = walstream_timeout(
        [
            OsStr::new("status"),
            OsStr::new("--json"),
            OsStr::new("--config"),
            p(&config),
        ],
        CMD_TIMEOUT,
    );
    o.assert_status_answered();
    let all = o.json();
    let entries = all.as_array().expect("an array");
    assert_eq!(entries.len(), 4, "{all:#}");
    for e in entries {
        let name = e["replica_name"].as_str().unwrap_or_default();
        match name {
            "offsite" => assert!(e["last_error"].is_string(), "{e:#}"),
            "local" => {
                assert_eq!(e["last_shipped_txid"], txid, "{e:#}");
                assert_eq!(e["pending_commits"], 0, "{e:#}");
            }
            other => panic!("unexpected replica {other:?}: {all:#}"),
        }
    }

    // S3 returns: the S3 replicas catch up.
    proxy.set(Fault::Pass);
    let back = Instant::now();
    for db in dbs {
        wait_shipped_within(&db.path, &db.s3_direct, txid, Duration::from_secs(90));
    }
    eprintln!(
        "the S3 replicas caught up {:?} after S3 returned",
        back.elapsed()
    );

    // S3 down again: more commits reach only the local replicas, and the
    // process stops while S3 is still down (its final shipping to S3 fails).
    proxy.set(Fault::Drop);
    for _ in 0..5 {
        txid += 1;
        for (app, db) in apps.iter_mut().zip(dbs) {
            app.commit_random();
            wait_shipped(&db.path, &db.local, txid);
        }
    }
    let status = rep.terminate();
    assert_eq!(
        status.code(),
        Some(1),
        "a final shipping failed, so replicate says so:\n{}",
        rep.log_text()
    );

    // Every replica restores to its database's state: the local ones to the
    // last commit, the S3 ones to the state before the second outage.
    let finals: Vec<Digest> = apps.iter().map(App::digest).collect();
    for (i, db) in dbs.iter().enumerate() {
        let out = env.path(&format!("{i}-local.db"));
        assert_eq!(restore_digest(&db.local, &out, &[]), finals[i]);
        assert_integrity(&out);
        let out = env.path(&format!("{i}-s3.db"));
        assert_eq!(
            restore_digest(&db.s3_direct, &out, &[]),
            digests_at_outage[i]
        );
        walstream(["verify", db.s3_direct.as_str()]).assert_success();
        walstream(["verify", db.local.as_str()]).assert_success();
    }

    // With the config: the most advanced replica. While S3 is down, the one
    // that can be read (with a warning about the other).
    let out = env.path("b-reachable.db");
    let o = restore_config(&config, &out, &["--db", b.path.to_str().unwrap()]);
    o.assert_success();
    o.assert_mentions("replica offsite could not be read");
    o.assert_mentions("restoring from replica local");
    assert_eq!(digest_file(&out), finals[1]);
    // With S3 back, the one that reaches furthest, whichever is listed first:
    // `a` lists local first, `b` lists offsite first; both pick local.
    proxy.set(Fault::Pass);
    for (i, db) in dbs.iter().enumerate() {
        let out = env.path(&format!("{i}-advanced.db"));
        let o = restore_config(&config, &out, &["--db", db.path.to_str().unwrap()]);
        o.assert_success();
        o.assert_mentions("restoring from replica local");
        o.assert_mentions("the most advanced of");
        assert_eq!(digest_file(&out), finals[i]);
    }
    // A replica by name, even when it is behind.
    let out = env.path("b-offsite.db");
    let o = restore_config(
        &config,
        &out,
        &["--db", b.path.to_str().unwrap(), "--replica", "offsite"],
    );
    o.assert_success();
    assert_eq!(digest_file(&out), digests_at_outage[1]);
    // A name that does not exist lists the names.
    let o = restore_config(&config, &env.path("none.db"), &["--replica", "nearby"]);
    o.assert_failure();
    o.assert_mentions("no replica is named \"nearby\"");
    o.assert_mentions("local, offsite");

    // Everything shipped: both replicas of `a` hold the same state, and on a
    // tie the first listed wins.
    let mut rep = Replicator::spawn_config(&config, &env.path("replicate2.log"), &[]);
    wait_all_started(&mut rep, &[&a, &b]);
    rep.stop();
    let out = env.path("a-tie.db");
    let o = restore_config(&config, &out, &[]);
    o.assert_success();
    o.assert_mentions("restoring from replica local");
    assert_eq!(digest_file(&out), finals[0]);
    let out = env.path("b-tie.db");
    let o = restore_config(&config, &out, &["--db", b.path.to_str().unwrap()]);
    o.assert_success();
    o.assert_mentions("restoring from replica offsite");
    assert_eq!(digest_file(&out), finals[1]);
}
