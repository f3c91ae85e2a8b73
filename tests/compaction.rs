//! Compaction (`compact_segments`): shipped segments are merged into larger
//! ones in the background and the small ones deleted, while every txid and
//! every time still restores to its own state; plain and encrypted, local and
//! S3.
//!
//! Txids: the first snapshot is txid 1 (`states[0]`); the j-th commit after it
//! is txid 1 + j.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

const COMMITS: usize = 60;
const KEY: &str = "WALSTREAM_ENCRYPTION_KEY";

fn spawn(env: &Env, replica: &str, extra_env: &[(&str, &str)]) -> Child {
    let config = env.path("walstream.toml");
    let text = format!(
        "compact_segments = 8\nupload_interval = \"0s\"\n[[db]]\npath = \"{}\"\n[[db.replica]]\nurl = \"{}\"\n",
        env.db.display(),
        replica
    );
    std::fs::write(&config, text).expect("writing the config");
    let log = std::fs::File::create(env.path("replicate.log")).expect("log");
    let mut cmd = Command::new(bin());
    cmd.arg("replicate")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawning walstream")
}

/// Commits one at a time, each shipped before the next, so each is one segment.
fn commit_and_compact(
    env: &Env,
    replica: &str,
    extra_env: &[(&str, &str)],
) -> Vec<(Digest, SystemTime)> {
    let mut app = App::create(&env.db);
    let mut child = spawn(env, replica, extra_env);
    wait_shipped(&env.db, replica, 1);
    let mut states = vec![(app.digest(), SystemTime::now())];
    for j in 1..=COMMITS {
        app.commit_random();
        let digest = app.digest();
        wait_shipped(&env.db, replica, 1 + j as u64);
        // Shipped, so walstream observed it: its recorded time is before now,
        // and the next commit's will be after.
        states.push((digest, SystemTime::now()));
        // Times are recorded in milliseconds: keep the next commit out of this one.
        std::thread::sleep(Duration::from_millis(2));
    }
    // The merges run in the background: wait until few small segments are left.
    let deadline = Instant::now() + SHIP_TIMEOUT;
    while segments(&list_json(replica)).len() > COMMITS / 4 {
        assert!(
            Instant::now() < deadline,
            "segments were not compacted: {:#}",
            list_json(replica)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_child(&mut child, Duration::from_secs(30)).expect("walstream exits");
    assert!(status.success(), "replicate exited with {status:?}");
    states
}

fn check_every_txid_and_time(
    env: &Env,
    replica: &str,
    states: &[(Digest, SystemTime)],
    extra_env: &[(&str, &str)],
) {
    let list = list_json(replica);
    assert_eq!(window(&list), Some((1, 1 + COMMITS as u64)), "{list:#}");
    let segs = segments(&list);
    assert!(
        segs.iter().any(|s| s.max_txid - s.min_txid + 1 >= 8),
        "a compacted segment carries 8 or more commits: {list:#}"
    );
    for (j, (digest, at)) in states.iter().enumerate() {
        let txid = (1 + j as u64).to_string();
        let out = env.path(&format!("txid-{txid}.db"));
        let o = restore_env(replica, &out, &["--txid", txid.as_str()], extra_env);
        o.assert_success();
        assert_eq!(&digest_file(&out), digest, "txid {txid}");
        // Every third one also by the time it was committed.
        if j % 3 == 0 {
            let out = env.path(&format!("time-{txid}.db"));
            let t = rfc3339(*at);
            restore_env(replica, &out, &["--timestamp", t.as_str()], extra_env).assert_success();
            assert_eq!(&digest_file(&out), digest, "time {t} (txid {txid})");
        }
    }
    walstream_env(["verify", replica], extra_env).assert_success();
}

#[test]
fn compacted_segments_restore_every_txid_and_time() {
    let env = Env::new();
    let replica = env.replica_arg();
    let states = commit_and_compact(&env, &replica, &[]);
    check_every_txid_and_time(&env, &replica, &states, &[]);
    let leftovers: Vec<String> = std::fs::read_dir(env.path(".app.db-walstream"))
        .expect("state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("compact-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "compaction files left behind: {leftovers:?}"
    );
}

#[test]
fn compacted_segments_are_encrypted_too() {
    let env = Env::new();
    let replica = env.replica_arg();
    let out = walstream(["keygen"]);
    out.assert_success();
    let key = out.stdout.trim().to_string();
    let with_key = [(KEY, key.as_str())];
    let states = commit_and_compact(&env, &replica, &with_key);
    check_every_txid_and_time(&env, &replica, &states[..10], &with_key);
    let out = env.path("no-key.db");
    restore_env(&replica, &out, &[], &[(KEY, "")]).assert_failure();
    assert!(!out.exists());
}

#[test]
fn s3_compacted_segments_restore_every_txid() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let replica = format!(
        "s3://{}/compaction/{:016x}?endpoint={}&force-path-style=true",
        s3.bucket,
        rand::random::<u64>(),
        s3.endpoint
    );
    let states = commit_and_compact(&env, &replica, &[]);
    check_every_txid_and_time(&env, &replica, &states, &[]);
}
