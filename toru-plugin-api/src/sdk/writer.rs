//! The plugin's outgoing bytes: one queue, bounded by bytes, written to the socket by whoever
//! finds no write in progress.
//!
//! Everything the plugin sends is encoded by the task that sends it and queued here, in order.
//! Writing needs no hop to another task while the socket takes the bytes: a sender that finds
//! nobody writing writes what is queued itself, with non-blocking writes ([`Queue::push`]).
//! While the serve loop handles the frames of one read, it *holds* the queue
//! ([`Queue::hold`]): the replies made meanwhile (most of them by handlers that finished on the
//! spot) are only queued, and [`Queue::release`] writes them together, in one system call. Only
//! when the socket is full (the host reads slower than the plugin writes) is the writing handed
//! to the writer task ([`Queue::connected`]), which waits for the socket to take more.
//!
//! The queue is bounded by bytes ([`QUEUE_BYTES`]): a sender waits for room, so a host that stops
//! reading slows the plugin down instead of growing its memory. Small items are copied into one
//! buffer for the write; a large data frame's bytes are written from their own buffer.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, Semaphore};

use crate::codec::DATA_HEADER_LEN;

/// How many bytes may wait to be written before senders wait for room (1 MiB). A single item
/// larger than this waits until the queue is empty.
pub(crate) const QUEUE_BYTES: usize = 1024 * 1024;

/// Data at least this long is written from its own buffer rather than copied into the batch.
const DIRECT_WRITE: usize = 16 * 1024;

/// Stop taking queued items into one write once this much is ready.
const BATCH_BYTES: usize = 256 * 1024;

/// Buffers handed to one vectored write at most.
const MAX_SLICES: usize = 64;

/// What is written.
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

/// The sending side. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Queue {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// One permit per byte of room.
    room: Semaphore,
    /// Wakes the writer task (it is handed the writing, or the queue ended) and, in a detached
    /// queue, the test's [`Receiver`].
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Items not taken by a writer yet, with the room each holds.
    items: VecDeque<(Outgoing, u32)>,
    writer: Slot,
    /// The serve loop is handling a batch of frames: senders only queue.
    held: bool,
    /// The queue refuses items (closed, or the socket failed).
    closed: bool,
    /// The `Queue` was dropped: the writer task ends once nothing is left to write.
    dropped: bool,
}

/// Who has the socket.
#[derive(Debug, Default)]
enum Slot {
    /// Nobody writes; the socket waits here.
    Idle(Writer),
    /// A sender, the serve loop or the writer task is writing.
    Busy,
    /// The writer task is to carry on the writing.
    HandedOff(Writer),
    /// No socket: it failed or was closed, or the queue is detached (tests).
    #[default]
    Gone,
}

/// The socket and the batch being written to it.
#[derive(Debug)]
struct Writer {
    half: OwnedWriteHalf,
    /// Bytes to write, in order.
    chunks: VecDeque<Bytes>,
    /// Where small items are copied together.
    acc: BytesMut,
    /// Room to give back once `chunks` are written.
    permits: usize,
    /// A `Close` was taken: shut the socket down after `chunks`.
    closing: bool,
}

/// What a non-blocking write got to.
enum Flushed {
    /// Everything in the batch is written.
    All,
    /// The socket is full.
    Blocked,
}

impl Writer {
    fn new(half: OwnedWriteHalf) -> Writer {
        Writer {
            half,
            chunks: VecDeque::new(),
            acc: BytesMut::new(),
            permits: 0,
            closing: false,
        }
    }

    /// Writes the batch without waiting.
    fn flush(&mut self) -> io::Result<Flushed> {
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self
                .chunks
                .iter()
                .zip(slices.iter_mut())
                .map(|(chunk, slice)| *slice = IoSlice::new(chunk))
                .count();
            match self.half.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flushed::All)
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(first) = self.chunks.front_mut() else {
                return;
            };
            if first.len() <= n {
                n -= first.len();
                self.chunks.pop_front();
            } else {
                first.advance(n);
                return;
            }
        }
    }

    /// Takes queued items into the batch, up to [`BATCH_BYTES`].
    fn take(&mut self, items: &mut VecDeque<(Outgoing, u32)>) {
        let mut taken = 0;
        while taken < BATCH_BYTES && !self.closing {
            let Some((item, permits)) = items.pop_front() else {
                break;
            };
            taken += item.len();
            self.permits += permits as usize;
            match item {
                Outgoing::Frames(frames) => self.put(frames),
                Outgoing::Data { head, data } => {
                    self.acc.extend_from_slice(&head);
                    self.put(data);
                }
                Outgoing::FramesAndData { frames, head, data } => {
                    self.put(frames);
                    self.acc.extend_from_slice(&head);
                    self.put(data);
                }
                Outgoing::Close => self.closing = true,
            }
        }
        self.seal();
    }

    /// Copies `bytes` into the batch's buffer, or, when long, queues them as they are.
    fn put(&mut self, bytes: Bytes) {
        if bytes.len() < DIRECT_WRITE {
            self.acc.extend_from_slice(&bytes);
        } else {
            self.seal();
            self.chunks.push_back(bytes);
        }
    }

    fn seal(&mut self) {
        if !self.acc.is_empty() {
            self.chunks.push_back(self.acc.split().freeze());
        }
    }
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
    /// A queue writing to `half`, and the writer task to spawn (it takes over the writing when
    /// the socket is full, and closes the socket). The task ends once the queue is closed and
    /// written, the socket fails, or the queue is dropped and written.
    pub(crate) fn connected(half: OwnedWriteHalf) -> (Queue, impl Future<Output = ()> + Send) {
        let queue = Queue::with_writer(Slot::Idle(Writer::new(half)));
        let shared = Arc::clone(&queue.shared);
        (queue, write_task(shared))
    }

    fn with_writer(writer: Slot) -> Queue {
        Queue {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    writer,
                    ..State::default()
                }),
                room: Semaphore::new(QUEUE_BYTES),
                wake: Notify::new(),
            }),
        }
    }

    /// Queues `item`, waiting for room first, and writes it at once when nobody is writing
    /// and the queue is not held. Fails once the connection is closing.
    ///
    /// When there is room (almost always) the item is queued at the call, and the future is
    /// ready; only a wait is boxed. This future sits in every request's task, so it is kept
    /// small.
    pub(crate) fn push(&self, item: Outgoing) -> Pushing<'_> {
        let permits = permits_for(item.len());
        match self.shared.room.try_acquire_many(permits) {
            Ok(permit) => {
                permit.forget();
                Pushing::Done(Some(self.enqueue(item, permits)))
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
        // The room is taken by queued bytes: make sure they are being written, even while the
        // queue is held (this may be the serve loop itself waiting).
        self.kick();
        let permit = self
            .shared
            .room
            .acquire_many(permits)
            .await
            .map_err(|_| QueueError::Closed)?;
        permit.forget();
        self.enqueue(item, permits)
    }

    /// Queues `item` if there is room now.
    pub(crate) fn try_push(&self, item: Outgoing) -> Result<(), QueueError> {
        let permits = permits_for(item.len());
        match self.shared.room.try_acquire_many(permits) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.kick();
                return Err(QueueError::Full);
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueError::Closed),
        }
        self.enqueue(item, permits)
    }

    /// Queues `item` without waiting, taking room only if there is some: for the few small
    /// messages whose number the host bounds itself (see `Stream::recv`'s credit).
    pub(crate) fn force_push(&self, item: Outgoing) -> Result<(), QueueError> {
        let permits = permits_for(item.len());
        match self.shared.room.try_acquire_many(permits) {
            Ok(permit) => {
                permit.forget();
                self.enqueue(item, permits)
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => self.enqueue(item, 0),
            Err(tokio::sync::TryAcquireError::Closed) => Err(QueueError::Closed),
        }
    }

    fn enqueue(&self, item: Outgoing, permits: u32) -> Result<(), QueueError> {
        let mut state = self.shared.lock();
        if state.closed {
            drop(state);
            self.shared.room.add_permits(permits as usize);
            return Err(QueueError::Closed);
        }
        state.items.push_back((item, permits));
        let writer = if state.held {
            None
        } else {
            state.writer.take_idle()
        };
        let detached = matches!(state.writer, Slot::Gone);
        drop(state);
        match writer {
            Some(writer) => self.shared.write_now(writer),
            None if detached => self.shared.wake.notify_one(),
            None => {}
        }
        Ok(())
    }

    /// Holds the queue: items are only queued until [`release`](Self::release), which writes
    /// them together.
    pub(crate) fn hold(&self) {
        self.shared.lock().held = true;
    }

    /// Ends a [`hold`](Self::hold) and writes what was queued meanwhile, unless someone is
    /// writing already (who then writes it).
    pub(crate) fn release(&self) {
        let mut state = self.shared.lock();
        state.held = false;
        let writer = if state.items.is_empty() {
            None
        } else {
            state.writer.take_idle()
        };
        drop(state);
        if let Some(writer) = writer {
            self.shared.write_now(writer);
        }
    }

    /// Hands queued items to the writer task when nobody is writing them (the queue is held,
    /// and a sender waits for room).
    fn kick(&self) {
        let mut state = self.shared.lock();
        if state.items.is_empty() {
            return;
        }
        if let Some(writer) = state.writer.take_idle() {
            state.writer = Slot::HandedOff(writer);
            drop(state);
            self.shared.wake.notify_one();
        }
    }

    /// Asks for the connection to be closed after everything queued so far, and refuses
    /// anything queued after this.
    pub(crate) fn close(&self) {
        self.shared.room.close();
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        state.items.push_back((Outgoing::Close, 0));
        state.closed = true;
        // The writer task closes the socket.
        if let Some(writer) = state.writer.take_idle() {
            state.writer = Slot::HandedOff(writer);
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Whether the connection is closing or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.room.is_closed() || self.shared.lock().closed
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.dropped = true;
        if !state.items.is_empty()
            && let Some(writer) = state.writer.take_idle()
        {
            state.writer = Slot::HandedOff(writer);
        }
        drop(state);
        self.shared.wake.notify_one();
    }
}

impl Slot {
    /// The socket, if nobody is writing; the slot is then busy.
    fn take_idle(&mut self) -> Option<Writer> {
        match std::mem::replace(self, Slot::Busy) {
            Slot::Idle(writer) => Some(writer),
            other => {
                *self = other;
                None
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what is queued without waiting, as long as the socket takes it; hands the rest
    /// to the writer task when it does not.
    fn write_now(&self, mut writer: Writer) {
        loop {
            match writer.flush() {
                Ok(Flushed::All) => {}
                Ok(Flushed::Blocked) => return self.hand_off(writer),
                Err(e) => return self.fail(&e),
            }
            self.room.add_permits(std::mem::take(&mut writer.permits));
            if writer.closing {
                // The writer task shuts the socket down.
                return self.hand_off(writer);
            }
            match self.next_batch(writer) {
                Some(next) => writer = next,
                None => return,
            }
        }
    }

    /// Takes what is queued into the writer's next batch; `None` when nothing is, and the
    /// socket is then idle again.
    fn next_batch(&self, mut writer: Writer) -> Option<Writer> {
        let mut state = self.lock();
        if state.items.is_empty() {
            state.writer = Slot::Idle(writer);
            return None;
        }
        writer.take(&mut state.items);
        Some(writer)
    }

    fn hand_off(&self, writer: Writer) {
        self.lock().writer = Slot::HandedOff(writer);
        self.wake.notify_one();
    }

    /// The socket failed: nothing more is written, and the queue refuses items.
    fn fail(&self, e: &io::Error) {
        tracing::debug!(error = %e, "writing to the host failed");
        self.room.close();
        let mut state = self.lock();
        state.closed = true;
        state.writer = Slot::Gone;
        state.items.clear();
        drop(state);
        self.wake.notify_one();
    }
}

/// The writer task: carries on the writing it is handed, waiting for the socket to take more,
/// and closes the socket. Ends once the socket is closed or failed, or the queue was dropped
/// and everything written.
async fn write_task(shared: Arc<Shared>) {
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let writer = {
            let mut state = shared.lock();
            match &state.writer {
                Slot::HandedOff(_) => match std::mem::replace(&mut state.writer, Slot::Busy) {
                    Slot::HandedOff(writer) => Some(writer),
                    _ => unreachable!("the slot was just seen handed off"),
                },
                Slot::Gone => return,
                Slot::Idle(_) if state.dropped && state.items.is_empty() => return,
                Slot::Idle(_) | Slot::Busy => None,
            }
        };
        match writer {
            Some(writer) => {
                if !write_waiting(&shared, writer).await {
                    return;
                }
            }
            None => woken.await,
        }
    }
}

/// Writes what is queued, waiting for the socket whenever it is full. Returns false once the
/// socket is closed or failed.
async fn write_waiting(shared: &Shared, mut writer: Writer) -> bool {
    loop {
        match writer.flush() {
            Ok(Flushed::All) => {}
            Ok(Flushed::Blocked) => {
                if let Err(e) = writer.half.writable().await {
                    shared.fail(&e);
                    return false;
                }
                continue;
            }
            Err(e) => {
                shared.fail(&e);
                return false;
            }
        }
        shared.room.add_permits(std::mem::take(&mut writer.permits));
        if writer.closing {
            let _ = writer.half.shutdown().await;
            let mut state = shared.lock();
            state.writer = Slot::Gone;
            state.items.clear();
            return false;
        }
        match shared.next_batch(writer) {
            Some(next) => writer = next,
            None => return true,
        }
    }
}

/// An item larger than the whole queue waits for all of it.
fn permits_for(len: usize) -> u32 {
    len.min(QUEUE_BYTES) as u32
}

/// The other end of a queue with no socket (tests): what was queued, in order.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

#[cfg(test)]
impl Queue {
    /// A queue with no socket, whose items wait in the returned [`Receiver`].
    pub(crate) fn new() -> (Queue, Receiver) {
        let queue = Queue::with_writer(Slot::Gone);
        let shared = Arc::clone(&queue.shared);
        (queue, Receiver { shared })
    }
}

#[cfg(test)]
impl Receiver {
    /// The next queued message, decoded; `None` once the queue is dropped and empty.
    pub(crate) async fn next_message(&mut self) -> Option<crate::protocol::Message<'static>> {
        let shared = Arc::clone(&self.shared);
        loop {
            let woken = shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(message) = self.try_next_message() {
                return Some(message);
            }
            if shared.lock().dropped {
                return None;
            }
            woken.await;
        }
    }

    /// The next queued message, if one is queued.
    pub(crate) fn try_next_message(&mut self) -> Option<crate::protocol::Message<'static>> {
        let (item, permits) = self.shared.lock().items.pop_front()?;
        self.shared.room.add_permits(permits as usize);
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

    /// Reads data frames until the socket closes: (stream, length) of each.
    async fn read_all(theirs: UnixStream) -> Vec<(u64, usize)> {
        let mut frames = FramedRead::new(theirs, FrameCodec::new());
        let mut got = Vec::new();
        while let Some(item) = tokio::time::timeout(WAIT, frames.next()).await.unwrap() {
            let Incoming::Data(d) = item.unwrap() else {
                panic!("expected data frames")
            };
            assert!(d.data.iter().all(|&b| b == d.stream as u8));
            got.push((d.stream, d.data.len()));
        }
        got
    }

    #[tokio::test]
    async fn writes_in_order_small_and_large_data_then_closes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (queue, task) = Queue::connected(write);
        let writer = tokio::spawn(task);
        queue.push(frame(1, 10)).await.unwrap();
        queue.push(frame(2, 100_000)).await.unwrap();
        queue.push(frame(3, 0)).await.unwrap();
        queue.close();
        assert_eq!(queue.push(frame(4, 1)).await, Err(QueueError::Closed));
        assert_eq!(read_all(theirs).await, vec![(1, 10), (2, 100_000), (3, 0)]);
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_held_queue_writes_nothing_until_released_then_everything_in_order() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (queue, task) = Queue::connected(write);
        let writer = tokio::spawn(task);
        queue.hold();
        for n in 1..=3 {
            queue.push(frame(n, 100)).await.unwrap();
        }
        let mut probe = [0u8; 1];
        assert_eq!(
            theirs.try_read(&mut probe).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing is written while the queue is held"
        );
        queue.release();
        queue.push(frame(4, 100)).await.unwrap();
        queue.close();
        let got = read_all(theirs).await;
        assert_eq!(got, vec![(1, 100), (2, 100), (3, 100), (4, 100)]);
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_gets_the_held_queue_written() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (queue, task) = Queue::connected(write);
        let writer = tokio::spawn(task);
        let reader = tokio::spawn(read_all(theirs));
        queue.hold();
        // More than the queue's room, all while held: the writer task writes anyway.
        for _ in 0..(2 * QUEUE_BYTES / (64 * 1024)) {
            tokio::time::timeout(WAIT, queue.push(frame(5, 64 * 1024)))
                .await
                .expect("room is made while the queue is held")
                .unwrap();
        }
        queue.close();
        let got = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        assert_eq!(got.len(), 2 * QUEUE_BYTES / (64 * 1024));
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_host_that_stops_reading_fills_the_queue_and_then_senders_wait() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (queue, task) = Queue::connected(write);
        let writer = tokio::spawn(task);
        // Nobody reads `theirs`: the socket buffer fills, then the queue.
        let mut queued = 0usize;
        loop {
            match queue.try_push(frame(1, 64 * 1024)) {
                Ok(()) => queued += 64 * 1024,
                Err(QueueError::Full) => break,
                Err(QueueError::Closed) => panic!("the queue closed"),
            }
            // Lets the writer task move what it can into the socket.
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

    #[tokio::test]
    async fn a_dropped_queue_is_written_out_and_its_task_ends() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (queue, task) = Queue::connected(write);
        let writer = tokio::spawn(task);
        queue.hold();
        queue.push(frame(6, 10)).await.unwrap();
        drop(queue);
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
        assert_eq!(read_all(theirs).await, vec![(6, 10)]);
    }
}
