//! Error types of the library. Each names the file, object or txid involved and,
//! where the user can act, what to do.

use std::path::PathBuf;

use crate::format::FormatError;
use crate::lease::LeaseError;
use crate::store::StoreError;
use crate::wal::WalError;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "linked SQLite {found} is too old: walstream needs 3.51.3 or newer (older versions can corrupt \
         a database when two connections checkpoint around a WAL reset)"
    )]
    SqliteTooOld { found: String },
    #[error(
        "database {path} does not exist: check the path (walstream never creates the database)"
    )]
    DatabaseMissing { path: PathBuf },
    #[error(
        "cannot read database {path}: {source}: walstream needs read and write access to the \
         database and write access to its directory; run it as the application's user"
    )]
    DatabaseAccess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "directory {dir} of database {path} is not writable (permission denied): SQLite must create \
         the -wal and -shm files there and walstream its state directory; give walstream's user \
         write access to it"
    )]
    DirectoryNotWritable { path: PathBuf, dir: PathBuf },
    #[error("{path} is not a SQLite database (file header is not SQLite's)")]
    NotADatabase { path: PathBuf },
    #[error(
        "database {path} is in journal_mode={mode}, but walstream replicates WAL databases only: \
         run `PRAGMA journal_mode=WAL;` on it once (the setting persists), then start walstream again, \
         or let `walstream replicate --enable-wal` switch it"
    )]
    NotWalMode { path: PathBuf, mode: String },
    #[error(
        "could not switch database {path} to WAL mode (it is still in journal_mode={mode}): \
         another connection may be using it in rollback-journal mode; close it and try again"
    )]
    EnableWal { path: PathBuf, mode: String },
    #[error(
        "another walstream process is already replicating {path} (lock {lock} is held): stop it first, \
         or use `walstream snapshot`/`status`, which talk to the running process"
    )]
    AlreadyRunning { path: PathBuf, lock: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite error on {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object {key}: {source}")]
    Format {
        key: String,
        #[source]
        source: FormatError,
    },
    #[error(
        "object {key} already exists in the replica with different content: is another walstream \
         writing to the same replica? Each database needs its own replica location"
    )]
    Conflict { key: String },
    #[error(
        "the replica's newest object is encrypted (key {key_id}) but encryption is not \
         configured: set WALSTREAM_ENCRYPTION_KEY or the config's [encryption] key, or \
         replicate into a new replica"
    )]
    EncryptionRequired { key_id: String },
    #[error("WAL file {path} shrank while frames up to {frame} were being read")]
    WalShrank { path: PathBuf, frame: u32 },
    #[error("replication stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("replicas of one database: {0}")]
    ReplicaNames(String),
    /// An error of one of several replicas of a database.
    #[error("replica {name}: {source}")]
    Replica {
        name: String,
        #[source]
        source: Box<CaptureError>,
    },
}

impl CaptureError {
    /// The replica could not be reached or is failing for now: replication
    /// keeps running and tries again.
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Store(e) | CaptureError::Lease(LeaseError::Store(e)) => e.is_transient(),
            CaptureError::Replica { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// Replication must stop: going on would interleave with another writer.
    pub fn is_fatal(&self) -> bool {
        match self {
            CaptureError::Replica { source, .. } => source.is_fatal(),
            e => matches!(
                e,
                CaptureError::Lease(LeaseError::Held { .. } | LeaseError::Lost { .. })
            ),
        }
    }

    /// The error itself, without the replica it is about.
    pub fn inner(&self) -> &CaptureError {
        match self {
            CaptureError::Replica { source, .. } => source.inner(),
            e => e,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("replica {replica} is empty: nothing to restore (use --if-replica-exists to make this a no-op)")]
    EmptyReplica { replica: String },
    #[error("output {path} already exists: choose another path, or pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("no restorable state at {target}: the replica's restorable window is {window}")]
    TargetOutOfWindow { target: String, window: String },
    #[error("cannot restore {target}: {reason}")]
    NoChain { target: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object {key}: {source}")]
    Format {
        key: String,
        #[source]
        source: FormatError,
    },
    #[error("object {key} does not match its name: {reason}")]
    Mismatch { key: String, reason: String },
    #[error(
        "restored database does not match the source at txid {txid}: checksum {actual:016x}, \
         recorded {expected:016x}"
    )]
    ChecksumMismatch {
        txid: u64,
        expected: u64,
        actual: u64,
    },
    #[error("restored database failed PRAGMA {check}: {detail}")]
    IntegrityCheck { check: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite error checking {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}
