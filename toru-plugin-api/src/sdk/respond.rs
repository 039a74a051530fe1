//! Sending a handler's [`Response`]: whole in one message (protocol 1), or as a head and data
//! frames under flow control (protocol 2), with the stream's end: `END`, an `error` when a
//! producer fails after the head, or `ws_close` for a WebSocket.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;

use super::body::BodyWriter;
use super::context::PluginContext;
use super::error::HttpError;
use super::in_flight::InFlight;
use super::link::Link;
use super::response::{BoxedRun, Producer, Response};
use super::stream::{Ended, Stream};
use super::websocket::{WebSocket, send_close};
use super::writer::Outgoing;
use crate::codec::DataFlags;
use crate::protocol::{Message, Payload, RequestId, STREAM_WINDOW, STREAMS_VERSION, error_code};

/// The largest body a streamed response may reach on a protocol 1 connection, where it is
/// collected and sent in one frame: 12 MiB, which fits the 16 MiB frame even as base64.
pub(crate) const V1_BODY_LIMIT: usize = 12 * 1024 * 1024;

/// Where a response goes.
pub(crate) struct Responder {
    pub(crate) id: RequestId,
    pub(crate) link: Arc<Link>,
    pub(crate) in_flight: InFlight,
    pub(crate) ctx: PluginContext,
    /// The request was a `HEAD`: the response goes without its body (and a streamed body is
    /// never produced), its headers as they are.
    pub(crate) head_only: bool,
}

/// What is left to do, once [`respond`] has looked at a response.
pub(crate) enum Respond {
    /// Nothing: the request was cancelled, or the response could not be encoded.
    Done,
    /// Queue one item (the common case: a whole response).
    Push(Arc<Link>, Outgoing),
    /// Run this: a body that streams, or a WebSocket session.
    Run(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Respond {
    /// Does it.
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold `self` twice in its state
    pub(crate) fn finish(self) -> impl Future<Output = ()> + Send {
        async move {
            match self {
                Respond::Done => {}
                Respond::Push(link, item) => {
                    let _ = link.push(item).await;
                }
                Respond::Run(run) => run.await,
            }
        }
    }
}

/// Sends `res` for the request, in the form the connection's protocol version takes.
///
/// The common case, a whole body that fits the window, is encoded here and only its queueing
/// waits; the rest is boxed. That keeps small the task every request spawns.
pub(crate) fn respond(mut res: Response, r: Responder) -> Respond {
    if r.head_only {
        drop(res.take_producer());
        res.body = Bytes::new();
    }
    let v1 = r.ctx.protocol_version() < STREAMS_VERSION;
    let item = match res.take_producer() {
        None if v1 => {
            if !r.in_flight.finish(r.id) {
                return Respond::Done;
            }
            let msg = Message::with_id(r.id, Payload::HttpResponse(res.into_wire_v1()));
            r.link.message_item(&msg)
        }
        None if res.body.len() <= STREAM_WINDOW as usize => {
            if !r.in_flight.finish(r.id) {
                return Respond::Done;
            }
            small_v2(&r.link, r.id, res)
        }
        None => return Respond::Run(Box::pin(async move { large_v2(res, &r).await })),
        Some(producer) if v1 => {
            return Respond::Run(Box::pin(
                async move { produced_v1(res, producer, &r).await },
            ));
        }
        Some(Producer::Body(produce)) => {
            return Respond::Run(Box::pin(async move { streamed_v2(res, produce, &r).await }));
        }
        Some(Producer::WebSocket(stream, session)) => {
            return Respond::Run(Box::pin(async move {
                websocket_v2(res, stream, session, &r).await;
            }));
        }
    };
    match item {
        Some(item) => Respond::Push(r.link, item),
        None => Respond::Done,
    }
}

/// A whole response that does not depend on a request in flight (a 404 for a path outside the
/// route), encoded as one item in the form the protocol version takes.
pub(crate) fn whole_item(
    link: &Link,
    id: RequestId,
    version: u32,
    res: Response,
) -> Option<Outgoing> {
    if version < STREAMS_VERSION {
        let msg = Message::with_id(id, Payload::HttpResponse(res.into_wire_v1()));
        return link.message_item(&msg);
    }
    small_v2(link, id, res)
}

/// A head and a body of at most the window, as one item: written together.
fn small_v2(link: &Link, id: RequestId, mut res: Response) -> Option<Outgoing> {
    let body = std::mem::take(&mut res.body);
    if body.is_empty() {
        let head = Message::with_id(id, Payload::HttpResponse(res.head(true)));
        link.message_item(&head)
    } else {
        let head = Message::with_id(id, Payload::HttpResponse(res.head(false)));
        link.message_and_data_item(&head, id, DataFlags::END, body)
    }
}

/// Protocol 1 has no streams: a streamed body is collected and sent whole.
async fn produced_v1(mut res: Response, producer: Producer, r: &Responder) {
    match producer {
        Producer::Body(produce) => {
            let token = r.ctx.shutdown_token().clone();
            let (writer, collected) = BodyWriter::collecting(V1_BODY_LIMIT, token);
            if let Err(e) = run_caught(produce(writer)).await {
                return fail(r, &e).await;
            }
            res.body = collected.take();
        }
        Producer::WebSocket(..) => {
            let e = HttpError::internal("WebSockets need protocol 2");
            return fail(r, &e).await;
        }
    }
    if r.in_flight.finish(r.id) {
        let msg = Message::with_id(r.id, Payload::HttpResponse(res.into_wire_v1()));
        r.link.send(&msg).await;
    }
}

/// Answers `error` for the request unless it was cancelled, and logs why.
async fn fail(r: &Responder, e: &HttpError) {
    if r.in_flight.finish(r.id) {
        r.ctx.error(format!("request {} failed: {e}", r.id));
        let msg = Message::error(Some(r.id), error_code::PLUGIN_ERROR, e.message().to_owned());
        r.link.send(&msg).await;
    }
}

/// A whole body larger than the window: it goes out as the host gives credit.
async fn large_v2(mut res: Response, r: &Responder) {
    let body = std::mem::take(&mut res.body);
    let Some(stream) = r.in_flight.attach(r.id, &r.link) else {
        return;
    };
    let head = Message::with_id(r.id, Payload::HttpResponse(res.head(false)));
    if !r.link.send(&head).await {
        return;
    }
    let mut writer = BodyWriter::streaming(stream.clone(), r.ctx.shutdown_token().clone());
    let sent = writer.send(body).await.map_err(HttpError::from);
    end_body(&stream, sent, r).await;
}

async fn streamed_v2(
    mut res: Response,
    produce: Box<dyn FnOnce(BodyWriter) -> BoxedRun + Send>,
    r: &Responder,
) {
    let Some(stream) = r.in_flight.attach(r.id, &r.link) else {
        return;
    };
    let head = Message::with_id(r.id, Payload::HttpResponse(res.head(false)));
    if !r.link.send(&head).await {
        return;
    }
    let writer = BodyWriter::streaming(stream.clone(), r.ctx.shutdown_token().clone());
    let result = run_caught(produce(writer)).await;
    end_body(&stream, result, r).await;
}

/// Ends a response body: `END`, or `error` when the producer failed.
async fn end_body(stream: &Stream, result: Result<(), HttpError>, r: &Responder) {
    if r.in_flight.finish(r.id) && stream.finish_sending() {
        match result {
            Ok(()) => {
                r.link.send_data(r.id, DataFlags::END, Bytes::new()).await;
            }
            Err(e) => {
                r.ctx
                    .error(format!("request {} failed after its head: {e}", r.id));
                let msg =
                    Message::error(Some(r.id), error_code::PLUGIN_ERROR, e.message().to_owned());
                r.link.send(&msg).await;
            }
        }
    }
    stream.end(Ended::Finished);
}

async fn websocket_v2(
    mut res: Response,
    stream: Arc<Stream>,
    session: Box<dyn FnOnce(WebSocket) -> BoxedRun + Send>,
    r: &Responder,
) {
    if stream.id() != r.id {
        let e = HttpError::internal("the handler accepted another request's WebSocket");
        return fail(r, &e).await;
    }
    let head = Message::with_id(r.id, Payload::HttpResponse(res.head(false)));
    if !r.link.send(&head).await {
        return;
    }
    let result = run_caught(session(WebSocket::new(stream.clone()))).await;
    if r.in_flight.finish(r.id) {
        let going_away = stream.ended() == Some(Ended::GoingAway);
        match result {
            _ if going_away => {
                let _ = send_close(&stream, 1001, "the plugin is shutting down").await;
            }
            Ok(()) => {
                let _ = send_close(&stream, 1000, "").await;
            }
            Err(e) => {
                let client_closed = matches!(stream.ended(), Some(Ended::ClientClosed(_)));
                if !client_closed && stream.finish_sending() {
                    r.ctx.error(format!("WebSocket {} failed: {e}", r.id));
                    let msg = Message::error(
                        Some(r.id),
                        error_code::PLUGIN_ERROR,
                        e.message().to_owned(),
                    );
                    r.link.send(&msg).await;
                }
            }
        }
    }
    stream.end(Ended::Finished);
}

/// Runs a producer or a session; a panic becomes an error.
async fn run_caught(run: BoxedRun) -> Result<(), HttpError> {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(HttpError::internal(format!(
            "the handler panicked: {}",
            panic_text(&*panic)
        ))),
    }
}

/// A panic's message, when it has one.
pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
