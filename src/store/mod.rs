//! Object stores: where replicated objects live.
//!
//! Every destination (a local directory, an S3-compatible bucket) implements
//! [`ObjectStore`]. The trait is deliberately small so that one conformance suite
//! (`tests/store_conformance.rs`) can hold every implementation to the same contract.

mod local;
mod s3;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

pub use local::LocalStore;
pub use s3::{S3Config, S3Store};

/// How a write treats an object that already exists under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with [`StoreError::AlreadyExists`] when the key exists (write-once objects).
    CreateOnly,
    /// Replace whatever is there.
    Overwrite,
}

/// One object as seen by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// A streaming reader over one object's bytes.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} already exists in {store}")]
    AlreadyExists { store: String, key: String },
    #[error("object {key} not found in {store}")]
    NotFound { store: String, key: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{op} {key} in {store}: {source}")]
    Io {
        store: String,
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// A remote store answered with an error, or could not be reached (boxed to keep
    /// `StoreError` small).
    #[error("{0}")]
    Remote(Box<RemoteError>),
    /// The store cannot be used as configured (for example, credentials are missing).
    #[error("{store}: {reason}")]
    Config { store: String, reason: String },
}

/// What a remote store (S3) answered, or why it could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {key} in {store}: {code}: {message}")]
pub struct RemoteError {
    /// The store, as [`ObjectStore::describe`] names it.
    pub store: String,
    /// The operation (`put`, `get`, `list`, ...).
    pub op: &'static str,
    /// The key (for `list`, the prefix).
    pub key: String,
    /// The service's error code (`AccessDenied`, `NoSuchBucket`,
    /// `SignatureDoesNotMatch`, ...) or, when no answer came back, what went wrong
    /// (`ConnectFailed`, `Timeout`, ...).
    pub code: String,
    /// What it means and what to check. Never contains secrets.
    pub message: String,
    /// The store could not be reached or is failing for now (connection,
    /// timeout, 5xx, SlowDown), as opposed to refusing the request as made
    /// (credentials, permissions, a missing bucket): waiting may help.
    pub transient: bool,
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether the store may answer if asked again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Remote(r) if r.transient)
    }
}

/// A flat key/value object store. Keys are `/`-separated relative paths made of
/// `[A-Za-z0-9._-]` segments; no segment may be empty, `.` or `..`.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Human-readable location, used in messages (never contains secrets).
    fn describe(&self) -> String;

    /// Store `body` under `key`. The object becomes visible atomically and durably:
    /// readers see either nothing or the whole body, and once this returns the body
    /// survives a crash of this process or the machine.
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StoreError>;

    /// Like `put`, with the body read from a local file (for large objects; memory
    /// use must not grow with the file's size). The file is left in place.
    async fn put_file(&self, key: &str, path: PathBuf, mode: PutMode) -> Result<(), StoreError>;

    /// The whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Several whole objects, each with its own result, in the order of `keys`.
    /// All of them are requested at once; a store that can serve a batch more
    /// cheaply than one request per key (a local directory: one blocking task
    /// instead of a hand-off per file) overrides this.
    async fn get_many(&self, keys: &[String]) -> Vec<Result<Bytes, StoreError>> {
        join_in_order(keys.iter().map(|key| self.get(key)).collect()).await
    }

    /// `len` bytes starting at `offset` (fewer when the object ends first).
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError>;

    /// A streaming reader over the whole object.
    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StoreError>;

    /// Every object whose key starts with `prefix`, sorted by key. A store location
    /// that does not exist yet lists as empty.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Remove `key`. Removing a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// This store for a caller that waits on one request at a time from a
    /// thread of its own (`Handle::block_on` outside the runtime's workers),
    /// as the capture engine does. A store whose work blocks anyway may return
    /// a form of itself that does the work in the waiting thread, which saves
    /// a hand-off to another thread per request; that form must not be used
    /// from async tasks, and its requests cannot be abandoned half-way by a
    /// timeout. `None` (the default): the store itself serves that caller.
    fn for_own_thread(&self) -> Option<std::sync::Arc<dyn ObjectStore>> {
        None
    }
}

/// Polls every future until all are done; their outputs in the given order.
/// (Quadratic in the number of futures; callers pass a handful.)
async fn join_in_order<T>(mut futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks a key against the rules in [`ObjectStore`].
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidKey {
        key: key.to_string(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("empty key"));
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(invalid("empty, '.' or '..' path segment"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid("only A-Z a-z 0-9 . _ - and / are allowed"));
        }
    }
    Ok(())
}
