//! One multiplexed connection to a plugin: many requests in flight both ways.
//!
//! A reader task decodes frames: replies go to the waiting caller by request id; the plugin's
//! own requests (`kv`, `log`) are served concurrently. A writer task owns the socket's write
//! half; callers encode their frames themselves and hand it bytes. A plugin that breaks the
//! protocol (a frame that is not a message, an oversized frame) is disconnected, and the reason
//! is kept for the supervisor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use toru_plugin_api::protocol::{
    CowStr, ErrorReply, KV_LIST_MAX, KvRequest, KvResult, Payload, Ready, RequestId, error_code,
};
use toru_plugin_api::{CodecError, Frame, FrameCodec, Incoming, Message};
use tracing::Instrument;

use crate::logs::PluginLogs;
use crate::request::PluginResponse;
use crate::store::PluginKv;

/// Why a connection was closed. Rendered to text only where it is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The plugin closed its end of the socket.
    ClosedByPlugin,
    /// The plugin broke the protocol (a frame that is not a message, an oversized frame, a
    /// message it may not send); the text says how.
    Protocol(String),
    /// Writing to the socket failed.
    WriteFailed(String),
    /// The host closed it; the text says why.
    Host(String),
}

impl CloseReason {
    /// Whether the plugin broke the protocol: then that, not how its process ended, is the cause.
    pub(crate) fn is_protocol_break(&self) -> bool {
        matches!(self, CloseReason::Protocol(_))
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClosedByPlugin => f.write_str("the plugin closed its connection"),
            CloseReason::Protocol(why) => write!(f, "plugin broke the protocol: {why}"),
            CloseReason::WriteFailed(why) => {
                write!(f, "writing to the plugin's socket failed: {why}")
            }
            CloseReason::Host(why) => f.write_str(why),
        }
    }
}

/// A reply from the plugin, detached from its frame.
#[derive(Debug)]
pub(crate) enum Reply {
    Ready(Ready),
    Http(PluginResponse),
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
    TooLarge { len: usize, max: usize },
}

/// What the connection serves the plugin's own requests with.
#[derive(Clone)]
pub(crate) struct Services {
    pub(crate) kv: PluginKv,
    pub(crate) logs: PluginLogs,
}

/// A handle to the connection; clones share it.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    plugin_id: String,
    codec: FrameCodec,
    out: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<RequestId, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
    close_reason: Mutex<Option<CloseReason>>,
    /// Woken whenever the last call in flight ends, or the last lease is dropped.
    idle: tokio::sync::Notify,
    /// Callers that hold the connection to make a call (see [`Connection::lease`]).
    leases: std::sync::atomic::AtomicUsize,
}

impl Connection {
    /// Starts the reader and writer tasks on a connected stream.
    pub(crate) fn start(
        plugin_id: &str,
        stream: UnixStream,
        codec: FrameCodec,
        services: Services,
    ) -> Connection {
        let (read, write) = stream.into_split();
        let (out, out_rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            plugin_id: plugin_id.to_owned(),
            codec,
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            idle: tokio::sync::Notify::new(),
            leases: std::sync::atomic::AtomicUsize::new(0),
        });
        let conn = Connection { inner };
        let span = tracing::debug_span!("connection", plugin.id = %plugin_id);
        tokio::spawn(writer(conn.clone(), write, out_rx).instrument(span.clone()));
        tokio::spawn(reader(conn.clone(), FramedRead::new(read, codec), services).instrument(span));
        conn
    }

    /// Sends a request and waits up to `timeout` for its reply. On timeout, or when the caller
    /// stops waiting, the plugin is sent `cancel`.
    pub(crate) async fn call(
        &self,
        payload: Payload<'_>,
        timeout: Duration,
    ) -> Result<Reply, CallFailure> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(&Message::with_id(id, payload))?;
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        let mut guard = CancelOnDrop {
            conn: self,
            id,
            armed: true,
        };
        if self.inner.out.send(frame).await.is_err() {
            return Err(CallFailure::Closed);
        }
        let result = tokio::select! {
            reply = rx => reply.map_err(|_| CallFailure::Closed),
            _ = tokio::time::sleep(timeout) => Err(CallFailure::Timeout),
        };
        if !matches!(result, Err(CallFailure::Timeout)) {
            guard.armed = false;
        }
        result
    }

    /// Sends a message that gets no reply (`shutdown`, `cancel`, a reply to the plugin).
    pub(crate) async fn send(&self, message: &Message<'_>) -> Result<(), CallFailure> {
        let frame = self.encode(message)?;
        self.inner
            .out
            .send(frame)
            .await
            .map_err(|_| CallFailure::Closed)
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

    /// Closes the connection, keeping the first reason given.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut slot = self.inner.close_reason.lock().expect("close reason lock");
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.inner.closed.cancel();
        self.lock_pending().clear();
        self.inner.idle.notify_waiters();
    }

    /// Waits until the connection is closed and says why.
    pub(crate) async fn closed(&self) -> CloseReason {
        self.inner.closed.cancelled().await;
        self.close_reason()
            .unwrap_or_else(|| CloseReason::Host("connection closed".into()))
    }

    /// Why the connection was closed, if it was.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.inner
            .close_reason
            .lock()
            .expect("close reason lock")
            .clone()
    }

    /// How many calls wait for the plugin's reply, or are about to be made (leases).
    pub(crate) fn in_flight(&self) -> usize {
        self.lock_pending().len() + self.inner.leases.load(Ordering::Acquire)
    }

    /// The connection, held for a call: until the lease is dropped, [`drained`](Self::drained)
    /// counts it as in flight. Taken where the connection is looked up, so that a call made
    /// just as the plugin is upgraded is not cut off between the lookup and its request.
    pub(crate) fn lease(&self) -> Leased {
        self.inner.leases.fetch_add(1, Ordering::AcqRel);
        Leased(self.clone())
    }

    /// Waits until no call waits for a reply (at once when none does, and when the connection
    /// is closed). New calls may start meanwhile; this returns the first time none is left.
    pub(crate) async fn drained(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() == 0 || self.inner.closed.is_cancelled() {
                return;
            }
            idle.await;
        }
    }

    /// Removes a pending call, waking [`drained`](Self::drained) when it was the last.
    fn take_pending(&self, id: RequestId) -> Option<oneshot::Sender<Reply>> {
        let mut pending = self.lock_pending();
        let waiter = pending.remove(&id);
        if waiter.is_some() && pending.is_empty() {
            self.inner.idle.notify_waiters();
        }
        waiter
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RequestId, oneshot::Sender<Reply>>> {
        self.inner.pending.lock().expect("pending lock")
    }

    fn deliver(&self, id: Option<RequestId>, reply: Reply) {
        let waiter = id.and_then(|id| self.take_pending(id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            // A reply after a timeout or cancel; nobody waits for it any more.
            None => tracing::debug!(request.id = ?id, "reply to a request nobody waits for"),
        }
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
            self.0.inner.idle.notify_waiters();
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
        if self.armed && self.conn.take_pending(self.id).is_some() {
            let cancel = Message::with_id(self.id, Payload::Cancel);
            if let Ok(frame) = self.conn.encode(&cancel) {
                let _ = self.conn.inner.out.try_send(frame);
            }
        }
    }
}

async fn writer(conn: Connection, write: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut write = BufWriter::new(write);
    loop {
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            _ = conn.inner.closed.cancelled() => None,
        };
        let Some(frame) = frame else { break };
        let mut result = write.write_all(&frame).await;
        // Batch what is queued already into one flush.
        while result.is_ok()
            && let Ok(more) = rx.try_recv()
        {
            result = write.write_all(&more).await;
        }
        if let Err(e) = result.and(write.flush().await) {
            conn.close(CloseReason::WriteFailed(e.to_string()));
            break;
        }
    }
    let _ = write.shutdown().await;
}

async fn reader(
    conn: Connection,
    mut frames: FramedRead<tokio::net::unix::OwnedReadHalf, FrameCodec>,
    services: Services,
) {
    loop {
        let next = tokio::select! {
            next = frames.next() => next,
            _ = conn.inner.closed.cancelled() => return,
        };
        let frame = match next {
            None => {
                conn.close(CloseReason::ClosedByPlugin);
                return;
            }
            Some(Err(e)) => {
                conn.close(CloseReason::Protocol(e.to_string()));
                return;
            }
            Some(Ok(Incoming::Message(frame))) => frame,
            Some(Ok(Incoming::Data(data))) => {
                // The host agrees on protocol 1 only for now, which has no streams.
                conn.close(CloseReason::Protocol(format!(
                    "a data frame (stream {}) on a protocol 1 connection",
                    data.stream
                )));
                return;
            }
        };
        tracing::trace!(len = frame.bytes().len(), "frame from plugin");
        if let Err(reason) = dispatch(&conn, &frame, &services) {
            conn.close(CloseReason::Protocol(reason));
            return;
        }
    }
}

/// Handles one frame from the plugin. An `Err` is a protocol violation that ends the connection.
fn dispatch(conn: &Connection, frame: &Frame, services: &Services) -> Result<(), String> {
    let message = frame
        .message()
        .map_err(|e| format!("{e}: {}", source_text(&e)))?;
    let id = message.request_id;
    match message.payload {
        Payload::Ready(r) => conn.deliver(id, Reply::Ready(r)),
        Payload::HttpResponse(r) => {
            conn.deliver(id, Reply::Http(PluginResponse::from_frame(frame, r)?))
        }
        Payload::Bundle(b) => conn.deliver(id, Reply::Bundle(b.script.into_string())),
        Payload::Pong => conn.deliver(id, Reply::Pong),
        Payload::Error(ErrorReply { code, message }) => conn.deliver(
            id,
            Reply::Error {
                code: code.into_string(),
                message: message.into_string(),
            },
        ),
        Payload::KvResult(_) => conn.deliver(id, Reply::Unexpected("kv_result".into())),
        Payload::Log(record) => services
            .logs
            .protocol_record(&conn.inner.plugin_id, &record),
        Payload::Kv(op) => {
            let Some(id) = id else {
                return Err("plugin sent a kv request without a request_id".into());
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
                let reply = Message::error(Some(id), code, text);
                if let Ok(frame) = conn.encode(&reply) {
                    let _ = conn.inner.out.try_send(frame);
                }
            }
        }
    }
    Ok(())
}

fn source_text(e: &CodecError) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Owned copies of a KV request's strings, so the operation can run in its own task.
pub(crate) enum KvOp {
    Get(String),
    Set(String, String),
    Delete(String),
    List {
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
}

trait IntoOwnedKv {
    fn into_owned_kv(self) -> KvOp;
}

impl IntoOwnedKv for KvRequest<'_> {
    fn into_owned_kv(self) -> KvOp {
        match self {
            KvRequest::Get { key } => KvOp::Get(key.into_string()),
            KvRequest::Set { key, value } => KvOp::Set(key.into_string(), value.into_string()),
            KvRequest::Delete { key } => KvOp::Delete(key.into_string()),
            KvRequest::List {
                prefix,
                after,
                limit,
            } => KvOp::List {
                prefix: prefix.into_string(),
                after: after.map(CowStr::into_string),
                limit: limit.unwrap_or(KV_LIST_MAX).min(KV_LIST_MAX),
            },
        }
    }
}

async fn run_kv(kv: &PluginKv, op: KvOp) -> Result<KvResult<'static>, crate::store::KvError> {
    Ok(match op {
        KvOp::Get(key) => KvResult {
            value: kv.get(&key).await?.map(CowStr::from),
            ..KvResult::default()
        },
        KvOp::Set(key, value) => {
            kv.set(&key, &value).await?;
            KvResult::default()
        }
        KvOp::Delete(key) => KvResult {
            existed: Some(kv.delete(&key).await?),
            ..KvResult::default()
        },
        KvOp::List {
            prefix,
            after,
            limit,
        } => KvResult {
            keys: Some(
                kv.list(&prefix, after.as_deref(), limit)
                    .await?
                    .into_iter()
                    .map(CowStr::from)
                    .collect(),
            ),
            ..KvResult::default()
        },
    })
}
