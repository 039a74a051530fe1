//! The connection's outbound queue and the task that writes it to the socket.
//!
//! Two lanes, both bounded:
//!
//! - **data** (requests, body data, WebSocket messages): at most [`DATA_BUDGET`] bytes queued.
//!   A sender waits for room, so a plugin that stops reading its socket slows every sender down
//!   instead of growing the host's memory.
//! - **control** (`credit`, `cancel`, `ws_close`, replies to the plugin's bad requests): sent
//!   from places that cannot wait (a `Drop`, a body's `poll`), and never stuck behind data, so a
//!   `credit` reaches a plugin whose data lane is full. Control messages are few by nature (a
//!   stream sends at most a handful); should [`CONTROL_BUDGET`] bytes of them pile up all the
//!   same, the plugin is not reading and the connection is closed.
//!
//! Data frames are written from the caller's own buffer: the queue holds the 13-byte header and
//! the `Bytes`, never a copy of the data.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use toru_plugin_api::codec::DATA_HEADER_LEN;

/// The most bytes of requests and data queued for one plugin (1 MiB). A larger frame (a
/// protocol 1 request with a big body) waits until the queue is empty and goes alone.
pub(crate) const DATA_BUDGET: usize = 1024 * 1024;

/// The most bytes of control messages queued for one plugin before it counts as not reading
/// its socket (1 MiB: thousands of messages).
pub(crate) const CONTROL_BUDGET: usize = 1024 * 1024;

/// What the writer writes: a whole encoded frame, or a data frame's header and its data.
pub(crate) enum Chunk {
    Frame(Bytes),
    Data {
        head: [u8; DATA_HEADER_LEN],
        data: Bytes,
    },
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Frame(b) => b.len(),
            Chunk::Data { data, .. } => DATA_HEADER_LEN + data.len(),
        }
    }
}

/// The connection's queue is gone: it closed.
#[derive(Debug)]
pub(crate) struct Closed;

/// Why [`Outbound::try_send`] did not queue a chunk.
pub(crate) enum TrySend {
    /// No room now: the chunk, for [`Outbound::send`].
    Full(Chunk),
    Closed,
}

/// The sending side of the two lanes.
pub(crate) struct Outbound {
    control: mpsc::UnboundedSender<Chunk>,
    control_bytes: Arc<AtomicUsize>,
    data: mpsc::UnboundedSender<(Chunk, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

/// The writer's side of the two lanes.
pub(crate) struct Lanes {
    control: mpsc::UnboundedReceiver<Chunk>,
    control_bytes: Arc<AtomicUsize>,
    data: mpsc::UnboundedReceiver<(Chunk, OwnedSemaphorePermit)>,
}

/// Whether a control message was queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ControlSent {
    Queued,
    /// The connection is closed; nothing to do.
    Closed,
    /// The control lane is full: the plugin does not read. The caller closes the connection.
    Full,
}

impl Outbound {
    pub(crate) fn new() -> (Outbound, Lanes) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let control_bytes = Arc::new(AtomicUsize::new(0));
        (
            Outbound {
                control: control_tx,
                control_bytes: Arc::clone(&control_bytes),
                data: data_tx,
                budget: Arc::new(Semaphore::new(DATA_BUDGET)),
            },
            Lanes {
                control: control_rx,
                control_bytes,
                data: data_rx,
            },
        )
    }

    /// Queues a chunk on the data lane, waiting while the lane is full.
    pub(crate) async fn send(&self, chunk: Chunk) -> Result<(), Closed> {
        let cost = chunk.len().clamp(1, DATA_BUDGET) as u32;
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.data.send((chunk, permit)).map_err(|_| Closed)
    }

    /// Queues a chunk on the data lane if there is room now.
    pub(crate) fn try_send(&self, chunk: Chunk) -> Result<(), TrySend> {
        let cost = chunk.len().clamp(1, DATA_BUDGET) as u32;
        match Arc::clone(&self.budget).try_acquire_many_owned(cost) {
            Ok(permit) => self.data.send((chunk, permit)).map_err(|_| TrySend::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(TrySend::Full(chunk)),
            Err(tokio::sync::TryAcquireError::Closed) => Err(TrySend::Closed),
        }
    }

    /// Queues a control message without waiting.
    pub(crate) fn send_control(&self, frame: Bytes) -> ControlSent {
        let len = frame.len();
        if self.control_bytes.fetch_add(len, Ordering::Relaxed) + len > CONTROL_BUDGET {
            self.control_bytes.fetch_sub(len, Ordering::Relaxed);
            return ControlSent::Full;
        }
        match self.control.send(Chunk::Frame(frame)) {
            Ok(()) => ControlSent::Queued,
            Err(_) => ControlSent::Closed,
        }
    }

    /// Wakes every sender waiting for room: the connection is closed.
    pub(crate) fn close(&self) {
        self.budget.close();
    }
}

#[cfg(test)]
impl Lanes {
    /// Takes one chunk off the data lane, as the writer would.
    pub(crate) fn take_data(&mut self) -> Option<(Chunk, OwnedSemaphorePermit)> {
        self.data.try_recv().ok()
    }
}

/// Writes queued chunks to the socket until the lanes close or a write fails. Control goes
/// first; whatever is queued already is written before one flush.
pub(crate) async fn write(
    write: OwnedWriteHalf,
    mut lanes: Lanes,
    closed: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, write);
    let result = async {
        loop {
            let first = tokio::select! {
                biased;
                _ = closed.cancelled() => return Ok(()),
                c = lanes.control.recv() => c.map(|c| (c, None)),
                d = lanes.data.recv() => d.map(|(c, p)| (c, Some(p))),
            };
            let Some((chunk, permit)) = first else {
                return Ok(());
            };
            // Let the other tasks that are ready to run queue their requests too (callers
            // woken by the same read, most often), so that they go out in one write and the
            // plugin reads them in one read.
            tokio::task::yield_now().await;
            put(&mut out, &lanes, chunk, permit, &closed).await?;
            // Batch what is queued already into one flush, control first.
            loop {
                if let Ok(chunk) = lanes.control.try_recv() {
                    put(&mut out, &lanes, chunk, None, &closed).await?;
                } else if let Ok((chunk, permit)) = lanes.data.try_recv() {
                    put(&mut out, &lanes, chunk, Some(permit), &closed).await?;
                } else {
                    break;
                }
            }
            tokio::select! {
                _ = closed.cancelled() => return Ok(()),
                r = out.flush() => r?,
            }
        }
    }
    .await;
    let _ = out.shutdown().await;
    result
}

/// Writes a data frame's header and data: small ones into the buffer, large ones in one
/// vectored write from their own buffers (the `BufWriter` passes a write larger than itself
/// through), instead of a 13-byte write followed by the data.
async fn write_all_vectored(
    out: &mut BufWriter<OwnedWriteHalf>,
    head: &[u8],
    data: &[u8],
) -> std::io::Result<()> {
    let (mut head, mut data) = (head, data);
    while !head.is_empty() || !data.is_empty() {
        let slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(data)];
        let n = out.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        data = &data[n - from_head..];
    }
    Ok(())
}

async fn put(
    out: &mut BufWriter<OwnedWriteHalf>,
    lanes: &Lanes,
    chunk: Chunk,
    permit: Option<OwnedSemaphorePermit>,
    closed: &tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let is_control = permit.is_none();
    let len = chunk.len();
    let written = async {
        match &chunk {
            Chunk::Frame(b) => out.write_all(b).await,
            Chunk::Data { head, data } => write_all_vectored(out, head, data).await,
        }
    };
    tokio::select! {
        // A plugin that does not read would hold the writer here forever.
        _ = closed.cancelled() => {}
        r = written => r?,
    }
    if is_control {
        lanes.control_bytes.fetch_sub(len, Ordering::Relaxed);
    }
    // The permit goes back once the bytes are out of the queue.
    drop(permit);
    Ok(())
}
