//! One stream's state (protocol 2): what the plugin sent and the caller has not consumed yet,
//! and the windows of flow control both ways.
//!
//! The reader task pushes the plugin's data in without ever waiting: the plugin may send only
//! as much as the host has granted ([`STREAM_WINDOW`] to begin with), so the inbox never holds
//! more than that. The consumer pops data and grants it back with `credit` once it has handed
//! it on. The host's own data waits for the plugin's `credit`.
//!
//! A response head that announces a body is held back until the reader has handled everything
//! it read with it ([`Stream::defer_head`], [`Stream::release_head`]): when the body's `END`
//! came in the same read (the usual small response, head and data written together), the
//! caller gets the head with the whole body at once, and no stream to read.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, oneshot};
use toru_plugin_api::DataFlags;
use toru_plugin_api::protocol::{RequestId, STREAM_WINDOW};

use super::reason::Violation;

/// Data smaller than this is copied out of the read buffer (and run together with its
/// neighbours for HTTP bodies), so that a plugin sending many tiny frames cannot pin many read
/// buffers with a few bytes each.
const COPY_BELOW: usize = 4096;

/// The most unconsumed WebSocket messages (or parts of messages) a stream holds. Flow control
/// counts bytes, not messages; this bounds what empty and tiny messages cost.
pub(crate) const MAX_QUEUED_MESSAGES: usize = 4096;

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Http,
    WebSocket,
}

/// What the plugin answered to the request that opened a stream.
#[derive(Debug)]
pub(crate) enum HeadOutcome {
    Head(super::ResponseHead),
    /// The plugin answered `error` before any head.
    Error {
        code: String,
        message: String,
    },
    /// The head broke one of the host's limits on response heads.
    TooLarge {
        headers: usize,
        bytes: usize,
    },
}

/// How the plugin's side of a stream ended, or why the whole stream was cut off.
#[derive(Debug, Clone)]
pub(crate) enum StreamEnd {
    /// The body is complete (`END`, or a head with `end_stream: true`).
    Finished,
    /// The WebSocket was closed by the plugin (`ws_close`).
    WsClosed { code: u16, reason: String },
    /// The stream was cut off.
    Aborted(Abort),
}

/// Why a stream was cut off.
#[derive(Debug, Clone)]
pub(crate) enum Abort {
    /// The plugin sent `error` for the stream after its head.
    Plugin { code: String, message: String },
    /// The connection ended.
    ConnectionLost,
    /// Nothing moved either way for the idle timeout.
    Idle(std::time::Duration),
    /// The response head did not come within the request timeout.
    HeadTimeout(std::time::Duration),
    /// The host cancelled it (the caller went away or broke a limit).
    Cancelled,
    /// The host is shutting down.
    HostStopping,
    /// A WebSocket's reader fell [`MAX_QUEUED_MESSAGES`] messages behind.
    TooManyMessages,
}

/// One stream, shared by the reader task and the caller's handle.
pub(crate) struct Stream {
    pub(crate) id: RequestId,
    pub(crate) kind: Kind,
    state: Mutex<State>,
    /// Woken when `credit` arrives or the stream ends.
    pub(crate) credit: Notify,
}

struct State {
    head_tx: Option<oneshot::Sender<HeadOutcome>>,
    /// The head came (it may still be held back in `deferred`).
    head_arrived: bool,
    /// A head held back until the end of the reader's batch.
    deferred: Option<super::ResponseHead>,
    /// When the head is due; the sweeper cancels the stream after that.
    head_deadline: Option<Instant>,
    /// The head said data follows.
    body_open: bool,
    inbox: VecDeque<Piece>,
    /// Small HTTP data, after `inbox`.
    tail: BytesMut,
    /// What the plugin may still send.
    recv_window: u64,
    /// Consumed, not yet granted back.
    uncredited: u64,
    waker: Option<Waker>,
    end: Option<StreamEnd>,
    /// What the host may still send.
    send_window: u64,
    /// Whether the idle timeout applies (while the host sends the body, and after the head).
    idle_applies: bool,
    last_activity: Instant,
}

/// A piece of the plugin's data and its flags.
pub(crate) type Piece = (Bytes, DataFlags);

/// What the reader did with a data frame.
pub(crate) enum Pushed {
    Ok,
    /// The stream ended with this frame: take it out of the connection's table.
    Ended,
    /// The plugin broke the protocol.
    Violation(Violation),
    /// The stream must be cut off (and the plugin told).
    Abort(Abort),
}

impl Stream {
    pub(crate) fn new(id: RequestId, kind: Kind) -> (Stream, oneshot::Receiver<HeadOutcome>) {
        let (tx, rx) = oneshot::channel();
        let stream = Stream {
            id,
            kind,
            state: Mutex::new(State {
                head_tx: Some(tx),
                head_arrived: false,
                deferred: None,
                head_deadline: None,
                body_open: false,
                inbox: VecDeque::new(),
                tail: BytesMut::new(),
                recv_window: u64::from(STREAM_WINDOW),
                uncredited: 0,
                waker: None,
                end: None,
                send_window: u64::from(STREAM_WINDOW),
                idle_applies: false,
                last_activity: Instant::now(),
            }),
            credit: Notify::new(),
        };
        (stream, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("stream lock")
    }

    /// The head arrived. Returns whether the stream is over with it (no body follows).
    pub(crate) fn head(&self, outcome: HeadOutcome, body_follows: bool) -> bool {
        let mut s = self.lock();
        s.last_activity = Instant::now();
        s.head_arrived = true;
        s.head_deadline = None;
        let over = !body_follows || !matches!(outcome, HeadOutcome::Head(_));
        if over {
            s.end.get_or_insert(StreamEnd::Finished);
            s.wake();
        } else {
            s.body_open = true;
            s.idle_applies = true;
        }
        if let Some(tx) = s.head_tx.take() {
            let _ = tx.send(outcome);
        }
        drop(s);
        if over {
            self.credit.notify_waiters();
        }
        over
    }

    /// A head whose body follows, held back until [`release_head`](Self::release_head): the
    /// body's data is taken meanwhile.
    pub(crate) fn defer_head(&self, head: super::ResponseHead) {
        let mut s = self.lock();
        s.last_activity = Instant::now();
        s.head_arrived = true;
        s.head_deadline = None;
        s.body_open = true;
        s.idle_applies = true;
        s.deferred = Some(head);
    }

    /// Hands the held-back head to the caller: with the whole body in it when the body ended
    /// already (and agrees with any `Content-Length` the plugin sent), else as a stream.
    pub(crate) fn release_head(&self) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(mut head) = s.deferred.take() else {
            return;
        };
        if matches!(s.end, Some(StreamEnd::Finished)) && self.kind == Kind::Http {
            let len = head.body.len()
                + s.inbox.iter().map(|(b, _)| b.len()).sum::<usize>()
                + s.tail.len();
            if announced_length(&head.headers).is_none_or(|n| n == len as u64) {
                head.body = whole_body(head.body, &mut s.inbox, &mut s.tail, len);
                head.streaming = false;
            }
        }
        if let Some(tx) = s.head_tx.take() {
            let _ = tx.send(HeadOutcome::Head(head));
        }
    }

    /// Whether the head has arrived (or the stream ended without one).
    pub(crate) fn has_head(&self) -> bool {
        let s = self.lock();
        s.head_arrived || s.head_tx.is_none()
    }

    /// Sets when the head is due (`None`: no deadline, while the request body is sent).
    pub(crate) fn set_head_deadline(&self, at: Option<Instant>) {
        let mut s = self.lock();
        if !s.head_arrived {
            s.head_deadline = at;
        }
    }

    /// Whether the head is overdue at `now`.
    pub(crate) fn head_overdue(&self, now: Instant) -> bool {
        let s = self.lock();
        s.end.is_none() && s.head_deadline.is_some_and(|at| now >= at)
    }

    /// Data from the plugin.
    pub(crate) fn push(&self, flags: DataFlags, data: Bytes) -> Pushed {
        let mut s = self.lock();
        if !s.body_open {
            return Pushed::Violation(Violation::DataBeforeHead { stream: self.id });
        }
        let len = data.len();
        if len as u64 > s.recv_window {
            return Pushed::Violation(Violation::OverCredit {
                stream: self.id,
                len,
                window: s.recv_window,
            });
        }
        s.recv_window -= len as u64;
        s.last_activity = Instant::now();
        match self.kind {
            Kind::Http => {
                if len < COPY_BELOW {
                    s.tail.extend_from_slice(&data);
                } else {
                    if !s.tail.is_empty() {
                        let tail = s.tail.split().freeze();
                        s.inbox.push_back((tail, DataFlags::NONE));
                    }
                    s.inbox.push_back((data, DataFlags::NONE));
                }
                let ended = flags.contains(DataFlags::END);
                if ended {
                    s.end = Some(StreamEnd::Finished);
                }
                s.wake();
                if ended { Pushed::Ended } else { Pushed::Ok }
            }
            Kind::WebSocket => {
                if s.inbox.len() >= MAX_QUEUED_MESSAGES {
                    return Pushed::Abort(Abort::TooManyMessages);
                }
                let data = if len < COPY_BELOW {
                    Bytes::copy_from_slice(&data)
                } else {
                    data
                };
                // END means nothing on a WebSocket; only TEXT and MORE do.
                let flags = DataFlags(flags.0 & (DataFlags::TEXT.0 | DataFlags::MORE.0));
                s.inbox.push_back((data, flags));
                s.wake();
                Pushed::Ok
            }
        }
    }

    /// The plugin closed the WebSocket.
    pub(crate) fn ws_closed(&self, code: u16, reason: String) {
        self.end(StreamEnd::WsClosed { code, reason });
    }

    /// Cuts the stream off: the caller gets what was queued (at most the window), then the
    /// reason. A WebSocket whose reader fell too far behind loses its queue at once.
    pub(crate) fn abort(&self, why: Abort) {
        if matches!(why, Abort::TooManyMessages) {
            let mut s = self.lock();
            s.inbox.clear();
            s.tail = BytesMut::new();
        }
        self.end(StreamEnd::Aborted(why));
    }

    fn end(&self, end: StreamEnd) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(end.clone());
        }
        if let Some(head) = s.deferred.take()
            && let Some(tx) = s.head_tx.take()
        {
            // The head came before the end: the caller gets it, and its body the end.
            let _ = tx.send(HeadOutcome::Head(head));
        }
        if let Some(tx) = s.head_tx.take() {
            // Nobody answered yet: the waiting caller learns why from `end()`.
            drop(tx);
        }
        s.wake();
        drop(s);
        self.credit.notify_waiters();
    }

    /// How the stream ended, if it has.
    pub(crate) fn ended(&self) -> Option<StreamEnd> {
        self.lock().end.clone()
    }

    /// The next data the plugin sent, and the bytes to grant back with `credit` when it is time
    /// to (half the window consumed). `Ready(None)` once the stream ended and everything was
    /// consumed; the end is then in [`ended`](Self::ended).
    pub(crate) fn poll_data(&self, cx: &mut Context<'_>) -> Poll<Option<(Piece, Option<u32>)>> {
        let mut s = self.lock();
        let piece = match s.inbox.pop_front() {
            Some(piece) => piece,
            None if !s.tail.is_empty() => (s.tail.split().freeze(), DataFlags::NONE),
            None if s.end.is_some() => return Poll::Ready(None),
            None => {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        };
        s.last_activity = Instant::now();
        s.uncredited += piece.0.len() as u64;
        let mut grant = None;
        if s.end.is_none() && s.uncredited >= u64::from(STREAM_WINDOW / 2) {
            let bytes = s.uncredited.min(u64::from(u32::MAX)) as u32;
            s.uncredited -= u64::from(bytes);
            s.recv_window += u64::from(bytes);
            grant = Some(bytes);
        }
        Poll::Ready(Some((piece, grant)))
    }

    /// `credit` from the plugin.
    pub(crate) fn grant(&self, bytes: u32) {
        {
            let mut s = self.lock();
            s.send_window = s.send_window.saturating_add(u64::from(bytes));
            s.last_activity = Instant::now();
        }
        self.credit.notify_waiters();
    }

    /// Takes up to `want` bytes of the host's window, or `None` when it is used up. `Err` when
    /// the stream has ended.
    pub(crate) fn take_window(&self, want: usize) -> Result<Option<usize>, StreamEnd> {
        let mut s = self.lock();
        if let Some(end) = &s.end {
            return Err(end.clone());
        }
        if s.send_window == 0 && want > 0 {
            return Ok(None);
        }
        let n = (want as u64).min(s.send_window) as usize;
        s.send_window -= n as u64;
        s.last_activity = Instant::now();
        Ok(Some(n))
    }

    /// Marks whether the idle timeout applies now.
    pub(crate) fn set_idle_applies(&self, applies: bool) {
        let mut s = self.lock();
        s.idle_applies = applies;
        s.last_activity = Instant::now();
    }

    /// Something moved on the stream that the connection does not see (a WebSocket ping).
    pub(crate) fn touch(&self) {
        self.lock().last_activity = Instant::now();
    }

    /// Whether nothing moved for `idle` while the idle timeout applied.
    pub(crate) fn is_idle(&self, now: Instant, idle: std::time::Duration) -> bool {
        let s = self.lock();
        s.end.is_none() && s.idle_applies && now.duration_since(s.last_activity) >= idle
    }
}

/// The body length the plugin announced, as the host's header rules read it (see
/// `headers::from_plugin`): `Content-Length` values that agree and are numbers; anything else
/// announces nothing, and the host frames the body itself.
fn announced_length(headers: &[(String, String)]) -> Option<u64> {
    let mut length: Option<Result<u64, ()>> = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let parsed = value.trim().parse::<u64>().map_err(|_| ());
        length = Some(match (length, parsed) {
            (None, p) => p,
            (Some(Ok(a)), Ok(b)) if a == b => Ok(a),
            _ => Err(()),
        });
    }
    length.and_then(Result::ok)
}

/// `first`, then every piece in `inbox`, then `tail`, as one buffer of `len` bytes (without a
/// copy when there is only one).
fn whole_body(first: Bytes, inbox: &mut VecDeque<Piece>, tail: &mut BytesMut, len: usize) -> Bytes {
    let pieces = usize::from(!first.is_empty()) + inbox.len() + usize::from(!tail.is_empty());
    if pieces <= 1 {
        if !first.is_empty() {
            return first;
        }
        if let Some((data, _)) = inbox.pop_front() {
            return data;
        }
        return tail.split().freeze();
    }
    let mut body = BytesMut::with_capacity(len);
    body.extend_from_slice(&first);
    for (data, _) in inbox.drain(..) {
        body.extend_from_slice(&data);
    }
    body.extend_from_slice(tail);
    tail.clear();
    body.freeze()
}

impl State {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}
