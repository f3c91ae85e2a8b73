//! One replicator per database: an exclusive advisory lock on a file in the
//! database's state directory (`.<name>-walstream/` beside it). walstream writes
//! nothing into the database itself; this directory holds the lock, the
//! control socket of the running process, the owner id of the replica leases,
//! and transient files (snapshot and compaction spools, verification scratch).
//! With several replicas each keeps its transient files in a directory of its
//! own, `replicas/<name>/` (see [`work_dir`]); one process still replicates
//! the database to all of them under the one lock.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::CaptureError;

/// The state directory of a database.
pub fn state_dir(db_path: &Path) -> PathBuf {
    let name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    db_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(format!(".{name}-walstream"))
}

/// Where the replica `name` of a database keeps its transient files: the
/// state directory itself when the database has one replica (the layout of
/// single-replica versions), else `replicas/<name>/` in it.
pub fn work_dir(db_path: &Path, name: &str, replicas: usize) -> PathBuf {
    match replicas {
        0 | 1 => state_dir(db_path),
        _ => state_dir(db_path).join("replicas").join(name),
    }
}

/// Removes the transient files a killed process left in `dir` (snapshot and
/// compaction spools, segment logs). Only the holder of the database's lock
/// writes them, and each replica only in its own directory.
pub(crate) fn remove_stale_spools(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let spool = ["snapshot-", "compact-", "segment-"]
            .iter()
            .any(|k| name.starts_with(k))
            && name.ends_with(".tmp");
        let log = name.starts_with("compact-") && name.ends_with(".log");
        if spool || log {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Held for as long as a replication of the database runs.
#[derive(Debug)]
pub struct ReplicationLock {
    _file: File,
    pub path: PathBuf,
}

impl ReplicationLock {
    pub fn acquire(db_path: &Path) -> Result<ReplicationLock, CaptureError> {
        if !db_path.exists() {
            return Err(CaptureError::DatabaseMissing {
                path: db_path.to_path_buf(),
            });
        }
        let dir = state_dir(db_path);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaptureError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(ReplicationLock { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(CaptureError::AlreadyRunning {
                path: db_path.to_path_buf(),
                lock: path,
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(CaptureError::Io { path, source }),
        }
    }

    /// True when some process holds the lock of `db_path` right now.
    pub fn is_held(db_path: &Path) -> bool {
        let path = state_dir(db_path).join("lock");
        match OpenOptions::new().write(true).open(&path) {
            Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }
}
