//! [`LocalStore`]: an [`ObjectStore`] kept in a directory of the local filesystem.
//!
//! Key `a/b/c` lives in the file `<root>/a/b/c`. Writes go to a temporary file
//! (`.tmp-<random>`) in the destination directory, are fsynced, and are then published
//! atomically: by `hard_link` for [`PutMode::CreateOnly`] (which fails when the key
//! exists, so exactly one of several concurrent creators wins) and by `rename` for
//! [`PutMode::Overwrite`]. The directory is fsynced afterwards so the new entry is
//! durable. Listings skip every name that starts with `.tmp-`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{validate_key, ObjectMeta, ObjectReader, ObjectStore, PutMode, StoreError};

/// Names starting with this are in-flight writes and never show up as objects.
const TMP_PREFIX: &str = ".tmp-";

/// An object store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    file_work: FileWork,
}

/// Where a [`LocalStore`] does its blocking file work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileWork {
    /// On tokio's blocking pool, so async tasks never block on the disk.
    BlockingPool,
    /// In the thread polling the request: the form
    /// [`ObjectStore::for_own_thread`] returns.
    PollingThread,
}

impl LocalStore {
    /// A store rooted at `root`. Nothing is touched on disk: a root that does not exist
    /// yet lists as empty and is created by the first write.
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore {
            root: root.into(),
            file_work: FileWork::BlockingPool,
        }
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `key`. The key must already be validated.
    fn path_for(&self, key: &str) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.split('/'));
        path
    }

    /// Builds errors for one operation on one key.
    fn ctx(&self, op: &'static str, key: &str) -> ErrCtx {
        ErrCtx {
            store: self.describe(),
            op,
            key: key.to_string(),
        }
    }

    async fn put_with<F>(
        &self,
        op: &'static str,
        key: &str,
        mode: PutMode,
        fill: F,
    ) -> Result<(), StoreError>
    where
        F: FnOnce(&mut File) -> Result<(), StoreError> + Send + 'static,
    {
        validate_key(key)?;
        let path = self.path_for(key);
        let ctx = self.ctx(op, key);
        let ctx2 = ctx.clone();
        self.run_blocking(&ctx2, move || write_atomic(&ctx, &path, mode, fill))
            .await
    }

    /// Runs blocking filesystem work where [`FileWork`] says.
    async fn run_blocking<T, F>(&self, ctx: &ErrCtx, f: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        if self.file_work == FileWork::PollingThread {
            return f();
        }
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result,
            Err(join) => Err(ctx.io(io::Error::other(format!("blocking task failed: {join}")))),
        }
    }
}

/// What an error message needs to say where it happened.
#[derive(Debug, Clone)]
struct ErrCtx {
    store: String,
    op: &'static str,
    key: String,
}

impl ErrCtx {
    fn io(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            store: self.store.clone(),
            op: self.op,
            key: self.key.clone(),
            source,
        }
    }

    fn not_found(&self) -> StoreError {
        StoreError::NotFound {
            store: self.store.clone(),
            key: self.key.clone(),
        }
    }

    fn already_exists(&self) -> StoreError {
        StoreError::AlreadyExists {
            store: self.store.clone(),
            key: self.key.clone(),
        }
    }

    /// Maps an error from reading an object: a missing file (or a path through or onto
    /// a directory, which cannot be an object) is `NotFound`.
    fn read_err(&self, e: io::Error) -> StoreError {
        if is_missing(&e) {
            self.not_found()
        } else {
            self.io(e)
        }
    }
}

/// True for errors meaning "there is no object at this path".
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory
    )
}

/// The whole object in the file at `path`. Objects are never modified once
/// published, so the size read from the open file is the object's size.
fn read_object(ctx: &ErrCtx, path: &Path) -> Result<Bytes, StoreError> {
    let (file, size) = open_object(path).map_err(|e| ctx.read_err(e))?;
    let len = usize::try_from(size).map_err(|_| ctx.io(io::Error::from(ErrorKind::OutOfMemory)))?;
    // Read into spare capacity: zeroing the buffer first cost as much as
    // reading small objects.
    let mut buf = Vec::with_capacity(len);
    file.take(size)
        .read_to_end(&mut buf)
        .map_err(|e| ctx.read_err(e))?;
    if buf.len() != len {
        return Err(ctx.read_err(io::Error::from(ErrorKind::UnexpectedEof)));
    }
    Ok(Bytes::from(buf))
}

/// Opens the regular file holding an object, for reading.
fn open_object(path: &Path) -> io::Result<(File, u64)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::from(ErrorKind::IsADirectory));
    }
    Ok((file, meta.len()))
}

/// fsyncs a directory so that entries created in (or renamed into) it are durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// `dir`, or `.` when `dir` is the empty relative path.
fn non_empty(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// Makes sure `dir` exists. Directories that had to be created are made durable by
/// fsyncing their parents (`dir` itself is fsynced by the caller after publishing).
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    // Directories that are missing now, deepest first, and the nearest existing ancestor.
    let mut missing: Vec<&Path> = Vec::new();
    let mut existing: Option<&Path> = None;
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() {
            existing = Some(Path::new("."));
            break;
        }
        if fs::symlink_metadata(d).is_ok() {
            existing = Some(d);
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    fs::create_dir_all(dir)?;
    if let Some(ancestor) = existing {
        sync_dir(ancestor)?;
    }
    // missing[0] is `dir`; every other newly created directory holds the entry of the
    // one below it.
    for d in missing.iter().skip(1) {
        sync_dir(d)?;
    }
    Ok(())
}

/// Writes an object through a temporary file and publishes it atomically.
fn write_atomic<F>(ctx: &ErrCtx, path: &Path, mode: PutMode, fill: F) -> Result<(), StoreError>
where
    F: FnOnce(&mut File) -> Result<(), StoreError>,
{
    let dir = non_empty(path.parent().unwrap_or(Path::new(".")));
    ensure_dir(dir).map_err(|e| ctx.io(e))?;

    // Create the temporary file; retry on the (unlikely) name collision.
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(ctx.io(e)),
        }
    };

    let result = fill_and_publish(ctx, &mut file, &tmp, path, mode, fill);
    drop(file);
    // A successful rename consumed the temporary name; in every other case (hard link
    // or failure) it must go. Failing to remove it does not undo a publish, and a stray
    // `.tmp-` file is invisible to listings, so that error is not reported.
    if !(result.is_ok() && mode == PutMode::Overwrite) {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir).map_err(|e| ctx.io(e))
}

fn fill_and_publish<F>(
    ctx: &ErrCtx,
    file: &mut File,
    tmp: &Path,
    path: &Path,
    mode: PutMode,
    fill: F,
) -> Result<(), StoreError>
where
    F: FnOnce(&mut File) -> Result<(), StoreError>,
{
    fill(file)?;
    file.flush().map_err(|e| ctx.io(e))?;
    file.sync_all().map_err(|e| ctx.io(e))?;
    match mode {
        PutMode::CreateOnly => match fs::hard_link(tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(ctx.already_exists()),
            Err(e) => Err(ctx.io(e)),
        },
        PutMode::Overwrite => fs::rename(tmp, path).map_err(|e| ctx.io(e)),
    }
}

/// Bytes written between two writeback steps of [`paced_copy`].
const WRITEBACK_STEP: usize = 8 << 20;

/// Copies `src` into `dst` with a fixed buffer, starting the writeback of each
/// step as it is written and waiting for the one before it. The final fsync then
/// has little left to do, and a large object (a snapshot) never queues hundreds
/// of MB of dirty pages in front of the application's own small fsyncs.
fn paced_copy(src: &mut File, dst: &mut File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = dst.as_raw_fd();
    let mut buf = vec![0u8; 1 << 20];
    let (mut written, mut step_start) = (0u64, 0u64);
    let mut previous: Option<(u64, u64)> = None;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        dst.write_all(&buf[..n])?;
        written += n as u64;
        if written - step_start < WRITEBACK_STEP as u64 {
            continue;
        }
        let step = (step_start, written - step_start);
        // SAFETY: sync_file_range on a descriptor we own, over bytes we wrote;
        // it only starts writeback or waits for it. Failures are harmless
        // here: the fsync at the end is what makes the object durable.
        unsafe {
            if let Some((off, len)) = previous {
                let wait_write_wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                libc::sync_file_range(fd, off as i64, len as i64, wait_write_wait);
            }
            libc::sync_file_range(
                fd,
                step.0 as i64,
                step.1 as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        previous = Some(step);
        step_start = written;
    }
}

/// Recursively collects the objects below `dir` (whose key prefix is `base`, either
/// empty or ending in `/`) whose keys start with `prefix`.
fn walk(dir: &Path, base: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // The root does not exist yet, or a directory vanished while we walked.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue; // not UTF-8, so never a valid key
        };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let key = format!("{base}{name}");
        if validate_key(&key).is_err() {
            continue; // a foreign file that no key can address
        }
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            let sub = format!("{key}/");
            // Only descend where a matching key could live.
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(&entry.path(), &sub, prefix, out)?;
            }
            continue;
        }
        if !key.starts_with(prefix) {
            continue;
        }
        // Follows symlinks, so a link to a regular file counts as an object; links to
        // directories are not descended into (no cycles).
        let meta = match fs::metadata(entry.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_file() {
            out.push(ObjectMeta {
                key,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StoreError> {
        let ctx = self.ctx("put", key);
        self.put_with("put", key, mode, move |file| {
            file.write_all(&body).map_err(|e| ctx.io(e))
        })
        .await
    }

    async fn put_file(&self, key: &str, path: PathBuf, mode: PutMode) -> Result<(), StoreError> {
        let ctx = self.ctx("put_file", key);
        self.put_with("put_file", key, mode, move |file| {
            let mut src = File::open(&path).map_err(|e| ctx.io(e))?;
            paced_copy(&mut src, file).map_err(|e| ctx.io(e))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let path = self.path_for(key);
        let ctx = self.ctx("get", key);
        let ctx2 = ctx.clone();
        self.run_blocking(&ctx2, move || read_object(&ctx, &path))
            .await
    }

    async fn get_many(&self, keys: &[String]) -> Vec<Result<Bytes, StoreError>> {
        let jobs: Vec<_> = keys
            .iter()
            .map(|key| {
                let ctx = self.ctx("get", key);
                let path = validate_key(key).map(|()| self.path_for(key));
                (ctx, path)
            })
            .collect();
        let batch_ctx = self.ctx("get", keys.first().map_or("", String::as_str));
        let read_all = move || {
            Ok(jobs
                .into_iter()
                .map(|(ctx, path)| read_object(&ctx, &path?))
                .collect())
        };
        match self.run_blocking(&batch_ctx, read_all).await {
            Ok(results) => results,
            // Only a panic in the task gets here: every key gets the message.
            Err(e) => {
                let why = e.to_string();
                keys.iter()
                    .map(|key| Err(self.ctx("get", key).io(io::Error::other(why.clone()))))
                    .collect()
            }
        }
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let path = self.path_for(key);
        let ctx = self.ctx("get_range", key);
        let ctx2 = ctx.clone();
        self.run_blocking(&ctx2, move || {
            let (mut file, size) = open_object(&path).map_err(|e| ctx.read_err(e))?;
            if offset >= size || len == 0 {
                return Ok(Bytes::new());
            }
            let expected = len.min(size - offset);
            file.seek(SeekFrom::Start(offset)).map_err(|e| ctx.io(e))?;
            let mut buf = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
            file.take(len)
                .read_to_end(&mut buf)
                .map_err(|e| ctx.io(e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StoreError> {
        validate_key(key)?;
        let path = self.path_for(key);
        let ctx = self.ctx("get_reader", key);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| ctx.read_err(e))?;
        let meta = file.metadata().await.map_err(|e| ctx.read_err(e))?;
        if !meta.is_file() {
            return Err(ctx.not_found());
        }
        Ok(Box::pin(file))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let ctx = self.ctx("list", &prefix);
        let ctx2 = ctx.clone();
        self.run_blocking(&ctx2, move || {
            let mut out = Vec::new();
            walk(&root, "", &prefix, &mut out).map_err(|e| ctx.io(e))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let path = self.path_for(key);
        let ctx = self.ctx("delete", key);
        let ctx2 = ctx.clone();
        self.run_blocking(&ctx2, move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            // A directory is not an object (and directories are never removed);
            // POSIX allows unlink on a directory to fail with EPERM.
            Err(_) if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) => Ok(()),
            Err(e) => Err(ctx.io(e)),
        })
        .await
    }

    fn for_own_thread(&self) -> Option<std::sync::Arc<dyn ObjectStore>> {
        Some(std::sync::Arc::new(LocalStore {
            file_work: FileWork::PollingThread,
            ..self.clone()
        }))
    }
}
