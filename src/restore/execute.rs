//! Executing a restore plan into a temporary file beside the output.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::runtime::Handle;

use super::fetch::{ObjectStream, Prefetch};
use super::pagefile::{PageFile, CACHE_BYTES};
use super::plan::RestorePlan;
use super::RestoreOptions;
use crate::catalog::{check_name, ObjectInfo};
use crate::crypto::Keyring;
use crate::error::RestoreError;
use crate::format::{BodyReader, CommitRecord, FormatError, ObjectHeader, ObjectKind};
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
fn damaged(key: &str, source: FormatError) -> Failure {
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
    let keys = std::iter::once(&plan.snapshot)
        .chain(&plan.segments)
        .map(|o| (o.key.clone(), o.size))
        .collect();
    let mut objects = Prefetch::start(&rt, Arc::clone(store), keys);
    let mut done = 0u64;
    let (snap_header, pages) = write_snapshot(
        next_object(&mut objects, &plan.snapshot)?,
        &plan.snapshot,
        file,
        &tmp.path,
        &opts.keys,
    )?;
    done += plan.snapshot.size;
    progress(done);
    let page_size = snap_header.page_size;
    let mut applied = Applied {
        pages,
        path: &tmp.path,
        page_size,
        target: plan.target_txid,
        last: snap_header.commits[0],
    };
    for seg in &plan.segments {
        let stream = next_object(&mut objects, seg)?;
        apply_segment(stream, seg, plan, &mut applied, &opts.keys)?;
        done += seg.size;
        progress(done);
    }
    drop(objects);
    let Applied { pages, last, .. } = applied;
    if last.txid != plan.target_txid {
        return Err(Failure::Fatal(RestoreError::NoChain {
            target: format!("txid {}", plan.target_txid),
            reason: format!("the planned objects end at txid {}", last.txid),
        }));
    }
    let (file, checksum) = pages.finish(last.db_pages).map_err(io(&tmp.path))?;
    if let Some(expected) = last.checksum {
        if expected != checksum {
            return Err(Failure::Fatal(RestoreError::ChecksumMismatch {
                txid: last.txid,
                expected,
                actual: checksum,
            }));
        }
    }
    sync_and_check(file, &tmp.path, opts.integrity_check)?;
    publish(&tmp.path, out, opts.force)?;
    tmp.published = true;
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

/// Streams the snapshot into `file`; returns its header and the output with
/// the snapshot's pages, proven against the snapshot's recorded checksum.
fn write_snapshot(
    mut stream: ObjectStream,
    info: &ObjectInfo,
    file: File,
    path: &Path,
    keys: &Keyring,
) -> Result<(ObjectHeader, PageFile), Failure> {
    let header = ObjectHeader::decode(&mut stream).map_err(|e| damaged(&info.key, e))?;
    check_name(info, &header).map_err(|e| Failure::Damaged {
        key: info.key.clone(),
        error: RestoreError::Mismatch {
            key: info.key.clone(),
            reason: e.to_string(),
        },
    })?;
    if header.kind != ObjectKind::Snapshot {
        return Err(damaged(
            &info.key,
            FormatError::Malformed("not a snapshot".into()),
        ));
    }
    let commit = header.commits[0];
    let mut body =
        BodyReader::new(stream, header.clone(), keys).map_err(|e| damaged(&info.key, e))?;
    let mut out = PageFile::new(file, header.page_size, CACHE_BYTES);
    let io = |source| {
        Failure::Fatal(RestoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    loop {
        let mut page = out.buffer();
        match body
            .next_page(&mut page)
            .map_err(|e| damaged(&info.key, e))?
        {
            Some(r) => out.put(r.pgno, page).map_err(io)?,
            None => {
                out.recycle(page);
                break;
            }
        }
    }
    body.finish().map_err(|e| damaged(&info.key, e))?;
    out.flush().map_err(io)?;
    let (checksum, pages) = out.state();
    if pages != commit.db_pages || commit.checksum != Some(checksum) {
        return Err(damaged(
            &info.key,
            FormatError::Malformed("snapshot pages do not match its recorded checksum".into()),
        ));
    }
    Ok((header, out))
}

/// Where the output stands while segments are applied.
struct Applied<'a> {
    pages: PageFile,
    path: &'a Path,
    page_size: u32,
    target: u64,
    /// The last commit applied.
    last: CommitRecord,
}

impl Applied<'_> {
    fn io(&self, source: std::io::Error) -> Failure {
        Failure::Fatal(RestoreError::Io {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// Whether `c`'s pages are to be written: false for a commit already
    /// applied (a compacted segment overlapping the one before it) or after
    /// the target.
    fn wanted(&self, key: &str, c: &CommitRecord) -> Result<bool, Failure> {
        if c.txid <= self.last.txid || c.txid > self.target {
            return Ok(false);
        }
        if c.txid != self.last.txid + 1 {
            return Err(damaged(
                key,
                FormatError::Malformed(format!("txid {} follows {}", c.txid, self.last.txid)),
            ));
        }
        Ok(true)
    }

    /// Ends commit `c` once all its pages are written: the database is
    /// `c.db_pages` long from here (growth shows when pages are written or
    /// at the end; shrinking drops later pages now).
    fn finish_commit(&mut self, key: &str, c: &CommitRecord) -> Result<(), Failure> {
        if !self.wanted(key, c)? {
            return Ok(());
        }
        self.pages.truncate(c.db_pages).map_err(|e| self.io(e))?;
        self.last = *c;
        Ok(())
    }
}

/// Streams one segment into the output: each page is decoded into a buffer
/// of the output's bounded cache, so memory does not grow with the segment's
/// size. A segment found damaged part-way fails the whole attempt, whose
/// output is discarded.
fn apply_segment(
    mut stream: ObjectStream,
    info: &ObjectInfo,
    plan: &RestorePlan,
    out: &mut Applied<'_>,
    keys: &Keyring,
) -> Result<(), Failure> {
    let key = info.key.as_str();
    let header = ObjectHeader::decode(&mut stream).map_err(|e| damaged(key, e))?;
    check_name(info, &header).map_err(|e| damaged(key, FormatError::Malformed(e.to_string())))?;
    if header.page_size != out.page_size || header.lineage != plan.lineage {
        return Err(damaged(
            key,
            FormatError::Malformed("page size or lineage differs from the snapshot".into()),
        ));
    }
    let commits = header.commits.clone();
    let mut body = BodyReader::new(stream, header, keys).map_err(|e| damaged(key, e))?;
    let mut ended = 0;
    let mut stopped_early = false;
    loop {
        let mut page = out.pages.buffer();
        let Some(r) = body.next_page(&mut page).map_err(|e| damaged(key, e))? else {
            out.pages.recycle(page);
            break;
        };
        while ended < r.commit {
            out.finish_commit(key, &commits[ended])?;
            ended += 1;
        }
        let c = &commits[r.commit];
        if c.txid > out.target {
            out.pages.recycle(page);
            stopped_early = true;
            break;
        }
        if out.wanted(key, c)? {
            out.pages.put(r.pgno, page).map_err(|e| out.io(e))?;
        } else {
            out.pages.recycle(page);
        }
    }
    for c in &commits[ended..] {
        out.finish_commit(key, c)?;
    }
    // Stopping early at the target leaves the rest of a large segment unread:
    // its trailer is then unchecked, and the recorded checksum proves the
    // result instead. Without one, or when everything was read anyway, the
    // trailer is checked.
    if !stopped_early || out.last.checksum.is_none() {
        let mut page = vec![0u8; out.page_size as usize];
        while body
            .next_page(&mut page)
            .map_err(|e| damaged(key, e))?
            .is_some()
        {}
        body.finish().map_err(|e| damaged(key, e))?;
    }
    Ok(())
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
