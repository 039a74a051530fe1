//! The one task that writes to the socket, and the queue that feeds it.
//!
//! Everything the plugin sends is encoded by the task that sends it and queued here; nothing but
//! the writer task ever waits on the host reading. The queue is bounded by bytes
//! ([`QUEUE_BYTES`]): a sender waits for room, so a host that stops reading slows the plugin
//! down instead of growing its memory. A data frame's bytes are written from their own buffer,
//! not copied into the queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc};

use crate::codec::DATA_HEADER_LEN;

/// How many bytes may wait for the writer before senders wait for room (1 MiB). A single item
/// larger than this waits until the queue is empty.
pub(crate) const QUEUE_BYTES: usize = 1024 * 1024;

/// Data at least this long is written from its own buffer rather than copied into the batch.
const DIRECT_WRITE: usize = 16 * 1024;

/// Stop batching queued items once this much is ready to write.
const BATCH_BYTES: usize = 256 * 1024;

/// What the writer task is fed.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// One or more whole encoded frames.
    Frames(Bytes),
    /// A data frame: its header, then its data.
    Data {
        head: [u8; DATA_HEADER_LEN],
        data: Bytes,
    },
    /// A message frame followed by a data frame, written together (a whole response).
    FramesAndData {
        frames: Bytes,
        head: [u8; DATA_HEADER_LEN],
        data: Bytes,
    },
    /// Write what came before, then close the connection.
    Close,
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Frames(b) => b.len(),
            Outgoing::Data { data, .. } => DATA_HEADER_LEN + data.len(),
            Outgoing::FramesAndData { frames, data, .. } => {
                frames.len() + DATA_HEADER_LEN + data.len()
            }
            Outgoing::Close => 0,
        }
    }
}

/// The sending side of the writer's queue. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: mpsc::UnboundedSender<(Outgoing, u32)>,
    /// One permit per byte of room.
    room: Arc<Semaphore>,
}

/// The future of [`Queue::push`].
pub(crate) enum Pushing<'a> {
    Done(Option<Result<(), QueueError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send + 'a>>),
}

impl Future for Pushing<'_> {
    type Output = Result<(), QueueError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Pushing::Done(result) => Poll::Ready(result.take().expect("polled after completion")),
            Pushing::Waiting(wait) => wait.as_mut().poll(cx),
        }
    }
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// The queue is full (only from [`Queue::try_push`]).
    Full,
    /// The connection is closing or closed.
    Closed,
}

impl Queue {
    /// A queue and the receiver for [`write_loop`].
    pub(crate) fn new() -> (Self, Receiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(QUEUE_BYTES));
        let receiver = Receiver {
            rx,
            room: room.clone(),
        };
        (Queue { tx, room }, receiver)
    }

    /// Queues `item`, waiting for room first. Fails once the connection is closing.
    ///
    /// When there is room (almost always) the item is queued at the call, and the future is
    /// ready; only a wait is boxed. This future sits in every request's task, so it is kept
    /// small.
    pub(crate) fn push(&self, item: Outgoing) -> Pushing<'_> {
        let permits = permits_for(item.len());
        match self.room.try_acquire_many(permits) {
            Ok(permit) => {
                permit.forget();
                Pushing::Done(Some(self.send(item, permits)))
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                Pushing::Done(Some(Err(QueueError::Closed)))
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                Pushing::Waiting(Box::pin(self.push_when_room(item, permits)))
            }
        }
    }

    async fn push_when_room(&self, item: Outgoing, permits: u32) -> Result<(), QueueError> {
        let permit = self
            .room
            .acquire_many(permits)
            .await
            .map_err(|_| QueueError::Closed)?;
        permit.forget();
        self.send(item, permits)
    }

    /// Queues `item` if there is room now.
    pub(crate) fn try_push(&self, item: Outgoing) -> Result<(), QueueError> {
        let permits = permits_for(item.len());
        match self.room.try_acquire_many(permits) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(QueueError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueError::Closed),
        }
        self.send(item, permits)
    }

    /// Queues `item` without waiting, taking room only if there is some: for the few small
    /// messages whose number the host bounds itself (see `Stream::recv`'s credit).
    pub(crate) fn force_push(&self, item: Outgoing) -> Result<(), QueueError> {
        let permits = permits_for(item.len());
        match self.room.try_acquire_many(permits) {
            Ok(permit) => {
                permit.forget();
                self.send(item, permits)
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => self.send(item, 0),
            Err(tokio::sync::TryAcquireError::Closed) => Err(QueueError::Closed),
        }
    }

    fn send(&self, item: Outgoing, permits: u32) -> Result<(), QueueError> {
        self.tx.send((item, permits)).map_err(|e| {
            self.room.add_permits(e.0.1 as usize);
            QueueError::Closed
        })
    }

    /// Asks the writer to close the connection after everything queued so far, and refuses
    /// anything queued after this.
    pub(crate) fn close(&self) {
        self.room.close();
        let _ = self.tx.send((Outgoing::Close, 0));
    }

    /// Whether the connection is closing or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.room.is_closed() || self.tx.is_closed()
    }
}

/// An item larger than the whole queue waits for all of it.
fn permits_for(len: usize) -> u32 {
    len.min(QUEUE_BYTES) as u32
}

/// The writer's end of the queue.
#[derive(Debug)]
pub(crate) struct Receiver {
    rx: mpsc::UnboundedReceiver<(Outgoing, u32)>,
    room: Arc<Semaphore>,
}

/// Writes queued items until `Close` (or until every sender is gone), batching what is queued
/// into one write. Returns when the connection is closed or broken; the queue refuses items from
/// then on.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(mut write: W, mut queue: Receiver) {
    let result = write_items(&mut write, &mut queue).await;
    queue.room.close();
    queue.rx.close();
    if let Err(e) = result {
        tracing::debug!(error = %e, "writing to the host failed");
    }
}

async fn write_items<W: AsyncWrite + Unpin>(
    write: &mut W,
    queue: &mut Receiver,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(mut next) = queue.rx.recv().await {
        let mut released = 0usize;
        loop {
            let (item, permits) = next;
            released += permits as usize;
            match item {
                Outgoing::Frames(frames) => buf.extend_from_slice(&frames),
                Outgoing::Data { head, data } => put_data(write, &mut buf, &head, &data).await?,
                Outgoing::FramesAndData { frames, head, data } => {
                    buf.extend_from_slice(&frames);
                    put_data(write, &mut buf, &head, &data).await?;
                }
                Outgoing::Close => {
                    write.write_all(&buf).await?;
                    write.flush().await?;
                    return write.shutdown().await;
                }
            }
            if buf.len() >= BATCH_BYTES {
                break;
            }
            match queue.rx.try_recv() {
                Ok(item) => next = item,
                Err(_) => break,
            }
        }
        write.write_all(&buf).await?;
        write.flush().await?;
        buf.clear();
        queue.room.add_permits(released);
    }
    Ok(())
}

/// Appends a data frame to the batch, or writes the batch and then the data from its own buffer
/// when the data is long.
async fn put_data<W: AsyncWrite + Unpin>(
    write: &mut W,
    buf: &mut BytesMut,
    head: &[u8],
    data: &Bytes,
) -> std::io::Result<()> {
    buf.extend_from_slice(head);
    if data.len() < DIRECT_WRITE {
        buf.extend_from_slice(data);
        return Ok(());
    }
    write.write_all(buf).await?;
    buf.clear();
    write.write_all(data).await
}

#[cfg(test)]
impl Receiver {
    /// The next queued message, decoded; `None` when every sender is gone.
    pub(crate) async fn next_message(&mut self) -> Option<crate::protocol::Message<'static>> {
        let (item, permits) = self.rx.recv().await?;
        self.room.add_permits(permits as usize);
        Some(decode_message(item))
    }

    /// The next queued message, if one is queued.
    pub(crate) fn try_next_message(&mut self) -> Option<crate::protocol::Message<'static>> {
        let (item, permits) = self.rx.try_recv().ok()?;
        self.room.add_permits(permits as usize);
        Some(decode_message(item))
    }
}

#[cfg(test)]
fn decode_message(item: Outgoing) -> crate::protocol::Message<'static> {
    use tokio_util::codec::Decoder as _;
    let Outgoing::Frames(bytes) = item else {
        panic!("expected a message, got {item:?}")
    };
    let mut buf = BytesMut::from(&bytes[..]);
    let incoming = crate::codec::FrameCodec::new()
        .decode(&mut buf)
        .expect("a valid frame")
        .expect("a whole frame");
    let frame = incoming.into_frame().expect("a message frame");
    frame.message().expect("a valid message").into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{FutureExt as _, StreamExt as _};
    use tokio::net::UnixStream;
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::codec::{DataFlags, DataFrame, FrameCodec, Incoming};

    const WAIT: Duration = Duration::from_secs(10);

    fn frame(n: u8, len: usize) -> Outgoing {
        let head = DataFrame::header(u64::from(n), DataFlags::NONE, len, usize::MAX >> 2)
            .expect("a valid header");
        Outgoing::Data {
            head,
            data: Bytes::from(vec![n; len]),
        }
    }

    #[tokio::test]
    async fn writes_in_order_small_and_large_data_then_closes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (queue, rx) = Queue::new();
        let writer = tokio::spawn(write_loop(ours, rx));
        queue.push(frame(1, 10)).await.unwrap();
        queue.push(frame(2, 100_000)).await.unwrap();
        queue.push(frame(3, 0)).await.unwrap();
        queue.close();
        assert_eq!(queue.push(frame(4, 1)).await, Err(QueueError::Closed));
        let mut frames = FramedRead::new(theirs, FrameCodec::new());
        let mut got = Vec::new();
        while let Some(item) = tokio::time::timeout(WAIT, frames.next()).await.unwrap() {
            let Incoming::Data(d) = item.unwrap() else {
                panic!("expected data frames")
            };
            assert!(d.data.iter().all(|&b| b == d.stream as u8));
            got.push((d.stream, d.data.len()));
        }
        assert_eq!(got, vec![(1, 10), (2, 100_000), (3, 0)]);
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_host_that_stops_reading_fills_the_queue_and_then_senders_wait() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (queue, rx) = Queue::new();
        let writer = tokio::spawn(write_loop(ours, rx));
        // Nobody reads `theirs`: the socket buffer fills, then the queue.
        let mut queued = 0usize;
        loop {
            match queue.try_push(frame(1, 64 * 1024)) {
                Ok(()) => queued += 64 * 1024,
                Err(QueueError::Full) => break,
                Err(QueueError::Closed) => panic!("the queue closed"),
            }
            // Lets the writer move what it can into the socket.
            tokio::task::yield_now().await;
            assert!(
                queued < 64 * 1024 * 1024,
                "the queue took 64 MiB without filling"
            );
        }
        assert!(
            queue.push(frame(1, 64 * 1024)).now_or_never().is_none(),
            "a push into a full queue waits"
        );
        drop(theirs);
        // The writer fails on the closed socket and the queue refuses from then on.
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
        assert_eq!(queue.push(frame(1, 10)).await, Err(QueueError::Closed));
        assert!(queue.is_closed());
    }
}
