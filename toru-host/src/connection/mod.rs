//! One multiplexed connection to a plugin: many requests and streams in flight both ways.
//!
//! A reader task decodes frames: replies go to the waiting caller by request id, data frames to
//! their stream's inbox (protocol 2), and the plugin's own requests (`kv`, `log`) are served
//! concurrently. A writer task owns the socket's write half and drains the bounded outbound
//! queue ([`outbound`]). A sweeper cancels streams on which nothing moved for the idle timeout.
//! A plugin that breaks the protocol is disconnected, and the [`CloseReason`] is kept for the
//! supervisor. When the connection ends, every call and stream on it ends too.

mod handle;
mod kv;
mod outbound;
mod reason;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::net::UnixStream;
use tokio::sync::{Notify, oneshot};
use tokio_util::codec::{Decoder as _, Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use toru_plugin_api::protocol::{
    CowStr, Credit, ErrorReply, HttpResponse, Payload, Ready, RequestId, STREAMS_VERSION, WsClose,
    error_code,
};
use toru_plugin_api::{CodecError, DataFrame, Frame, FrameCodec, Incoming, Message};
use tracing::Instrument;

use crate::logs::PluginLogs;
use crate::store::PluginKv;
pub(crate) use handle::{StreamHandle, StreamSender};
use kv::{IntoOwnedKv, run_kv};
use outbound::{Chunk, ControlSent, Outbound, TrySend};
pub(crate) use reason::{CloseReason, Violation};
use stream::Stream;
pub(crate) use stream::{Abort, HeadOutcome, Kind, StreamEnd};

/// The most data the host puts in one data frame (64 KiB), as `docs/protocol.md` promises.
pub(crate) const MAX_DATA_FRAME: usize = 64 * 1024;

/// A response head as the plugin sent it, detached from its frame. `body` holds a body that
/// came inside the message (protocol 1, or a protocol 2 head without a body stream).
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
    /// Data frames follow (protocol 2, `end_stream: false`).
    pub(crate) streaming: bool,
}

/// A reply from the plugin, detached from its frame.
#[derive(Debug)]
pub(crate) enum Reply {
    Ready(Ready),
    Http(ResponseHead),
    /// An `http_response` over the host's limits on response heads.
    HeadTooLarge {
        headers: usize,
        bytes: usize,
    },
    Bundle(String),
    Pong,
    Error {
        code: String,
        message: String,
    },
    /// A reply of a type that does not answer what was asked (its type name, for the error).
    #[allow(dead_code)]
    Unexpected(String),
}

/// Why a call got no reply.
#[derive(Debug)]
pub(crate) enum CallFailure {
    Timeout,
    Closed,
    TooLarge {
        len: usize,
        max: usize,
    },
    /// The plugin has as many calls and streams open as the host allows.
    TooManyStreams {
        limit: usize,
    },
}

/// What the connection serves the plugin's own requests with.
#[derive(Clone)]
pub(crate) struct Services {
    pub(crate) kv: PluginKv,
    pub(crate) logs: PluginLogs,
}

/// The host's limits on one connection's streams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// Calls and streams open at once.
    pub(crate) max_streams: usize,
    /// Nothing moved on a stream for this long: it is cancelled.
    pub(crate) idle_timeout: Duration,
    /// A request's head is due this long after the request was sent (see
    /// [`StreamHandle::set_head_deadline`]).
    pub(crate) request_timeout: Duration,
    /// Headers in one response head.
    pub(crate) max_head_headers: usize,
    /// Bytes of header names and values in one response head.
    pub(crate) max_head_bytes: usize,
}

impl StreamLimits {
    pub(crate) fn from_settings(settings: &crate::PluginHostBuilder) -> StreamLimits {
        StreamLimits {
            max_streams: settings.max_streams_per_plugin,
            idle_timeout: settings.stream_idle_timeout,
            request_timeout: settings.request_timeout,
            max_head_headers: settings.max_response_headers,
            max_head_bytes: settings.max_response_head_bytes,
        }
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits::from_settings(&crate::PluginHostBuilder::default())
    }
}

/// A handle to the connection; clones share it.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    plugin_id: String,
    codec: FrameCodec,
    limits: StreamLimits,
    out: Outbound,
    /// The protocol version the plugin chose in `ready` (0 before).
    version: AtomicU32,
    pending: Mutex<HashMap<RequestId, oneshot::Sender<Reply>>>,
    streams: Mutex<HashMap<RequestId, Arc<Stream>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
    close_reason: Mutex<Option<CloseReason>>,
    /// Woken whenever a call or stream ends, or a lease is dropped.
    settled: Notify,
    /// Callers that hold the connection to make a call (see [`Connection::lease`]).
    leases: std::sync::atomic::AtomicUsize,
}

impl Connection {
    /// Starts the reader, writer and sweeper tasks on a connected stream.
    pub(crate) fn start(
        plugin_id: &str,
        stream: UnixStream,
        codec: FrameCodec,
        services: Services,
        limits: StreamLimits,
    ) -> Connection {
        let (read, write) = stream.into_split();
        let (out, lanes) = Outbound::new();
        let inner = Arc::new(Inner {
            plugin_id: plugin_id.to_owned(),
            codec,
            limits,
            out,
            version: AtomicU32::new(0),
            pending: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            settled: Notify::new(),
            leases: std::sync::atomic::AtomicUsize::new(0),
        });
        let conn = Connection { inner };
        let span = tracing::debug_span!("connection", plugin.id = %plugin_id);
        let writer = {
            let conn = conn.clone();
            async move {
                if let Err(e) = outbound::write(write, lanes, conn.inner.closed.clone()).await {
                    conn.close(CloseReason::Io(Arc::new(e)));
                }
            }
        };
        tokio::spawn(writer.instrument(span.clone()));
        tokio::spawn(
            reader(conn.clone(), FramedRead::new(read, codec), services).instrument(span.clone()),
        );
        tokio::spawn(sweep(conn.clone()).instrument(span));
        conn
    }

    /// The protocol version the plugin chose (0 before `ready`).
    pub(crate) fn version(&self) -> u32 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Whether the connection carries streams (protocol 2 or later).
    pub(crate) fn streams(&self) -> bool {
        self.version() >= STREAMS_VERSION
    }

    /// Sends a request and waits up to `timeout` for its reply (the wait for room in the queue
    /// included). On timeout, or when the caller stops waiting, the plugin is sent `cancel`.
    pub(crate) async fn call(
        &self,
        payload: Payload<'_>,
        timeout: Duration,
    ) -> Result<Reply, CallFailure> {
        // Requests a client makes count against the limit; the host's own (`init`, `ping`)
        // do not.
        let counts_as_stream = matches!(payload, Payload::HttpRequest(_) | Payload::GetBundle);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(&Message::with_id(id, payload))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock_pending();
            if self.inner.closed.is_cancelled() {
                return Err(CallFailure::Closed);
            }
            if counts_as_stream && self.open_with(&pending) >= self.inner.limits.max_streams {
                return Err(CallFailure::TooManyStreams {
                    limit: self.inner.limits.max_streams,
                });
            }
            pending.insert(id, tx);
        }
        let mut guard = CancelOnDrop {
            conn: self,
            id,
            armed: true,
        };
        let exchange = async {
            self.inner
                .out
                .send(Chunk::Frame(frame))
                .await
                .map_err(|_| CallFailure::Closed)?;
            rx.await.map_err(|_| CallFailure::Closed)
        };
        let result = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(CallFailure::Timeout));
        if !matches!(result, Err(CallFailure::Timeout)) {
            guard.armed = false;
        }
        result
    }

    /// Opens a stream: sends the `http_request` (its `end_stream` set by the caller) and
    /// returns the handle the response head and body come through. Dropping the handle before
    /// the stream ended sends `cancel`. Waits for room in the queue up to the request timeout
    /// ([`CallFailure::Timeout`]); the head's own deadline is the caller's to set
    /// ([`StreamHandle::set_head_deadline`]).
    pub(crate) async fn open(
        &self,
        request: toru_plugin_api::protocol::HttpRequest<'_>,
        kind: Kind,
    ) -> Result<StreamHandle, CallFailure> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(&Message::with_id(id, Payload::HttpRequest(request)))?;
        let (stream, head_rx) = Stream::new(id, kind);
        let stream = Arc::new(stream);
        {
            let pending = self.lock_pending();
            if self.inner.closed.is_cancelled() {
                return Err(CallFailure::Closed);
            }
            if self.open_with(&pending) >= self.inner.limits.max_streams {
                return Err(CallFailure::TooManyStreams {
                    limit: self.inner.limits.max_streams,
                });
            }
            // Lock order: pending, then streams.
            self.lock_streams().insert(id, Arc::clone(&stream));
        }
        let handle = StreamHandle::new(self.clone(), stream, head_rx);
        // Almost always there is room: no timer then.
        match self.inner.out.try_send(Chunk::Frame(frame)) {
            Ok(()) => {}
            Err(TrySend::Closed) => return Err(CallFailure::Closed),
            Err(TrySend::Full(chunk)) => {
                let room = self.inner.out.send(chunk);
                match tokio::time::timeout(self.inner.limits.request_timeout, room).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(CallFailure::Closed),
                    Err(_) => return Err(CallFailure::Timeout),
                }
            }
        }
        Ok(handle)
    }

    /// Sends a message that gets no reply (`shutdown`, a reply to the plugin), in order with
    /// requests and data.
    pub(crate) async fn send(&self, message: &Message<'_>) -> Result<(), CallFailure> {
        let frame = self.encode(message)?;
        self.inner
            .out
            .send(Chunk::Frame(frame))
            .await
            .map_err(|_| CallFailure::Closed)
    }

    /// Queues a data frame of `data` (at most the frame limit) on stream `stream`.
    async fn send_data(
        &self,
        stream: RequestId,
        flags: toru_plugin_api::DataFlags,
        data: Bytes,
    ) -> Result<(), CallFailure> {
        let head = DataFrame::header(stream, flags, data.len(), self.inner.codec.max_frame_len())
            .map_err(|_| CallFailure::TooLarge {
            len: data.len(),
            max: self.inner.codec.max_frame_len(),
        })?;
        self.inner
            .out
            .send(Chunk::Data { head, data })
            .await
            .map_err(|_| CallFailure::Closed)
    }

    /// Queues a notice ahead of data, without waiting (`cancel`, `credit`, error replies). A
    /// plugin that has left a megabyte of them unread is disconnected.
    fn send_control(&self, message: &Message<'_>) {
        let Ok(frame) = self.encode(message) else {
            return;
        };
        if self.inner.out.send_control(frame) == ControlSent::Full {
            self.close(CloseReason::NotReading);
        }
    }

    fn send_cancel(&self, id: RequestId) {
        self.send_control(&Message::with_id(id, Payload::Cancel));
    }

    fn send_credit(&self, id: RequestId, bytes: u32) {
        self.send_control(&Message::with_id(id, Payload::Credit(Credit { bytes })));
    }

    fn encode(&self, message: &Message<'_>) -> Result<Bytes, CallFailure> {
        // Most messages are a few hundred bytes; start there rather than growing from nothing.
        let mut buf = BytesMut::with_capacity(512);
        let mut codec = self.inner.codec;
        match codec.encode(message, &mut buf) {
            Ok(()) => Ok(buf.freeze()),
            Err(CodecError::FrameTooLarge { len, max }) => Err(CallFailure::TooLarge { len, max }),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a message for the plugin");
                Err(CallFailure::Closed)
            }
        }
    }

    /// Closes the connection, keeping the first reason given. Every call waiting for a reply
    /// fails and every open stream is cut off.
    pub(crate) fn close(&self, reason: CloseReason) {
        {
            let mut slot = self.inner.close_reason.lock().expect("close reason lock");
            if slot.is_none() {
                *slot = Some(reason.clone());
            }
        }
        self.inner.closed.cancel();
        self.inner.out.close();
        self.lock_pending().clear();
        let streams: Vec<Arc<Stream>> = self.lock_streams().drain().map(|(_, s)| s).collect();
        for stream in streams {
            stream.abort(Abort::ConnectionLost);
        }
        self.inner.settled.notify_waiters();
    }

    /// Waits until the connection is closed and says why.
    pub(crate) async fn closed(&self) -> CloseReason {
        self.inner.closed.cancelled().await;
        self.close_reason().unwrap_or(CloseReason::ClosedByPlugin)
    }

    /// Why the connection was closed, if it was.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.inner
            .close_reason
            .lock()
            .expect("close reason lock")
            .clone()
    }

    /// Calls waiting for a reply, streams open (health pings included) and calls about to be
    /// made (leases). The supervisor's zero-downtime upgrade waits on these.
    pub(crate) fn in_flight(&self) -> usize {
        self.open_with(&self.lock_pending()) + self.inner.leases.load(Ordering::Acquire)
    }

    /// Calls waiting for a reply and streams open: what the stream limit counts.
    fn open_with(&self, pending: &HashMap<RequestId, oneshot::Sender<Reply>>) -> usize {
        pending.len() + self.lock_streams().len()
    }

    /// The connection, held for a call: until the lease is dropped, [`drained`](Self::drained)
    /// counts it as in flight. Taken where the connection is looked up, so that a call made
    /// just as the plugin is upgraded is not cut off between the lookup and its request.
    pub(crate) fn lease(&self) -> Leased {
        self.inner.leases.fetch_add(1, Ordering::AcqRel);
        Leased(self.clone())
    }

    /// Resolves once no call, stream or lease is open (at once if none is; always once the
    /// connection has closed). New calls may start meanwhile; this returns the first time none
    /// is left.
    pub(crate) async fn drained(&self) {
        loop {
            let settled = self.inner.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.in_flight() == 0 || self.inner.closed.is_cancelled() {
                return;
            }
            settled.await;
        }
    }

    /// Ends every open stream because the host is shutting down: a WebSocket's client gets
    /// 1001 and the plugin `ws_close` 1001; an HTTP stream's client sees its response cut off
    /// and the plugin gets `cancel`.
    pub(crate) fn end_streams(&self) {
        let streams: Vec<Arc<Stream>> = self.lock_streams().drain().map(|(_, s)| s).collect();
        for stream in streams {
            if stream.ended().is_some() {
                continue;
            }
            match stream.kind {
                Kind::WebSocket if stream.has_head() => self.send_control(&Message::with_id(
                    stream.id,
                    Payload::WsClose(WsClose {
                        code: 1001,
                        reason: CowStr::borrowed("the host is shutting down"),
                    }),
                )),
                _ => self.send_cancel(stream.id),
            }
            stream.abort(Abort::HostStopping);
        }
        self.inner.settled.notify_waiters();
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RequestId, oneshot::Sender<Reply>>> {
        self.inner.pending.lock().expect("pending lock")
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Arc<Stream>>> {
        self.inner.streams.lock().expect("streams lock")
    }

    fn stream(&self, id: Option<RequestId>) -> Option<Arc<Stream>> {
        id.and_then(|id| self.lock_streams().get(&id).cloned())
    }

    fn remove_stream(&self, id: RequestId) {
        if self.lock_streams().remove(&id).is_some() {
            self.inner.settled.notify_waiters();
        }
    }

    /// Cuts a stream off and tells the plugin (`cancel`).
    fn cancel_stream(&self, stream: &Stream, why: Abort) {
        if stream.ended().is_none() {
            self.send_cancel(stream.id);
            stream.abort(why);
        }
        self.remove_stream(stream.id);
    }

    fn deliver(&self, id: Option<RequestId>, reply: Reply) {
        let waiter = id.and_then(|id| self.lock_pending().remove(&id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
                self.inner.settled.notify_waiters();
            }
            // A reply after a timeout or cancel; nobody waits for it any more.
            None => tracing::debug!(request.id = ?id, "reply to a request nobody waits for"),
        }
    }
}

/// Removes a pending call and sends `cancel` when its caller stops waiting.
struct CancelOnDrop<'a> {
    conn: &'a Connection,
    id: RequestId,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed && self.conn.lock_pending().remove(&self.id).is_some() {
            self.conn.send_cancel(self.id);
            self.conn.inner.settled.notify_waiters();
        }
    }
}

async fn reader(
    conn: Connection,
    mut frames: FramedRead<tokio::net::unix::OwnedReadHalf, FrameCodec>,
    services: Services,
) {
    // Heads held back until the frames read with them are handled (see `Stream::defer_head`).
    let mut deferred = Vec::new();
    loop {
        let next = tokio::select! {
            next = frames.next() => next,
            _ = conn.inner.closed.cancelled() => return,
        };
        let mut item = next;
        // Every frame this read brought, then the held-back heads.
        let result = loop {
            if let Err(reason) = on_item(&conn, item, &services, &mut deferred) {
                break Err(reason);
            }
            let mut codec = *frames.decoder();
            match codec.decode(frames.read_buffer_mut()).transpose() {
                Some(next) => item = Some(next),
                None => break Ok(()),
            }
        };
        for stream in deferred.drain(..) {
            stream.release_head();
        }
        if let Err(reason) = result {
            conn.close(reason);
            return;
        }
    }
}

/// One frame (or the end of the socket) from the plugin. An `Err` ends the connection.
fn on_item(
    conn: &Connection,
    item: Option<Result<Incoming, CodecError>>,
    services: &Services,
    deferred: &mut Vec<Arc<Stream>>,
) -> Result<(), CloseReason> {
    match item {
        None => Err(CloseReason::ClosedByPlugin),
        Some(Err(CodecError::Io(e))) => Err(CloseReason::Io(Arc::new(e))),
        Some(Err(e)) => Err(CloseReason::Protocol(Violation::Codec(Arc::new(e)))),
        Some(Ok(Incoming::Message(frame))) => {
            tracing::trace!(len = frame.bytes().len(), "frame from plugin");
            dispatch(conn, &frame, services, deferred)
        }
        Some(Ok(Incoming::Data(data))) => on_data(conn, data),
    }
}

/// Cancels streams on which nothing moved for the idle timeout, and requests whose head did
/// not come within the request timeout. It looks every quarter of the shorter of the two (at
/// least every 10 ms, at most every second), so a deadline is kept to within that.
async fn sweep(conn: Connection) {
    let idle = conn.inner.limits.idle_timeout;
    let tick = (idle.min(conn.inner.limits.request_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = conn.inner.closed.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        let due: Vec<(Arc<Stream>, Abort)> = conn
            .lock_streams()
            .values()
            .filter_map(|s| {
                if s.head_overdue(now) {
                    Some((
                        Arc::clone(s),
                        Abort::HeadTimeout(conn.inner.limits.request_timeout),
                    ))
                } else if s.is_idle(now, idle) {
                    Some((Arc::clone(s), Abort::Idle(idle)))
                } else {
                    None
                }
            })
            .collect();
        for (stream, why) in due {
            tracing::debug!(request.id = stream.id, reason = ?why, "stream cancelled");
            conn.cancel_stream(&stream, why);
        }
    }
}

fn protocol(why: String) -> CloseReason {
    CloseReason::Protocol(Violation::Message(why))
}

/// A data frame from the plugin. An `Err` is a protocol violation that ends the connection.
fn on_data(conn: &Connection, data: DataFrame) -> Result<(), CloseReason> {
    if !conn.streams() {
        return Err(CloseReason::Protocol(Violation::DataOnVersion1 {
            stream: data.stream,
        }));
    }
    // A stream that has ended (or never was): frames already on their way are ignored.
    let Some(stream) = conn.stream(Some(data.stream)) else {
        tracing::trace!(request.id = data.stream, "data for a stream that has ended");
        return Ok(());
    };
    match stream.push(data.flags, data.data) {
        stream::Pushed::Ok => {}
        stream::Pushed::Ended => conn.remove_stream(stream.id),
        stream::Pushed::Violation(v) => return Err(CloseReason::Protocol(v)),
        stream::Pushed::Abort(why) => {
            conn.send_control(&Message::with_id(
                stream.id,
                Payload::WsClose(WsClose {
                    code: 1008,
                    reason: CowStr::borrowed("too many messages queued for the client"),
                }),
            ));
            stream.abort(why);
            conn.remove_stream(stream.id);
        }
    }
    Ok(())
}

/// Handles one frame from the plugin. An `Err` is a protocol violation that ends the connection.
fn dispatch(
    conn: &Connection,
    frame: &Frame,
    services: &Services,
    deferred: &mut Vec<Arc<Stream>>,
) -> Result<(), CloseReason> {
    let message = frame.message().map_err(|e| {
        CloseReason::Protocol(Violation::Message(match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        }))
    })?;
    let id = message.request_id;
    match message.payload {
        Payload::Ready(r) => {
            conn.inner
                .version
                .store(r.protocol_version, Ordering::Release);
            conn.deliver(id, Reply::Ready(r));
        }
        Payload::HttpResponse(r) => on_response(conn, id, frame, r, deferred)?,
        Payload::Bundle(b) => conn.deliver(id, Reply::Bundle(b.script.into_string())),
        Payload::Pong => conn.deliver(id, Reply::Pong),
        Payload::Error(ErrorReply { code, message }) => {
            let (code, message) = (code.into_string(), message.into_string());
            match conn.stream(id) {
                Some(stream) if stream.has_head() => {
                    // After the head, `error` aborts the stream.
                    stream.abort(Abort::Plugin { code, message });
                    conn.remove_stream(stream.id);
                }
                Some(stream) => {
                    stream.head(HeadOutcome::Error { code, message }, false);
                    conn.remove_stream(stream.id);
                }
                None => conn.deliver(id, Reply::Error { code, message }),
            }
        }
        Payload::Credit(Credit { bytes }) => {
            // Credit for a stream that has ended, or that never was, is ignored.
            if let Some(stream) = conn.stream(id) {
                stream.grant(bytes);
            }
        }
        Payload::WsClose(close) => {
            if let Some(stream) = conn.stream(id)
                && stream.kind == Kind::WebSocket
                && stream.has_head()
            {
                stream.ws_closed(close.code, close.reason.into_string());
                conn.remove_stream(stream.id);
            }
        }
        Payload::KvResult(_) => conn.deliver(id, Reply::Unexpected("kv_result".into())),
        Payload::Log(record) => services
            .logs
            .protocol_record(&conn.inner.plugin_id, &record),
        Payload::Kv(op) => {
            let Some(id) = id else {
                return Err(protocol(
                    "plugin sent a kv request without a request_id".into(),
                ));
            };
            let op = op.into_owned_kv();
            let conn = conn.clone();
            let kv = services.kv.clone();
            tokio::spawn(async move {
                let reply = match run_kv(&kv, op).await {
                    Ok(result) => Message::with_id(id, Payload::KvResult(result)),
                    Err(e) => Message::error(Some(id), e.code(), e.to_string()),
                };
                let _ = conn.send(&reply).await;
            });
        }
        other => {
            // Requests only the host may send, and types nobody knows: answer, carry on.
            if let Some(id) = id {
                let (code, text) = match &other {
                    Payload::Unknown(t) => (
                        error_code::UNKNOWN_TYPE,
                        format!("the host does not know message type {t:?}"),
                    ),
                    p => (
                        error_code::BAD_REQUEST,
                        format!("plugins may not send {:?} to the host", p.type_name()),
                    ),
                };
                conn.send_control(&Message::error(Some(id), code, text));
            }
        }
    }
    Ok(())
}

/// An `http_response` after the host's checks.
#[derive(Debug)]
pub(crate) enum Checked {
    Head(ResponseHead),
    /// Over the limits on response heads (the plugin carries on; the client gets 502).
    TooLarge {
        headers: usize,
        bytes: usize,
        /// The plugin meant a body to follow (it is cancelled).
        body_follows: bool,
    },
}

/// Checks an `http_response` against the protocol and the host's limits. An `Err` breaks the
/// protocol. Pure, so that the fuzz target can run it.
pub(crate) fn check_response(
    frame: &Frame,
    r: HttpResponse<'_>,
    limits: &StreamLimits,
    streams: bool,
) -> Result<Checked, CloseReason> {
    if !(100..=999).contains(&r.status) {
        return Err(protocol(format!(
            "plugin sent an invalid HTTP status {}",
            r.status
        )));
    }
    let body =
        match (r.body, r.body_base64) {
            (Some(_), Some(_)) => {
                return Err(protocol("plugin sent both body and body_base64".into()));
            }
            (Some(text), None) => slice_or_copy(frame, text),
            (None, Some(b64)) => Bytes::from(BASE64.decode(b64.as_bytes()).map_err(|e| {
                protocol(format!("plugin sent body_base64 that is not base64: {e}"))
            })?),
            (None, None) => Bytes::new(),
        };
    let head_bytes: usize = r.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if r.headers.len() > limits.max_head_headers || head_bytes > limits.max_head_bytes {
        return Ok(Checked::TooLarge {
            headers: r.headers.len(),
            bytes: head_bytes,
            body_follows: r.end_stream == Some(false),
        });
    }
    Ok(Checked::Head(ResponseHead {
        status: r.status,
        headers: r
            .headers
            .into_iter()
            .map(|(n, v)| (n.into_string(), v.into_string()))
            .collect(),
        body,
        streaming: streams && r.end_stream == Some(false),
    }))
}

/// An `http_response`: checked, then handed to its stream or its waiting caller.
fn on_response(
    conn: &Connection,
    id: Option<RequestId>,
    frame: &Frame,
    r: HttpResponse<'_>,
    deferred: &mut Vec<Arc<Stream>>,
) -> Result<(), CloseReason> {
    let stream = conn.stream(id);
    if stream.as_ref().is_some_and(|s| s.has_head()) {
        // A second head: the request is no longer outstanding, so the reply is ignored.
        return Ok(());
    }
    match check_response(frame, r, &conn.inner.limits, conn.streams())? {
        Checked::TooLarge {
            headers,
            bytes,
            body_follows,
        } => {
            tracing::warn!(
                headers,
                bytes,
                "plugin's response head is over the host's limits"
            );
            match stream {
                Some(stream) => {
                    stream.head(HeadOutcome::TooLarge { headers, bytes }, false);
                    if body_follows {
                        conn.send_cancel(stream.id);
                    }
                    conn.remove_stream(stream.id);
                }
                None => conn.deliver(id, Reply::HeadTooLarge { headers, bytes }),
            }
        }
        Checked::Head(head) => match stream {
            // A body follows: the head waits for what was read with it (its body, often).
            Some(stream) if head.streaming && stream.kind == Kind::Http => {
                stream.defer_head(head);
                deferred.push(stream);
            }
            Some(stream) => {
                let streaming = head.streaming;
                if stream.head(HeadOutcome::Head(head), streaming) {
                    conn.remove_stream(stream.id);
                }
            }
            None => conn.deliver(id, Reply::Http(head)),
        },
    }
    Ok(())
}

/// A text body that borrows from the frame is sliced out of it without copying.
fn slice_or_copy(frame: &Frame, text: CowStr<'_>) -> Bytes {
    match text.0 {
        std::borrow::Cow::Borrowed(s) => frame.bytes().slice_ref(s.as_bytes()),
        std::borrow::Cow::Owned(s) => Bytes::from(s),
    }
}

/// A connection held for a call (see [`Connection::lease`]).
pub(crate) struct Leased(Connection);

impl std::ops::Deref for Leased {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        if self.0.inner.leases.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.settled.notify_waiters();
        }
    }
}
