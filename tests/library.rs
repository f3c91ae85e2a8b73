//! The embedding API (`walstream::Replicator`) used from an application's own
//! tokio runtime: start, write, wait until durable, back up on demand, list,
//! status, shut down, then restore and compare.

mod common;

use common::*;
use walstream::health::Level;
use walstream::{IntegrityCheck, Replicator, RestoreOptions, Target};

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
