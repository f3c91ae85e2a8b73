//! Uploads that land after the next walstream process listed the replica (a
//! killed process's request delivered late, or one given up on and retried):
//! the lineage written later keeps its txids, the late objects are left out
//! of every restore, and the next process resumes the live lineage.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A new database with its application and a running `walstream replicate`,
/// and the state after each txid (txid 1 is the first snapshot's).
fn started(env: &Env) -> (App, Replicator, Vec<Digest>) {
    let app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &env.replica_arg(), &env.path("run-1.log"));
    rep.wait_started();
    let states = vec![app.digest()];
    (app, rep, states)
}

/// [`started`], with txids 2..=6 (five commits) shipped.
fn six_shipped(env: &Env) -> (App, Replicator, Vec<Digest>) {
    let (mut app, mut rep, mut states) = started(env);
    commit(&mut app, &mut states, 5);
    rep.wait_shipped(6);
    (app, rep, states)
}

/// Five more commits after [`six_shipped`], shipped as txids 7..=11.
fn eleven_shipped(env: &Env) -> (App, Replicator, Vec<Digest>) {
    let (mut app, mut rep, mut states) = six_shipped(env);
    commit(&mut app, &mut states, 5);
    rep.wait_shipped(11);
    (app, rep, states)
}

/// SIGKILL: the lease is not released, and nothing is flushed.
fn kill(mut rep: Replicator) {
    rep.signal(libc::SIGKILL);
    rep.wait(std::time::Duration::from_secs(10));
}

fn commit(app: &mut App, states: &mut Vec<Digest>, n: usize) {
    for _ in 0..n {
        app.commit_insert_one();
        states.push(app.digest());
    }
}

/// Moves every object of `dir` (under the replica) whose first txid is at
/// least `from` out to `aside`, as if their uploads had not landed yet.
fn hold_back(replica: &Path, dir: &str, from: u64, aside: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(aside).expect("creating the hold-back directory");
    let mut held = Vec::new();
    for name in dir_names(&replica.join(dir)) {
        let first = u64::from_str_radix(&name[..16], 16).expect("object name");
        if first >= from {
            let to = aside.join(&name);
            fs::rename(replica.join(dir).join(&name), &to).expect("holding an object back");
            held.push(to);
        }
    }
    held
}

/// The held-back uploads land now.
fn land(held: &[PathBuf], replica: &Path, dir: &str) {
    for p in held {
        let name = p.file_name().expect("object name");
        fs::rename(p, replica.join(dir).join(name)).expect("landing an object");
    }
}

/// Each of `txids` restores to its recorded state (`states[txid - 1]`).
fn assert_txids(env: &Env, states: &[Digest], txids: impl IntoIterator<Item = u64>) {
    for t in txids {
        let out = env.path(&format!("txid-{t}.db"));
        let txid = t.to_string();
        assert_eq!(
            restore_digest(&env.replica_arg(), &out, &["--txid", &txid]),
            states[t as usize - 1],
            "txid {t}"
        );
    }
}

/// `walstream verify` passes and warns about each of `late` by name.
fn assert_verify_warns(replica: &str, late: &[PathBuf]) {
    let out = walstream(["verify", replica]);
    assert!(out.success(), "verify: {}", out.text());
    for p in late {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            out.text().contains(&name) && out.text().contains("landed late"),
            "verify names the late object {name}: {}",
            out.text()
        );
    }
}

/// One more run resumes the lineage `list` shows (no new lineage) and ships
/// one more commit, which restores.
fn assert_next_run_resumes(env: &Env, app: &mut App, states: &mut Vec<Digest>) {
    let replica = env.replica_arg();
    let before = lineages(&list_json(&replica));
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("run-last.log"));
    rep.wait_started();
    commit(app, states, 1);
    let txid = states.len() as u64;
    rep.wait_shipped(txid);
    rep.stop();
    let log = rep.log_text();
    assert!(
        log.contains("resuming the replica's lineage") && !log.contains("new lineage"),
        "the next run resumes the live lineage: {log}"
    );
    assert_eq!(lineages(&list_json(&replica)), before);
    let out = env.path("after-next-run.db");
    assert_eq!(
        restore_digest(&replica, &out, &[]),
        states[txid as usize - 1]
    );
}

#[test]
fn a_late_segment_of_the_old_lineage_yields_to_the_new_one() {
    let env = Env::new();
    let replica = env.replica_arg();
    let (mut app, mut rep, mut states) = eleven_shipped(&env);
    rep.stop();
    // Txids 7..=11 were uploaded but have not landed when the next process
    // lists the replica. Meanwhile the application checkpointed the WAL away
    // and committed, so that process cannot prove continuity from txid 6.
    let held = hold_back(&env.replica, "segments", 7, &env.path("in-flight"));
    assert!(!held.is_empty());
    app.conn
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    commit(&mut app, &mut states, 1);
    let restarted = app.digest();
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("run-2.log"));
    rep.wait_started();
    assert!(rep.log_text().contains("starting a new lineage"));
    // The new lineage's snapshot is txid 7; two more commits are 8 and 9.
    commit(&mut app, &mut states, 2);
    let latest = app.digest();
    rep.wait_shipped(9);
    rep.stop();
    land(&held, &env.replica, "segments");

    // Txids 7..=11 of the old lineage reach past the new lineage's 9: without
    // fencing, the latest restore would be the old lineage's stale txid 11.
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, 9)), "{list}");
    assert_eq!(list["superseded"].as_array().unwrap().len(), held.len());
    assert_eq!(
        restore_digest(&replica, &env.path("latest.db"), &[]),
        latest
    );
    let out = env.path("txid-7.db");
    assert_eq!(restore_digest(&replica, &out, &["--txid", "7"]), restarted);
    assert_txids(&env, &states, 1..=6);
    assert_verify_warns(&replica, &held);
    // The states after txid 9 are the application's, numbered from 10 again.
    let mut live = states[..6].to_vec();
    live.extend([restarted, states[states.len() - 2].clone(), latest]);
    assert_next_run_resumes(&env, &mut app, &mut live);
}

#[test]
fn a_late_snapshot_of_a_new_lineage_yields_to_the_resumed_one() {
    let env = Env::new();
    let replica = env.replica_arg();
    let (mut app, mut rep, mut states) = six_shipped(&env);
    rep.stop();
    // A process that started from this moment after a WAL reset (a copy of
    // database and replica here) stored a new lineage's snapshot at txid 7,
    // and was killed before that upload landed.
    let other = Env::new();
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", env.db.display()));
        if from.exists() {
            fs::copy(&from, format!("{}{suffix}", other.db.display())).expect("copying");
        }
    }
    copy_dir(&env.replica, &other.replica);
    let mut other_app = App::open(&other.db, 9);
    other_app.commit_insert_one();
    other_app
        .conn
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    let mut other_rep = Replicator::spawn(&other.db, &other.replica_arg(), &other.path("o.log"));
    other_rep.wait_started();
    assert!(
        other_rep.log_text().contains("starting a new lineage"),
        "{}",
        other_rep.log_text()
    );
    other_rep.wait_shipped(7);
    other_rep.stop();
    let held = hold_back(&other.replica, "snapshots", 7, &env.path("in-flight"));
    assert_eq!(held.len(), 1);

    // The next process lists txids up to 6 and resumes the lineage.
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("run-2.log"));
    rep.wait_started();
    commit(&mut app, &mut states, 3);
    rep.wait_shipped(9);
    rep.stop();
    assert!(rep.log_text().contains("resuming the replica's lineage"));
    land(&held, &env.replica, "snapshots");

    // Without fencing, restoring txid 7 would take the late snapshot: a
    // state of the copy, not of this database.
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, 9)), "{list}");
    assert_eq!(list["superseded"].as_array().unwrap().len(), 1);
    assert_txids(&env, &states, [1, 6, 7, 8, 9]);
    assert_verify_warns(&replica, &held);
    assert_next_run_resumes(&env, &mut app, &mut states);
}

/// Replaces the database with a restore of `txid` from `replica`, as an
/// operator putting back the newest backed-up state would (the application's
/// connection closed meanwhile, its WAL gone with the old file).
fn restore_in_place(env: &Env, app: App, txid: u64) -> App {
    drop(app);
    let tmp = env.path("restoring.db");
    let t = txid.to_string();
    walstream([
        "restore",
        "-o",
        tmp.to_str().unwrap(),
        "--txid",
        &t,
        &env.replica_arg(),
    ])
    .assert_success();
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", env.db.display()));
    }
    fs::rename(&tmp, &env.db).expect("replacing the database");
    App::open(&env.db, 11)
}

#[test]
fn a_killed_process_late_segment_never_joins_a_lineage_resumed_from_the_database_file() {
    let env = Env::new();
    let replica = env.replica_arg();
    let (app, rep, states) = eleven_shipped(&env);
    // Killed while the uploads of txids 7..=11 were still on their way: they
    // have not landed when the next process lists the replica, and the lease
    // was never released.
    kill(rep);
    let held = hold_back(&env.replica, "segments", 7, &env.path("in-flight"));
    assert!(!held.is_empty());
    // The operator puts back the newest state the replica lists: the
    // database file alone now equals txid 6, byte for byte.
    let mut app = restore_in_place(&env, app, 6);
    assert_eq!(app.digest(), states[5]);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("run-2.log"));
    rep.wait_started();
    let mut live = states[..6].to_vec();
    // Continuing the lineage would number these 7 and 8, the txids the late
    // uploads hold with other contents; a new lineage numbers them 8 and 9
    // after its snapshot at txid 7.
    let log = rep.log_text();
    assert!(
        log.contains("starting a new lineage") && !log.contains("resuming the replica's lineage"),
        "{log}"
    );
    live.push(app.digest());
    commit(&mut app, &mut live, 2);
    rep.wait_shipped(live.len() as u64);
    rep.stop();
    land(&held, &env.replica, "segments");

    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, live.len() as u64)), "{list}");
    assert_eq!(list["superseded"].as_array().unwrap().len(), held.len());
    assert_eq!(
        restore_digest(&replica, &env.path("latest.db"), &[]),
        live[live.len() - 1]
    );
    assert_txids(&env, &live, 1..=live.len() as u64);
    assert_verify_warns(&replica, &held);
    assert_next_run_resumes(&env, &mut app, &mut live);
}

#[test]
fn a_killed_process_with_nothing_on_its_way_is_resumed_from_the_database_file() {
    let env = Env::new();
    let replica = env.replica_arg();
    let (app, rep, mut states) = six_shipped(&env);
    // Everything it ever sent is listed: its record of the highest txid sent
    // (in the state directory, this boot) says 6, so nothing can land later.
    kill(rep);
    let mut app = restore_in_place(&env, app, 6);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("run-2.log"));
    rep.wait_started();
    let log = rep.log_text();
    assert!(
        log.contains("resuming the replica's lineage") && !log.contains("new lineage"),
        "{log}"
    );
    commit(&mut app, &mut states, 2);
    rep.wait_shipped(8);
    rep.stop();
    assert_eq!(lineages(&list_json(&replica)).len(), 1);
    assert_txids(&env, &states, 1..=8);
}
