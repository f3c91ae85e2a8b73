//! The embedding API (`walstream::Replicator`) used from an application's own
//! tokio runtime: start, write, wait until durable, back up on demand, list,
//! status, shut down, then restore and compare.

mod common;

use common::*;
use walstream::health::Level;
use walstream::{IntegrityCheck, ObjectStore, Replicator, RestoreOptions, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_replicator_round_trip() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    let rep = Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .start()
        .await
        .expect("starting the replicator");

    for _ in 0..5 {
        app.commit_insert_one();
    }
    let txid = rep.committed_txid().await.expect("committed txid");
    rep.wait_for_txid(txid).await.expect("durable");
    let status = rep.status().await.expect("status");
    assert!(status.last_shipped_txid >= txid, "{status:?}");
    assert!(status.replicating);
    assert_eq!(
        status.health.as_ref().map(|h| h.level),
        Some(Level::Healthy),
        "{status:?}"
    );

    let key = rep.backup_now().await.expect("backup now");
    let list = rep.list_backups().await.expect("list");
    let newest = list.backups.last().expect("a snapshot");
    assert_eq!(newest.key, key);
    assert_eq!(newest.txid, txid, "the snapshot holds everything committed");
    assert!(newest.size > 0 && !newest.time.is_empty());
    let window = list.window.expect("a window");
    assert!(
        window.min_txid <= txid && window.max_txid >= txid,
        "{window:?}"
    );

    app.commit_blob("after-backup", 20_000);
    let last = rep.sync().await.expect("sync");
    assert!(last > txid);
    let health = rep.health().await;
    assert!(health.running);
    rep.shutdown().await.expect("shutdown");
    assert!(
        rep.wait_for_txid(last + 1000).await.is_err(),
        "waiting past the end fails once replication stopped"
    );

    let out = env.path("restored.db");
    let opts = RestoreOptions {
        output: out.clone(),
        target: Target::Latest,
        force: false,
        integrity_check: IntegrityCheck::Quick,
        progress: None,
        keys: Default::default(),
    };
    let report = walstream::restore(rep.store(), &opts)
        .await
        .expect("restore");
    assert_eq!(report.txid, last);
    assert_eq!(digest_file(&out), app.digest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_a_missing_database_before_replicating() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    app.commit_insert_many(10);
    let rep = Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .start()
        .await
        .expect("start");
    rep.sync().await.expect("sync");
    rep.shutdown().await.expect("shutdown");
    drop(rep); // releases the database's lock
    let want = app.digest();
    drop(app);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db.display()));
    }

    let rep = Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .restore_if_missing(true)
        .start()
        .await
        .expect("restore, then start");
    assert_eq!(digest_file(&env.db), want);
    let mut app = App::open(&env.db, 7);
    app.commit_insert_one();
    rep.sync().await.expect("the restored database replicates");
    rep.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicator_needs_a_replica() {
    let env = Env::new();
    let _app = App::create(&env.db);
    let e = Replicator::builder(&env.db).start().await.unwrap_err();
    assert!(e.to_string().contains("no replica"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_takes_the_applications_storage_backup_table() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    // The application's config names no database: it knows its own file.
    let text = format!(
        "[storage.backup]\nenabled = true\nurl = \"{}\"\ninterval_seconds = 3600\nretention_count = 3\n",
        env.replica_arg()
    );
    let cfg = walstream::config::Config::parse("app.toml".as_ref(), &text, false).unwrap();
    assert!(cfg.dbs.is_empty());
    let rep = Replicator::builder(&env.db)
        .config(&cfg)
        .expect("config")
        .start()
        .await
        .expect("start");
    app.commit_insert_one();
    let txid = rep.sync().await.expect("sync");
    let list = rep.list_backups().await.expect("list");
    assert_eq!(list.window.map(|w| w.max_txid), Some(txid));
    rep.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ships_at_once_whatever_the_upload_interval() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    let opts = walstream::CaptureOptions {
        upload_interval: Some(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    let rep = Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .options(opts)
        .start()
        .await
        .expect("start");
    let before = rep.list_backups().await.unwrap().window.map(|w| w.max_txid);
    app.commit_insert_many(3);
    let committed = rep.committed_txid().await.expect("committed");
    let shipped = rep.sync().await.expect("sync");
    assert_eq!(shipped, committed);
    assert!(Some(shipped) > before);
    let window = rep.list_backups().await.unwrap().window.expect("window");
    assert_eq!(
        window.max_txid, shipped,
        "in the replica, not waiting an hour"
    );
    rep.wait_for_txid(shipped).await.expect("already durable");
    rep.shutdown().await.expect("shutdown");
}

/// A local directory that answers every request (or only snapshot uploads,
/// with `only_snapshots`) with a transient error while `down` is set, as an
/// unreachable S3 does.
#[derive(Debug)]
struct Flaky {
    inner: walstream::store::LocalStore,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    only_snapshots: bool,
    /// Requests refused so far.
    refused: std::sync::atomic::AtomicU64,
    /// While set, an upload made while the database's write lock is held
    /// (by walstream: the application's transactions are short) takes 3 s,
    /// as if the store turned slow just then.
    slow_while_locked: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::path::PathBuf,
    )>,
}

impl Flaky {
    async fn maybe_slow(&self) {
        let Some((on, db)) = &self.slow_while_locked else {
            return;
        };
        if !on.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let db = db.clone();
        let locked = tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(&db).expect("opening the database");
            match c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
                Ok(()) => false,
                Err(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy),
            }
        })
        .await
        .expect("lock probe");
        if locked {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
    }
}

impl Flaky {
    fn check(&self, op: &'static str, key: &str) -> Result<(), walstream::store::StoreError> {
        let spared = self.only_snapshots && !(op == "put" && key.starts_with("snapshots/"));
        if !self.down.load(std::sync::atomic::Ordering::SeqCst) || spared {
            return Ok(());
        }
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(walstream::store::StoreError::Remote(Box::new(
            walstream::store::RemoteError {
                store: self.describe(),
                op,
                key: key.to_string(),
                code: "ConnectFailed".into(),
                message: "the test took the store down".into(),
                transient: true,
            },
        )))
    }
}

#[async_trait::async_trait]
impl walstream::ObjectStore for Flaky {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(
        &self,
        key: &str,
        body: bytes::Bytes,
        mode: walstream::PutMode,
    ) -> Result<(), walstream::store::StoreError> {
        self.check("put", key)?;
        self.maybe_slow().await;
        self.inner.put(key, body, mode).await
    }
    async fn put_file(
        &self,
        key: &str,
        path: std::path::PathBuf,
        mode: walstream::PutMode,
    ) -> Result<(), walstream::store::StoreError> {
        self.check("put", key)?;
        self.maybe_slow().await;
        self.inner.put_file(key, path, mode).await
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, walstream::store::StoreError> {
        self.check("get", key)?;
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, walstream::store::StoreError> {
        self.check("get", key)?;
        self.inner.get_range(key, offset, len).await
    }
    async fn get_reader(
        &self,
        key: &str,
    ) -> Result<walstream::store::ObjectReader, walstream::store::StoreError> {
        self.check("get", key)?;
        self.inner.get_reader(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<walstream::store::ObjectMeta>, walstream::store::StoreError> {
        self.check("list", prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), walstream::store::StoreError> {
        self.check("delete", key)?;
        self.inner.delete(key).await
    }
}

fn flaky(
    dir: &std::path::Path,
) -> (
    std::sync::Arc<Flaky>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Flaky {
        inner: walstream::store::LocalStore::new(dir.to_path_buf()),
        down: std::sync::Arc::clone(&down),
        only_snapshots: false,
        refused: Default::default(),
        slow_while_locked: None,
    };
    (std::sync::Arc::new(store), down)
}

/// A replicator of `env.db` to the local replica (named `file`) and to a
/// flaky one named `offsite`; the offsite store and its switch.
async fn start_with_flaky(
    env: &Env,
    opts: walstream::CaptureOptions,
) -> (
    Replicator,
    std::sync::Arc<dyn walstream::ObjectStore>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (store, down) = flaky(&env.subdir("offsite"));
    let offsite: std::sync::Arc<dyn walstream::ObjectStore> = store;
    let rep = Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .store_named("offsite", std::sync::Arc::clone(&offsite))
        .options(opts)
        .start()
        .await
        .expect("start");
    (rep, offsite, down)
}

async fn restore_from(store: &std::sync::Arc<dyn walstream::ObjectStore>, out: &std::path::Path) {
    restore_target(store, out, Target::Latest).await;
}

async fn restore_target(
    store: &std::sync::Arc<dyn walstream::ObjectStore>,
    out: &std::path::Path,
    target: Target,
) {
    let opts = RestoreOptions {
        output: out.to_path_buf(),
        target,
        force: false,
        integrity_check: IntegrityCheck::Quick,
        progress: None,
        keys: Default::default(),
    };
    walstream::restore(store, &opts).await.expect("restore");
}

/// Two replicas, one of which fails for a while: waiting for a commit never
/// waits for the failing one, backups and listings carry on with the healthy
/// one and say what failed, and the failing one catches up when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_failing() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let env = Env::new();
    let mut app = App::create(&env.db);
    let (rep, offsite, down) = start_with_flaky(&env, Default::default()).await;
    let names: Vec<&str> = rep.replicas().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["file", "offsite"]);
    app.commit_insert_one();
    let txid = rep.committed_txid().await.expect("committed");
    tokio::time::timeout(Duration::from_secs(10), rep.wait_for_txid(txid))
        .await
        .expect("in time")
        .expect("durable in both");
    let offsite_rep = rep.replica("offsite").expect("named").rep.clone();
    assert!(offsite_rep.shipped_txid() >= 2, "both replicas hold it");

    // The offsite store goes down.
    down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        app.commit_insert_one();
        let txid = rep.committed_txid().await.expect("committed");
        // The offsite store stays down: a wait for it would never end.
        tokio::time::timeout(Duration::from_secs(20), rep.wait_for_txid(txid))
            .await
            .expect("the failing replica does not hold the wait up")
            .expect("durable in the healthy replica");
    }
    let committed = rep.committed_txid().await.expect("committed");
    assert_eq!(
        rep.sync().await.expect("sync ships to the healthy one"),
        committed
    );
    assert!(offsite_rep.is_failing());
    let statuses = rep.statuses().await;
    let file = statuses[0].result.as_ref().expect("file status");
    assert_eq!(file.replica_name.as_deref(), Some("file"));
    assert_eq!(file.last_shipped_txid, committed);
    let off = statuses[1]
        .result
        .as_ref()
        .expect("offsite status (from the engine)");
    assert!(off.last_error.is_some(), "{off:?}");
    assert!(off.last_shipped_txid < committed, "{off:?}");
    let list = rep.list_backups().await.expect("the healthy replica lists");
    assert!(list.replicas[0].error.is_none() && list.replicas[1].error.is_some());
    assert_eq!(list.window.as_ref().map(|w| w.max_txid), Some(committed));
    let key = rep
        .backup_now()
        .await
        .expect("a backup in the healthy replica");
    let each = rep.backup_now_each().await;
    assert!(each[0].result.is_ok() && each[1].result.is_err());
    assert!(key.starts_with("snapshots/"));
    assert_eq!(rep.health_all().await.len(), 2);

    // Back: it catches up, and waits cover it again.
    down.store(false, Ordering::SeqCst);
    app.commit_blob("after", 50_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = offsite_rep.status().await.expect("status");
        if s.last_error.is_none() || s.pending_commits == 0 && s.last_shipped_txid > 2 {
            let file = rep.replication().shipped_txid();
            if offsite_rep.shipped_txid() + 1 >= file && s.pending_commits == 0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never caught up: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let txid = rep.committed_txid().await.expect("committed");
    rep.wait_for_txid(txid).await.expect("durable");
    rep.shutdown().await.expect("shutdown");

    let want = app.digest();
    let out = env.path("from-file.db");
    restore_from(rep.store(), &out).await;
    assert_eq!(digest_file(&out), want);
    let out = env.path("from-offsite.db");
    restore_from(&offsite, &out).await;
    assert_eq!(digest_file(&out), want);
}

/// With `outage_wal_hold`, a replica failing longer lets go of the WAL, so
/// the healthy replica's checkpoints keep it small; the failing one starts a
/// new lineage when it returns, and still restores to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_too_long_lets_go_of_the_wal() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let env = Env::new();
    let mut app = App::create(&env.db);
    let opts = walstream::CaptureOptions {
        checkpoint_pages: 64,
        outage_wal_hold: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let (rep, offsite, down) = start_with_flaky(&env, opts).await;
    let offsite_rep = rep.replica("offsite").expect("named").rep.clone();
    down.store(true, Ordering::SeqCst);
    app.commit_insert_one();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !offsite_rep.status().await.expect("status").wal_released {
        assert!(Instant::now() < deadline, "the WAL was never let go");
        app.commit_insert_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 8 MB more, each blob shipped to the healthy replica before the next.
    let wal = walstream::capture::wal_path(&env.db);
    for i in 0..80 {
        app.commit_blob(&format!("b{i}"), 100_000);
        rep.sync().await.expect("sync");
    }
    let wal_size = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(
        wal_size < 4 << 20,
        "the healthy replica's checkpoints keep the WAL small: {wal_size} bytes"
    );

    down.store(false, Ordering::SeqCst);
    let want = app.digest();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = offsite_rep.status().await.expect("status");
        if !s.wal_released && !offsite_rep.is_failing() && s.pending_commits == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never came back: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rep.shutdown().await.expect("shutdown");
    let out = env.path("from-offsite.db");
    restore_from(&offsite, &out).await;
    assert_eq!(digest_file(&out), want);
    let catalog = walstream::Catalog::load(&offsite).await.expect("catalog");
    let lineages: std::collections::BTreeSet<u64> =
        catalog.snapshots.iter().map(|s| s.lineage).collect();
    assert_eq!(
        lineages.len(),
        2,
        "continuity could not be proven: a new lineage"
    );
}

/// The embedded replicator restores and proves its replica on a schedule,
/// as `walstream replicate` does, and reports it in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_verification_runs_in_the_library() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    let rep = Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .verify_interval(Some(std::time::Duration::from_millis(300)))
        .start()
        .await
        .expect("starting the replicator");
    app.commit_insert_many(20);
    let txid = rep.sync().await.expect("sync");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let verified = loop {
        let s = rep.status().await.expect("status");
        match s.last_verification {
            Some(v) if v.txid.is_some_and(|t| t >= txid) => break v,
            _ if std::time::Instant::now() > deadline => panic!("no verification: {s:?}"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    assert!(verified.ok, "{verified:?}");
    assert!(verified.problems.is_empty(), "{verified:?}");
    rep.shutdown().await.expect("shutdown");

    // Off: nothing is verified, however long it runs.
    let env = Env::new();
    let _app = App::create(&env.db);
    let rep = Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .verify_interval(None)
        .start()
        .await
        .expect("starting the replicator");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let s = rep.status().await.expect("status");
    assert!(s.last_verification.is_none(), "{s:?}");
    rep.shutdown().await.expect("shutdown");
}

/// A new lineage whose snapshot cannot be stored at first: the snapshot taken
/// then is stored when the store answers, and every commit made meanwhile
/// restores on its own, instead of folding into a later snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_could_not_be_stored_keeps_the_commits_after_it() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let env = Env::new();
    let mut app = App::create(&env.db);
    let mut states = vec![app.digest()];
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flaky = std::sync::Arc::new(Flaky {
        inner: walstream::store::LocalStore::new(env.subdir("replica")),
        down: std::sync::Arc::clone(&down),
        only_snapshots: true,
        refused: Default::default(),
        slow_while_locked: None,
    });
    let store: std::sync::Arc<dyn walstream::ObjectStore> = flaky.clone();
    let rep = Replicator::builder(&env.db)
        .store(std::sync::Arc::clone(&store))
        .verify_interval(None)
        .start()
        .await
        .expect("start");
    // The first snapshot was taken and its upload refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    while flaky.refused.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no upload was attempted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        app.commit_insert_one();
        states.push(app.digest());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        flaky.refused.load(Ordering::SeqCst) >= 2,
        "retried meanwhile"
    );
    down.store(false, Ordering::SeqCst);
    if tokio::time::timeout(Duration::from_secs(30), rep.wait_for_txid(6))
        .await
        .is_err()
    {
        panic!("txid 6 not shipped: {:?}", rep.status().await);
    }
    rep.shutdown().await.expect("shutdown");
    for (i, want) in states.iter().enumerate() {
        let txid = i as u64 + 1;
        let out = env.path(&format!("txid-{txid}.db"));
        restore_target(&store, &out, Target::Txid(txid)).await;
        assert_eq!(&digest_file(&out), want, "txid {txid}");
    }
}

/// A store that answers slowly never holds the application's writers for
/// long: the checkpoint cycle ships the last moment's commits with writers
/// held only for a bounded time, and postpones the checkpoint when the store
/// is slower (found by the torture suite, S3 seed 0xC95ADE3928CD47CF: a
/// writer's 5 s busy timeout ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_never_holds_writers_long() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let env = Env::new();
    let mut app = App::create(&env.db);
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store: std::sync::Arc<dyn walstream::ObjectStore> = std::sync::Arc::new(Flaky {
        inner: walstream::store::LocalStore::new(env.subdir("replica")),
        down: Default::default(),
        only_snapshots: false,
        refused: Default::default(),
        slow_while_locked: Some((std::sync::Arc::clone(&slow), env.db.clone())),
    });
    let opts = walstream::CaptureOptions {
        checkpoint_pages: 4,
        ..Default::default()
    };
    let rep = Replicator::builder(&env.db)
        .store(std::sync::Arc::clone(&store))
        .options(opts)
        .verify_interval(None)
        .start()
        .await
        .expect("start");
    slow.store(true, Ordering::SeqCst);
    // The application commits on its own thread, timing each transaction.
    let writer = tokio::task::spawn_blocking(move || {
        let mut longest = Duration::ZERO;
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            let t = Instant::now();
            app.commit_insert_one();
            longest = longest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        (app, longest)
    });
    let (app, longest) = writer.await.expect("writer");
    slow.store(false, Ordering::SeqCst);
    assert!(
        longest < Duration::from_secs(2),
        "a transaction waited {longest:?} for a slow store"
    );
    let txid = rep.committed_txid().await.expect("committed");
    tokio::time::timeout(Duration::from_secs(30), rep.wait_for_txid(txid))
        .await
        .expect("in time")
        .expect("shipped");
    rep.shutdown().await.expect("shutdown");
    let out = env.path("latest.db");
    restore_from(&store, &out).await;
    assert_eq!(digest_file(&out), app.digest());
}
