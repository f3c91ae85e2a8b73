//! One replicator per database: an exclusive advisory lock on a file in the
//! database's state directory (`.<name>-walstream/` beside it). walstream writes
//! nothing into the database itself; this directory holds only the lock and the
//! control socket of the running process.

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
