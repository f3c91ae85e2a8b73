//! Retention from the command line and pruning against restores:
//! `prune --dry-run` prints the plan and deletes nothing; `prune` deletes
//! exactly that; pins keep a snapshot; every txid of the resulting window
//! restores to the recorded state; and a restore whose planned object is
//! pruned under it plans again instead of failing obscurely.
//!
//! Txids: the first snapshot is txid 1 (`states[0]`); the j-th application
//! commit after it is txid 1 + j. Forced snapshots take no txid of their own.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use walstream::store::{ObjectMeta, ObjectReader, StoreError};
use walstream::{ObjectStore, PutMode, ReplicaUrl, RestoreOptions, Target};

/// Five snapshots with three commits between each: returns the digest after
/// every txid (index = txid - 1).
fn history(env: &Env, replica: &str) -> Vec<Digest> {
    let mut app = App::create(&env.db);
    replicate_once(&env.db, replica);
    let mut states = vec![app.digest()];
    for _ in 0..4 {
        for _ in 0..3 {
            app.commit_random();
            states.push(app.digest());
        }
        let db = env.db.display().to_string();
        walstream(["snapshot", db.as_str(), replica]).assert_success();
    }
    states
}

fn snapshot_txids(replica: &str) -> Vec<u64> {
    snapshots(&list_json(replica))
        .iter()
        .map(|s| s.max_txid)
        .collect()
}

#[test]
fn prune_plans_deletes_and_keeps_the_window_restorable() {
    let env = Env::new();
    let replica = env.replica_arg();
    let states = history(&env, &replica);
    assert_eq!(snapshot_txids(&replica), vec![1, 4, 7, 10, 13]);
    let pinned = snapshots(&list_json(&replica))[1].key.clone();
    walstream(["pin", replica.as_str(), pinned.as_str()])
        .assert_success()
        .assert_mentions("1 snapshot(s) pinned");

    let before = list_json(&replica);
    let dry = walstream([
        "prune",
        replica.as_str(),
        "--retention-count",
        "2",
        "--dry-run",
    ]);
    dry.assert_success()
        .assert_mentions("would delete")
        .assert_mentions("(one of the newest 2)")
        .assert_mentions("(pinned)")
        .assert_mentions("before the restorable window, which starts at txid 10");
    assert_eq!(list_json(&replica), before, "--dry-run deletes nothing");

    let done = walstream([
        "prune",
        replica.as_str(),
        "--retention-count",
        "2",
        "--json",
    ]);
    done.assert_success();
    let plan = done.json();
    assert_eq!(plan["window_from_txid"], 10, "{plan:#}");
    assert_eq!(plan["delete"].as_array().map(Vec::len), Some(5), "{plan:#}");
    let after = list_json(&replica);
    assert_eq!(snapshot_txids(&replica), vec![4, 10, 13]);
    assert!(
        segments(&after).iter().all(|s| s.min_txid > 10),
        "only segments after the window's first snapshot stay: {after:#}"
    );
    assert_eq!(window(&after), Some((10, 13)));

    // Every txid of the window, and the pinned snapshot's own, restore exactly.
    for txid in [4u64, 10, 11, 12, 13] {
        let out = env.path(&format!("at-{txid}.db"));
        let n = txid.to_string();
        assert_eq!(
            restore_digest(&replica, &out, &["--txid", n.as_str()]),
            states[txid as usize - 1],
            "txid {txid}"
        );
    }
    // Between the pinned snapshot and the window nothing is restorable any more.
    let out = env.path("gone.db");
    restore(&replica, &out, &["--txid", "6"])
        .assert_failure()
        .assert_mentions("txid 6");
    assert!(!out.exists());
    walstream(["verify", replica.as_str()]).assert_success();

    // Unpinned, the snapshot goes with the next prune.
    walstream(["unpin", replica.as_str(), pinned.as_str()]).assert_success();
    walstream(["prune", replica.as_str(), "--retention-count", "2"]).assert_success();
    assert_eq!(snapshot_txids(&replica), vec![10, 13]);
}

#[test]
fn pin_refuses_what_is_not_a_snapshot_of_the_replica() {
    let env = Env::new();
    let replica = env.replica_arg();
    history(&env, &replica);
    let seg = segments(&list_json(&replica))[0].key.clone();
    walstream(["pin", replica.as_str(), seg.as_str()])
        .assert_failure()
        .assert_mentions("not a snapshot key");
    walstream([
        "pin",
        replica.as_str(),
        "snapshots/00000000000000ff-0000000000000001-0000000000000.wsnap",
    ])
    .assert_failure()
    .assert_mentions("not found");
}

/// A local store that, the first time a key starting with `trigger` is read,
/// runs `hook` before answering, the way a concurrent prune would.
struct RacingStore {
    inner: Arc<dyn ObjectStore>,
    trigger: String,
    fired: AtomicBool,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for RacingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RacingStore({:?})", self.inner)
    }
}

impl RacingStore {
    fn before_read(&self, key: &str) {
        if key.starts_with(&self.trigger) && !self.fired.swap(true, Ordering::SeqCst) {
            if let Some(hook) = self.hook.lock().expect("hook lock").take() {
                hook();
            }
        }
    }
}

#[async_trait]
impl ObjectStore for RacingStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StoreError> {
        self.inner.put(key, body, mode).await
    }
    async fn put_file(&self, key: &str, path: PathBuf, mode: PutMode) -> Result<(), StoreError> {
        self.inner.put_file(key, path, mode).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.before_read(key);
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.before_read(key);
        self.inner.get_range(key, offset, len).await
    }
    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StoreError> {
        self.before_read(key);
        self.inner.get_reader(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

/// Restores `target` through a store whose first read of `trigger` is preceded
/// by a snapshot and a prune keeping one snapshot.
fn restore_racing_a_prune(
    env: &Env,
    replica: &str,
    trigger: &str,
    target: Target,
    out: &Path,
) -> (
    Result<walstream::RestoreReport, walstream::RestoreError>,
    bool,
) {
    let (db, rep) = (env.db.display().to_string(), replica.to_string());
    let db_path = env.db.clone();
    let hook = move || {
        // A new commit, so the snapshot is a new object (same txid and time
        // would be the very same snapshot).
        App::open(&db_path, 7).commit_random();
        walstream(["snapshot", db.as_str(), rep.as_str()]).assert_success();
        walstream(["prune", rep.as_str(), "--retention-count", "1"]).assert_success();
    };
    let store = Arc::new(RacingStore {
        inner: ReplicaUrl::parse(replica)
            .expect("url")
            .open()
            .expect("store"),
        trigger: trigger.to_string(),
        fired: AtomicBool::new(false),
        hook: Mutex::new(Some(Box::new(hook))),
    });
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let opts = RestoreOptions {
        output: out.to_path_buf(),
        target,
        force: false,
        integrity_check: walstream::IntegrityCheck::Quick,
        progress: None,
        keys: walstream::Keyring::default(),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(walstream::restore(&dyn_store, &opts));
    (r, store.fired.load(Ordering::SeqCst))
}

#[test]
fn a_restore_plans_again_when_pruning_deletes_its_snapshot() {
    let env = Env::new();
    let replica = env.replica_arg();
    let states = history(&env, &replica);
    let newest = snapshots(&list_json(&replica))
        .last()
        .expect("a snapshot")
        .key
        .clone();
    // The planned snapshot is pruned after a newer one was taken; the restore
    // plans again and reaches the same state through the newer one.
    let out = env.path("latest.db");
    let (r, fired) = restore_racing_a_prune(&env, &replica, &newest, Target::Latest, &out);
    assert!(fired, "the prune ran during the restore");
    let report = r.expect("the restore plans around the pruned snapshot");
    assert_eq!(report.txid, 14, "latest is now the hook's commit");
    assert_eq!(digest_file(&out), App::open(&env.db, 0).digest());
    assert_ne!(digest_file(&out), states[12]);
    let left = snapshots(&list_json(&replica));
    assert_eq!(left.len(), 1, "the prune kept one snapshot");
    assert_ne!(
        left[0].key, newest,
        "the planned snapshot was really deleted"
    );
}

#[test]
fn a_restore_whose_target_is_pruned_away_fails_clearly() {
    let env = Env::new();
    let replica = env.replica_arg();
    history(&env, &replica);
    let at4 = snapshots(&list_json(&replica))[1].key.clone();
    let out = env.path("old.db");
    let (r, fired) = restore_racing_a_prune(&env, &replica, &at4, Target::Txid(5), &out);
    assert!(fired, "the prune ran during the restore");
    let msg = r.expect_err("txid 5 was pruned away").to_string();
    assert!(msg.contains("txid 5") && msg.contains("window"), "{msg}");
    assert!(!out.exists(), "no output is left behind");
    assert!(
        restore_leftovers(&out).is_empty(),
        "{:?}",
        restore_leftovers(&out)
    );
}

/// Moves every object of a local replica `days_back(object)` days into the
/// past: its header's times are rewritten (the header CRC with them) and the
/// object renamed to match, the body untouched. Times stay in txid order as
/// long as `days_back` does not grow with txid.
fn shift_into_the_past(replica: &Path, days_back: impl Fn(u64) -> i64) {
    const DAY_MS: i64 = 86_400_000;
    for dir in ["snapshots", "segments"] {
        for entry in std::fs::read_dir(replica.join(dir)).expect("replica folder") {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("object");
            let mut cursor = &bytes[..];
            let mut header = walstream::format::ObjectHeader::decode(&mut cursor).expect("header");
            let body = cursor;
            let shift = days_back(header.min_txid()) * DAY_MS;
            for c in &mut header.commits {
                c.time_ms -= shift;
            }
            let (first, last) = (header.commits[0], header.commits[header.commits.len() - 1]);
            let key = if dir == "snapshots" {
                walstream::catalog::snapshot_key(first.txid, header.lineage, first.time_ms)
            } else {
                walstream::catalog::segment_key(
                    first.txid,
                    last.txid,
                    header.lineage,
                    first.time_ms,
                    last.time_ms,
                )
            };
            let mut out = header.encode();
            out.extend_from_slice(body);
            std::fs::remove_file(&path).expect("removing the old name");
            write_file(&replica.join(&key), &out);
        }
    }
}

#[test]
fn a_week_of_history_pruned_restores_every_point_of_its_window() {
    let env = Env::new();
    let replica = env.replica_arg();
    // Seven daily snapshots (txids 1, 4, 7, ..., 19) with three commits after each.
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    let mut states = vec![app.digest()];
    for _day in 1..7 {
        for _ in 0..3 {
            app.commit_random();
            states.push(app.digest());
        }
        let db = env.db.display().to_string();
        walstream(["snapshot", db.as_str(), replica.as_str()]).assert_success();
    }
    for _ in 0..3 {
        app.commit_random();
        states.push(app.digest());
    }
    replicate_once(&env.db, &replica);
    assert_eq!(snapshot_txids(&replica), vec![1, 4, 7, 10, 13, 16, 19]);
    // Snapshot at txid 3d+1 and the commits after it land on day d (6 days ago
    // for d = 0, today for d = 6).
    shift_into_the_past(&env.replica, |min_txid| {
        6 - ((min_txid as i64 - 1) / 3).min(6)
    });
    walstream(["verify", replica.as_str()]).assert_success();
    let days: Vec<String> = snapshots(&list_json(&replica))
        .iter()
        .map(|s| s.time[..10].to_string())
        .collect();
    let mut distinct = days.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 7, "one snapshot per day: {days:?}");

    // Two days of point-in-time restore, and a daily snapshot for the week.
    let out = walstream([
        "prune",
        replica.as_str(),
        "--retention-count",
        "2",
        "--keep-daily",
        "7",
        "--json",
    ]);
    out.assert_success();
    let plan = out.json();
    assert_eq!(plan["window_from_txid"], 16, "{plan:#}");
    assert_eq!(snapshot_txids(&replica), vec![1, 4, 7, 10, 13, 16, 19]);
    let list = list_json(&replica);
    assert_eq!(window(&list), Some((16, 22)));
    assert!(segments(&list).iter().all(|s| s.min_txid > 16), "{list:#}");
    walstream(["verify", replica.as_str()]).assert_success();

    // Every txid of the window, and each daily snapshot at its own txid.
    for txid in [1u64, 4, 7, 10, 13, 16, 17, 18, 19, 20, 21, 22] {
        let out = env.path(&format!("txid-{txid}.db"));
        let n = txid.to_string();
        assert_eq!(
            restore_digest(&replica, &out, &["--txid", n.as_str()]),
            states[txid as usize - 1],
            "txid {txid}"
        );
    }
    // Every time of the window: each commit's own recorded time.
    for seg in segments(&list) {
        let out = env.path(&format!("time-{}.db", seg.max_txid));
        let digest = restore_digest(&replica, &out, &["--timestamp", seg.time.as_str()]);
        assert_eq!(
            digest,
            states[seg.max_txid as usize - 1],
            "time {}",
            seg.time
        );
    }
    // A time on a day kept only by its snapshot, after that snapshot: refused.
    let day2 = &snapshots(&list)[2];
    let later = format!("{}T23:59:59.999Z", &day2.time[..10]);
    let out = env.path("pruned-time.db");
    restore(&replica, &out, &["--timestamp", later.as_str()])
        .assert_failure()
        .assert_mentions("window");
    assert!(!out.exists());
}
