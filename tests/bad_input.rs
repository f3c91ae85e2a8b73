//! The bad input catalogue (`docs/errors.md`): each bad input is refused with
//! a non-zero exit and a message that names the file, key or object and says
//! what to do, and nothing is overwritten or left half-written.
//!
//! Permission cases run the binary as an unprivileged user when the tests run
//! as root (root ignores permission bits). Disk-full cases use a small tmpfs
//! where mounting is allowed, and always `RLIMIT_FSIZE` (writes past the
//! limit fail with EFBIG), which runs anywhere, CI included.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const QUICK: Duration = Duration::from_secs(30);
/// The unprivileged user the permission cases run as when we are root.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes `cmd` run as an unprivileged user when the tests run as root, so
/// permission bits apply to it.
fn unprivileged(cmd: &mut Command) {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
}

/// Gives the unprivileged user the test directory (when we are root), as if
/// it had created it.
fn hand_over(dir: &Path) {
    if !is_root() {
        return;
    }
    fn walk(p: &Path) {
        std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
        if p.is_dir() && !p.is_symlink() {
            for e in fs::read_dir(p).expect("read_dir").flatten() {
                walk(&e.path());
            }
        }
    }
    walk(dir);
    // The temporary directory's parent must let the user through.
    let parent = dir.parent().expect("parent");
    let mode = fs::metadata(parent).expect("parent").permissions().mode();
    assert!(
        mode & 0o001 != 0,
        "{} is not searchable by others",
        parent.display()
    );
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `walstream ARGS` as the unprivileged user.
fn walstream_unprivileged(args: &[&OsStr]) -> Output {
    walstream_with(args, &[], QUICK, unprivileged)
}

/// Ignores SIGXFSZ in the child (so a write past `RLIMIT_FSIZE` fails with
/// EFBIG instead of killing it) and, with `limit`, sets that limit in bytes.
fn file_size_limit(cmd: &mut Command, limit: Option<u64>) {
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (signal, setrlimit), on values computed before the fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if let Some(limit) = limit {
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Changes the file size limit of a running process.
fn set_file_size_limit(pid: i32, limit: u64) {
    let r = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child's pid with a valid rlimit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &r, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A small tmpfs, unmounted when dropped; `None` where mounting is not
/// allowed (not root, or no permission in this sandbox).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !is_root() {
            return None;
        }
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Every file under `dir` whose name is not a finished walstream object:
/// what a failed write must never leave in a replica.
fn partial_objects(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| !(n.ends_with(".wsnap") || n.ends_with(".wseg") || n.starts_with("lease/")))
        .collect()
}

// ---------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------

#[test]
fn unreadable_database_and_read_only_directory_are_named() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    app.commit_insert_many(5);
    drop(app);
    let replica = env.replica_arg();
    let db_s = env.db.display().to_string();
    hand_over(env.dir.path());
    let before = fs::read(&env.db).expect("db");

    // The database file itself cannot be read.
    chmod(&env.db, 0o000);
    let o = walstream_unprivileged(&[
        OsStr::new("replicate"),
        p(&env.db),
        OsStr::new(&replica),
        OsStr::new("--once"),
    ]);
    o.assert_failure()
        .assert_mentions(&db_s)
        .assert_mentions("permission denied");
    chmod(&env.db, 0o644);
    assert_eq!(fs::read(&env.db).expect("db"), before);
    assert_eq!(
        tree(&env.replica),
        Vec::new(),
        "nothing may reach the replica"
    );

    // The database's directory is read-only: walstream cannot create its
    // state directory (nor SQLite its -wal and -shm files).
    chmod(env.dir.path(), 0o555);
    let o = walstream_unprivileged(&[
        OsStr::new("replicate"),
        p(&env.db),
        OsStr::new(&replica),
        OsStr::new("--once"),
    ]);
    chmod(env.dir.path(), 0o755);
    o.assert_failure()
        .assert_mentions(&env.dir.path().display().to_string())
        .assert_mentions("permission denied")
        .assert_mentions("write");
    assert_eq!(fs::read(&env.db).expect("db"), before);
    assert!(!env.replica.exists(), "nothing may reach the replica");
}

#[test]
fn unwritable_replica_and_output_directories_are_named() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    app.commit_insert_many(5);
    let expected = app.digest();
    drop(app);
    let replica_dir = env.subdir("replica");
    let replica = env.replica_arg();
    let out_dir = env.subdir("out");
    hand_over(env.dir.path());

    // A replica directory walstream may not write into.
    chmod(&replica_dir, 0o555);
    let o = walstream_unprivileged(&[
        OsStr::new("replicate"),
        p(&env.db),
        OsStr::new(&replica),
        OsStr::new("--once"),
    ]);
    chmod(&replica_dir, 0o755);
    o.assert_failure()
        .assert_mentions(&replica)
        .assert_mentions("permission denied");
    assert_eq!(tree(&replica_dir), Vec::new(), "{o}");

    // Once it is writable, the same command goes through.
    let o = walstream_unprivileged(&[
        OsStr::new("replicate"),
        p(&env.db),
        OsStr::new(&replica),
        OsStr::new("--once"),
    ]);
    o.assert_success();

    // An output directory restore may not write into.
    let out = out_dir.join("restored.db");
    chmod(&out_dir, 0o555);
    let o = walstream_unprivileged(&[
        OsStr::new("restore"),
        OsStr::new("-o"),
        p(&out),
        OsStr::new(&replica),
    ]);
    chmod(&out_dir, 0o755);
    o.assert_failure()
        .assert_mentions(&out_dir.display().to_string())
        .assert_mentions("permission denied");
    assert_eq!(dir_names(&out_dir), Vec::<String>::new(), "{o}");
    assert_eq!(restore_digest(&replica, &out, &[]), expected);
}

// ---------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------

/// A replica of a database of about 600 KB of incompressible blobs.
fn big_replica(env: &Env) -> common::Digest {
    let mut app = App::create(&env.db);
    app.commit_blobs("big", 6, BLOB_SIZE);
    replicate_once(&env.db, &env.replica_arg());
    app.digest()
}

#[test]
fn disk_full_while_restoring_leaves_no_output() {
    let env = Env::new();
    let expected = big_replica(&env);
    let replica = env.replica_arg();

    // Writes past a file size limit fail (EFBIG): runs anywhere.
    let dir = env.subdir("limited");
    let out = dir.join("restored.db");
    let o = walstream_with(
        [
            OsStr::new("restore"),
            OsStr::new("-o"),
            p(&out),
            OsStr::new(&replica),
        ],
        &[],
        QUICK,
        |cmd| file_size_limit(cmd, Some(128 * 1024)),
    );
    o.assert_failure()
        .assert_mentions(&dir.display().to_string())
        .assert_mentions("file too large");
    assert_eq!(restore_leftovers(&out), Vec::<String>::new(), "{o}");
    assert_eq!(dir_names(&dir), Vec::<String>::new(), "{o}");

    // A real full file system (ENOSPC), where mounting one is allowed.
    let small = env.subdir("small");
    match Tmpfs::mount(&small, "256k") {
        Some(_fs) => {
            let out = small.join("restored.db");
            let o = restore(&replica, &out, &[]);
            o.assert_failure()
                .assert_mentions(&small.display().to_string())
                .assert_mentions("no space left on device");
            assert_eq!(dir_names(&small), Vec::<String>::new(), "{o}");
        }
        None => eprintln!(
            "SKIPPED: the tmpfs (ENOSPC) half of disk_full_while_restoring_leaves_no_output: \
             mounting is not allowed here (the RLIMIT_FSIZE half ran)"
        ),
    }

    // With room again, the restore succeeds.
    assert_eq!(restore_digest(&replica, &out, &[]), expected);
}

#[test]
fn disk_full_while_spooling_a_snapshot_loses_nothing() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    app.commit_insert_many(3);
    let log = env.path("replicate.log");
    let mut rep = Replicator::spawn_with(&env.db, &replica, &log, &[], |cmd| {
        file_size_limit(cmd, None)
    });
    rep.wait_started();
    app.commit_blobs("big", 4, BLOB_SIZE);
    rep.wait_shipped(2);

    // The local state directory fills up: the snapshot's spool file cannot
    // be written. Small commits still ship as segments meanwhile.
    set_file_size_limit(rep.pid(), 64 * 1024);
    let o = walstream_timeout(
        [OsStr::new("snapshot"), p(&env.db), OsStr::new(&replica)],
        QUICK,
    );
    o.assert_failure().assert_mentions("file too large");
    let state = walstream::capture::state_dir(&env.db);
    o.assert_mentions(&state.display().to_string());
    assert_eq!(partial_objects(&env.replica), Vec::<String>::new(), "{o}");
    for _ in 0..5 {
        app.commit_insert_one();
    }
    rep.wait_shipped(7);

    // Space again: the next snapshot goes through, and nothing was lost.
    set_file_size_limit(rep.pid(), libc::RLIM_INFINITY);
    let o = walstream_timeout(
        [OsStr::new("snapshot"), p(&env.db), OsStr::new(&replica)],
        QUICK,
    );
    o.assert_success();
    app.commit_insert_one();
    rep.wait_shipped(8);
    rep.stop();
    let expected = app.digest();
    assert_eq!(restore_digest(&replica, &env.path("out.db"), &[]), expected);
    let state_files = dir_names(&state);
    assert!(
        state_files.iter().all(|n| !n.contains("spool")),
        "a spool file was left behind: {state_files:?}"
    );
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn config_errors_name_the_file_and_the_key() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    app.commit_insert_one();
    drop(app);
    let db = env.db.display().to_string();
    let replica = env.replica_arg();
    let config = env.path("walstream.toml");
    let cfg_s = config.display().to_string();
    let db_table = format!("[[db]]\npath = \"{db}\"\n[[db.replica]]\nurl = \"{replica}\"\n");
    let cases: Vec<(String, Vec<&str>)> = vec![
        // An unknown key (a typo) names the key and the keys that exist.
        (
            format!("snapshot_intervl = \"1h\"\n{db_table}"),
            vec!["snapshot_intervl", "snapshot_interval"],
        ),
        // An unknown key inside a table.
        (
            format!("[[db]]\npath = \"{db}\"\npth = \"x\"\n[[db.replica]]\nurl = \"{replica}\"\n"),
            vec!["pth"],
        ),
        // Malformed TOML says where.
        (
            format!("snapshot_interval = \"1h\n{db_table}"),
            vec!["line 1"],
        ),
        // A value of the right type that means nothing.
        (
            format!("snapshot_interval = \"soon\"\n{db_table}"),
            vec!["snapshot_interval", "soon", "24h"],
        ),
        // A value of the wrong type.
        (
            format!("checkpoint_pages = \"many\"\n{db_table}"),
            vec!["checkpoint_pages"],
        ),
        // An invalid replica URL.
        (
            format!("[[db]]\npath = \"{db}\"\n[[db.replica]]\nurl = \"ftp://host/x\"\n"),
            vec!["ftp://host/x"],
        ),
        // No database at all.
        (
            "snapshot_interval = \"1h\"\n".to_string(),
            vec!["no [[db]]"],
        ),
    ];
    for (text, needles) in cases {
        write_file(&config, text.as_bytes());
        let o = walstream_timeout(
            [
                OsStr::new("replicate"),
                OsStr::new("--config"),
                p(&config),
                OsStr::new("--once"),
            ],
            QUICK,
        );
        o.assert_failure().assert_mentions(&cfg_s);
        for n in needles {
            o.assert_mentions(n);
        }
        let o = walstream_timeout(
            [
                OsStr::new("restore"),
                OsStr::new("--config"),
                p(&config),
                OsStr::new("-o"),
                p(&env.path("out.db")),
            ],
            QUICK,
        );
        o.assert_failure();
    }

    // A config file that does not exist.
    let missing = env.path("missing.toml");
    let o = walstream_timeout(
        [
            OsStr::new("replicate"),
            OsStr::new("--config"),
            p(&missing),
            OsStr::new("--once"),
        ],
        QUICK,
    );
    o.assert_failure()
        .assert_mentions(&missing.display().to_string())
        .assert_mentions("no such file");

    // Nothing was replicated, restored or created beside the database.
    assert!(!env.replica.exists());
    assert!(!env.path("out.db").exists());
    assert_eq!(
        dir_names(env.dir.path()),
        vec!["app.db", "walstream.toml"],
        "refused runs left files behind"
    );
}

// ---------------------------------------------------------------------------
// Rollback-journal databases: refused, or switched when asked
// ---------------------------------------------------------------------------

#[test]
fn enable_wal_switches_a_rollback_journal_database_only_when_asked() {
    let env = Env::new();
    let replica = env.replica_arg();
    let db_s = env.db.display().to_string();
    {
        let conn = rusqlite::Connection::open(&env.db).expect("open");
        let mode: String = conn
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "delete");
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
            .expect("schema");
    }
    let expected = digest_file(&env.db);
    let journal_mode = || -> String {
        let conn = rusqlite::Connection::open(&env.db).expect("open");
        conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode")
    };

    // Without the flag: refused, with both ways out named, nothing changed.
    let o = walstream_timeout(["replicate", &db_s, &replica, "--once"], QUICK);
    o.assert_failure()
        .assert_mentions(&db_s)
        .assert_mentions("journal_mode=delete")
        .assert_mentions("--enable-wal");
    assert_eq!(journal_mode(), "delete");
    assert!(!env.replica.exists());

    // With it: switched, replicated, restorable.
    let o = walstream_timeout(
        ["replicate", &db_s, &replica, "--once", "--enable-wal"],
        QUICK,
    );
    o.assert_success()
        .assert_mentions("switched the database to WAL mode");
    assert_eq!(journal_mode(), "wal");
    assert_eq!(restore_digest(&replica, &env.path("out.db"), &[]), expected);

    // Already in WAL mode: the flag changes nothing.
    let o = walstream_timeout(
        ["replicate", &db_s, &replica, "--once", "--enable-wal"],
        QUICK,
    );
    o.assert_success();
    assert!(!o.text().contains("switched the database"), "{o}");

    // It never creates a database, nor touches a file that is not one.
    let missing = env.path("missing.db");
    let missing_s = missing.display().to_string();
    let o = walstream_timeout(
        ["replicate", &missing_s, &replica, "--once", "--enable-wal"],
        QUICK,
    );
    o.assert_failure().assert_mentions(&missing_s);
    assert!(!missing.exists());
    let junk = env.path("junk.db");
    let junk_bytes = b"not a database at all\n".repeat(100);
    write_file(&junk, &junk_bytes);
    let junk_s = junk.display().to_string();
    let o = walstream_timeout(
        ["replicate", &junk_s, &replica, "--once", "--enable-wal"],
        QUICK,
    );
    o.assert_failure()
        .assert_mentions(&junk_s)
        .assert_mentions("not a SQLite database");
    assert_eq!(fs::read(&junk).expect("junk"), junk_bytes);
}

// ---------------------------------------------------------------------------
// The clock moving backwards
// ---------------------------------------------------------------------------

/// Year 2100: far ahead of any clock these tests run under.
const FUTURE_MS: i64 = 4_102_444_800_000;

/// Rewrites the replica's only snapshot as if it had been recorded at
/// `FUTURE_MS`: to the running clock, time went backwards since.
fn date_snapshot_in_the_future(replica: &Path) {
    use walstream::catalog::{parse_key, snapshot_key};
    use walstream::format::ObjectHeader;
    let keys: Vec<String> = tree(replica)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("snapshots/"))
        .collect();
    let [key] = keys.as_slice() else {
        panic!("expected one snapshot, found {keys:?}");
    };
    let bytes = fs::read(replica.join(key)).expect("snapshot");
    let mut cursor = &bytes[..];
    let mut header = ObjectHeader::decode(&mut cursor).expect("header");
    let body = cursor;
    header.commits[0].time_ms = FUTURE_MS;
    let info = parse_key(key, 0).expect("a snapshot key");
    let mut out = header.encode();
    out.extend_from_slice(body);
    let new_key = snapshot_key(info.max_txid, info.lineage, FUTURE_MS);
    write_file(&replica.join(&new_key), &out);
    fs::remove_file(replica.join(key)).expect("removing the old name");
}

#[test]
fn clock_moving_backwards_never_dates_a_commit_earlier() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    app.commit_insert_one();
    replicate_once(&env.db, &replica);
    date_snapshot_in_the_future(&env.replica);

    // The lineage continues: its commits are dated at the recorded time.
    app.commit_insert_many(3);
    replicate_once(&env.db, &replica);
    app.commit_insert_one();
    replicate_once(&env.db, &replica);
    // Changed behind walstream's back (checkpointed, WAL truncated): a new
    // lineage, whose snapshot must not be dated before what the replica
    // already holds either.
    app.commit_insert_one();
    {
        let conn = open_app_connection(&env.db);
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
    }
    app.commit_insert_one();
    replicate_once(&env.db, &replica);

    let list = list_json(&replica);
    assert_eq!(lineages(&list).len(), 2, "{list:#}");
    let mut objects: Vec<walstream::catalog::ObjectInfo> = tree(&env.replica)
        .into_iter()
        .filter_map(|(k, size)| walstream::catalog::parse_key(&k, size))
        .collect();
    objects.sort_by_key(|o| (o.min_txid, o.max_txid));
    assert!(objects.len() >= 4, "{list:#}");
    for o in &objects {
        assert!(
            o.min_time_ms >= FUTURE_MS,
            "{} is dated before the newest time the replica held ({} < {FUTURE_MS}):\n{list:#}",
            o.key,
            o.min_time_ms
        );
    }
    for pair in objects.windows(2) {
        assert!(
            pair[1].min_time_ms >= pair[0].max_time_ms,
            "time goes backwards from {} to {}",
            pair[0].key,
            pair[1].key
        );
    }
    assert_eq!(
        restore_digest(&replica, &env.path("out.db"), &[]),
        app.digest()
    );
}
