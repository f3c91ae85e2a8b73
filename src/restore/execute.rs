//! Executing a restore plan into a temporary file beside the output.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::runtime::Handle;

use super::apply::{Finished, Output};
use super::fetch::{ObjectStream, Prefetch};
use super::plan::RestorePlan;
use super::{elapsed_ms, RestoreOptions};
use crate::catalog::ObjectInfo;
use crate::error::RestoreError;
use crate::format::FormatError;
use crate::store::ObjectStore;

/// Which check SQLite runs on the restored database before it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntegrityCheck {
    None,
    #[default]
    Quick,
    Full,
}

/// What a finished restore proved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub output: PathBuf,
    pub txid: u64,
    pub time_ms: i64,
    pub db_pages: u32,
    pub page_size: u32,
    /// Whole-database checksum of the output; equal to the recorded one when
    /// `checksum_verified`.
    pub checksum: u64,
    pub checksum_verified: bool,
    pub snapshot: String,
    pub segments: usize,
    /// Damaged objects the restore planned around.
    pub skipped_damaged: Vec<String>,
}

pub(super) enum Failure {
    /// An object failed its checks; another plan may avoid it.
    Damaged {
        key: String,
        error: RestoreError,
    },
    Fatal(RestoreError),
}

impl From<RestoreError> for Failure {
    fn from(e: RestoreError) -> Self {
        Failure::Fatal(e)
    }
}

/// A missing or wrong key is not damage: planning around the object would
/// only hide what the user has to fix.
pub(super) fn damaged(key: &str, source: FormatError) -> Failure {
    let key_problem = matches!(&source, FormatError::Crypto(c) if c.is_key_problem());
    let error = RestoreError::Format {
        key: key.to_string(),
        source,
    };
    if key_problem {
        return Failure::Fatal(error);
    }
    Failure::Damaged {
        key: key.to_string(),
        error,
    }
}

/// Removes the temporary output and anything SQLite put beside it, unless
/// the restore was published.
struct TempOutput {
    path: PathBuf,
    published: bool,
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.published {
            for p in sidecars(&self.path, true) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn sidecars(path: &Path, with_main: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if with_main {
        out.push(path.to_path_buf());
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        out.push(PathBuf::from(s));
    }
    out
}

/// A hidden, unique path in the directory of `out`, where a file can be
/// completed before it is published as `out` (same file system, so a link
/// or rename publishes it atomically).
pub fn temp_beside(out: &Path, purpose: &str) -> PathBuf {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(
        ".{name}.walstream-{purpose}-{:016x}",
        rand::random::<u64>()
    ))
}

pub(super) fn execute(
    store: &Arc<dyn ObjectStore>,
    plan: &RestorePlan,
    opts: &RestoreOptions,
    started: std::time::Instant,
) -> Result<RestoreReport, Failure> {
    let rt = Handle::current();
    let out = &opts.output;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { path, source }
    };
    let mut tmp = TempOutput {
        path: temp_beside(out, "restore"),
        published: false,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp.path)
        .map_err(io(out))?;
    let total = plan.total_bytes();
    let progress = |done: u64| {
        if let Some(p) = &opts.progress {
            p(done, total)
        }
    };
    // Newest first: the snapshot comes last (see `apply`).
    let keys = plan
        .segments
        .iter()
        .rev()
        .chain(std::iter::once(&plan.snapshot))
        .map(|o| (o.key.clone(), o.size))
        .collect();
    let mut objects = Prefetch::start(&rt, Arc::clone(store), keys);
    let mut output = Output::new(file, &tmp.path, &opts.keys, plan.lineage, plan.target_txid);
    let mut done = 0u64;
    for seg in plan.segments.iter().rev() {
        let stream = next_object(&mut objects, seg)?;
        output.apply_segment(stream, seg, plan.snapshot.max_txid)?;
        done += seg.size;
        progress(done);
    }
    let stream = next_object(&mut objects, &plan.snapshot)?;
    output.apply_snapshot(stream, &plan.snapshot)?;
    progress(total);
    drop(objects);
    let Finished {
        file,
        checksum,
        target: last,
        page_size,
    } = output.finish()?;
    if let Some(expected) = last.checksum {
        if expected != checksum {
            let error = RestoreError::ChecksumMismatch {
                txid: last.txid,
                expected,
                actual: checksum,
            };
            // Restoring the snapshot alone: it is what disagrees with its own
            // recorded checksum, and an older one may reach the same txid.
            if plan.segments.is_empty() {
                return Err(Failure::Damaged {
                    key: plan.snapshot.key.clone(),
                    error,
                });
            }
            return Err(Failure::Fatal(error));
        }
    }
    tracing::debug!(ms = elapsed_ms(started), "applied every object");
    sync_and_check(file, &tmp.path, opts.integrity_check)?;
    tracing::debug!(ms = elapsed_ms(started), "synced and checked");
    publish(&tmp.path, out, opts.force)?;
    tmp.published = true;
    tracing::debug!(ms = elapsed_ms(started), "published");
    Ok(RestoreReport {
        output: out.clone(),
        txid: last.txid,
        time_ms: last.time_ms,
        db_pages: last.db_pages,
        page_size,
        checksum,
        checksum_verified: last.checksum.is_some(),
        snapshot: plan.snapshot.key.clone(),
        segments: plan.segments.len(),
        skipped_damaged: Vec::new(),
    })
}

/// The next planned object, `info`, opened: a missing one is damage (another
/// plan may avoid it, or it was pruned meanwhile), any other failure is fatal.
fn next_object(objects: &mut Prefetch, info: &ObjectInfo) -> Result<ObjectStream, Failure> {
    let opened = objects.next_object().ok_or_else(|| {
        Failure::Fatal(RestoreError::Io {
            path: PathBuf::from(&info.key),
            source: std::io::Error::other("the planned objects ended early"),
        })
    })?;
    opened.map_err(|e| match e {
        e if e.is_not_found() => Failure::Damaged {
            key: info.key.clone(),
            error: e.into(),
        },
        e => Failure::Fatal(e.into()),
    })
}

/// fsyncs the finished file while SQLite checks it: the check reads what the
/// page cache holds, the fsync waits for the disk, and neither changes a byte.
fn sync_and_check(file: File, path: &Path, check: IntegrityCheck) -> Result<(), RestoreError> {
    let io = |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::thread::scope(|s| {
        let sync = s.spawn(move || file.sync_all());
        let checked = integrity_check(path, check);
        let synced = sync
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked")));
        synced.map_err(io)?;
        checked
    })
}

fn integrity_check(path: &Path, check: IntegrityCheck) -> Result<(), RestoreError> {
    let pragma = match check {
        IntegrityCheck::None => return Ok(()),
        IntegrityCheck::Quick => "quick_check",
        IntegrityCheck::Full => "integrity_check",
    };
    let err = |source| RestoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    // immutable=1: read the file as it is, creating no -wal or -shm beside it.
    let uri = format!("file:{}?immutable=1", uri_escape(path));
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(uri, flags).map_err(err)?;
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}")).map_err(err)?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    if rows != ["ok"] {
        return Err(RestoreError::IntegrityCheck {
            check: pragma.to_string(),
            detail: rows.into_iter().take(10).collect::<Vec<_>>().join("; "),
        });
    }
    Ok(())
}

fn uri_escape(path: &Path) -> String {
    let mut s = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' => s.push_str(&format!("%{b:02X}")),
            _ => s.push(*b as char),
        }
    }
    s
}

/// Moves the finished file into place. With `force`, the old database's
/// -wal/-shm/-journal go first: SQLite would otherwise apply them to the
/// restored file.
fn publish(tmp: &Path, out: &Path, force: bool) -> Result<(), RestoreError> {
    if force {
        for p in sidecars(out, false) {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(RestoreError::Io { path: p, source }),
            }
        }
        std::fs::rename(tmp, out).map_err(|source| RestoreError::Io {
            path: out.to_path_buf(),
            source,
        })?;
    } else {
        // A hard link fails if the output appeared meanwhile: never overwrite.
        std::fs::hard_link(tmp, out).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => RestoreError::OutputExists {
                path: out.to_path_buf(),
            },
            _ => RestoreError::Io {
                path: out.to_path_buf(),
                source,
            },
        })?;
        let _ = std::fs::remove_file(tmp);
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
