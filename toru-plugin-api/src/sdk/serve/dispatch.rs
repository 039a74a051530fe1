//! The reader's work once `init` has come: each frame from the host, handled on the spot. None
//! of it waits: what must be sent back is returned, and the loop in `serve.rs` queues it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Connection, DRAIN_TIMEOUT, Flow, State};
use crate::codec::{CodecError, DataFrame, Incoming};
use crate::protocol::{
    Bundle, CowStr, ErrorReply, HttpRequest, KvResult, Message, Payload, RequestId,
    STREAMS_VERSION, SettingsUpdate, error_code,
};
use crate::sdk::error::ServeError;
use crate::sdk::error_chain;
use crate::sdk::in_flight::{Call, MAX_IN_FLIGHT, Refused, handle};
use crate::sdk::link::Reply;
use crate::sdk::plugin::ToruPlugin;
use crate::sdk::request::Request;
use crate::sdk::respond::whole_item;
use crate::sdk::response::Response;
use crate::sdk::stream::{CloseFrame, Ended, Stream};
use crate::sdk::writer::Outgoing;

impl<P: ToruPlugin> Connection<P> {
    pub(super) fn on_item(
        &mut self,
        item: Option<Result<Incoming, CodecError>>,
    ) -> Result<Flow, ServeError> {
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
        let text = match self.in_flight.admit(id, stream) {
            Ok(()) => {
                // Started once the frames read with it are handled: its body may be among them.
                self.starting
                    .get_mut()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((id, Box::pin(handle(call))));
                return None;
            }
            Err(Refused::Duplicate) => format!("request {id} is already in flight"),
            Err(Refused::TooMany) => format!(
                "{} requests are in flight, the most this plugin takes",
                MAX_IN_FLIGHT
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

    pub(super) fn refuse_malformed(&self, e: &CodecError) -> Option<Outgoing> {
        let id = match e {
            CodecError::Malformed { request_id, .. } => *request_id,
            _ => None,
        };
        self.reply_error(id, error_code::BAD_REQUEST, error_chain(e))
    }

    /// An `error` reply, encoded.
    pub(super) fn reply_error(
        &self,
        id: Option<RequestId>,
        code: &'static str,
        text: impl Into<String>,
    ) -> Option<Outgoing> {
        let text: String = text.into();
        self.link
            .message_item(&Message::error(id, code, CowStr::borrowed(&text)))
    }
}

/// Whether `path` is `route` or below it (`/acme`, `/acme/`, `/acme/x`; not `/acmex`).
pub(super) fn is_under(path: &str, route: &str) -> bool {
    path.strip_prefix(route)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
