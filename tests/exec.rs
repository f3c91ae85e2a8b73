//! `walstream replicate --exec CMD`: the application as walstream's child.
//! Exit status, signal forwarding, restore of a missing database, and the
//! final flush of what the child committed just before it exited.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `walstream replicate --exec CMD ARGS...` in the background, logging to `log`.
fn spawn_exec(cmd: &str, args: &[&std::ffi::OsStr], log: &Path) -> Child {
    let file = File::create(log).expect("log");
    Command::new(bin())
        .arg("replicate")
        .arg("--exec")
        .arg(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file))
        .env("WALSTREAM_LOG", "info")
        .spawn()
        .expect("spawning walstream replicate --exec")
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + SHIP_TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec(cmd: &str, env: &Env) -> Output {
    walstream([
        "replicate",
        "--exec",
        cmd,
        env.db.to_str().unwrap(),
        &env.replica_arg(),
    ])
}

#[test]
fn exits_with_the_childs_status() {
    let env = Env::new();
    let _app = App::create(&env.db);
    let out = exec("sh -c 'exit 7'", &env);
    assert_eq!(out.code(), Some(7), "{}", out.text());
    let out = exec("sh -c 'kill -KILL $$'", &env);
    assert_eq!(
        out.code(),
        Some(128 + 9),
        "killed by a signal: {}",
        out.text()
    );
    let out = exec("true", &env);
    assert_eq!(out.code(), Some(0), "{}", out.text());
    assert!(
        !snapshots(&list_json(&env.replica_arg())).is_empty(),
        "replication ran"
    );
    exec("no-such-command-xyz", &env).assert_failure();
}

#[test]
fn forwards_sigterm_to_the_child() {
    let env = Env::new();
    let _app = App::create(&env.db);
    let (ready, marker) = (env.path("ready"), env.path("marker"));
    let script = format!(
        "trap 'touch {}; exit 0' TERM; touch {}; while true; do sleep 0.05; done",
        marker.display(),
        ready.display()
    );
    let cmd = format!("sh -c \"{script}\"");
    let log = env.path("exec.log");
    let mut child = spawn_exec(&cmd, &[p(&env.db), env.replica.as_os_str()], &log);
    wait_for_file(&ready);
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_child(&mut child, SHIP_TIMEOUT).expect("walstream exits");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(marker.exists(), "the child got SIGTERM: {text}");
}

#[test]
fn restores_a_missing_database_before_the_child_starts() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    app.commit_insert_many(25);
    let rows: i64 = app
        .conn
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap();
    replicate_once(&env.db, &env.replica_arg()).assert_success();
    drop(app);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db.display()));
    }
    let check = format!(
        "python3 -c \"import sqlite3, sys; n = sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM items').fetchone()[0]; sys.exit(0 if n == {rows} else 3)\" {}",
        env.db.display()
    );
    let out = exec(&check, &env);
    assert_eq!(
        out.code(),
        Some(0),
        "the child sees the restored rows: {}",
        out.text()
    );
    out.assert_mentions("restored");
}

#[test]
fn what_the_child_commits_before_exiting_is_shipped() {
    let env = Env::new();
    let _app = App::create(&env.db);
    // Nothing ships on its own for an hour: only the final flush can ship it.
    let config = env.path("walstream.toml");
    std::fs::write(
        &config,
        format!(
            "upload_interval = \"1h\"\n[[db]]\npath = \"{}\"\n[[db.replica]]\nurl = \"{}\"\n",
            env.db.display(),
            env.replica_arg()
        ),
    )
    .unwrap();
    let script = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
                  c.execute('INSERT INTO items(name) VALUES (\\'last-words\\')'); c.commit(); c.close()";
    let cmd = format!("python3 -c \"{script}\" {}", env.db.display());
    let out = walstream([
        "replicate",
        "--exec",
        &cmd,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.text());
    let restored = env.path("restored.db");
    restore(&env.replica_arg(), &restored, &[]).assert_success();
    let n: i64 = open_file_readonly(&restored)
        .query_row(
            "SELECT count(*) FROM items WHERE name = 'last-words'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the child's last commit is in the replica");
}

#[test]
fn storage_backup_table_drives_replicate_and_exec() {
    let env = Env::new();
    let _app = App::create(&env.db);
    let config = env.path("app.toml");
    let write = |body: &str| std::fs::write(&config, body).unwrap();
    let cfg = config.to_str().unwrap();

    // enabled = false: the command runs, nothing is replicated.
    write(&format!(
        "[storage.backup]\nenabled = false\ndatabase = \"{}\"\nurl = \"{}\"\n",
        env.db.display(),
        env.replica_arg()
    ));
    let out = walstream(["replicate", "--config", cfg, "--exec", "sh -c 'exit 3'"]);
    assert_eq!(out.code(), Some(3), "{}", out.text());
    out.assert_mentions("disabled");
    assert!(!env.replica.exists(), "nothing replicated");
    walstream(["replicate", "--config", cfg])
        .assert_success()
        .assert_mentions("disabled");

    // No database named: the CLI says which key is missing.
    write(&format!(
        "[storage.backup]\nurl = \"{}\"\n",
        env.replica_arg()
    ));
    walstream(["replicate", "--config", cfg, "--once"])
        .assert_failure()
        .assert_mentions("database");

    // The table as an application writes it, plus the database.
    write(&format!(
        "[storage.backup]\nenabled = true\ndatabase = \"{}\"\nurl = \"{}\"\n\
         interval_seconds = 86400\nretention_count = 7\n",
        env.db.display(),
        env.replica_arg()
    ));
    let out = walstream(["replicate", "--config", cfg, "--exec", "true"]);
    assert_eq!(out.code(), Some(0), "{}", out.text());
    assert!(!snapshots(&list_json(&env.replica_arg())).is_empty());
}

/// With several replicas, a missing database is restored from the most
/// advanced one, whichever is listed first.
#[test]
fn restores_a_missing_database_from_the_most_advanced_replica() {
    let env = Env::new();
    let (near, far) = (env.subdir("near"), env.subdir("far"));
    let mut app = App::create(&env.db);
    app.commit_insert_many(10);
    let config = env.path("walstream.toml");
    std::fs::write(
        &config,
        format!(
            "verify_interval = \"off\"\n[[db]]\npath = \"{}\"\n\
             [[db.replica]]\nname = \"near\"\nurl = \"{}\"\n\
             [[db.replica]]\nname = \"far\"\nurl = \"{}\"\n",
            env.db.display(),
            near.display(),
            far.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    walstream(["replicate", "--config", cfg, "--once"]).assert_success();
    // Later commits reach only the replica listed second.
    app.commit_insert_many(7);
    app.commit_blob("late", 30_000);
    replicate_once(&env.db, far.to_str().unwrap());
    let want = app.digest();
    drop(app);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db.display()));
    }
    let out = walstream(["replicate", "--config", cfg, "--exec", "true"]);
    assert_eq!(out.code(), Some(0), "{}", out.text());
    out.assert_mentions("restoring from the most advanced replica");
    out.assert_mentions("replica=far");
    assert_eq!(digest_file(&env.db), want);
}
