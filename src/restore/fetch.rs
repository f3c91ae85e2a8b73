//! Reading a restore's objects ahead of the thread that applies them.
//!
//! The objects of a plan are fetched in plan order, up to [`BATCHES_AHEAD`]
//! requests at a time, while the restore thread decodes and writes the object
//! before. Consecutive small objects (the segments of a long history) are
//! fetched together with one [`ObjectStore::get_many`], at most
//! [`BATCH_OBJECTS`] and [`SMALL`] bytes per batch: a local directory then
//! reads a batch in one blocking task instead of handing every file between
//! threads, and S3 requests for a batch run at once. A larger object is read by
//! its own task into a small bounded queue of chunks. Request latency overlaps
//! with itself and with the writing; memory stays bounded whatever the object
//! sizes: at most [`SMALL`] bytes, or [`CHUNKS_AHEAD`] chunks of [`CHUNK`]
//! bytes, per batch ahead. Objects are handed out strictly in plan order.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{ObjectReader, ObjectStore, StoreError};

/// Batches being fetched ahead of the object being applied.
pub(super) const BATCHES_AHEAD: usize = 4;
/// At most this many small objects per batch.
const BATCH_OBJECTS: usize = 16;
/// Bytes per read of an object.
const CHUNK: usize = 256 << 10;
/// Chunks read ahead per object.
const CHUNKS_AHEAD: usize = 2;
/// Objects up to this size are fetched whole, and batched up to this total
/// (1 MiB: a compacted segment of small commits, about 800 KiB, is one read
/// rather than a stream of chunks).
const SMALL: u64 = 1 << 20;

type Opened = Result<ObjectStream, StoreError>;

/// The objects of a plan, in order, each opened and read ahead.
pub(super) struct Prefetch {
    rt: Handle,
    next: mpsc::Receiver<oneshot::Receiver<Vec<Opened>>>,
    /// Objects of the last batch received, not handed out yet.
    ready: VecDeque<Opened>,
    producer: JoinHandle<()>,
    /// For messages: the store and the keys not handed out yet.
    store: String,
    keys: VecDeque<String>,
}

impl Prefetch {
    /// Starts fetching `objects` (key and listed size) in order on `rt`. Call
    /// from outside the runtime.
    pub(super) fn start(
        rt: &Handle,
        store: Arc<dyn ObjectStore>,
        objects: Vec<(String, u64)>,
    ) -> Prefetch {
        // The channel holds one receiver per batch being fetched: its capacity
        // is what bounds the requests in flight.
        let (tx, next) = mpsc::channel(BATCHES_AHEAD);
        let name = store.describe();
        let keys = objects.iter().map(|(k, _)| k.clone()).collect();
        let producer = rt.spawn(fetch_in_order(store, batches(objects), tx));
        Prefetch {
            rt: rt.clone(),
            next,
            ready: VecDeque::new(),
            producer,
            store: name,
            keys,
        }
    }

    /// The next object of the plan (blocks until it is open); `None` after
    /// the last one.
    pub(super) fn next_object(&mut self) -> Option<Opened> {
        let key = self.keys.pop_front()?;
        if self.ready.is_empty() {
            let batch = self.rt.block_on(self.next.recv())?;
            match self.rt.block_on(batch) {
                Ok(opened) => self.ready.extend(opened),
                Err(_) => return Some(Err(self.ended_early(key))),
            }
        }
        Some(
            self.ready
                .pop_front()
                .unwrap_or_else(|| Err(self.ended_early(key))),
        )
    }

    fn ended_early(&self, key: String) -> StoreError {
        StoreError::Io {
            store: self.store.clone(),
            op: "get",
            key,
            source: io::Error::other("the task fetching the object ended early"),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

/// One request's worth of a plan's objects.
enum Batch {
    /// Consecutive small objects, fetched whole together.
    Small(Vec<String>),
    /// One larger object, streamed.
    Large(String),
}

/// Groups `objects` (in plan order) into batches, keeping their order.
fn batches(objects: Vec<(String, u64)>) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut small: Vec<String> = Vec::new();
    let mut small_bytes = 0;
    for (key, size) in objects {
        let full = small.len() == BATCH_OBJECTS || small_bytes + size > SMALL;
        if !small.is_empty() && (size > SMALL || full) {
            out.push(Batch::Small(std::mem::take(&mut small)));
            small_bytes = 0;
        }
        if size > SMALL {
            out.push(Batch::Large(key));
        } else {
            small_bytes += size;
            small.push(key);
        }
    }
    if !small.is_empty() {
        out.push(Batch::Small(small));
    }
    out
}

async fn fetch_in_order(
    store: Arc<dyn ObjectStore>,
    batches: Vec<Batch>,
    tx: mpsc::Sender<oneshot::Receiver<Vec<Opened>>>,
) {
    for batch in batches {
        let (done, fetched) = oneshot::channel();
        if tx.send(fetched).await.is_err() {
            return; // the restore stopped
        }
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let opened = match batch {
                Batch::Small(keys) => store
                    .get_many(&keys)
                    .await
                    .into_iter()
                    .map(|got| got.map(ObjectStream::whole))
                    .collect(),
                Batch::Large(key) => vec![store.get_reader(&key).await.map(ObjectStream::spawn)],
            };
            // If the restore stopped meanwhile, dropping the streams stops their readers.
            let _ = done.send(opened);
        });
    }
}

/// One object's bytes, read ahead by a task; a blocking [`Read`].
pub(super) struct ObjectStream {
    rt: Handle,
    /// The chunks still to come (none for an object fetched whole).
    chunks: Option<mpsc::Receiver<io::Result<Bytes>>>,
    current: Bytes,
    reader: Option<JoinHandle<()>>,
}

impl ObjectStream {
    /// Starts reading `reader` ahead; must run inside the runtime.
    fn spawn(reader: ObjectReader) -> ObjectStream {
        let (tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
        ObjectStream {
            rt: Handle::current(),
            chunks: Some(chunks),
            current: Bytes::new(),
            reader: Some(tokio::spawn(read_ahead(reader, tx))),
        }
    }

    /// An object already fetched whole; must run inside the runtime.
    fn whole(bytes: Bytes) -> ObjectStream {
        ObjectStream {
            rt: Handle::current(),
            chunks: None,
            current: bytes,
            reader: None,
        }
    }
}

impl Drop for ObjectStream {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// Reads `reader` into chunks until its end (the channel then closes) or an
/// error (sent, then the channel closes).
async fn read_ahead(mut reader: ObjectReader, tx: mpsc::Sender<io::Result<Bytes>>) {
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let mut end = false;
        while buf.len() < CHUNK {
            let room = CHUNK - buf.len();
            match reader.read_buf(&mut (&mut buf).limit(room)).await {
                Ok(0) => {
                    end = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        if !buf.is_empty() && tx.send(Ok(buf.freeze())).await.is_err() {
            return;
        }
        if end {
            return;
        }
    }
}

impl Read for ObjectStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            let Some(chunks) = &mut self.chunks else {
                return Ok(0);
            };
            match self.rt.block_on(chunks.recv()) {
                Some(chunk) => self.current = chunk?,
                // The end of the object. (A reader task that died early also
                // ends here; the object's own structure and CRC catch that.)
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(objects: &[(&str, u64)]) -> Vec<String> {
        let objects = objects.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        batches(objects)
            .into_iter()
            .map(|b| match b {
                Batch::Small(keys) => keys.join(","),
                Batch::Large(key) => format!("[{key}]"),
            })
            .collect()
    }

    #[test]
    fn small_objects_are_grouped_in_order_and_large_ones_stream_alone() {
        let big = SMALL + 1;
        assert_eq!(
            shape(&[("a", 10), ("b", 10), ("c", big), ("d", 10), ("e", SMALL)]),
            ["a,b", "[c]", "d", "e"]
        );
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let many: Vec<(String, u64)> = (0..BATCH_OBJECTS + 3)
            .map(|i| (format!("k{i}"), 1))
            .collect();
        let sizes: Vec<usize> = batches(many)
            .iter()
            .map(|b| match b {
                Batch::Small(keys) => keys.len(),
                Batch::Large(_) => 0,
            })
            .collect();
        assert_eq!(sizes, [BATCH_OBJECTS, 3]);
        let half = SMALL / 2;
        assert_eq!(shape(&[("a", half), ("b", half), ("c", 1)]), ["a,b", "c"]);
    }
}
