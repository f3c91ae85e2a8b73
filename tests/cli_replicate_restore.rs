//! End-to-end tests of the `walstream` binary: replicate a live WAL database
//! while an application writes to it, stop it with signals, and restore every
//! kind of target; plus the refusals, `verify` on damaged replicas, `list`,
//! `status`, `snapshot` and bad input.
//!
//! Txid arithmetic used throughout: the first snapshot of a new replica is
//! txid 1 and holds the state at that moment (`states[0]`); the j-th
//! application commit after that is txid 1 + j (`states[j]`).

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use common::*;
use rusqlite::TransactionBehavior;

/// Runs `walstream restore` and asserts it failed and left nothing behind
/// (the output did not exist before).
#[track_caller]
fn assert_restore_refused(replica: &str, out: &Path, extra: &[&str]) -> Output {
    assert!(!out.exists(), "test set-up: {} exists", out.display());
    let o = restore(replica, out, extra);
    o.assert_failure();
    assert_eq!(
        restore_leftovers(out),
        Vec::<String>::new(),
        "a failed restore left files behind:\n{o}"
    );
    o
}

/// The object file of a listed key.
fn object_path(replica: &Path, key: &str) -> PathBuf {
    replica.join(key)
}

// ---------------------------------------------------------------------------
// 1. Continuous replication, SIGTERM, restore to latest, txids and times
// ---------------------------------------------------------------------------

#[test]
fn continuous_replication_restores_every_txid_and_time() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_shipped(1);

    const COMMITS: usize = 300;
    // states[j]: content after the j-th commit since replicate started (txid 1 + j).
    let mut states = vec![app.digest()];
    let mut kinds = vec!["(initial snapshot)"];
    let mut commit_times = vec![SystemTime::now()];
    // (j, t): t lies strictly between commit j (already shipped) and commit j + 1.
    let mut time_marks: Vec<(usize, SystemTime)> = Vec::new();
    let marks = [1, 60, 140, 201, 290];
    for j in 1..=COMMITS {
        let kind = match j {
            100 => {
                // One transaction far bigger than SQLite's page cache: pages
                // spill into the WAL before the commit frame is written.
                app.commit_blobs("bulk", 30, BLOB_SIZE);
                "bulk blobs"
            }
            200 => {
                app.commit_delete_blobs("bulk");
                "delete bulk"
            }
            201 => {
                app.vacuum();
                "vacuum"
            }
            _ => app.commit_random(),
        };
        states.push(app.digest());
        kinds.push(kind);
        commit_times.push(SystemTime::now());
        if marks.contains(&j) {
            // Once walstream has recorded commit j, any time between now and the
            // next commit resolves to exactly txid 1 + j.
            rep.wait_shipped(1 + j as u64);
            thread::sleep(Duration::from_millis(20));
            time_marks.push((j, SystemTime::now()));
            thread::sleep(Duration::from_millis(20));
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
    assert_eq!(
        lineages.len(),
        1,
        "replication lost continuity and started new lineages: {lineages:?}\nlog:\n{}",
        rep.log_text()
    );
    assert_eq!(
        snapshots(&list).len(),
        1,
        "only the initial snapshot: {list:#}"
    );

    let status = walstream([
        OsStr::new("status"),
        OsStr::new("--json"),
        p(&env.db),
        OsStr::new(&replica),
    ]);
    status.assert_status_answered();
    let s = status.json();
    assert_eq!(
        s["last_shipped_txid"].as_u64(),
        Some(1 + COMMITS as u64),
        "{status}"
    );
    assert_eq!(s["replicating"].as_bool(), Some(false), "{status}");

    let restores = env.subdir("restores");
    let latest = restores.join("latest.db");
    let got = restore_digest(&replica, &latest, &["--integrity-check", "full"]);
    assert_eq!(got, final_state, "restore of the latest state");
    assert_integrity(&latest);

    for n in [
        1u64, 2, 3, 37, 99, 100, 101, 102, 150, 199, 200, 201, 202, 203, 256, 299, 300, 301,
    ] {
        let j = (n - 1) as usize;
        let out = restores.join(format!("txid-{n}.db"));
        let got = restore_digest(&replica, &out, &["--txid", &n.to_string()]);
        assert_eq!(
            got,
            states[j],
            "restore --txid {n} must equal the state after commit {j} ({}, committed at {})",
            kinds[j],
            rfc3339(commit_times[j])
        );
    }

    for (j, t) in &time_marks {
        let ts = rfc3339(*t);
        let out = restores.join(format!("time-{j}.db"));
        let got = restore_digest(&replica, &out, &["--timestamp", &ts]);
        assert_eq!(
            got, states[*j],
            "restore --timestamp {ts} (after commit {j} at {}, before commit {} at {}) must be txid {}",
            rfc3339(commit_times[*j]),
            j + 1,
            rfc3339(commit_times[j + 1]),
            j + 1
        );
    }
    // The same instant written with a UTC offset means the same state.
    let (j, t) = time_marks[2];
    let offset = chrono::FixedOffset::east_opt(2 * 3600 + 30 * 60).expect("offset");
    let ts = chrono::DateTime::<chrono::Utc>::from(t)
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    let got = restore_digest(&replica, &restores.join("offset.db"), &["--timestamp", &ts]);
    assert_eq!(got, states[j], "restore --timestamp {ts}");

    // A time after everything is the latest state; a time before the window is refused.
    let later = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let got = restore_digest(
        &replica,
        &restores.join("future.db"),
        &["--timestamp", &later],
    );
    assert_eq!(got, final_state, "restore --timestamp {later}");
    let o = assert_restore_refused(
        &replica,
        &restores.join("past.db"),
        &["--timestamp", "2001-01-01T00:00:00Z"],
    );
    o.assert_mentions("window");
}

// ---------------------------------------------------------------------------
// 2. SIGTERM while the application keeps committing
// ---------------------------------------------------------------------------

fn seq_payload(id: i64) -> String {
    format!(
        "row {id} {:016x}",
        (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

fn seq_blob(id: i64) -> Option<Vec<u8>> {
    (id % 25 == 0).then(|| Rng::new(id as u64).bytes(8192))
}

/// Checks the `seq` table of the sequential workload row by row: exactly rows
/// 1..=k with their payloads. Returns k.
#[track_caller]
fn check_seq_rows(conn: &rusqlite::Connection, path: &Path) -> i64 {
    let mut stmt = conn
        .prepare("SELECT id, payload, data FROM seq ORDER BY id")
        .expect("select");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        })
        .expect("query");
    let mut k = 0;
    for row in rows {
        let (id, payload, data) = row.expect("row");
        assert_eq!(
            id,
            k + 1,
            "{}: row ids must be 1, 2, 3, ... without gaps",
            path.display()
        );
        assert_eq!(payload, seq_payload(id), "payload of row {id}");
        assert!(data == seq_blob(id), "blob of row {id} differs");
        k = id;
    }
    k
}

/// Checks a restored database of the sequential workload: `seq` is its only
/// table and holds exactly rows 1..=k. Returns k.
#[track_caller]
fn check_seq_db(path: &Path) -> i64 {
    let conn = open_file_readonly(path);
    assert_eq!(table_names(&conn), vec!["seq"]);
    check_seq_rows(&conn, path)
}

/// The sequential workload's only table.
fn create_seq_table(db: &Path) {
    open_app_connection(db)
        .execute_batch("CREATE TABLE seq(id INTEGER PRIMARY KEY, payload TEXT NOT NULL, data BLOB)")
        .expect("schema");
}

/// An application thread committing the sequential workload as fast as it
/// can (1 ms breather): the id-th transaction inserts row `id`.
struct SeqWriter {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<i64>>,
}

impl SeqWriter {
    fn start(db: &Path) -> SeqWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (stop2, committed2, db) = (Arc::clone(&stop), Arc::clone(&committed), db.to_path_buf());
        let handle = thread::spawn(move || {
            let mut conn = open_app_connection(&db);
            let mut id = 0i64;
            while !stop2.load(Ordering::SeqCst) {
                id += 1;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .expect("BEGIN IMMEDIATE");
                tx.execute(
                    "INSERT INTO seq(id, payload, data) VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, seq_payload(id), seq_blob(id)],
                )
                .expect("insert");
                tx.commit().expect("COMMIT");
                committed2.store(id as u64, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(1));
            }
            id
        });
        SeqWriter {
            stop,
            committed,
            handle: Some(handle),
        }
    }

    /// Transactions whose COMMIT has returned.
    fn committed(&self) -> i64 {
        self.committed.load(Ordering::SeqCst) as i64
    }

    #[track_caller]
    fn wait_for(&self, n: i64) {
        let deadline = std::time::Instant::now() + SHIP_TIMEOUT;
        while self.committed() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the application committed only {} of {n} transactions",
                self.committed()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the thread; returns how many transactions it committed.
    fn stop(mut self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("thread")
            .join()
            .expect("the application thread panicked")
    }
}

impl Drop for SeqWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn sigterm_ships_every_commit_made_before_the_signal() {
    let env = Env::new();
    let replica = env.replica_arg();
    create_seq_table(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    let started = std::time::Instant::now();
    rep.wait_started();

    // The application commits as fast as it can (with a breather of 1 ms)
    // from now on, and does not stop for the signal.
    let writer = SeqWriter::start(&env.db);
    thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    writer.wait_for(20);
    let before_signal = writer.committed();
    rep.signal(libc::SIGTERM);
    let st = rep.wait(SHIP_TIMEOUT);
    let total = writer.stop();
    assert_eq!(
        st.code(),
        Some(0),
        "replicate must exit 0 after SIGTERM ({st:?}); log:\n{}",
        rep.log_text()
    );

    let latest = env.path("latest.db");
    let o = restore(&replica, &latest, &[]);
    o.assert_success();
    let k = check_seq_db(&latest);
    assert!(
        k >= before_signal,
        "restored state has {k} commits but {before_signal} were committed before SIGTERM; log:\n{}",
        rep.log_text()
    );
    assert!(
        k <= total,
        "restored more rows ({k}) than ever committed ({total})"
    );

    // The first snapshot holds k0 rows; every later commit is one txid.
    let first = env.path("txid1.db");
    restore(&replica, &first, &["--txid", "1"]).assert_success();
    let k0 = check_seq_db(&first);
    let list = list_json(&replica);
    assert_eq!(
        window(&list),
        Some((1, 1 + (k - k0) as u64)),
        "snapshot at {k0} rows, latest at {k} rows: one txid per commit; list:\n{list:#}"
    );
    // Every txid restores to the matching prefix of the sequence.
    for txid in [2, 1 + (k - k0) / 2, 1 + (k - k0)] {
        let out = env.path(&format!("txid-{txid}.db"));
        restore(&replica, &out, &["--txid", &txid.to_string()]).assert_success();
        assert_eq!(check_seq_db(&out), k0 + txid - 1, "rows at txid {txid}");
    }
}

/// Commits made while the engine is busy (here: reading a requested snapshot
/// of a large database) and before SIGTERM can only be shipped by the
/// shutdown path: none may be missing from the replica.
#[test]
fn sigterm_during_a_snapshot_ships_commits_made_meanwhile() {
    let env = Env::new();
    let replica = env.replica_arg();
    create_seq_table(&env.db);
    let filler_sql = "SELECT id, data FROM filler ORDER BY id";
    let filler = {
        let mut conn = open_app_connection(&env.db);
        conn.execute_batch("CREATE TABLE filler(id INTEGER PRIMARY KEY, data BLOB)")
            .expect("filler");
        let mut rng = Rng::new(99);
        let tx = conn.transaction().expect("begin");
        for _ in 0..300 {
            tx.execute(
                "INSERT INTO filler(data) VALUES (?1)",
                [rng.bytes(BLOB_SIZE)],
            )
            .expect("filler row");
        }
        tx.commit().expect("commit");
        digest_query(&conn, filler_sql)
    };
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_started();

    let writer = SeqWriter::start(&env.db);
    thread::sleep(Duration::from_millis(200));
    let mut snapshot = std::process::Command::new(bin())
        .args([OsStr::new("snapshot"), p(&env.db), OsStr::new(&replica)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("walstream snapshot");
    // Signal while the snapshot is being read (it takes a while for ~30 MB),
    // after the application committed a few more transactions meanwhile.
    rep.wait_for_log("taking a snapshot", Duration::from_secs(10));
    writer.wait_for(writer.committed() + 3);
    let before_signal = writer.committed();
    rep.signal(libc::SIGTERM);
    let st = rep.wait(SHIP_TIMEOUT);
    let total = writer.stop();
    // The snapshot request may succeed or be cut off by the shutdown.
    let _ = wait_child(&mut snapshot, SHIP_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "replicate must exit 0 after SIGTERM ({st:?}); log:\n{}",
        rep.log_text()
    );

    let latest = env.path("latest.db");
    restore(&replica, &latest, &[]).assert_success();
    let conn = open_file_readonly(&latest);
    assert_eq!(table_names(&conn), vec!["filler", "seq"]);
    let k = check_seq_rows(&conn, &latest);
    assert!(
        k >= before_signal,
        "restored state has {k} commits but {before_signal} were committed before SIGTERM; log:\n{}",
        rep.log_text()
    );
    assert!(k <= total);
    assert_eq!(digest_query(&conn, filler_sql), filler, "filler table");
    assert_eq!(
        window(&list_json(&replica)),
        Some((1, 1 + k as u64)),
        "one txid per commit after the empty first snapshot"
    );
}

/// Start-up while the application writes: the first snapshot of a database
/// that takes a moment to read must not fail because the application's next
/// write restarted the (fully checkpointed) WAL meanwhile.
#[test]
fn replicate_starts_while_the_application_is_writing() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    // ~8 MB, so reading the first snapshot takes a while.
    app.commit_blobs("bulk", 80, BLOB_SIZE);
    let writer = AppWriter::start_with(app, Duration::from_millis(2), App::commit_insert_one);
    writer.wait_for(5);

    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_started();
    rep.wait_shipped(2);
    let app = writer.stop();
    rep.stop();
    assert_eq!(
        restore_digest(&replica, &env.path("latest.db"), &[]),
        app.digest()
    );

    // The same for one pass into another replica.
    let writer = AppWriter::start_with(app, Duration::from_millis(2), App::commit_insert_one);
    writer.wait_for(5);
    let other = env.path("replica-once").display().to_string();
    let o = walstream([
        OsStr::new("replicate"),
        p(&env.db),
        OsStr::new(&other),
        OsStr::new("--once"),
    ]);
    let app = writer.stop();
    o.assert_success();
    replicate_once(&env.db, &other);
    assert_eq!(
        restore_digest(&other, &env.path("once.db"), &[]),
        app.digest()
    );
}

// ---------------------------------------------------------------------------
// 3. --once
// ---------------------------------------------------------------------------

#[test]
fn replicate_once_then_restore_equals_the_database() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    app.commit_insert_many(40);
    app.commit_blob("random", BLOB_SIZE);
    let expected = app.digest();
    let url = file_url(&env.replica);
    replicate_once(&env.db, &url);

    let list = list_json(&url);
    assert_eq!(window(&list), Some((1, 1)), "{list:#}");
    assert_eq!(snapshots(&list).len(), 1);
    assert_eq!(segments(&list).len(), 0);

    let out = env.path("restored.db");
    assert_eq!(restore_digest(&url, &out, &[]), expected);
    assert_integrity(&out);
    assert_eq!(
        restore_leftovers(&out),
        vec!["restored.db".to_string()],
        "a restore leaves only its output"
    );
}

// ---------------------------------------------------------------------------
// 4. Restore refusals
// ---------------------------------------------------------------------------

#[test]
fn restore_refusals_leave_nothing_behind() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    app.commit_insert_many(10);
    replicate_once(&env.db, &replica);
    let expected = app.digest();
    let dir = env.subdir("out");
    let out = dir.join("restored.db");

    // An existing output, even an empty file, is never replaced without --force.
    write_file(&out, b"");
    let o = restore(&replica, &out, &[]);
    o.assert_failure()
        .assert_mentions("exists")
        .assert_mentions("--force");
    assert_eq!(
        fs::read(&out).expect("output"),
        b"",
        "refused output must be untouched"
    );
    assert_eq!(
        restore_leftovers(&out),
        vec!["restored.db".to_string()],
        "{o}"
    );

    write_file(&out, b"precious, not a database");
    let o = restore(&replica, &out, &[]);
    o.assert_failure();
    assert_eq!(fs::read(&out).expect("output"), b"precious, not a database");
    assert_eq!(
        restore_leftovers(&out),
        vec!["restored.db".to_string()],
        "{o}"
    );

    // --if-db-not-exists: an existing output is a successful no-op.
    let o = restore(&replica, &out, &["--if-db-not-exists"]);
    o.assert_success();
    assert_eq!(
        fs::read(&out).expect("output"),
        b"precious, not a database",
        "{o}"
    );
    assert_eq!(
        restore_leftovers(&out),
        vec!["restored.db".to_string()],
        "{o}"
    );

    // --force replaces it and removes the old database's stale side files,
    // which SQLite would otherwise apply to the restored file.
    let side = |suffix: &str| dir.join(format!("restored.db{suffix}"));
    write_file(&side("-wal"), &[0xa5; 8192]);
    write_file(&side("-shm"), &[0x5a; 32768]);
    write_file(&side("-journal"), &[0x11; 4096]);
    let o = restore(&replica, &out, &["--force"]);
    o.assert_success();
    assert_eq!(
        restore_leftovers(&out),
        vec!["restored.db".to_string()],
        "--force must remove stale -wal/-shm/-journal:\n{o}"
    );
    assert_eq!(digest_file(&out), expected);

    // --if-db-not-exists without an output restores normally.
    let fresh = dir.join("fresh.db");
    assert_eq!(
        restore_digest(&replica, &fresh, &["--if-db-not-exists"]),
        expected
    );
    // --if-replica-exists with a non-empty replica restores normally.
    let fresh2 = dir.join("fresh2.db");
    assert_eq!(
        restore_digest(&replica, &fresh2, &["--if-replica-exists"]),
        expected
    );

    // Empty and missing replicas.
    let empty = env.subdir("empty-replica");
    let missing = env.path("no-such-replica");
    for r in [&empty, &missing] {
        let r = r.display().to_string();
        let o1 = dir.join("from-empty.db");
        let o = restore(&r, &o1, &["--if-replica-exists"]);
        o.assert_success();
        assert_eq!(restore_leftovers(&o1), Vec::<String>::new(), "{o}");
        let o = assert_restore_refused(&r, &o1, &[]);
        o.assert_mentions("empty");
    }
    assert!(
        !missing.exists(),
        "restore must not create the replica directory"
    );
    assert_eq!(dir_names(&empty), Vec::<String>::new());

    // Targets outside the window.
    let bad = dir.join("bad.db");
    let o = assert_restore_refused(&replica, &bad, &["--txid", "999"]);
    o.assert_mentions("window").assert_mentions("1..=1");
    let o = assert_restore_refused(&replica, &bad, &["--txid", "0"]);
    o.assert_mentions("window");
    let o = assert_restore_refused(&replica, &bad, &["--timestamp", "2001-01-01T00:00:00Z"]);
    o.assert_mentions("window");
    let o = assert_restore_refused(&replica, &bad, &["--timestamp", "yesterday"]);
    o.assert_mentions("RFC 3339");

    // An output directory that does not exist.
    let nowhere = env.path("missing-dir").join("x.db");
    restore(&replica, &nowhere, &[]).assert_failure();
    assert!(!env.path("missing-dir").exists());

    // Nothing else appeared next to the outputs.
    assert_eq!(
        dir_names(&dir),
        vec!["fresh.db", "fresh2.db", "restored.db"],
        "unexpected files in the output directory"
    );
}

// ---------------------------------------------------------------------------
// 5. --dry-run
// ---------------------------------------------------------------------------

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    for _ in 0..2 {
        for _ in 0..3 {
            app.commit_random();
        }
        replicate_once(&env.db, &replica);
    }
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, 7)), "{list:#}");
    let snap = snapshots(&list).remove(0);
    let segs = segments(&list);
    assert_eq!(segs.len(), 2, "{list:#}");
    let before = tree(&env.replica);
    let dir = env.subdir("out");
    let out = dir.join("plan.db");

    let o = restore(&replica, &out, &["--dry-run"]);
    o.assert_success()
        .assert_mentions(&snap.key)
        .assert_mentions(&segs[0].key)
        .assert_mentions(&segs[1].key)
        .assert_mentions("txid 7");

    let o = restore(&replica, &out, &["--dry-run", "--txid", "3"]);
    o.assert_success()
        .assert_mentions(&snap.key)
        .assert_mentions(&segs[0].key)
        .assert_mentions("txid 3");
    assert!(
        !o.text().contains(&segs[1].key),
        "txid 3 does not need the second segment:\n{o}"
    );

    let o = restore(&replica, &out, &["--dry-run", "--txid", "1"]);
    o.assert_success().assert_mentions(&snap.key);
    assert!(
        !o.text().contains("segments/"),
        "txid 1 is the snapshot alone:\n{o}"
    );

    restore(&replica, &out, &["--dry-run", "--txid", "99"])
        .assert_failure()
        .assert_mentions("window");

    assert_eq!(
        dir_names(&dir),
        Vec::<String>::new(),
        "--dry-run wrote something"
    );
    assert_eq!(tree(&env.replica), before, "--dry-run changed the replica");
}

// ---------------------------------------------------------------------------
// 6. verify
// ---------------------------------------------------------------------------

#[test]
fn verify_finds_every_kind_of_damage() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    let mut states = vec![app.digest()];
    for _ in 0..4 {
        app.commit_insert_many(30);
        states.push(app.digest());
        app.commit_blob("random", BLOB_SIZE);
        states.push(app.digest());
        app.commit_random();
        states.push(app.digest());
        replicate_once(&env.db, &replica);
    }
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, 13)), "{list:#}");
    let snap = snapshots(&list).remove(0);
    let segs = segments(&list);
    assert_eq!(
        segs.iter()
            .map(|s| (s.min_txid, s.max_txid))
            .collect::<Vec<_>>(),
        vec![(2, 4), (5, 7), (8, 10), (11, 13)],
        "one segment per --once: {list:#}"
    );

    let o = walstream(["verify", &replica]);
    o.assert_success().assert_mentions("OK");
    let o = walstream(["verify", "--json", &replica]);
    o.assert_success();
    let v = o.json();
    assert_eq!(v["ok"].as_bool(), Some(true), "{o}");
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{o}");
    assert_eq!(v["commits_checked"].as_u64(), Some(12), "{o}");

    let mut copies = 0;
    let mut damaged = |what: &str, damage: &dyn Fn(&Path)| -> (String, Output) {
        copies += 1;
        let copy = env.path(&format!("damaged-{copies}"));
        copy_dir(&env.replica, &copy);
        damage(&copy);
        let r = copy.display().to_string();
        let o = walstream(["verify", &r]);
        assert!(
            o.code().is_some_and(|c| c != 0),
            "verify must fail on a replica with {what}:\n{o}"
        );
        (r, o)
    };
    let outs = env.subdir("restores");

    // (a) a byte of a segment's header
    let seg = segs[1].clone();
    let (_, o) = damaged("a flipped segment header byte", &|r| {
        let f = object_path(r, &seg.key);
        flip_byte(&f, object_header_len(&f) / 2);
    });
    o.assert_mentions(&seg.key);

    // (b) a byte in the middle of a segment's body; restores through it fail,
    // restores before it still work.
    let (r, o) = damaged("a flipped segment body byte", &|r| {
        let f = object_path(r, &seg.key);
        let h = object_header_len(&f);
        flip_byte(&f, h + (seg.size - h - 4) / 2);
    });
    o.assert_mentions(&seg.key);
    let o = walstream(["verify", "--json", &r]);
    o.assert_failure();
    let v = o.json();
    assert_eq!(v["ok"].as_bool(), Some(false), "{o}");
    let problems = v["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["key"].as_str() == Some(&seg.key) && p["severity"] == "error"),
        "verify --json must name {}:\n{o}",
        seg.key
    );
    let o = assert_restore_refused(&r, &outs.join("through-damage.db"), &[]);
    o.assert_mentions(&seg.key);
    // Inside the damaged segment: pages before the damage may still be read
    // and the result proven by txid 5's recorded checksum; either that exact
    // state or a refusal, never another state.
    let at = outs.join("at-damage.db");
    let o = restore(&r, &at, &["--txid", "5"]);
    if o.success() {
        assert_eq!(digest_file(&at), states[4], "{o}");
        o.assert_mentions("checksum verified");
    } else {
        o.assert_mentions(&seg.key);
        assert!(!at.exists());
    }
    let ok = outs.join("before-damage.db");
    assert_eq!(restore_digest(&r, &ok, &["--txid", "4"]), states[3]);

    // (c) the last byte of a segment (its body checksum)
    let last_byte = segs[2].clone();
    let (_, o) = damaged("a flipped last byte", &|r| {
        flip_byte(&object_path(r, &last_byte.key), last_byte.size - 1);
    });
    o.assert_mentions(&last_byte.key);

    // (d) a byte of the snapshot's body
    let (r, o) = damaged("a flipped snapshot body byte", &|r| {
        let f = object_path(r, &snap.key);
        let h = object_header_len(&f);
        flip_byte(&f, h + (snap.size - h - 4) / 2);
    });
    o.assert_mentions(&snap.key);
    assert_restore_refused(&r, &outs.join("bad-snapshot.db"), &[]);
    assert_restore_refused(&r, &outs.join("bad-snapshot-1.db"), &["--txid", "1"]);

    // (e) a truncated segment (the newest one)
    let newest = segs[3].clone();
    let (r, o) = damaged("a truncated segment", &|r| {
        truncate_file(&object_path(r, &newest.key), newest.size - 5);
    });
    o.assert_mentions(&newest.key);
    assert_restore_refused(&r, &outs.join("truncated.db"), &[]);
    let ok = outs.join("before-truncated.db");
    assert_eq!(restore_digest(&r, &ok, &["--txid", "10"]), states[9]);

    // (f) a deleted middle segment: the missing txids are named
    let (r, o) = damaged("a missing middle segment", &|r| {
        fs::remove_file(object_path(r, &seg.key)).expect("deleting a segment");
    });
    o.assert_mentions(&format!("{}..={}", seg.min_txid, seg.max_txid));
    assert_restore_refused(&r, &outs.join("gap.db"), &["--txid", "6"]);

    // (g) a deleted snapshot: nothing is restorable
    let (r, o) = damaged("no snapshot", &|r| {
        fs::remove_file(object_path(r, &snap.key)).expect("deleting the snapshot");
    });
    o.assert_mentions("snapshot");
    assert_restore_refused(&r, &outs.join("no-snapshot.db"), &[]);

    // (h) an object of another replica's lineage copied in: its txids collide
    let other_db = env.path("other.db");
    let other = env.path("other-replica");
    let mut other_app = App::create_seeded(&other_db, 99);
    replicate_once(&other_db, &other.display().to_string());
    other_app.commit_insert_many(5);
    replicate_once(&other_db, &other.display().to_string());
    let foreign = segments(&list_json(&other.display().to_string())).remove(0);
    let (_, o) = damaged("a segment from another lineage", &|r| {
        fs::copy(
            object_path(&other, &foreign.key),
            object_path(r, &foreign.key),
        )
        .expect("copying a foreign segment");
    });
    o.assert_mentions(&foreign.key)
        .assert_mentions("another replica");

    // The original replica is untouched by all of this.
    walstream(["verify", &replica]).assert_success();
}

// ---------------------------------------------------------------------------
// 7. One replicator per database; `snapshot` through the running one
// ---------------------------------------------------------------------------

#[test]
fn second_replicate_is_refused_and_snapshot_goes_through_the_running_one() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_shipped(1);
    let mut states = vec![app.digest()];
    for _ in 0..5 {
        app.commit_random();
        states.push(app.digest());
    }
    rep.wait_shipped(6);

    let quick = Duration::from_secs(15);
    let other = env.path("other-replica");
    for target in [replica.clone(), other.display().to_string()] {
        let o = walstream_timeout(
            [OsStr::new("replicate"), p(&env.db), OsStr::new(&target)],
            quick,
        );
        o.assert_failure().assert_mentions("already");
        let o = walstream_timeout(
            [
                OsStr::new("replicate"),
                p(&env.db),
                OsStr::new(&target),
                OsStr::new("--once"),
            ],
            quick,
        );
        o.assert_failure().assert_mentions("already");
    }
    assert_eq!(
        tree(&other),
        Vec::new(),
        "a refused replicate wrote to its replica"
    );
    assert!(
        rep.try_exit().is_none(),
        "the first replicate must keep running"
    );

    let o = walstream([OsStr::new("snapshot"), p(&env.db), OsStr::new(&replica)]);
    o.assert_success();
    let key = o.stdout.trim().to_string();
    let list = list_json(&replica);
    let snaps = snapshots(&list);
    assert_eq!(snaps.len(), 2, "{list:#}");
    let new = snaps
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("snapshot {key:?} is not listed: {list:#}"));
    assert_eq!(new.max_txid, 6, "the snapshot holds the last shipped txid");
    assert_eq!(new.lineage, snaps[0].lineage, "same lineage");

    for _ in 0..3 {
        app.commit_random();
        states.push(app.digest());
    }
    rep.wait_shipped(9);
    // Restoring from a replica that is being written to.
    let live = env.path("while-running.db");
    assert_eq!(restore_digest(&replica, &live, &[]), states[8]);
    // SIGINT is a clean stop too.
    rep.signal(libc::SIGINT);
    let st = rep.wait(SHIP_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "exit after SIGINT; log:\n{}",
        rep.log_text()
    );

    let dir = env.subdir("restores");
    assert_eq!(
        restore_digest(&replica, &dir.join("latest.db"), &[]),
        states[8]
    );
    let o = restore(
        &replica,
        &dir.join("plan.db"),
        &["--dry-run", "--txid", "7"],
    );
    o.assert_success().assert_mentions(&key);
    assert_eq!(
        restore_digest(&replica, &dir.join("t7.db"), &["--txid", "7"]),
        states[6]
    );
    assert_eq!(
        restore_digest(&replica, &dir.join("t6.db"), &["--txid", "6"]),
        states[5]
    );
    let o = restore(
        &replica,
        &dir.join("plan3.db"),
        &["--dry-run", "--txid", "3"],
    );
    o.assert_success().assert_mentions(&snaps[0].key);
    assert_eq!(
        restore_digest(&replica, &dir.join("t3.db"), &["--txid", "3"]),
        states[2]
    );
    walstream(["verify", &replica]).assert_success();

    let status = walstream([
        OsStr::new("status"),
        OsStr::new("--json"),
        p(&env.db),
        OsStr::new(&replica),
    ]);
    status.assert_status_answered();
    assert_eq!(
        status.json()["replicating"].as_bool(),
        Some(false),
        "{status}"
    );

    // Without a running replicate, `snapshot` takes one itself.
    let o = walstream([OsStr::new("snapshot"), p(&env.db), OsStr::new(&replica)]);
    o.assert_success();
    let key9 = o.stdout.trim().to_string();
    let list = list_json(&replica);
    let snaps9 = snapshots(&list);
    let s9 = snaps9
        .iter()
        .find(|s| s.key == key9)
        .unwrap_or_else(|| panic!("snapshot {key9:?} is not listed: {list:#}"));
    assert_eq!(s9.max_txid, 9, "{list:#}");
    assert_eq!(s9.lineage, snaps[0].lineage, "same lineage: {list:#}");
    assert_eq!(
        window(&list),
        Some((1, 9)),
        "a snapshot is not a commit: {list:#}"
    );
    let o = restore(&replica, &dir.join("plan9.db"), &["--dry-run"]);
    o.assert_success().assert_mentions(&key9);
    assert_eq!(restore_digest(&replica, &dir.join("t9.db"), &[]), states[8]);
    walstream(["verify", &replica]).assert_success();
}

// ---------------------------------------------------------------------------
// 8. Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_input_is_refused_with_clear_messages() {
    let env = Env::new();
    let replica = env.replica_arg();
    let quick = Duration::from_secs(15);

    // A database that does not exist.
    let missing = env.path("missing.db");
    let missing_s = missing.display().to_string();
    for once in [true, false] {
        let mut args = vec!["replicate", missing_s.as_str(), replica.as_str()];
        if once {
            args.push("--once");
        }
        let o = walstream_timeout(args, quick);
        o.assert_failure().assert_mentions(&missing_s);
    }
    let o = walstream_timeout(["snapshot", missing_s.as_str(), replica.as_str()], quick);
    o.assert_failure().assert_mentions(&missing_s);
    assert!(
        !missing.exists(),
        "walstream must never create the database"
    );

    // A file that is not SQLite.
    let junk = env.path("junk.db");
    let junk_bytes = "this is not a database, just text\n"
        .repeat(200)
        .into_bytes();
    write_file(&junk, &junk_bytes);
    let junk_s = junk.display().to_string();
    for once in [true, false] {
        let mut args = vec!["replicate", junk_s.as_str(), replica.as_str()];
        if once {
            args.push("--once");
        }
        let o = walstream_timeout(args, quick);
        o.assert_failure()
            .assert_mentions(&junk_s)
            .assert_mentions("not a SQLite database");
    }
    assert_eq!(
        fs::read(&junk).expect("junk"),
        junk_bytes,
        "the file was modified"
    );

    // A rollback-journal database.
    let rollback = env.path("rollback.db");
    {
        let conn = rusqlite::Connection::open(&rollback).expect("open");
        let mode: String = conn
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "delete");
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
            .expect("schema");
    }
    let rollback_bytes = fs::read(&rollback).expect("rollback db");
    let rollback_s = rollback.display().to_string();
    for once in [true, false] {
        let mut args = vec!["replicate", rollback_s.as_str(), replica.as_str()];
        if once {
            args.push("--once");
        }
        let o = walstream_timeout(args, quick);
        o.assert_failure()
            .assert_mentions(&rollback_s)
            .assert_mentions("journal_mode=WAL");
    }
    assert_eq!(fs::read(&rollback).expect("rollback db"), rollback_bytes);
    assert!(
        !env.path("rollback.db-wal").exists(),
        "walstream must not switch the database to WAL itself"
    );

    // Nothing reached the replica.
    assert_eq!(
        tree(&env.replica),
        Vec::new(),
        "refused replications wrote objects"
    );

    // Unsupported or malformed replica URLs.
    let mut app = App::create(&env.db);
    app.commit_insert_one();
    let out = env.path("out.db");
    let db_s = env.db.display().to_string();
    let out_s = out.display().to_string();
    for url in ["ftp://x", "s3x://bucket/path", "file://relative/path"] {
        let runs = [
            vec!["replicate", db_s.as_str(), url, "--once"],
            vec!["replicate", db_s.as_str(), url],
            vec!["restore", "-o", out_s.as_str(), url],
            vec!["list", url],
            vec!["verify", url],
        ];
        for args in runs {
            let o = walstream_timeout(&args, quick);
            o.assert_failure().assert_mentions(url);
        }
    }
    assert!(!out.exists());
    assert_eq!(dir_names(Path::new("ftp:")), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// 9. list --json
// ---------------------------------------------------------------------------

fn parse_ms(rfc: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc)
        .unwrap_or_else(|e| panic!("{rfc:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

#[track_caller]
fn assert_utc_time(v: &serde_json::Value, what: &str) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(s.ends_with('Z'), "{what} {s:?} must be UTC ending in Z");
    parse_ms(s)
}

#[test]
fn list_json_has_the_documented_shape() {
    let env = Env::new();
    let replica = env.replica_arg();

    let empty = list_json(&replica);
    assert!(empty["window"].is_null(), "{empty:#}");
    assert_eq!(empty["snapshots"].as_array().map(Vec::len), Some(0));
    assert_eq!(empty["segments"].as_array().map(Vec::len), Some(0));

    let started = unix_ms(SystemTime::now());
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    app.commit_insert_many(5);
    replicate_once(&env.db, &replica);
    app.commit_insert_one();
    app.commit_blob("random", BLOB_SIZE);
    replicate_once(&env.db, &replica);
    let ended = unix_ms(SystemTime::now());

    let list = list_json(&replica);
    let obj = list.as_object().expect("top level object");
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["window", "snapshots", "segments", "superseded"])
    );
    assert_eq!(list["superseded"].as_array().map(Vec::len), Some(0));

    let w = &list["window"];
    assert_eq!(w["min_txid"].as_u64(), Some(1), "{list:#}");
    assert_eq!(w["max_txid"].as_u64(), Some(4), "{list:#}");
    let wmin = assert_utc_time(&w["min_time"], "window.min_time");
    let wmax = assert_utc_time(&w["max_time"], "window.max_time");
    assert!(started <= wmin && wmin <= wmax && wmax <= ended, "{list:#}");

    let files: Vec<(String, u64)> = tree(&env.replica);
    let mut all = Vec::new();
    for (section, dir, ext) in [
        ("snapshots", "snapshots/", ".wsnap"),
        ("segments", "segments/", ".wseg"),
    ] {
        for o in list[section].as_array().expect("array") {
            for field in ["key", "lineage", "min_txid", "max_txid", "time", "size"] {
                assert!(!o[field].is_null(), "{section} object lacks {field}: {o}");
            }
            let l = o;
            let key = l["key"].as_str().expect("key");
            assert!(key.starts_with(dir) && key.ends_with(ext), "{key}");
            let lineage = l["lineage"].as_str().expect("lineage");
            assert_eq!(lineage.len(), 16, "lineage {lineage:?} is 16 hex digits");
            assert!(lineage.chars().all(|c| c.is_ascii_hexdigit()));
            let min = l["min_txid"].as_u64().expect("integer min_txid");
            let max = l["max_txid"].as_u64().expect("integer max_txid");
            let time = assert_utc_time(&l["time"], "time");
            let size = l["size"].as_u64().expect("integer size");
            // The key encodes the same facts.
            let name = &key[dir.len()..key.len() - ext.len()];
            let parts: Vec<&str> = name.split('-').collect();
            let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
            if section == "snapshots" {
                assert_eq!(parts.len(), 3, "{key}");
                assert_eq!((hex(parts[0]), min, max), (min, max, min), "{key}");
                assert_eq!(parts[1], lineage);
                assert_eq!(parts[2].parse::<i64>().expect("ms"), time, "{key}");
            } else {
                assert_eq!(parts.len(), 5, "{key}");
                assert_eq!((hex(parts[0]), hex(parts[1])), (min, max), "{key}");
                assert_eq!(parts[2], lineage);
                assert_eq!(parts[4].parse::<i64>().expect("ms"), time, "{key}");
            }
            assert!(
                files.contains(&(key.to_string(), size)),
                "{key} of {size} bytes is not in the replica: {files:?}"
            );
            all.push((section, min, max, lineage.to_string()));
        }
    }
    assert_eq!(
        all.iter()
            .map(|(s, a, b, _)| (*s, *a, *b))
            .collect::<Vec<_>>(),
        vec![("snapshots", 1, 1), ("segments", 2, 2), ("segments", 3, 4)]
    );
    assert!(all.iter().all(|a| a.3 == all[0].3), "one lineage: {all:?}");
}

// ---------------------------------------------------------------------------
// 10. Restarting replicate continues the lineage
// ---------------------------------------------------------------------------

#[test]
fn restarted_replicate_continues_the_lineage() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    let first = list_json(&replica);
    let snap = snapshots(&first).remove(0);
    let mut commits = 0u64;
    let dir = env.subdir("restores");

    for round in 0..3 {
        for _ in 0..4 {
            app.commit_random();
            commits += 1;
        }
        replicate_once(&env.db, &replica);
        let list = list_json(&replica);
        assert_eq!(
            snapshots(&list),
            vec![snap.clone()],
            "round {round}: no new snapshot: {list:#}"
        );
        assert!(
            segments(&list).iter().all(|s| s.lineage == snap.lineage),
            "round {round}: the lineage must continue: {list:#}"
        );
        assert_eq!(
            window(&list),
            Some((1, 1 + commits)),
            "round {round}: {list:#}"
        );
        let out = dir.join(format!("round-{round}.db"));
        assert_eq!(
            restore_digest(&replica, &out, &[]),
            app.digest(),
            "round {round}"
        );
    }

    // Once more after the last round, with nothing new.
    replicate_once(&env.db, &replica);
    let list = list_json(&replica);
    assert_eq!(snapshots(&list), vec![snap.clone()], "{list:#}");
    assert_eq!(window(&list), Some((1, 1 + commits)), "{list:#}");
    assert_eq!(
        restore_digest(&replica, &dir.join("final.db"), &[]),
        app.digest()
    );
    walstream(["verify", &replica]).assert_success();
}

/// A `replicate` started on a database whose WAL the previous run had fully
/// checkpointed must go on giving each commit its own txid in the same
/// lineage, rather than starting a new lineage (whose snapshot lumps the
/// commits made meanwhile into one txid) at the application's first write.
#[test]
fn resumed_replicate_gives_each_later_commit_its_own_txid() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    app.commit_insert_many(5);
    app.commit_insert_one();
    replicate_once(&env.db, &replica);
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, 3)), "{list:#}");
    let snap = snapshots(&list).remove(0);

    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_started();
    let mut states = vec![app.digest()]; // states[j]: txid 3 + j
    for _ in 0..5 {
        app.commit_random();
        states.push(app.digest());
    }
    rep.stop();

    let list = list_json(&replica);
    assert_eq!(
        window(&list),
        Some((1, 8)),
        "5 commits after txid 3 must be txids 4..=8; list:\n{list:#}\nlog:\n{}",
        rep.log_text()
    );
    assert_eq!(
        snapshots(&list),
        vec![snap],
        "no new lineage; log:\n{}",
        rep.log_text()
    );
    let dir = env.subdir("restores");
    for (j, state) in states.iter().enumerate() {
        let txid = 3 + j as u64;
        let out = dir.join(format!("txid-{txid}.db"));
        assert_eq!(
            &restore_digest(&replica, &out, &["--txid", &txid.to_string()]),
            state,
            "txid {txid}"
        );
    }
}

/// Replicating a database nobody has open (SQLite removed its WAL when the
/// last connection closed) a second time, with no commit in between, must
/// neither start a new lineage nor invent a txid.
#[test]
fn replicating_an_idle_database_again_adds_nothing() {
    let env = Env::new();
    let replica = env.replica_arg();
    let expected = {
        let mut app = App::create(&env.db);
        app.commit_insert_many(10);
        app.digest()
    };
    let wal = env.path("app.db-wal");
    assert!(
        fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "set-up: closing the last connection empties the WAL"
    );
    replicate_once(&env.db, &replica);
    let first = list_json(&replica);
    assert_eq!(window(&first), Some((1, 1)), "{first:#}");

    replicate_once(&env.db, &replica);
    let mut rep = Replicator::spawn(&env.db, &replica, &env.path("replicate.log"));
    rep.wait_started();
    rep.stop();

    let list = list_json(&replica);
    assert_eq!(
        window(&list),
        Some((1, 1)),
        "no commit happened, so no new txid; list:\n{list:#}\nlog:\n{}",
        rep.log_text()
    );
    assert_eq!(
        snapshots(&list),
        snapshots(&first),
        "no new snapshot or lineage"
    );
    assert_eq!(
        restore_digest(&replica, &env.path("restored.db"), &[]),
        expected
    );
}
