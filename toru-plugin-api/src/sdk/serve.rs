//! The connection loop: `init`/`ready`, then requests until `shutdown` or the host hangs up.
//!
//! One task reads frames and never waits on a handler: each `http_request` runs in its own task,
//! `ping`, `get_bundle` and `cancel` are answered on the spot, replies to the plugin's own KV
//! requests are routed to the waiting call, and (protocol 2) data frames, `credit` and
//! `ws_close` go to their stream. Everything written goes through the writer task; when its
//! queue is full, the reader waits too, so a host that stops reading stops being read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::context::PluginContext;
use super::error::{InitError, ServeError};
use super::error_chain;
use super::in_flight::{Call, InFlight, Refused, handle};
use super::link::{Link, Reply};
use super::plugin::ToruPlugin;
use super::request::Request;
use super::respond::whole_item;
use super::response::Response;
use super::stream::{CloseFrame, Ended, Stream};
use super::writer::{Outgoing, Queue, write_loop};
use crate::codec::{CodecError, DataFrame, FrameCodec, Incoming};
use crate::license::check_init;
use crate::protocol::{
    Bundle, CowStr, ErrorReply, HttpRequest, Init, KvResult, Message, Payload, Ready, RequestId,
    STREAMS_VERSION, SettingSpec, SettingsUpdate, VersionRange, error_code,
};

/// The protocol versions this SDK speaks: 1, and 2 with streams.
pub(crate) const SDK_VERSIONS: VersionRange = VersionRange::SUPPORTED;

/// How long `shutdown` waits for requests in flight.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the end of a connection waits for queued replies to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one host connection that is already established, until the host sends `shutdown`
/// (then requests and streams in flight get up to 5 s to finish) or closes the connection.
///
/// [`run`](crate::run) binds the socket, accepts the host and calls this. Call it yourself to
/// drive a plugin over a socket pair in tests.
///
/// # Errors
/// [`ServeError`] when the connection ends in a way the host should hear about through the exit
/// code; `Ok` after `shutdown` or the host hanging up.
pub async fn serve<P: ToruPlugin>(plugin: P, stream: UnixStream) -> Result<(), ServeError> {
    let (read, write) = stream.into_split();
    let (queue, queued) = Queue::new();
    let writer = tokio::spawn(write_loop(write, queued));
    let link = Arc::new(Link::new(queue));
    let meta = plugin.metadata();
    let mut conn = Connection {
        id: meta.id,
        route: meta.route,
        specs: meta.settings,
        plugin: Arc::new(plugin),
        link: link.clone(),
        frames: FramedRead::new(read, FrameCodec::new()),
        tasks: JoinSet::new(),
        in_flight: InFlight::default(),
        ctx: None,
        version: 1,
        state: State::Initialising,
    };
    let result = conn.run().await;
    // Handlers still running hold context clones; nobody waits for their replies any more.
    conn.tasks.shutdown().await;
    conn.in_flight.end_all();
    link.disconnect();
    link.close();
    // Bounded, so that a host that stops reading cannot keep the plugin alive.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
    result
}

type InitFuture = Pin<Box<dyn Future<Output = Result<(), InitError>> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `init` came; the plugin's `init` is running.
    Initialising,
    Serving,
    /// `shutdown` came: no new requests, and the connection ends at the deadline.
    Draining(Instant),
}

/// What the reader does after a frame: carry on (sending this first), or stop.
enum Flow {
    Continue(Option<Outgoing>),
    Stop,
}

struct Connection<P> {
    /// The plugin's id and route, from its metadata.
    id: String,
    route: String,
    /// The settings the metadata declares.
    specs: Vec<SettingSpec>,
    plugin: Arc<P>,
    link: Arc<Link>,
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    /// Every handler task; `in_flight` finds them by request id.
    tasks: JoinSet<()>,
    in_flight: InFlight,
    ctx: Option<PluginContext>,
    /// The protocol version agreed in `init`.
    version: u32,
    state: State,
}

impl<P: ToruPlugin> Connection<P> {
    async fn run(&mut self) -> Result<(), ServeError> {
        let Some((init, init_id)) = self.await_init().await? else {
            return Ok(());
        };
        let plugin_range = SDK_VERSIONS;
        let Some(version) = plugin_range.negotiate(&init.protocol) else {
            let err = ServeError::UnsupportedVersion {
                host: init.protocol,
                plugin: plugin_range,
            };
            self.push(self.reply_error(
                init_id,
                error_code::UNSUPPORTED_PROTOCOL_VERSION,
                err.to_string(),
            ))
            .await;
            return Err(err);
        };
        self.version = version;
        let license = match self.plugin.license() {
            None => None,
            Some(policy) => match check_init(policy, &self.id, &init.instance_id, &init.settings) {
                Ok(claims) => Some(claims),
                Err(e) => {
                    let e = InitError::refused(e.to_string());
                    self.push(self.reply_error(init_id, error_code::INIT_REFUSED, error_chain(&e)))
                        .await;
                    return Err(ServeError::InitRefused(e));
                }
            },
        };
        let specs = std::mem::take(&mut self.specs);
        let ctx = PluginContext::new(init, version, self.link.clone(), license, specs);
        self.ctx = Some(ctx.clone());
        let plugin = self.plugin.clone();
        let mut init_fut: Option<InitFuture> =
            Some(Box::pin(async move { plugin.init(&ctx).await }));
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let deadline = match self.state {
                State::Draining(at) => Some(at),
                _ => None,
            };
            tokio::select! {
                result = poll_some(&mut init_fut), if init_fut.is_some() => {
                    init_fut = None;
                    if let Err(e) = result {
                        self.push(self.reply_error(init_id, error_code::INIT_REFUSED, error_chain(&e)))
                        .await;
                        return Err(ServeError::InitRefused(e));
                    }
                    let ready = Payload::Ready(Ready { protocol_version: version });
                    self.link.send(&Message::new(init_id, ready)).await;
                    eprintln!("{} ready (protocol {version})", self.id);
                    if self.state == State::Initialising {
                        self.state = State::Serving;
                    }
                }
                item = self.frames.next() => {
                    match self.on_item(item)? {
                        Flow::Stop => return Ok(()),
                        Flow::Continue(None) => {}
                        // Waiting for room here is what stops reading from a host that does
                        // not read.
                        Flow::Continue(Some(out)) => {
                            let _ = self.link.push(out).await;
                        }
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    eprintln!(
                        "WARN {}: {} requests still running {}s after shutdown; closing anyway",
                        self.id,
                        self.tasks.len(),
                        DRAIN_TIMEOUT.as_secs()
                    );
                    return Ok(());
                }
            }
            if matches!(self.state, State::Draining(_)) && self.tasks.is_empty() {
                return Ok(());
            }
        }
    }

    /// Reads until `init`, refusing everything else. `None` when the host hangs up first.
    async fn await_init(
        &mut self,
    ) -> Result<Option<(Init<'static>, Option<RequestId>)>, ServeError> {
        loop {
            let Some(incoming) = self.frames.next().await.transpose()? else {
                return Ok(None);
            };
            // No stream can exist before `init`; a stray data frame is dropped.
            let Some(frame) = incoming.into_frame() else {
                continue;
            };
            let msg = match frame.message() {
                Ok(msg) => msg.into_owned(),
                Err(e) => {
                    self.push(self.refuse_malformed(&e)).await;
                    continue;
                }
            };
            let id = msg.request_id;
            match msg.payload {
                Payload::Init(init) => return Ok(Some((init, id))),
                other if id.is_some() => {
                    let text = format!("expected init first, got {}", other.type_name());
                    self.push(self.reply_error(id, error_code::BAD_REQUEST, text))
                        .await;
                }
                _ => {}
            }
        }
    }

    fn on_item(&mut self, item: Option<Result<Incoming, CodecError>>) -> Result<Flow, ServeError> {
        let Some(incoming) = item.transpose()? else {
            return Ok(Flow::Stop);
        };
        let frame = match incoming {
            Incoming::Message(frame) => frame,
            Incoming::Data(data) => return Ok(Flow::Continue(self.on_data(data))),
        };
        match frame.message() {
            Ok(msg) => Ok(self.on_message(msg, frame.bytes())),
            Err(e) => Ok(Flow::Continue(self.refuse_malformed(&e))),
        }
    }

    /// Hands a data frame to its stream. Frames for a stream that has ended, or that never had
    /// data, are dropped; so is any data frame on a protocol 1 connection.
    fn on_data(&mut self, data: DataFrame) -> Option<Outgoing> {
        if self.version < STREAMS_VERSION {
            tracing::debug!("ignored a data frame on a protocol 1 connection");
            return None;
        }
        let stream = self.in_flight.stream(data.stream)?;
        let e = stream.push(data.flags, data.data).err()?;
        // The host broke flow control on this stream: end it, keep the others.
        let text = format!(
            "the host sent {} bytes on stream {} with {} left in its window",
            e.len, data.stream, e.window
        );
        eprintln!("ERROR {}: {text}", self.id);
        self.in_flight.cancel(data.stream);
        self.reply_error(Some(data.stream), error_code::BAD_REQUEST, text)
    }

    fn on_message(&mut self, msg: Message<'_>, frame: &Bytes) -> Flow {
        let id = msg.request_id;
        let out = match msg.payload {
            Payload::HttpRequest(req) => self.on_http(id, req, frame),
            Payload::GetBundle => self.on_get_bundle(id),
            Payload::Ping => self.link.message_item(&Message::new(id, Payload::Pong)),
            Payload::Cancel => {
                if let Some(id) = id {
                    self.in_flight.cancel(id);
                }
                None
            }
            Payload::Credit(credit) => {
                if let Some(stream) = id.and_then(|id| self.in_flight.stream(id)) {
                    stream.credit(credit.bytes);
                }
                None
            }
            Payload::WsClose(close) => {
                if let Some(stream) = id.and_then(|id| self.in_flight.stream(id)) {
                    stream.end(Ended::ClientClosed(CloseFrame {
                        code: close.code,
                        reason: close.reason.into_string(),
                    }));
                }
                None
            }
            Payload::Settings(update) => {
                self.on_settings(update);
                None
            }
            Payload::Shutdown => {
                if self.state == State::Initialising {
                    return Flow::Stop;
                }
                if !matches!(self.state, State::Draining(_)) {
                    self.start_draining();
                }
                None
            }
            Payload::KvResult(r) => {
                self.on_reply(id, Ok(own_kv_result(r)));
                None
            }
            Payload::Error(e) => {
                let reply = ErrorReply {
                    code: e.code.into_owned(),
                    message: e.message.into_owned(),
                };
                self.on_reply(id, Err(reply));
                None
            }
            Payload::Unknown(t) if id.is_some() => {
                let text = format!("unknown message type {:?}", t.as_str());
                self.reply_error(id, error_code::UNKNOWN_TYPE, text)
            }
            Payload::Unknown(_) => None,
            Payload::Init(_) => {
                self.reply_error(id, error_code::BAD_REQUEST, "init was already received")
            }
            other @ (Payload::Kv(_) | Payload::Log(_)) => {
                let text = format!("{} is sent by plugins, not by the host", other.type_name());
                self.reply_error(id, error_code::BAD_REQUEST, text)
            }
            // Replies to requests this side never sends.
            other => {
                tracing::debug!(r#type = other.type_name(), "ignored an unexpected reply");
                None
            }
        };
        Flow::Continue(out)
    }

    /// `shutdown`: no new requests; event streams end at their next event and WebSockets
    /// close with 1001 (their handlers send the `ws_close`, after anything already queued).
    fn start_draining(&mut self) {
        self.state = State::Draining(Instant::now() + DRAIN_TIMEOUT);
        if let Some(ctx) = &self.ctx {
            ctx.shutdown_token().cancel();
        }
        for ws in self.in_flight.websockets() {
            ws.end(Ended::GoingAway);
        }
    }

    fn on_settings(&mut self, update: SettingsUpdate) {
        let Some(ctx) = &self.ctx else {
            return;
        };
        let previous = ctx.settings();
        ctx.apply_settings(update.settings, Some(&previous));
        let (plugin, ctx) = (self.plugin.clone(), ctx.clone());
        self.tasks
            .spawn(async move { plugin.settings_changed(&ctx).await });
    }

    fn on_http(
        &mut self,
        id: Option<RequestId>,
        req: HttpRequest<'_>,
        frame: &Bytes,
    ) -> Option<Outgoing> {
        let Some(id) = id else {
            let text = "an http_request needs a request_id";
            return self.reply_error(None, error_code::BAD_REQUEST, text);
        };
        if let Some((code, text)) = self.refusal() {
            return self.reply_error(Some(id), code, text);
        }
        let (req, stream) = match self.request_from_wire(id, req, frame) {
            Ok(parts) => parts,
            Err(text) => return self.reply_error(Some(id), error_code::BAD_REQUEST, text),
        };
        if !is_under(&req.path, &self.route) {
            let res = Response::error(404, "not found");
            return whole_item(&self.link, id, self.version, res);
        }
        let ctx = self
            .ctx
            .clone()
            .expect("a context exists once init has come");
        let call = Call {
            plugin: self.plugin.clone(),
            ctx,
            req,
            id,
            link: self.link.clone(),
            in_flight: self.in_flight.clone(),
        };
        let refused = self
            .in_flight
            .spawn(&mut self.tasks, id, stream, handle(call));
        let text = match refused {
            Ok(()) => return None,
            Err(Refused::Duplicate) => format!("request {id} is already in flight"),
            Err(Refused::TooMany) => format!(
                "{} requests are in flight, the most this plugin takes",
                super::in_flight::MAX_IN_FLIGHT
            ),
        };
        self.reply_error(Some(id), error_code::BAD_REQUEST, text)
    }

    /// The handler's request and, in protocol 2, its stream when it has a body to stream in
    /// or asks for a WebSocket.
    fn request_from_wire(
        &self,
        id: RequestId,
        req: HttpRequest<'_>,
        frame: &Bytes,
    ) -> Result<(Request, Option<Arc<Stream>>), String> {
        let inline = req.body.is_some() || req.body_base64.is_some();
        if self.version < STREAMS_VERSION || inline {
            // Protocol 1, or a lenient reading of a protocol 2 request that carries its body.
            return Request::from_wire_v1(req, frame)
                .map(|r| (r, None))
                .map_err(|e| e.to_string());
        }
        let websocket = req.upgrade.as_deref() == Some("websocket");
        let has_body = req.end_stream == Some(false);
        let stream = (websocket || has_body).then(|| Stream::new(id, self.link.clone(), websocket));
        Ok((Request::from_wire_v2(req, stream.clone()), stream))
    }

    fn on_get_bundle(&mut self, id: Option<RequestId>) -> Option<Outgoing> {
        if let Some((code, text)) = self.refusal() {
            return self.reply_error(id, code, text);
        }
        match self.plugin.bundle() {
            Some(script) => {
                let bundle = Bundle {
                    script: CowStr::borrowed(script),
                };
                self.link
                    .message_item(&Message::new(id, Payload::Bundle(bundle)))
            }
            None => self.reply_error(id, error_code::NOT_FOUND, "this plugin has no frontend"),
        }
    }

    /// Why a new request cannot be taken now, if it cannot.
    fn refusal(&self) -> Option<(&'static str, &'static str)> {
        match self.state {
            State::Initialising => Some((
                error_code::BAD_REQUEST,
                "the plugin has not finished starting; wait for ready",
            )),
            State::Serving => None,
            State::Draining(_) => Some((error_code::SHUTTING_DOWN, "the plugin is shutting down")),
        }
    }

    fn on_reply(&self, id: Option<RequestId>, reply: Reply) {
        let routed = id.is_some_and(|id| self.link.resolve(id, reply));
        if !routed {
            tracing::debug!(request.id = ?id, "a reply matched no request in flight");
        }
    }

    fn refuse_malformed(&self, e: &CodecError) -> Option<Outgoing> {
        let id = match e {
            CodecError::Malformed { request_id, .. } => *request_id,
            _ => None,
        };
        self.reply_error(id, error_code::BAD_REQUEST, error_chain(e))
    }

    /// An `error` reply, encoded.
    fn reply_error(
        &self,
        id: Option<RequestId>,
        code: &'static str,
        text: impl Into<String>,
    ) -> Option<Outgoing> {
        let text: String = text.into();
        self.link
            .message_item(&Message::error(id, code, CowStr::borrowed(&text)))
    }

    /// Queues `out`, if any, waiting for room.
    async fn push(&self, out: Option<Outgoing>) {
        if let Some(out) = out {
            let _ = self.link.push(out).await;
        }
    }
}

/// Whether `path` is `route` or below it (`/acme`, `/acme/`, `/acme/x`; not `/acmex`).
fn is_under(path: &str, route: &str) -> bool {
    path.strip_prefix(route)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

async fn poll_some(fut: &mut Option<InitFuture>) -> Result<(), InitError> {
    match fut {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

fn own_kv_result(r: KvResult<'_>) -> KvResult<'static> {
    KvResult {
        value: r.value.map(CowStr::into_owned),
        existed: r.existed,
        keys: r
            .keys
            .map(|k| k.into_iter().map(CowStr::into_owned).collect()),
    }
}

#[cfg(test)]
mod tests;
