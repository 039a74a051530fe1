//! The connection loop: `init`/`ready`, then requests until `shutdown` or the host hangs up.
//!
//! One task reads frames and never waits on a handler. It handles what one read brought as a
//! batch: each `http_request`'s handler is started on the spot and, when it finishes without
//! waiting (most do), its reply is made right there; a handler that waits goes on in a task of
//! its own. `ping`, `get_bundle` and `cancel` are answered on the spot, replies to the plugin's
//! own KV requests are routed to the waiting call, and (protocol 2) data frames, `credit` and
//! `ws_close` go to their stream. The replies of a batch are written together, in one write,
//! when the batch is done (see [`writer`](super::writer)); when the outgoing queue is full, the
//! reader waits too, so a host that stops reading stops being read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::{Decoder as _, FramedRead};

use super::context::PluginContext;
use super::error::{InitError, ServeError};
use super::error_chain;
use super::in_flight::{Handler, InFlight};
use super::link::Link;
use super::plugin::ToruPlugin;
use super::writer::{Outgoing, Queue};
use crate::codec::{CodecError, FrameCodec, Incoming};
use crate::license::check_init;
use crate::protocol::{
    Init, Message, Payload, Ready, RequestId, SettingSpec, VersionRange, error_code,
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
    let (queue, write_task) = Queue::connected(write);
    let writer = tokio::spawn(write_task);
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
        starting: std::sync::Mutex::new(Vec::new()),
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
    /// Handlers of the requests in the frames being handled, started once all are. (In a
    /// mutex only so that the connection is `Sync`, as the serve future must be `Send`; it is
    /// reached through `get_mut`, never locked.)
    starting: std::sync::Mutex<Vec<(RequestId, Handler)>>,
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
                    // The replies to this read's frames are written together once all are
                    // handled.
                    self.link.hold();
                    let flow = self.on_read(item).await;
                    self.link.release();
                    if let Flow::Stop = flow? {
                        return Ok(());
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

    /// Handles `first` and every frame read with it (already in the read buffer).
    async fn on_read(
        &mut self,
        first: Option<Result<Incoming, CodecError>>,
    ) -> Result<Flow, ServeError> {
        let mut item = first;
        loop {
            match self.on_item(item)? {
                Flow::Stop => return Ok(Flow::Stop),
                Flow::Continue(None) => {}
                // Waiting for room here is what stops reading from a host that does not read.
                Flow::Continue(Some(out)) => {
                    let _ = self.link.push(out).await;
                }
            }
            match self.buffered() {
                Some(next) => item = Some(next),
                None => break,
            }
        }
        let starting = self
            .starting
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, handler) in starting.drain(..) {
            self.in_flight.start(&mut self.tasks, id, handler);
        }
        Ok(Flow::Continue(None))
    }

    /// The next frame, if it is in the read buffer already.
    fn buffered(&mut self) -> Option<Result<Incoming, CodecError>> {
        let mut codec = *self.frames.decoder();
        codec.decode(self.frames.read_buffer_mut()).transpose()
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

    /// Queues `out`, if any, waiting for room.
    async fn push(&self, out: Option<Outgoing>) {
        if let Some(out) = out {
            let _ = self.link.push(out).await;
        }
    }
}

async fn poll_some(fut: &mut Option<InitFuture>) -> Result<(), InitError> {
    match fut {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

mod dispatch;

#[cfg(test)]
mod tests;
