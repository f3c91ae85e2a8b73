//! Shared helpers for walstream's integration tests: running the `walstream`
//! binary (in the foreground with a timeout, or `replicate` in the background),
//! temporary directories, an application that writes to a WAL database the way
//! a real one would, full-content digests of databases, restore and listing
//! helpers, and a few file-damaging tools.
//!
//! Include it with `mod common;`. Not every test file uses every helper.
#![allow(dead_code)]

pub mod fault_proxy;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde_json::Value;

/// Longest any single foreground `walstream` command may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest we wait for a running `replicate` to ship a transaction or to exit.
pub const SHIP_TIMEOUT: Duration = Duration::from_secs(20);

/// The `walstream` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walstream"))
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// What a finished `walstream` command did.
pub struct Output {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code; `None` when the process was killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout followed by stderr, for searching messages wherever they went.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panics unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Output {
        assert!(self.success(), "command failed:\n{self}");
        self
    }

    /// Panics unless the command exited with a non-zero code (a crash by
    /// signal is not a clean failure either).
    #[track_caller]
    pub fn assert_failure(&self) -> &Output {
        match self.code() {
            Some(c) if c != 0 => self,
            _ => panic!("command should have failed with a non-zero exit code:\n{self}"),
        }
    }

    /// Panics unless `walstream status` answered: exit 0, 1 or 2 are its health
    /// levels (healthy, warning, critical); anything else means it could not tell.
    #[track_caller]
    pub fn assert_status_answered(&self) -> &Output {
        assert!(
            matches!(self.code(), Some(0..=2)),
            "status should answer with a health level (exit 0, 1 or 2):\n{self}"
        );
        self
    }

    /// Panics unless stdout or stderr contains `needle` (case-insensitive).
    #[track_caller]
    pub fn assert_mentions(&self, needle: &str) -> &Output {
        assert!(
            self.text().to_lowercase().contains(&needle.to_lowercase()),
            "output should mention {needle:?}:\n{self}"
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ walstream {}", self.args.join(" "))?;
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => writeln!(f, "exit code {c}")?,
            (None, Some(s)) => writeln!(f, "killed by signal {s}")?,
            _ => writeln!(f, "status {:?}", self.status)?,
        }
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `walstream ARGS...` to completion (killed and panicking after
/// [`CMD_TIMEOUT`]).
pub fn walstream<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    walstream_env(args, &[])
}

/// Like [`walstream`], with extra environment variables.
pub fn walstream_env<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    walstream_full(args, env, CMD_TIMEOUT)
}

/// Like [`walstream`], panicking (after killing it) when the command takes
/// longer than `timeout`: for commands that must end promptly, like a
/// refused `replicate`.
pub fn walstream_timeout<I, S>(args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    walstream_full(args, &[], timeout)
}

/// Runs `walstream ARGS...` with extra environment variables and a timeout.
pub fn walstream_full<I, S>(args: I, env: &[(&str, &str)], timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    walstream_with(args, env, timeout, |_| {})
}

/// Like [`walstream_full`], with `configure` applied to the command before it
/// runs (resource limits, another user).
pub fn walstream_with<I, S, F>(
    args: I,
    env: &[(&str, &str)],
    timeout: Duration,
    configure: F,
) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
    F: FnOnce(&mut Command),
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut cmd = Command::new(bin());
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    configure(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin().display()));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for walstream") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`walstream {}` did not finish within {timeout:?}",
                shown.join(" ")
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Output {
        args: shown,
        status,
        stdout,
        stderr,
    }
}

/// Shorthand: a path as an argument.
pub fn p(path: &Path) -> &OsStr {
    path.as_os_str()
}

/// `file:///abs/dir` for a directory path.
pub fn file_url(path: &Path) -> String {
    let abs = std::path::absolute(path).expect("absolute path");
    format!("file://{}", abs.display())
}

// ---------------------------------------------------------------------------
// A background `walstream replicate`
// ---------------------------------------------------------------------------

/// A running `walstream replicate DB REPLICA`, killed (SIGKILL) if still
/// running when dropped so a failing test never leaves it behind.
pub struct Replicator {
    child: Option<Child>,
    pub db: PathBuf,
    pub replica: String,
    pub log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Replicator {
    /// Starts `walstream replicate DB REPLICA`; its stdout and stderr go to `log`
    /// (logging at `WALSTREAM_LOG=info` unless `env` of [`Replicator::spawn_env`]
    /// says otherwise).
    pub fn spawn(db: &Path, replica: &str, log: &Path) -> Replicator {
        Replicator::spawn_env(db, replica, log, &[])
    }

    pub fn spawn_env(db: &Path, replica: &str, log: &Path, env: &[(&str, &str)]) -> Replicator {
        Replicator::spawn_with(db, replica, log, env, |_| {})
    }

    /// [`Replicator::spawn_env`], with `configure` applied to the command
    /// before it starts (resource limits, another user).
    pub fn spawn_with<F: FnOnce(&mut Command)>(
        db: &Path,
        replica: &str,
        log: &Path,
        env: &[(&str, &str)],
        configure: F,
    ) -> Replicator {
        let args = [db.as_os_str(), OsStr::new(replica)];
        let mut rep = Replicator::spawn_args(&args, log, env, configure);
        rep.db = db.to_path_buf();
        rep.replica = replica.to_string();
        rep
    }

    /// Starts `walstream replicate --config CONFIG` (with every database and
    /// replica of the file); `db` and `replica` are left empty.
    pub fn spawn_config(config: &Path, log: &Path, env: &[(&str, &str)]) -> Replicator {
        let args = [OsStr::new("--config"), config.as_os_str()];
        Replicator::spawn_args(&args, log, env, |_| {})
    }

    /// `walstream replicate ARGS`, logging to `log`.
    fn spawn_args<F: FnOnce(&mut Command)>(
        args: &[&OsStr],
        log: &Path,
        env: &[(&str, &str)],
        configure: F,
    ) -> Replicator {
        let file = File::create(log).expect("creating the replicate log");
        let file2 = file.try_clone().expect("cloning the log handle");
        let mut cmd = Command::new(bin());
        cmd.arg("replicate")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2))
            .env("WALSTREAM_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        configure(&mut cmd);
        let child = cmd.spawn().expect("spawning walstream replicate");
        Replicator {
            child: Some(child),
            db: PathBuf::new(),
            replica: String::new(),
            log: log.to_path_buf(),
            exit: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("child").id() as i32
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped
        // (we only reap it in `wait`, after which `exit` is set).
        assert!(self.exit.is_none(), "process already exited");
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(st) = self
                .child
                .as_mut()
                .expect("child")
                .try_wait()
                .ok()
                .flatten()
            {
                self.exit = Some(st);
            }
        }
        self.exit
    }

    /// Waits for the process to end; panics (after killing it) on timeout.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "walstream replicate did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(SHIP_TIMEOUT)
    }

    /// SIGTERM, then asserts a clean exit (code 0).
    #[track_caller]
    pub fn stop(&mut self) {
        let st = self.terminate();
        assert_eq!(
            st.code(),
            Some(0),
            "replicate should exit 0 after SIGTERM (status {st:?}); log:\n{}",
            self.log_text()
        );
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exit.is_none() {
                let _ = child.kill();
                if let Ok(st) = child.wait() {
                    self.exit = Some(st);
                }
            }
        }
    }

    /// Waits until start-up is over (the lineage is resumed or the first
    /// snapshot stored): the CLI logs `replicating db=...` at info level then.
    /// Panics if the process exits meanwhile or after [`SHIP_TIMEOUT`].
    #[track_caller]
    pub fn wait_started(&mut self) {
        let deadline = Instant::now() + SHIP_TIMEOUT;
        loop {
            if self.log_text().contains("replicating db=") {
                return;
            }
            if let Some(st) = self.try_exit() {
                panic!(
                    "replicate exited ({st:?}) during start-up; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "replicate did not finish start-up within {SHIP_TIMEOUT:?}; log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the log contains `needle`; false when it did not appear
    /// within `timeout` or the process ended first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if self.try_exit().is_some() || Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Polls `walstream status --json` until the replica holds `txid`;
    /// panics if the process exits meanwhile or after [`SHIP_TIMEOUT`].
    #[track_caller]
    pub fn wait_shipped(&mut self, txid: u64) {
        let deadline = Instant::now() + SHIP_TIMEOUT;
        loop {
            if let Some(st) = self.try_exit() {
                panic!(
                    "replicate exited ({st:?}) while we waited for txid {txid}; log:\n{}",
                    self.log_text()
                );
            }
            let shipped = last_shipped_txid(&self.db, &self.replica);
            if shipped >= txid {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "txid {txid} not shipped within {SHIP_TIMEOUT:?} (last shipped {shipped}); log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a child process for at most `timeout`; kills it (and returns
/// `None`) when it takes longer.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `last_shipped_txid` from `walstream status --json DB REPLICA`.
#[track_caller]
pub fn last_shipped_txid(db: &Path, replica: &str) -> u64 {
    let out = walstream([
        OsStr::new("status"),
        OsStr::new("--json"),
        p(db),
        OsStr::new(replica),
    ]);
    out.assert_status_answered();
    out.json()["last_shipped_txid"]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no integer last_shipped_txid:\n{out}"))
}

/// Polls `walstream status` (without a running replicate too) until `txid` is
/// in the replica.
#[track_caller]
pub fn wait_shipped(db: &Path, replica: &str, txid: u64) {
    wait_shipped_within(db, replica, txid, SHIP_TIMEOUT);
}

/// [`wait_shipped`] with a timeout of its own.
#[track_caller]
pub fn wait_shipped_within(db: &Path, replica: &str, txid: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let shipped = last_shipped_txid(db, replica);
        if shipped >= txid {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "txid {txid} not shipped within {timeout:?} (last shipped {shipped})"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `walstream replicate --once DB REPLICA`, asserting success.
#[track_caller]
pub fn replicate_once(db: &Path, replica: &str) -> Output {
    let out = walstream([
        OsStr::new("replicate"),
        p(db),
        OsStr::new(replica),
        OsStr::new("--once"),
    ]);
    out.assert_success();
    out
}

// ---------------------------------------------------------------------------
// Temporary test environment
// ---------------------------------------------------------------------------

/// A temporary directory with conventional paths for one test: `app.db`,
/// `replica/`, and anything else under it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub replica: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempdir();
        let db = dir.path().join("app.db");
        let replica = dir.path().join("replica");
        Env { dir, db, replica }
    }

    /// The replica as a command-line argument (a plain directory path).
    pub fn replica_arg(&self) -> String {
        self.replica.display().to_string()
    }

    /// A path inside the test directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh, empty directory inside the test directory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let d = self.path(name);
        fs::create_dir_all(&d).expect("creating a test subdirectory");
        d
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walstream-test-")
        .tempdir()
        .expect("creating a temporary directory")
}

// ---------------------------------------------------------------------------
// The application side
// ---------------------------------------------------------------------------

/// Opens a connection the way an application using walstream would: WAL mode
/// and a busy timeout.
pub fn open_app_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("opening the application database");
    conn.busy_timeout(Duration::from_millis(5000))
        .expect("busy_timeout");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("journal_mode=WAL");
    assert_eq!(mode.to_lowercase(), "wal");
    conn
}

/// A small deterministic PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
    pub fn word(&mut self) -> String {
        const WORDS: [&str; 8] = [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
        ];
        format!(
            "{}-{}",
            WORDS[self.below(WORDS.len() as u64) as usize],
            self.below(100_000)
        )
    }
}

/// An application writing to a WAL database: every `commit_*` method is
/// exactly one committed SQLite transaction that changes the database (each
/// bumps a counter in `meta`), so each gets exactly one walstream txid.
pub struct App {
    pub conn: Connection,
    pub path: PathBuf,
    pub rng: Rng,
    /// Transactions committed through this `App` (including the set-up one).
    pub commits: u64,
    extra_tables: u32,
}

/// Size of the "big" blobs the workload writes.
pub const BLOB_SIZE: usize = 100 * 1024;

impl App {
    /// Creates the database (WAL mode) with its schema and a few rows, in one
    /// transaction.
    pub fn create(path: &Path) -> App {
        Self::create_seeded(path, 0x5eed)
    }

    pub fn create_seeded(path: &Path, seed: u64) -> App {
        assert!(!path.exists(), "{} already exists", path.display());
        let conn = open_app_connection(path);
        let mut app = App {
            conn,
            path: path.to_path_buf(),
            rng: Rng::new(seed),
            commits: 0,
            extra_tables: 0,
        };
        app.tx(|tx, rng| {
            tx.execute_batch(
                "CREATE TABLE meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);
                 INSERT INTO meta VALUES ('commits', 0);
                 CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER,
                                    price REAL, note TEXT);
                 CREATE INDEX items_name ON items(name);
                 CREATE TABLE blobs(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, data BLOB);",
            )?;
            for _ in 0..20 {
                insert_item(tx, rng)?;
            }
            Ok(())
        });
        app
    }

    /// Opens an existing database created by [`App::create`].
    pub fn open(path: &Path, seed: u64) -> App {
        let conn = open_app_connection(path);
        let extra: u32 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type='table' AND name LIKE 'extra_%'",
                [],
                |r| r.get(0),
            )
            .expect("counting extra tables");
        App {
            conn,
            path: path.to_path_buf(),
            rng: Rng::new(seed),
            commits: 0,
            extra_tables: extra,
        }
    }

    /// Runs `f` in one IMMEDIATE transaction that also bumps the commit
    /// counter, and commits it.
    pub fn tx<F>(&mut self, f: F)
    where
        F: FnOnce(&rusqlite::Transaction<'_>, &mut Rng) -> rusqlite::Result<()>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("BEGIN IMMEDIATE");
        f(&tx, &mut self.rng).expect("application transaction");
        tx.execute("UPDATE meta SET v = v + 1 WHERE k = 'commits'", [])
            .expect("bumping the commit counter");
        tx.commit().expect("COMMIT");
        self.commits += 1;
    }

    /// One row in `items`.
    pub fn commit_insert_one(&mut self) {
        self.tx(|tx, rng| insert_item(tx, rng).map(|_| ()));
    }

    /// `n` rows in `items`, one transaction.
    pub fn commit_insert_many(&mut self, n: usize) {
        self.tx(|tx, rng| {
            for _ in 0..n {
                insert_item(tx, rng)?;
            }
            Ok(())
        });
    }

    /// One blob of `size` random (incompressible) bytes.
    pub fn commit_blob(&mut self, tag: &str, size: usize) {
        self.tx(|tx, rng| {
            tx.execute(
                "INSERT INTO blobs(tag, data) VALUES (?1, ?2)",
                rusqlite::params![tag, rng.bytes(size)],
            )?;
            Ok(())
        });
    }

    /// `n` blobs of `size` bytes in one transaction (large enough values make
    /// SQLite spill its page cache into the WAL before the commit).
    pub fn commit_blobs(&mut self, tag: &str, n: usize, size: usize) {
        self.tx(|tx, rng| {
            for _ in 0..n {
                tx.execute(
                    "INSERT INTO blobs(tag, data) VALUES (?1, ?2)",
                    rusqlite::params![tag, rng.bytes(size)],
                )?;
            }
            Ok(())
        });
    }

    /// Deletes every blob tagged `tag`.
    pub fn commit_delete_blobs(&mut self, tag: &str) {
        self.tx(|tx, _| {
            tx.execute("DELETE FROM blobs WHERE tag = ?1", [tag])?;
            Ok(())
        });
    }

    /// `VACUUM` (one transaction; shrinks the file when pages are free).
    pub fn vacuum(&mut self) {
        self.conn.execute_batch("VACUUM").expect("VACUUM");
        self.commits += 1;
    }

    /// One transaction of a random kind: single or multi-row inserts, a big
    /// blob, updates, deletes, a blob rewrite, a mix, or a schema change.
    pub fn commit_random(&mut self) -> &'static str {
        let kind = self.rng.below(100);
        match kind {
            0..=24 => {
                self.commit_insert_one();
                "insert one"
            }
            25..=44 => {
                let n = self.rng.range(5, 60) as usize;
                self.commit_insert_many(n);
                "insert many"
            }
            45..=54 => {
                self.commit_blob("random", BLOB_SIZE);
                "blob"
            }
            55..=69 => {
                self.tx(|tx, rng| {
                    let m = rng.range(2, 9) as i64;
                    let r = rng.below(m as u64) as i64;
                    tx.execute(
                        "UPDATE items SET qty = coalesce(qty, 0) + ?1, note = ?2 WHERE id % ?3 = ?4",
                        rusqlite::params![rng.range(1, 50) as i64, rng.word(), m, r],
                    )?;
                    Ok(())
                });
                "update"
            }
            70..=79 => {
                self.tx(|tx, rng| {
                    let m = rng.range(5, 15) as i64;
                    let r = rng.below(m as u64) as i64;
                    tx.execute(
                        "DELETE FROM items WHERE id % ?1 = ?2",
                        rusqlite::params![m, r],
                    )?;
                    Ok(())
                });
                "delete"
            }
            80..=86 => {
                self.tx(|tx, _| {
                    tx.execute(
                        "DELETE FROM blobs WHERE id = (SELECT min(id) FROM blobs WHERE tag = 'random')",
                        [],
                    )?;
                    Ok(())
                });
                "delete blob"
            }
            87..=91 => {
                self.tx(|tx, rng| {
                    tx.execute(
                        "UPDATE blobs SET data = ?1 WHERE id = (SELECT max(id) FROM blobs WHERE tag = 'random')",
                        [rng.bytes(BLOB_SIZE)],
                    )?;
                    Ok(())
                });
                "rewrite blob"
            }
            92..=97 => {
                self.tx(|tx, rng| {
                    for _ in 0..rng.range(1, 10) {
                        insert_item(tx, rng)?;
                    }
                    tx.execute(
                        "UPDATE items SET price = price * 1.5 WHERE id % 3 = ?1",
                        [rng.below(3) as i64],
                    )?;
                    tx.execute(
                        "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT 2)",
                        [],
                    )
                    .map(|_| ())
                });
                "mixed"
            }
            _ => {
                self.extra_tables += 1;
                let name = format!("extra_{}", self.extra_tables);
                self.tx(|tx, rng| {
                    tx.execute_batch(&format!(
                        "CREATE TABLE {name}(a INTEGER, b TEXT); CREATE INDEX {name}_a ON {name}(a);"
                    ))?;
                    for i in 0..rng.range(1, 30) {
                        tx.execute(
                            &format!("INSERT INTO {name} VALUES (?1, ?2)"),
                            rusqlite::params![i as i64, rng.word()],
                        )?;
                    }
                    Ok(())
                });
                "schema change"
            }
        }
    }

    /// Digest of the whole committed content, as this connection sees it.
    pub fn digest(&self) -> Digest {
        digest_conn(&self.conn)
    }
}

fn insert_item(tx: &rusqlite::Transaction<'_>, rng: &mut Rng) -> rusqlite::Result<i64> {
    let note: Option<String> = if rng.below(3) == 0 {
        None
    } else {
        Some(rng.word().repeat(rng.range(1, 20) as usize))
    };
    tx.execute(
        "INSERT INTO items(name, qty, price, note) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![
            rng.word(),
            rng.below(1000) as i64,
            rng.below(1_000_000) as f64 / 100.0,
            note
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

// ---------------------------------------------------------------------------
// Content digests
// ---------------------------------------------------------------------------

/// A digest of a database's entire logical content: its schema, and every row
/// of every table (rowid order, or sorted when a table has no rowid), with
/// value types. Equal digests mean equal content.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    pub hash: u64,
    /// (table, row count), to make a mismatch readable.
    pub tables: Vec<(String, u64)>,
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({:016x}, ", self.hash)?;
        f.debug_map()
            .entries(self.tables.iter().map(|(t, n)| (t, n)))
            .finish()?;
        write!(f, ")")
    }
}

fn feed_value(out: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => out.push(0),
        ValueRef::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Real(r) => {
            out.push(2);
            out.extend_from_slice(&r.to_bits().to_le_bytes());
        }
        ValueRef::Text(t) => {
            out.push(3);
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            out.extend_from_slice(t);
        }
        ValueRef::Blob(b) => {
            out.push(4);
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Digest of everything `conn` sees.
pub fn digest_conn(conn: &Connection) -> Digest {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = Vec::new();
    let mut tables = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")
            .expect("reading the schema");
        let mut rows = stmt.query([]).expect("reading the schema");
        while let Some(row) = rows.next().expect("schema row") {
            buf.clear();
            for i in 0..4 {
                feed_value(&mut buf, row.get_ref(i).expect("schema column"));
            }
            hasher.update(&buf);
        }
    }
    let names: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .expect("listing tables");
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .expect("listing tables")
            .collect::<Result<Vec<_>, _>>()
            .expect("table names");
        names
    };
    for name in names {
        hasher.update(b"\xfftable\xff");
        hasher.update(name.as_bytes());
        let q = quote_ident(&name);
        let mut count = 0u64;
        match conn.prepare(&format!("SELECT * FROM {q} ORDER BY rowid")) {
            Ok(mut stmt) => {
                let n = stmt.column_count();
                let mut rows = stmt.query([]).expect("reading rows");
                while let Some(row) = rows.next().expect("row") {
                    buf.clear();
                    for i in 0..n {
                        feed_value(&mut buf, row.get_ref(i).expect("column"));
                    }
                    hasher.update(&(buf.len() as u64).to_le_bytes());
                    hasher.update(&buf);
                    count += 1;
                }
            }
            Err(_) => {
                // WITHOUT ROWID: sort the encoded rows.
                let mut stmt = conn
                    .prepare(&format!("SELECT * FROM {q}"))
                    .expect("reading rows");
                let n = stmt.column_count();
                let mut all = Vec::new();
                let mut rows = stmt.query([]).expect("reading rows");
                while let Some(row) = rows.next().expect("row") {
                    let mut b = Vec::new();
                    for i in 0..n {
                        feed_value(&mut b, row.get_ref(i).expect("column"));
                    }
                    all.push(b);
                }
                all.sort();
                for b in &all {
                    hasher.update(&(b.len() as u64).to_le_bytes());
                    hasher.update(b);
                }
                count = all.len() as u64;
            }
        }
        tables.push((name, count));
    }
    Digest {
        hash: hasher.digest(),
        tables,
    }
}

/// Names of the tables (sorted).
pub fn table_names(conn: &Connection) -> Vec<String> {
    conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("listing tables")
}

/// (digest, row count) of the rows a query returns, in its order.
pub fn digest_query(conn: &Connection, sql: &str) -> (u64, u64) {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = stmt.column_count();
    let mut rows = stmt.query([]).expect("query");
    let mut buf = Vec::new();
    let mut count = 0;
    while let Some(row) = rows.next().expect("row") {
        buf.clear();
        for i in 0..n {
            feed_value(&mut buf, row.get_ref(i).expect("column"));
        }
        hasher.update(&(buf.len() as u64).to_le_bytes());
        hasher.update(&buf);
        count += 1;
    }
    (hasher.digest(), count)
}

/// Opens a database file read-only without creating or reading any -wal/-shm
/// beside it (the file alone, as a restore publishes it).
pub fn open_file_readonly(path: &Path) -> Connection {
    let uri = format!("file:{}?immutable=1", path.display());
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Digest of a database file (the file alone).
pub fn digest_file(path: &Path) -> Digest {
    digest_conn(&open_file_readonly(path))
}

/// Panics unless `PRAGMA integrity_check` says ok.
#[track_caller]
pub fn assert_integrity(path: &Path) {
    let conn = open_file_readonly(path);
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("integrity_check");
    assert_eq!(
        rows,
        vec!["ok".to_string()],
        "{} fails integrity_check",
        path.display()
    );
}

// ---------------------------------------------------------------------------
// Restore helpers
// ---------------------------------------------------------------------------

/// `walstream restore -o OUT [extra...] REPLICA`.
pub fn restore(replica: &str, out: &Path, extra: &[&str]) -> Output {
    restore_env(replica, out, extra, &[])
}

/// [`restore`] with extra environment variables (encryption keys).
pub fn restore_env(replica: &str, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args: Vec<OsString> = vec!["restore".into(), "-o".into(), out.into()];
    args.extend(extra.iter().map(OsString::from));
    args.push(replica.into());
    walstream_env(args, env)
}

/// Every object in a replica (local or S3) with its bytes, read through the
/// library's store, sorted by key.
pub fn replica_objects(replica: &str) -> Vec<(String, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let url = walstream::ReplicaUrl::parse(replica).expect("a replica URL");
    let store = url.open().expect("opening the replica");
    rt.block_on(async {
        let mut out = Vec::new();
        for meta in store.list("").await.expect("listing the replica") {
            let bytes = store.get(&meta.key).await.expect("reading an object");
            out.push((meta.key, bytes.to_vec()));
        }
        out.sort();
        out
    })
}

/// Whether `needle` occurs anywhere in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Restores and returns the digest of the result, asserting success.
#[track_caller]
pub fn restore_digest(replica: &str, out: &Path, extra: &[&str]) -> Digest {
    let o = restore(replica, out, extra);
    o.assert_success();
    assert!(
        out.is_file(),
        "restore succeeded but {} is missing:\n{o}",
        out.display()
    );
    digest_file(out)
}

/// Names in `out`'s directory that a restore to `out` may leave: `out` itself,
/// its -wal/-shm/-journal, and hidden temporaries `.NAME.walstream-restore*`.
pub fn restore_leftovers(out: &Path) -> Vec<String> {
    let name = out
        .file_name()
        .expect("output has a file name")
        .to_string_lossy()
        .into_owned();
    let dir = out.parent().expect("output has a directory");
    let related = |n: &str| {
        n == name
            || n == format!("{name}-wal")
            || n == format!("{name}-shm")
            || n == format!("{name}-journal")
            || n.starts_with(&format!(".{name}.walstream-restore"))
    };
    dir_names(dir).into_iter().filter(|n| related(n)).collect()
}

/// Sorted names in a directory (empty when it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Every file under `dir` (relative path, size), sorted.
pub fn tree(dir: &Path) -> Vec<(String, u64)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                out.push((rel.to_string_lossy().into_owned(), meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Copies a directory tree.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("creating the copy");
    for e in fs::read_dir(src).expect("reading the source").flatten() {
        let to = dst.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).expect("copying a file");
        }
    }
}

// ---------------------------------------------------------------------------
// Listing helpers
// ---------------------------------------------------------------------------

/// `walstream list --json REPLICA`, parsed.
#[track_caller]
pub fn list_json(replica: &str) -> Value {
    let out = walstream(["list", "--json", replica]);
    out.assert_success();
    out.json()
}

/// One object of `list --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub lineage: String,
    pub min_txid: u64,
    pub max_txid: u64,
    pub time: String,
    pub size: u64,
}

fn listed(v: &Value) -> Listed {
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} is not a string in {v}"))
            .to_string()
    };
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not an integer in {v}"))
    };
    Listed {
        key: s("key"),
        lineage: s("lineage"),
        min_txid: n("min_txid"),
        max_txid: n("max_txid"),
        time: s("time"),
        size: n("size"),
    }
}

/// The snapshots of a `list --json` document.
pub fn snapshots(list: &Value) -> Vec<Listed> {
    list["snapshots"]
        .as_array()
        .expect("snapshots array")
        .iter()
        .map(listed)
        .collect()
}

/// The segments of a `list --json` document.
pub fn segments(list: &Value) -> Vec<Listed> {
    list["segments"]
        .as_array()
        .expect("segments array")
        .iter()
        .map(listed)
        .collect()
}

/// The lineages that objects of a `list --json` document belong to.
pub fn lineages(list: &Value) -> std::collections::BTreeSet<String> {
    snapshots(list)
        .into_iter()
        .chain(segments(list))
        .map(|o| o.lineage)
        .collect()
}

/// (min_txid, max_txid) of the restorable window, `None` when empty.
pub fn window(list: &Value) -> Option<(u64, u64)> {
    let w = &list["window"];
    if w.is_null() {
        return None;
    }
    Some((
        w["min_txid"].as_u64().expect("window.min_txid"),
        w["max_txid"].as_u64().expect("window.max_txid"),
    ))
}

// ---------------------------------------------------------------------------
// Times and damage
// ---------------------------------------------------------------------------

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T08:30:00.250Z`.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Inverts one byte of a file in place.
pub fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the file to damage");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("reading the byte");
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).expect("writing the byte");
    f.sync_all().expect("sync");
}

/// Shortens a file to `len` bytes.
pub fn truncate_file(path: &Path, len: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("opening the file to truncate");
    f.set_len(len).expect("truncating");
}

/// Header length of a walstream object (big-endian u32 at offset 28).
pub fn object_header_len(path: &Path) -> u64 {
    let f = File::open(path).expect("opening the object");
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, 28)
        .expect("reading the header length");
    u64::from(u32::from_be_bytes(b))
}

/// Writes `bytes` to a new file.
pub fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).expect("creating a file");
    f.write_all(bytes).expect("writing a file");
}

// ---------------------------------------------------------------------------
// An application committing in the background
// ---------------------------------------------------------------------------

/// Runs [`App::commit_random`] (or a given step) in a loop on another thread,
/// pausing `pause` between commits, until [`AppWriter::stop`].
pub struct AppWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    committed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handle: Option<thread::JoinHandle<App>>,
}

impl AppWriter {
    pub fn start(app: App, pause: Duration) -> AppWriter {
        AppWriter::start_with(app, pause, |app| {
            app.commit_random();
        })
    }

    /// `step` must commit exactly one transaction.
    pub fn start_with<F>(mut app: App, pause: Duration, mut step: F) -> AppWriter
    where
        F: FnMut(&mut App) + Send + 'static,
    {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (stop2, committed2) = (Arc::clone(&stop), Arc::clone(&committed));
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                step(&mut app);
                committed2.fetch_add(1, Ordering::SeqCst);
                if !pause.is_zero() {
                    thread::sleep(pause);
                }
            }
            app
        });
        AppWriter {
            stop,
            committed,
            handle: Some(handle),
        }
    }

    /// Transactions committed so far by this writer.
    pub fn committed(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` transactions were committed.
    #[track_caller]
    pub fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + SHIP_TIMEOUT;
        while self.committed() < n {
            assert!(
                Instant::now() < deadline,
                "the application committed only {} of {n} transactions",
                self.committed()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the loop and gives the application back.
    pub fn stop(mut self) -> App {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .expect("writer thread")
            .join()
            .expect("the application thread panicked")
    }
}

impl Drop for AppWriter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The S3 server the tests use.
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
}

impl S3Env {
    /// A replica URL under a fresh random prefix below `name`.
    pub fn fresh_replica(&self, name: &str) -> String {
        format!(
            "s3://{}/{name}/{:016x}?endpoint={}&force-path-style=true",
            self.bucket,
            rand::random::<u64>(),
            self.endpoint
        )
    }
}

/// The test server from the environment; `None` (skip) outside CI when there is none.
pub fn s3_env() -> Option<S3Env> {
    let endpoint = std::env::var("WALSTREAM_TEST_S3_ENDPOINT").unwrap_or_default();
    if endpoint.is_empty() {
        let ci = std::env::var("CI").unwrap_or_default();
        if ci.eq_ignore_ascii_case("true") || ci == "1" {
            panic!(
                "CI=true but WALSTREAM_TEST_S3_ENDPOINT is not set: the S3 tests must run in CI. \
                 Run scripts/test.sh, which starts SeaweedFS with scripts/seaweedfs.sh and \
                 exports its settings"
            );
        }
        eprintln!(
            "SKIPPED: WALSTREAM_TEST_S3_ENDPOINT is not set, so this S3 test does not run. \
             Run scripts/test.sh, or `scripts/seaweedfs.sh start && . .tools/seaweedfs.env` \
             before cargo test"
        );
        return None;
    }
    let bucket = std::env::var("WALSTREAM_TEST_S3_BUCKET")
        .ok()
        .filter(|b| !b.is_empty())
        .expect("WALSTREAM_TEST_S3_ENDPOINT is set, so WALSTREAM_TEST_S3_BUCKET must be too");
    Some(S3Env { endpoint, bucket })
}
