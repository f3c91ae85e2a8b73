//! Background compaction of shipped segments (see [`crate::compaction`]).
//!
//! The engine appends the plain bytes of every segment it ships to a log file
//! in the state directory. When the log holds enough segments it hands the
//! file to the compactor thread, which merges them into one segment, seals it
//! when the replica is encrypted, stores it, and only then deletes the small
//! objects: shipping never waits for it, and no extra download is needed. A
//! log lost in a crash only leaves its segments uncompacted.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;

use super::spool::Spool;
use crate::catalog::segment_key;
use crate::compaction::{write_merged, MAX_COMMITS};
use crate::crypto::{seal_object, Key};
use crate::format::ObjectHeader;
use crate::store::{ObjectStore, PutMode, StoreError};

/// The log grows to at most this many bytes (the merged object's size).
const MAX_LOG_BYTES: u64 = 64 << 20;

struct Entry {
    key: String,
    header: ObjectHeader,
    offset: u64,
    len: u64,
}

/// Segments shipped since the last hand-over, in txid order, one lineage.
pub(crate) struct SegmentLog {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
    bytes: u64,
    commits: usize,
}

impl SegmentLog {
    fn create(dir: &Path) -> std::io::Result<SegmentLog> {
        let path = dir.join(format!("compact-{:016x}.log", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)?;
        Ok(SegmentLog {
            path,
            file,
            entries: Vec::new(),
            bytes: 0,
            commits: 0,
        })
    }

    /// Whether `header` continues the logged segments.
    fn continues(&self, header: &ObjectHeader) -> bool {
        self.entries.last().is_none_or(|e| {
            e.header.lineage == header.lineage && e.header.max_txid() + 1 == header.min_txid()
        })
    }

    fn append(&mut self, key: &str, header: &ObjectHeader, plain: &[u8]) -> std::io::Result<()> {
        self.file.write_all(plain)?;
        self.entries.push(Entry {
            key: key.to_string(),
            header: header.clone(),
            offset: self.bytes,
            len: plain.len() as u64,
        });
        self.bytes += plain.len() as u64;
        self.commits += header.commits.len();
        Ok(())
    }

    fn full(&self) -> bool {
        self.bytes >= MAX_LOG_BYTES || self.commits >= MAX_COMMITS
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Everything a compaction needs besides the log.
#[derive(Clone)]
pub(crate) struct CompactorContext {
    pub store: Arc<dyn ObjectStore>,
    pub rt: Handle,
    /// The replica's own directory for its logs and spools.
    pub state_dir: PathBuf,
    pub key: Option<Key>,
    /// Hand a log over once it holds this many segments.
    pub segments: usize,
}

/// The engine's handle: a log being filled and the thread merging the last one.
pub(crate) struct Compactor {
    ctx: CompactorContext,
    log: Option<SegmentLog>,
    busy: Arc<AtomicBool>,
    tx: Option<SyncSender<SegmentLog>>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    pub(crate) fn start(ctx: CompactorContext) -> Compactor {
        super::lock::remove_stale_spools(&ctx.state_dir);
        let (tx, rx) = sync_channel::<SegmentLog>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let (ctx2, busy2) = (ctx.clone(), Arc::clone(&busy));
        let thread = std::thread::Builder::new()
            .name("walstream-compact".into())
            .spawn(move || {
                for log in rx {
                    compact(&ctx2, &log);
                    drop(log);
                    busy2.store(false, Ordering::SeqCst);
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "compaction disabled: no thread"))
            .ok();
        Compactor {
            ctx,
            log: None,
            busy,
            tx: thread.as_ref().map(|_| tx),
            thread,
        }
    }

    /// Notes a segment that is now stored.
    pub(crate) fn shipped(&mut self, key: &str, header: &ObjectHeader, plain: &[u8]) {
        if self.tx.is_none() || self.ctx.segments < 2 {
            return;
        }
        if self
            .log
            .as_ref()
            .is_some_and(|l| !l.continues(header) || l.full())
        {
            // Another lineage, a gap, or a log the busy thread could not take
            // in time: its segments stay as they are.
            self.log = None;
        }
        if self.log.is_none() {
            match SegmentLog::create(&self.ctx.state_dir) {
                Ok(l) => self.log = Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot log segments for compaction");
                    return;
                }
            }
        }
        let Some(log) = self.log.as_mut() else { return };
        if let Err(e) = log.append(key, header, plain) {
            tracing::warn!(error = %e, "cannot log segments for compaction");
            self.log = None;
            return;
        }
        if log.entries.len() >= self.ctx.segments || log.full() {
            self.hand_over();
        }
    }

    /// Notes a shipped segment too large to be worth merging. It ends the run
    /// of logged segments, which is merged now if it holds two or more.
    pub(crate) fn skipped(&mut self) {
        if self.log.as_ref().is_some_and(|l| l.entries.len() >= 2) {
            self.hand_over();
        }
        // Still here (a single segment, or the thread is busy): the next
        // segment would not continue it.
        self.log = None;
    }

    fn hand_over(&mut self) {
        if self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let (Some(tx), Some(log)) = (self.tx.as_ref(), self.log.take()) else {
            self.busy.store(false, Ordering::SeqCst);
            return;
        };
        if let Err(TrySendError::Full(log) | TrySendError::Disconnected(log)) = tx.try_send(log) {
            self.busy.store(false, Ordering::SeqCst);
            self.log = Some(log);
        }
    }

    /// Lets the thread finish the merge it is doing; the log being filled is
    /// dropped (its segments stay as they are).
    pub(crate) fn shutdown(&mut self) {
        self.log = None;
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Merge(#[from] crate::compaction::CompactError),
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn compact(ctx: &CompactorContext, log: &SegmentLog) {
    if log.entries.len() < 2 {
        return;
    }
    match merge_and_store(ctx, log) {
        Ok(key) => {
            tracing::info!(%key, segments = log.entries.len(), "segments compacted");
            for e in &log.entries {
                if let Err(err) = ctx.rt.block_on(ctx.store.delete(&e.key)) {
                    tracing::warn!(key = %e.key, error = %err, "could not delete a compacted segment; it stays beside the merged one");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "compaction failed; the segments stay as they are"),
    }
}

/// Merges the log into a spool file, seals it when needed, stores it.
fn merge_and_store(ctx: &CompactorContext, log: &SegmentLog) -> Result<String, Failed> {
    let headers: Vec<ObjectHeader> = log.entries.iter().map(|e| e.header.clone()).collect();
    let mut inputs = Vec::with_capacity(log.entries.len());
    for e in &log.entries {
        let mut f = File::open(&log.path)?;
        f.seek(SeekFrom::Start(e.offset))?;
        inputs.push(BufReader::new(f.take(e.len)));
    }
    let plain = Spool::create(&ctx.state_dir, "compact")?;
    let (merged, w) = write_merged(&headers, inputs, BufWriter::new(&plain.file))?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let upload = match &ctx.key {
        None => None,
        Some(k) => {
            let sealed = Spool::create(&ctx.state_dir, "compact")?;
            let mut out = BufWriter::new(&sealed.file);
            seal_object(BufReader::new(File::open(&plain.path)?), &mut out, k)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Some(sealed)
        }
    };
    let (first, last) = (
        &merged.commits[0],
        &merged.commits[merged.commits.len() - 1],
    );
    let key = segment_key(
        first.txid,
        last.txid,
        merged.lineage,
        first.time_ms,
        last.time_ms,
    );
    let path = upload.as_ref().unwrap_or(&plain).path.clone();
    match ctx
        .rt
        .block_on(ctx.store.put_file(&key, path, PutMode::CreateOnly))
    {
        // Only this process merges this lineage's segments: an object of this
        // name is an earlier attempt of this same merge whose answer was lost.
        Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(key),
        Err(e) => Err(e.into()),
    }
}
