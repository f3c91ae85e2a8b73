//! Reading a restore's objects ahead of the thread that applies them.
//!
//! The objects of a plan are opened in plan order, up to [`OBJECTS_AHEAD`] at
//! a time, and each is read into a small bounded queue of chunks by its own
//! task, while the restore thread decodes and writes the one before. An object
//! no larger than that queue is fetched whole with one request instead (one
//! blocking file read for a local directory, rather than an open, a stat and
//! reads each handed between threads). Request
//! latency (an S3 GET of each small segment of a long history) overlaps with
//! itself and with the writing; memory stays bounded whatever the object
//! sizes: at most [`CHUNKS_AHEAD`] chunks of [`CHUNK`] bytes per open object.
//! Objects are handed out strictly in plan order.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{ObjectReader, ObjectStore, StoreError};

/// Objects opened and being read ahead of the one being applied.
pub(super) const OBJECTS_AHEAD: usize = 8;
/// Bytes per read of an object.
const CHUNK: usize = 256 << 10;
/// Chunks read ahead per object.
const CHUNKS_AHEAD: usize = 2;
/// Objects up to this size are fetched whole (1 MiB: a compacted segment of
/// small commits, about 800 KiB, is one read rather than a stream of chunks).
const SMALL: u64 = 1 << 20;

type Opened = Result<ObjectStream, StoreError>;

/// The objects of a plan, in order, each opened and read ahead.
pub(super) struct Prefetch {
    rt: Handle,
    next: mpsc::Receiver<oneshot::Receiver<Opened>>,
    producer: JoinHandle<()>,
    /// For messages: the store and the keys not handed out yet.
    store: String,
    keys: std::collections::VecDeque<String>,
}

impl Prefetch {
    /// Starts opening `objects` (key and listed size) in order on `rt`. Call
    /// from outside the runtime.
    pub(super) fn start(
        rt: &Handle,
        store: Arc<dyn ObjectStore>,
        objects: Vec<(String, u64)>,
    ) -> Prefetch {
        // The channel holds one receiver per opened object: its capacity is
        // what bounds the objects in flight.
        let (tx, next) = mpsc::channel(OBJECTS_AHEAD);
        let name = store.describe();
        let keys = objects.iter().map(|(k, _)| k.clone()).collect();
        let producer = rt.spawn(open_in_order(store, objects, tx));
        Prefetch {
            rt: rt.clone(),
            next,
            producer,
            store: name,
            keys,
        }
    }

    /// The next object of the plan (blocks until it is open); `None` after
    /// the last one.
    pub(super) fn next_object(&mut self) -> Option<Opened> {
        let opened = self.rt.block_on(self.next.recv())?;
        let key = self.keys.pop_front().unwrap_or_default();
        Some(self.rt.block_on(opened).unwrap_or_else(|_| {
            Err(StoreError::Io {
                store: self.store.clone(),
                op: "get_reader",
                key,
                source: io::Error::other("the task opening the object ended early"),
            })
        }))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

async fn open_in_order(
    store: Arc<dyn ObjectStore>,
    objects: Vec<(String, u64)>,
    tx: mpsc::Sender<oneshot::Receiver<Opened>>,
) {
    for (key, size) in objects {
        let (done, opened) = oneshot::channel();
        if tx.send(opened).await.is_err() {
            return; // the restore stopped
        }
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let result = if size <= SMALL {
                store.get(&key).await.map(ObjectStream::whole)
            } else {
                store.get_reader(&key).await.map(ObjectStream::spawn)
            };
            // If the restore stopped meanwhile, dropping the stream stops its reader.
            let _ = done.send(result);
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
