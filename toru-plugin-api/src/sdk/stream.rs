//! One stream's shared state (protocol 2): the data coming in (a request body, or WebSocket
//! messages) with the credit owed for it, the window for the data going out, and how the stream
//! ended.
//!
//! The serve loop's reader pushes what the host sends ([`Stream::push`], [`Stream::credit`],
//! [`Stream::end`]); the request's handler takes it ([`Stream::recv`], [`Stream::reserve`]).
//! Each direction has one waiter and one [`Notify`], whose stored permit makes check-then-wait
//! race-free.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::link::Link;
use crate::codec::DataFlags;
use crate::protocol::{Credit, Message, Payload, RequestId, STREAM_WINDOW};

/// The most data one frame of ours carries: the whole initial window.
pub(crate) const MAX_FRAME_DATA: usize = STREAM_WINDOW as usize;

/// Queued chunks beyond this are merged into the last one, so that a host sending many tiny
/// frames cannot make the queue's bookkeeping outgrow the window.
const MAX_QUEUED_CHUNKS: usize = 64;

/// How a WebSocket was closed: the code and reason of a `ws_close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code (RFC 6455 section 7.4): 1000 normal, 1001 going away, ...
    pub code: u16,
    /// The reason, possibly empty.
    pub reason: String,
}

/// Why a stream ended before its handler finished with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The host sent `cancel` (the client went away, or the request timed out), or the
    /// connection ended.
    Cancelled,
    /// The client closed the WebSocket: the host sent `ws_close`.
    ClientClosed(CloseFrame),
    /// The plugin is shutting down and closed the WebSocket with 1001.
    GoingAway,
    /// The handler is done with the stream (its response ended, or it closed the WebSocket).
    Finished,
}

/// What [`Stream::recv`] got.
#[derive(Debug)]
pub(crate) enum Recv {
    /// Data, with the flags of the (last) frame it came in.
    Data(DataFlags, Bytes),
    /// The request body's `END`.
    End,
    /// The stream ended.
    Ended(Ended),
}

/// Sending more than the window allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowExceeded {
    pub(crate) len: usize,
    pub(crate) window: u32,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Stream {
    id: RequestId,
    link: Arc<Link>,
    websocket: bool,
    state: Mutex<State>,
    readable: Notify,
    writable: Notify,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<(DataFlags, Bytes)>,
    /// The request body's `END` came.
    inbound_end: bool,
    /// Bytes the host may still send.
    recv_window: u32,
    /// Bytes handed to the handler and not yet credited.
    uncredited: u32,
    /// Bytes the plugin may still send.
    send_window: u64,
    ended: Option<Ended>,
    /// The plugin has sent `ws_close` (or `END`, or `error`): it sends nothing more.
    finished_sending: bool,
}

impl Stream {
    /// The state of stream `id`; `websocket` for an upgrade request.
    pub(crate) fn new(id: RequestId, link: Arc<Link>, websocket: bool) -> Arc<Self> {
        Arc::new(Stream {
            id,
            link,
            websocket,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                inbound_end: false,
                recv_window: STREAM_WINDOW,
                uncredited: 0,
                send_window: u64::from(STREAM_WINDOW),
                ended: None,
                finished_sending: false,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
        })
    }

    pub(crate) fn id(&self) -> RequestId {
        self.id
    }

    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    pub(crate) fn is_websocket(&self) -> bool {
        self.websocket
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one data frame from the host.
    ///
    /// # Errors
    /// When the frame carries more than the window allows; nothing is queued then.
    pub(crate) fn push(&self, flags: DataFlags, data: Bytes) -> Result<(), WindowExceeded> {
        let mut state = self.lock();
        if state.ended.is_some() || state.inbound_end {
            return Ok(());
        }
        let len = data.len();
        if len > state.recv_window as usize {
            return Err(WindowExceeded {
                len,
                window: state.recv_window,
            });
        }
        state.recv_window -= len as u32;
        let end = !self.websocket && flags.contains(DataFlags::END);
        let keep = if self.websocket {
            // An empty frame that ends a message still ends it (an empty message, or the end
            // of a fragmented one).
            !data.is_empty() || !flags.contains(DataFlags::MORE)
        } else {
            !data.is_empty()
        };
        if keep {
            let merge = state.queue.len() >= MAX_QUEUED_CHUNKS
                && state
                    .queue
                    .back()
                    .is_some_and(|(last, _)| !self.websocket || last.contains(DataFlags::MORE));
            match state.queue.back_mut() {
                Some((last_flags, last)) if merge => {
                    let mut joined = BytesMut::with_capacity(last.len() + len);
                    joined.extend_from_slice(last);
                    joined.extend_from_slice(&data);
                    *last = joined.freeze();
                    *last_flags = flags;
                }
                _ => state.queue.push_back((flags, data)),
            }
        }
        if end {
            state.inbound_end = true;
        }
        drop(state);
        self.readable.notify_one();
        Ok(())
    }

    /// The host gave `bytes` more room to send.
    pub(crate) fn credit(&self, bytes: u32) {
        let mut state = self.lock();
        state.send_window = state.send_window.saturating_add(u64::from(bytes));
        drop(state);
        self.writable.notify_one();
    }

    /// Ends the stream for `why`, unless it had ended already. Returns whether it was open.
    pub(crate) fn end(&self, why: Ended) -> bool {
        let mut state = self.lock();
        if state.ended.is_some() {
            return false;
        }
        state.ended = Some(why);
        drop(state);
        self.readable.notify_one();
        self.writable.notify_one();
        true
    }

    /// Marks that the plugin sends nothing more on the stream (it sent `ws_close`, `END` or
    /// `error`). Returns false when it had already, or when the stream was cancelled, so that the
    /// caller sends nothing.
    pub(crate) fn finish_sending(&self) -> bool {
        let mut state = self.lock();
        if state.finished_sending || state.ended == Some(Ended::Cancelled) {
            return false;
        }
        state.finished_sending = true;
        true
    }

    /// How the stream ended, if it has.
    pub(crate) fn ended(&self) -> Option<Ended> {
        self.lock().ended.clone()
    }

    /// The next data from the host, waiting for it. Gives credit back for what it hands out.
    ///
    /// Cancel-safe: nothing is taken from the queue unless this returns.
    pub(crate) async fn recv(&self) -> Recv {
        loop {
            let (got, credit) = {
                let mut state = self.lock();
                if state.ended == Some(Ended::Cancelled) {
                    (Some(Recv::Ended(Ended::Cancelled)), 0)
                } else if let Some((flags, data)) = state.queue.pop_front() {
                    state.uncredited += data.len() as u32;
                    let credit = if state.uncredited >= STREAM_WINDOW / 2 && !state.inbound_end {
                        let credit = state.uncredited;
                        state.uncredited = 0;
                        state.recv_window += credit;
                        credit
                    } else {
                        0
                    };
                    (Some(Recv::Data(flags, data)), credit)
                } else if state.inbound_end {
                    (Some(Recv::End), 0)
                } else {
                    (state.ended.clone().map(Recv::Ended), 0)
                }
            };
            if credit > 0 {
                self.send_credit(credit);
            }
            if let Some(got) = got {
                return got;
            }
            self.readable.notified().await;
        }
    }

    /// Credit is queued without waiting for room: it is small, at most one per half window the
    /// host sent, and a host that does not read it cannot send more data to provoke more.
    fn send_credit(&self, bytes: u32) {
        let msg = Message::with_id(self.id, Payload::Credit(Credit { bytes }));
        self.link.force_send(&msg);
    }

    /// Waits until the plugin may send data, then takes up to `want` bytes (at most
    /// [`MAX_FRAME_DATA`]) of the window. `want` 0 only checks that the stream is open.
    ///
    /// # Errors
    /// How the stream ended, when it has.
    pub(crate) async fn reserve(&self, want: usize) -> Result<usize, Ended> {
        loop {
            {
                let mut state = self.lock();
                if let Some(ended) = &state.ended {
                    return Err(ended.clone());
                }
                if state.finished_sending {
                    return Err(Ended::Finished);
                }
                if want == 0 {
                    return Ok(0);
                }
                if state.send_window > 0 {
                    let n = (want as u64)
                        .min(state.send_window)
                        .min(MAX_FRAME_DATA as u64);
                    state.send_window -= n;
                    return Ok(n as usize);
                }
            }
            self.writable.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt as _;

    use super::*;
    use crate::sdk::writer::Queue;

    fn stream(websocket: bool) -> Arc<Stream> {
        let (queue, _rx) = Queue::new();
        // The receiver is dropped: sends fail, which these tests do not look at.
        Stream::new(7, Arc::new(Link::new(queue)), websocket)
    }

    fn data(n: usize) -> Bytes {
        Bytes::from(vec![1u8; n])
    }

    #[tokio::test]
    async fn body_data_comes_out_in_order_then_end() {
        let s = stream(false);
        s.push(DataFlags::NONE, data(3)).unwrap();
        s.push(DataFlags::NONE, Bytes::new()).unwrap();
        s.push(DataFlags::END, data(2)).unwrap();
        s.push(DataFlags::NONE, data(9)).unwrap(); // after END: ignored
        assert!(matches!(s.recv().await, Recv::Data(_, d) if d.len() == 3));
        assert!(matches!(s.recv().await, Recv::Data(_, d) if d.len() == 2));
        assert!(matches!(s.recv().await, Recv::End));
        assert!(matches!(s.recv().await, Recv::End));
    }

    #[tokio::test]
    async fn more_than_the_window_is_refused_and_consuming_gives_credit() {
        let s = stream(false);
        s.push(DataFlags::NONE, data(STREAM_WINDOW as usize - 1))
            .unwrap();
        assert_eq!(
            s.push(DataFlags::NONE, data(2)),
            Err(WindowExceeded { len: 2, window: 1 })
        );
        s.push(DataFlags::NONE, data(1)).unwrap();
        assert_eq!(
            s.push(DataFlags::NONE, data(1)),
            Err(WindowExceeded { len: 1, window: 0 })
        );
        // Consuming the first chunk (over half the window) gives it back.
        assert!(matches!(s.recv().await, Recv::Data(..)));
        s.push(DataFlags::NONE, data(1000)).unwrap();
    }

    #[tokio::test]
    async fn many_tiny_frames_are_merged() {
        let s = stream(false);
        for _ in 0..1000 {
            s.push(DataFlags::NONE, data(1)).unwrap();
        }
        assert!(s.lock().queue.len() <= MAX_QUEUED_CHUNKS);
        let mut total = 0;
        while let Some(Recv::Data(_, d)) = s.recv().now_or_never() {
            total += d.len();
            if total == 1000 {
                break;
            }
        }
        assert_eq!(total, 1000);
    }

    #[tokio::test]
    async fn websocket_fragments_merge_only_within_a_message() {
        let s = stream(true);
        for _ in 0..MAX_QUEUED_CHUNKS {
            s.push(DataFlags::TEXT, data(1)).unwrap();
        }
        s.push(DataFlags::TEXT | DataFlags::MORE, data(1)).unwrap();
        s.push(DataFlags::TEXT, Bytes::new()).unwrap();
        let state = s.lock();
        assert_eq!(state.queue.len(), MAX_QUEUED_CHUNKS + 1);
        assert_eq!(state.queue.back().unwrap().0, DataFlags::TEXT);
    }

    #[tokio::test]
    async fn reserve_waits_for_credit_and_fails_once_ended() {
        let s = stream(false);
        assert_eq!(s.reserve(usize::MAX).await, Ok(MAX_FRAME_DATA));
        assert!(
            s.reserve(1).now_or_never().is_none(),
            "the window is used up"
        );
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.reserve(10).await }
        });
        s.credit(4);
        let got = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert_eq!(got.unwrap().unwrap(), Ok(4));
        assert!(s.end(Ended::Cancelled));
        assert!(!s.end(Ended::Finished));
        assert_eq!(s.reserve(1).await, Err(Ended::Cancelled));
        assert!(matches!(s.recv().await, Recv::Ended(Ended::Cancelled)));
        assert!(!s.finish_sending(), "nothing is sent on a cancelled stream");
    }
}
