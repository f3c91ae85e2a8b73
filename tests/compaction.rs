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
    // Times are recorded in milliseconds: keep the first commit out of this one.
    std::thread::sleep(Duration::from_millis(2));
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

/// Merges every segment of a local replica after the first two into one with
/// the library and deletes the inputs but one: the state a replica is left in
/// when a delete after a merge failed (as during a store outage).
fn merge_leaving_inputs(replica: &std::path::Path) -> (u64, u64) {
    use walstream::format::ObjectHeader;
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(replica.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    let inputs: Vec<Vec<u8>> = paths[2..]
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let headers: Vec<ObjectHeader> = inputs
        .iter()
        .map(|b| ObjectHeader::decode(&mut b.as_slice()).expect("header"))
        .collect();
    let (merged, bytes) = walstream::compaction::write_merged(
        &headers,
        inputs.iter().map(|b| b.as_slice()),
        Vec::new(),
    )
    .expect("merge");
    let (first, last) = (merged.commits[0], merged.commits[merged.commits.len() - 1]);
    let key = walstream::catalog::segment_key(
        first.txid,
        last.txid,
        merged.lineage,
        first.time_ms,
        last.time_ms,
    );
    write_file(&replica.join(key), &bytes);
    // The deletes after the merge: all but one in the middle went through.
    for (i, p) in paths[2..].iter().enumerate() {
        if i != inputs.len() / 2 {
            std::fs::remove_file(p).expect("deleting an input");
        }
    }
    (first.txid, last.txid)
}

#[test]
fn a_merged_segment_beside_its_inputs_verifies_and_restores() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    let mut states = vec![app.digest()];
    for _ in 0..12 {
        app.commit_random();
        states.push(app.digest());
        replicate_once(&env.db, &replica);
    }
    // A snapshot in the middle of what gets merged, compared through the merge.
    let db = env.db.display().to_string();
    walstream(["snapshot", db.as_str(), replica.as_str()]).assert_success();
    for _ in 0..4 {
        app.commit_random();
        states.push(app.digest());
        replicate_once(&env.db, &replica);
    }
    let before = segments(&list_json(&replica)).len();
    let (lo, hi) = merge_leaving_inputs(&env.replica);
    assert_eq!(
        segments(&list_json(&replica)).len(),
        2 + 1 + 1,
        "{before} segments before"
    );
    assert!(hi - lo >= 10, "merged {lo}..={hi}");
    walstream(["verify", replica.as_str()]).assert_success();
    for (j, digest) in states.iter().enumerate() {
        let txid = (1 + j as u64).to_string();
        let out = env.path(&format!("txid-{txid}.db"));
        assert_eq!(
            &restore_digest(&replica, &out, &["--txid", txid.as_str()]),
            digest,
            "txid {txid}"
        );
    }
}

/// Two replicas of one database compact each their own segments: each keeps
/// its segment log in its own directory (`replicas/<name>/` in the state
/// directory), so neither start-up nor a merge touches the other's.
#[test]
fn two_replicas_of_one_database_compact_each_their_own() {
    let env = Env::new();
    let near = env.subdir("near").display().to_string();
    let far = env.subdir("far").display().to_string();
    // Files a killed process would have left: removed at start, in every
    // replica's directory and at the top level.
    let state = env.path(".app.db-walstream");
    for dir in [
        state.clone(),
        state.join("replicas/near"),
        state.join("replicas/far"),
    ] {
        std::fs::create_dir_all(&dir).expect("state dir");
        write_file(&dir.join("compact-00000000deadbeef.log"), b"stale");
        write_file(&dir.join("snapshot-00000000deadbeef.tmp"), b"stale");
    }
    let config = env.path("walstream.toml");
    let text = format!(
        "compact_segments = 8\nupload_interval = \"0s\"\nverify_interval = \"off\"\n\
         [[db]]\npath = \"{}\"\n\
         [[db.replica]]\nname = \"near\"\nurl = \"{near}\"\n\
         [[db.replica]]\nname = \"far\"\nurl = \"{far}\"\n",
        env.db.display(),
    );
    std::fs::write(&config, text).expect("writing the config");
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn_config(&config, &env.path("replicate.log"), &[]);
    wait_shipped(&env.db, &near, 1);
    wait_shipped(&env.db, &far, 1);
    let mut states = vec![(app.digest(), SystemTime::now())];
    std::thread::sleep(Duration::from_millis(2));
    for j in 1..=COMMITS {
        app.commit_random();
        let digest = app.digest();
        wait_shipped(&env.db, &near, 1 + j as u64);
        wait_shipped(&env.db, &far, 1 + j as u64);
        states.push((digest, SystemTime::now()));
        std::thread::sleep(Duration::from_millis(2));
    }
    let deadline = Instant::now() + SHIP_TIMEOUT;
    for replica in [&near, &far] {
        while segments(&list_json(replica)).len() > COMMITS / 4 {
            assert!(
                Instant::now() < deadline,
                "segments of {replica} were not compacted: {:#}\n{}",
                list_json(replica),
                rep.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    rep.stop();
    for dir in [
        state.clone(),
        state.join("replicas/near"),
        state.join("replicas/far"),
    ] {
        let left: Vec<String> = dir_names(&dir)
            .into_iter()
            .filter(|n| n.starts_with("compact-") || n.starts_with("snapshot-"))
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
    for replica in [&near, &far] {
        // A directory of its own for each replica's restores.
        check_every_txid_and_time(&Env::new(), replica, &states, &[]);
    }
}
