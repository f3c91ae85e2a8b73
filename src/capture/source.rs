//! The replicator's own connections to the source database: the pin (a read
//! transaction that keeps the WAL from being reset) and a lock connection used only
//! to hold SQLite's write lock for a few milliseconds while nothing may change.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, FileControl, OpenFlags};

use crate::error::CaptureError;

/// SQLite 3.51.3 fixed a WAL-reset race that corrupts databases with exactly the
/// application-plus-replicator topology.
pub const MIN_SQLITE_VERSION: i32 = 3_051_003;

/// Refuses to run on a linked SQLite older than [`MIN_SQLITE_VERSION`].
pub fn check_sqlite_version() -> Result<(), CaptureError> {
    let v = rusqlite::version_number();
    if v < MIN_SQLITE_VERSION {
        return Err(CaptureError::SqliteTooOld {
            found: rusqlite::version().to_string(),
        });
    }
    Ok(())
}

/// File identity, to notice a database or WAL replaced behind our back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

pub fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The identity of an existing database file (walstream never creates one).
fn database_id(path: &Path) -> Result<FileId, CaptureError> {
    match file_id(path) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(CaptureError::DatabaseMissing {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(CaptureError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// The database file descriptors of one database's replications in this
/// process. POSIX drops every lock a process holds on a file when *any* of
/// its descriptors of that file is closed: a replication closing its own read
/// handle would silently release the SQLite locks the other replications of
/// the same database hold (their pins), and the application's last connection
/// could then checkpoint and delete the WAL under them. So the handles are
/// shared, and one is closed only once no replication uses it and the path
/// names another file (the database was replaced).
#[derive(Debug, Default)]
pub struct DbFiles {
    open: std::sync::Mutex<Vec<(FileId, Arc<File>)>>,
}

impl DbFiles {
    /// A read handle on the file `path` names now.
    pub fn open(&self, path: &Path) -> std::io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = file_id(path)? {
            if let Some((_, f)) = open.iter().find(|(i, _)| *i == id) {
                return Ok(Arc::clone(f));
            }
        }
        let file = Arc::new(File::open(path)?);
        let m = file.metadata()?;
        let id = FileId {
            dev: m.dev(),
            ino: m.ino(),
        };
        open.retain(|(i, f)| *i == id || Arc::strong_count(f) > 1);
        open.push((id, Arc::clone(&file)));
        Ok(file)
    }
}

/// The two connections swap roles: one holds the pin, the other takes the
/// write lock and runs checkpoints. Moving the pin forward takes a read
/// transaction on the free connection before the old one ends (a *roll*), so
/// the WAL is never left unpinned and the application's writers are not held.
#[derive(Debug)]
pub struct Source {
    pub db_path: PathBuf,
    pub wal_path: PathBuf,
    pub db_id: FileId,
    conns: [Connection; 2],
    /// Which of `conns` has the pin role.
    pin_ix: usize,
    pinned: bool,
    locked: bool,
    /// When the writers were last held, and for how long in all since
    /// [`Source::take_held`] (how long the application waited is what a
    /// checkpoint costs it).
    locked_at: Option<Instant>,
    held: Duration,
    /// The other connection holds a newer pin while the old one is kept.
    rolling: bool,
    busy_timeout: Duration,
    /// Read handle on the database file, declared last so it is let go after
    /// the connections. POSIX drops every lock a process holds on a file when
    /// *any* descriptor of that file is closed: opening and closing the
    /// database file anew would silently release SQLite's own locks, and the
    /// application's last connection could then checkpoint and delete the WAL
    /// under the pin. Shared through [`DbFiles`], which closes it.
    db_file: Arc<File>,
}

/// How often `lock_writers` tries for the write lock. SQLite's own busy
/// handler sleeps 1 ms, then longer, between tries, and almost never finds the
/// moment between two transactions of an application committing back to back;
/// meanwhile the WAL grows (docs/benchmarks.md, throughput at FULL).
const LOCK_POLL: Duration = Duration::from_micros(50);

/// How long `lock_writers` tries without pausing.
const LOCK_SPIN: Duration = Duration::from_millis(5);

impl Source {
    /// Opens both connections and checks the database is usable. `files`
    /// holds the database file handles of every replication of this database.
    pub fn open(
        db_path: &Path,
        busy_timeout: Duration,
        files: &DbFiles,
    ) -> Result<Source, CaptureError> {
        check_sqlite_version()?;
        let db_id = database_id(db_path)?;
        // Opened first, so a file walstream may not read is reported as such
        // rather than as SQLite's "unable to open database file".
        let db_file = files
            .open(db_path)
            .map_err(|source| CaptureError::DatabaseAccess {
                path: db_path.to_path_buf(),
                source,
            })?;
        let first = open_connection(db_path, busy_timeout)?;
        check_database(db_path, &first)?;
        let second = open_connection(db_path, busy_timeout)?;
        small_cache(db_path, &first)?;
        small_cache(db_path, &second)?;
        Ok(Source {
            db_path: db_path.to_path_buf(),
            wal_path: wal_path(db_path),
            db_id,
            conns: [first, second],
            pin_ix: 0,
            pinned: false,
            locked: false,
            locked_at: None,
            held: Duration::ZERO,
            rolling: false,
            busy_timeout,
            db_file,
        })
    }

    fn sql_err(&self, source: rusqlite::Error) -> CaptureError {
        CaptureError::Sqlite {
            path: self.db_path.clone(),
            source,
        }
    }

    fn pin_conn(&self) -> &Connection {
        &self.conns[self.pin_ix]
    }

    fn lock_conn(&self) -> &Connection {
        &self.conns[1 - self.pin_ix]
    }

    /// Ends the transaction of connection `ix` with `sql`.
    fn end(&self, ix: usize, sql: &str) -> Result<(), CaptureError> {
        self.conns[ix]
            .execute_batch(sql)
            .map_err(|e| self.sql_err(e))
    }

    /// The database file, for reading pages directly (never open it anew).
    pub fn db_file(&self) -> Arc<File> {
        Arc::clone(&self.db_file)
    }

    /// Starts (or restarts) the pin read transaction.
    pub fn pin(&mut self) -> Result<(), CaptureError> {
        self.unpin()?;
        begin_read(self.pin_conn()).map_err(|e| self.sql_err(e))?;
        self.pinned = true;
        Ok(())
    }

    pub fn unpin(&mut self) -> Result<(), CaptureError> {
        self.cancel_roll()?;
        if self.pinned {
            self.pinned = false;
            self.end(self.pin_ix, "COMMIT")?;
        }
        Ok(())
    }

    /// First half of moving the pin to the WAL's end without holding writers:
    /// a second read transaction starts at the end while the pin is kept.
    /// Returns false (and does nothing) when there is no pin to keep, or the
    /// write lock is held. The caller ships every committed frame before
    /// [`Source::finish_roll`]: from then on the new pin alone keeps a WAL
    /// restart from dropping anything unshipped, exactly as the old one did.
    pub fn begin_roll(&mut self) -> Result<bool, CaptureError> {
        if !self.pinned || self.locked || self.rolling {
            return Ok(false);
        }
        begin_read(self.lock_conn()).map_err(|e| self.sql_err(e))?;
        self.rolling = true;
        Ok(true)
    }

    /// Second half: the old pin ends and the new one takes the pin role.
    pub fn finish_roll(&mut self) -> Result<(), CaptureError> {
        if !self.rolling {
            return Ok(());
        }
        self.rolling = false;
        let old = self.pin_ix;
        self.pin_ix = 1 - old;
        self.end(old, "COMMIT")
    }

    /// Drops the newer pin of a roll and keeps the old one.
    pub fn cancel_roll(&mut self) -> Result<(), CaptureError> {
        if self.rolling {
            self.rolling = false;
            self.end(1 - self.pin_ix, "COMMIT")?;
        }
        Ok(())
    }

    /// Takes SQLite's write lock (`BEGIN IMMEDIATE` writes nothing), trying
    /// back to back for [`LOCK_SPIN`], then every [`LOCK_POLL`] or a little
    /// more. Returns false when the application held it for
    /// longer than the busy timeout.
    pub fn lock_writers(&mut self) -> Result<bool, CaptureError> {
        self.cancel_roll()?;
        let conn = self.lock_conn();
        conn.busy_timeout(Duration::ZERO)
            .map_err(|e| self.sql_err(e))?;
        let r = poll_write_lock(conn, self.busy_timeout);
        let restored = conn.busy_timeout(self.busy_timeout);
        let got = r.map_err(|e| self.sql_err(e))?;
        restored.map_err(|e| self.sql_err(e))?;
        self.locked = got;
        self.locked_at = got.then(Instant::now);
        Ok(got)
    }

    /// How long the writers were held since the last call.
    pub fn take_held(&mut self) -> Duration {
        std::mem::take(&mut self.held)
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Whether the pin's read transaction is open.
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    pub fn unlock_writers(&mut self) -> Result<(), CaptureError> {
        if self.locked {
            self.locked = false;
            let r = self.end(1 - self.pin_ix, "ROLLBACK");
            if let Some(at) = self.locked_at.take() {
                self.held += at.elapsed();
            }
            r?;
        }
        Ok(())
    }

    /// PASSIVE checkpoint on the pin connection (which must be unpinned): copies
    /// what it can without waiting for anyone. Returns (WAL frames, frames
    /// checkpointed).
    pub fn checkpoint_passive(&mut self) -> Result<(i64, i64), CaptureError> {
        self.cancel_roll()?;
        passive_checkpoint(self.pin_conn()).map_err(|e| self.sql_err(e))
    }

    /// PASSIVE checkpoint on the lock connection (which must not hold the lock)
    /// while the pin stays: it copies frames up to the pin and no further.
    pub fn checkpoint_behind_pin(&mut self) -> Result<(i64, i64), CaptureError> {
        self.cancel_roll()?;
        passive_checkpoint(self.lock_conn()).map_err(|e| self.sql_err(e))
    }

    /// True when the database path now names a different file than the one open.
    pub fn replaced(&self) -> Result<bool, CaptureError> {
        let now = file_id(&self.db_path).map_err(|source| CaptureError::Io {
            path: self.db_path.clone(),
            source,
        })?;
        Ok(now != Some(self.db_id))
    }

    /// Page size and journal mode as SQLite reports them now.
    pub fn page_size(&self) -> Result<u32, CaptureError> {
        self.pin_conn()
            .query_row("PRAGMA page_size", [], |r| r.get::<_, u32>(0))
            .map_err(|e| self.sql_err(e))
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // Errors here only mean the transactions are already gone; closing the
        // connections ends them either way.
        let _ = self.unlock_writers();
        let _ = self.cancel_roll();
        let _ = self.unpin();
    }
}

fn begin_read(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN DEFERRED; SELECT 1 FROM sqlite_schema LIMIT 1;")
}

/// `BEGIN IMMEDIATE` on `conn` (whose busy handler is off) until it succeeds
/// or `timeout` passed: true when the write lock is held.
fn poll_write_lock(conn: &Connection, timeout: Duration) -> rusqlite::Result<bool> {
    let start = Instant::now();
    let (deadline, spin_until) = (start + timeout, start + LOCK_SPIN);
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(false);
                }
                // Back to back at first: a sleep between tries can fall into
                // step with the application's commits and keep missing the
                // moment between them. Later with random pauses, to spare CPU.
                if now >= spin_until {
                    let us = rand::random_range(
                        LOCK_POLL.as_micros() as u64..4 * LOCK_POLL.as_micros() as u64,
                    );
                    std::thread::sleep(Duration::from_micros(us));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
}

fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, CaptureError> {
    let err = |source| CaptureError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    lean(&conn).map_err(err)?;
    conn.busy_timeout(busy_timeout).map_err(err)?;
    // Never checkpoint on our own schedule or on close: only after shipping.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(err)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(err)?;
    let mut persist: std::ffi::c_int = 1;
    conn.file_control(Some("main"), FileControl::PersistWal(&mut persist))
        .map_err(err)?;
    Ok(conn)
}

/// These connections only hold a read transaction or the write lock and run
/// checkpoints; pages are read from the file directly. SQLite's per-connection
/// lookaside memory and a growing page cache would cost tens of KB for each
/// replicated database, for nothing (docs/benchmarks.md, many databases).
fn lean(conn: &Connection) -> rusqlite::Result<()> {
    // SAFETY: the handle is valid while `conn` lives, and lookaside may be
    // reconfigured while none of it is in use, as right after opening.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "could not turn lookaside memory off");
    }
    Ok(())
}

/// Caps the page cache (after `check_database`: setting it reads the schema,
/// which must fail as "not a database" there, not here).
fn small_cache(path: &Path, conn: &Connection) -> Result<(), CaptureError> {
    conn.pragma_update(None, "cache_size", 2)
        .map_err(|source| CaptureError::Sqlite {
            path: path.to_path_buf(),
            source,
        })
}

fn check_database(path: &Path, conn: &Connection) -> Result<(), CaptureError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|source| match &source {
            rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::NotADatabase => {
                CaptureError::NotADatabase {
                    path: path.to_path_buf(),
                }
            }
            rusqlite::Error::SqliteFailure(e, _)
                if e.extended_code == rusqlite::ffi::SQLITE_READONLY_DIRECTORY =>
            {
                CaptureError::DirectoryNotWritable {
                    path: path.to_path_buf(),
                    dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                }
            }
            _ => CaptureError::Sqlite {
                path: path.to_path_buf(),
                source,
            },
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(CaptureError::NotWalMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Switches the database at `path` to WAL mode when it is in another journal
/// mode (what `replicate --enable-wal` asks for; the setting persists in the
/// file). Returns the mode it was switched from, or `None` when it already
/// was in WAL mode. Never creates the database.
pub fn enable_wal(path: &Path, busy_timeout: Duration) -> Result<Option<String>, CaptureError> {
    database_id(path)?;
    let conn = open_connection(path, busy_timeout)?;
    let from = match check_database(path, &conn) {
        Ok(()) => return Ok(None),
        Err(CaptureError::NotWalMode { mode, .. }) => mode,
        Err(e) => return Err(e),
    };
    let now: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|source| CaptureError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
    if !now.eq_ignore_ascii_case("wal") {
        return Err(CaptureError::EnableWal {
            path: path.to_path_buf(),
            mode: now,
        });
    }
    Ok(Some(from))
}
