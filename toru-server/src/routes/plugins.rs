//! `/plugins/<route>/<rest>`: every method forwarded to the plugin whose route is `/<route>`,
//! with the path `/<route>/<rest>`, through [`PluginHost::forward`](toru_host::PluginHost):
//! bodies streamed both ways, errors, header rules and limits all from the library. WebSocket
//! upgrades go through warp's `ws()` and the library's session. Both need the session cookie or
//! the bearer secret, and an upgrade from another site is refused.

use std::time::Instant;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, Stream, TryStreamExt};
use http_body_util::{Either, Empty, StreamBody};
use toru_host::http::header::{CONTENT_LENGTH, SEC_WEBSOCKET_PROTOCOL, TRANSFER_ENCODING};
use toru_host::http::{HeaderMap, HeaderValue, Method, Request};
use toru_host::{
    BridgeMessage, CallError, ClientFrame, ForwardedTo, PluginBody, WsMessage, WsUpgrade,
};
use warp::filters::BoxedFilter;
use warp::filters::path::FullPath;
use warp::reply::Response;
use warp::ws::{Message, Ws};
use warp::{Filter, Rejection, Reply};

use super::{State, access, with_state};

/// The path prefix of plugin routes.
const PREFIX: &str = "/plugins";

pub(crate) fn routes(state: &State) -> BoxedFilter<(Response,)> {
    let websocket = warp::ws()
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(with_state(state))
        .and_then(websocket);
    let http = warp::method()
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_state(state))
        .and_then(forward);
    // Authentication runs once, before the two branches (a wrong secret counts once).
    warp::path("plugins")
        .and(access::authenticated(state))
        .and(access::same_origin_upgrade())
        .and(websocket.or(http).unify())
        .boxed()
}

/// The raw query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

fn uri(path: &FullPath, query: &str) -> String {
    if query.is_empty() {
        path.as_str().to_owned()
    } else {
        format!("{}?{query}", path.as_str())
    }
}

async fn forward<S, B>(
    method: Method,
    path: FullPath,
    query: String,
    headers: HeaderMap,
    body: S,
    state: State,
) -> Result<Response, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    // HTTP/1 frames a body with `Content-Length` or `Transfer-Encoding`: without either there is
    // none, and the plugin is told so in the request itself.
    let framed = headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING);
    let body = if framed {
        Either::Left(StreamBody::new(body.map_ok(|mut b| {
            http_body::Frame::data(b.copy_to_bytes(b.remaining()))
        })))
    } else {
        Either::Right(Empty::<Bytes>::new())
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.headers_mut() = headers;
    match uri(&path, &query).parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            return Ok(into_warp(
                CallError::BadRequest("the path is not a valid URI".into()).to_response(),
            ));
        }
    }
    let started = Instant::now();
    let response = state.host.forward(request, PREFIX).await;
    if let Some(to) = response.extensions().get::<ForwardedTo>() {
        crate::metrics::record_request(
            &to.plugin_id,
            response.status().as_u16(),
            started.elapsed(),
        );
    }
    Ok(into_warp(response))
}

async fn websocket(
    ws: Ws,
    path: FullPath,
    query: String,
    headers: HeaderMap,
    state: State,
) -> Result<Response, Rejection> {
    let rest = path.as_str().strip_prefix(PREFIX).unwrap_or("/");
    let mut request = Request::new(());
    *request.headers_mut() = headers;
    let target = if query.is_empty() {
        rest.to_owned()
    } else {
        format!("{rest}?{query}")
    };
    match target.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            return Ok(into_warp(
                CallError::BadRequest("the path is not a valid URI".into()).to_response(),
            ));
        }
    }
    let started = Instant::now();
    let (response, plugin) = match state.host.websocket_by_path(&request).await {
        Ok(WsUpgrade::Accepted(session)) => {
            let plugin = session.plugin_id().to_owned();
            let protocol = session
                .protocol()
                .and_then(|p| HeaderValue::from_str(p).ok());
            let limit = state.host.max_ws_message_bytes();
            let mut response = ws
                .max_message_size(limit)
                .max_frame_size(limit)
                .on_upgrade(move |socket| {
                    let socket = socket
                        .map_ok(WarpMessage)
                        .with(|m: WarpMessage| async move { Ok::<_, warp::Error>(m.0) });
                    session.bridge(Box::pin(socket))
                })
                .into_response();
            if let Some(protocol) = protocol {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, protocol);
            }
            (response, Some(plugin))
        }
        Ok(WsUpgrade::Refused(response)) => {
            let plugin = response
                .extensions()
                .get::<ForwardedTo>()
                .map(|to| to.plugin_id.clone());
            (into_warp(response), plugin)
        }
        Err(e) => (into_warp(e.to_response()), e.plugin_id().map(str::to_owned)),
    };
    if let Some(plugin) = plugin {
        crate::metrics::record_request(&plugin, response.status().as_u16(), started.elapsed());
    }
    Ok(response)
}

/// A warp WebSocket message, for the library's bridge.
struct WarpMessage(Message);

impl BridgeMessage for WarpMessage {
    fn into_frame(self) -> ClientFrame {
        let m = self.0;
        if m.is_close() {
            let (code, reason) = match m.close_frame() {
                Some((code, reason)) => (Some(code), reason.to_owned()),
                None => (None, String::new()),
            };
            ClientFrame::Close(code, reason)
        } else if m.is_text() {
            ClientFrame::Message(WsMessage::Text(m.to_str().unwrap_or_default().to_owned()))
        } else if m.is_binary() {
            ClientFrame::Message(WsMessage::Binary(m.into_bytes()))
        } else {
            ClientFrame::Ping
        }
    }

    fn from_message(message: WsMessage) -> Self {
        WarpMessage(match message {
            WsMessage::Text(t) => Message::text(t),
            WsMessage::Binary(b) => Message::binary(b),
        })
    }

    fn close(code: u16, reason: &str) -> Self {
        WarpMessage(Message::close_with(code, reason.to_owned()))
    }
}

/// The library's response as warp's: a body in memory as it is, a stream as a stream (each
/// chunk written as it comes, so `text/event-stream` is flushed per event).
pub(crate) fn into_warp(response: toru_host::http::Response<PluginBody>) -> Response {
    let (parts, body) = response.into_parts();
    let body = match body.as_full() {
        Some(bytes) => warp::reply::Response::new(Bytes::clone(bytes).into()).into_body(),
        None => warp::reply::stream(body.into_stream())
            .into_response()
            .into_body(),
    };
    Response::from_parts(parts, body)
}
