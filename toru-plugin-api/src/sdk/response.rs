//! The response a handler returns: whole, streamed, server-sent events, or an accepted
//! WebSocket.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{Stream as FuturesStream, StreamExt as _};
use serde::Serialize;

use super::body::BodyWriter;
use super::error::HttpError;
use super::sse::Sse;
use super::stream::Stream;
use super::websocket::WebSocket;
use crate::protocol::HttpResponse;

/// What a streamed body's producer or a WebSocket session runs as.
pub(crate) type BoxedRun = Pin<Box<dyn Future<Output = Result<(), HttpError>> + Send>>;

/// What runs after the head has been sent.
pub(crate) enum Producer {
    /// A streamed body.
    Body(Box<dyn FnOnce(BodyWriter) -> BoxedRun + Send>),
    /// A WebSocket session on the upgrade request's stream.
    WebSocket(Arc<Stream>, Box<dyn FnOnce(WebSocket) -> BoxedRun + Send>),
}

/// An HTTP response from a handler.
///
/// Most responses are whole: [`json`](Self::json), [`text`](Self::text),
/// [`bytes`](Self::bytes), [`error`](Self::error). A body produced over time streams:
/// [`stream`](Self::stream) from a [`Stream`](futures_util::Stream) of chunks,
/// [`streamed`](Self::streamed) from a closure writing to a [`BodyWriter`], and
/// [`sse`](Self::sse) for server-sent events. A WebSocket is accepted with
/// [`WebSocketUpgrade::accept`](super::WebSocketUpgrade::accept).
///
/// ```
/// use toru_plugin_api::Response;
/// let res = Response::json(201, &serde_json::json!({"id": 7})).with_header("x-request", "abc");
/// assert_eq!(res.status, 201);
/// assert_eq!(res.header("content-type"), Some("application/json"));
/// assert_eq!(&res.body[..], br#"{"id":7}"#);
/// ```
#[non_exhaustive]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body; empty for a streamed response.
    pub body: Bytes,
    producer: Option<Producer>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let streamed = match &self.producer {
            None => None,
            Some(Producer::Body(_)) => Some("body"),
            Some(Producer::WebSocket(..)) => Some("websocket"),
        };
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field("streamed", &streamed)
            .finish()
    }
}

impl Response {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            producer: None,
        }
    }

    /// `value` as JSON, with `content-type: application/json`. A value that cannot be written
    /// as JSON (a map with non-string keys) gives a 500 that says so.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::bytes(status, "application/json", body),
            Err(e) => Self::text(500, format!("response is not valid JSON: {e}")),
        }
    }

    /// JSON `{"error": message}`, the shape the SDK and the example plugins use for errors.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
    }

    /// Text, with `content-type: text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::bytes(status, "text/plain; charset=utf-8", body.into())
    }

    /// Any bytes, with the given content type.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: body.into(),
            producer: None,
        }
    }

    /// A body streamed from `chunks`: each chunk goes to the client as it comes, and the next
    /// is taken only once the client has room for it.
    pub fn stream<S>(status: u16, content_type: &str, chunks: S) -> Self
    where
        S: FuturesStream<Item = Bytes> + Send + 'static,
    {
        Self::streamed(status, content_type, move |mut body| async move {
            let mut chunks = std::pin::pin!(chunks);
            while let Some(chunk) = chunks.next().await {
                body.send(chunk).await?;
            }
            Ok(())
        })
    }

    /// A body streamed from fallible `chunks` (a file read with `tokio_util::io::ReaderStream`,
    /// say). An error after the head has gone aborts the response: the client's download ends
    /// incomplete, never looking complete.
    pub fn try_stream<S, E>(status: u16, content_type: &str, chunks: S) -> Self
    where
        S: FuturesStream<Item = Result<Bytes, E>> + Send + 'static,
        E: fmt::Display + Send,
    {
        Self::streamed(status, content_type, move |mut body| async move {
            let mut chunks = std::pin::pin!(chunks);
            while let Some(chunk) = chunks.next().await {
                body.send(chunk.map_err(HttpError::internal)?).await?;
            }
            Ok(())
        })
    }

    /// A body written by `produce` once the head has gone: it gets a [`BodyWriter`] and sends
    /// the body part by part; the body ends when it returns `Ok`. Returning `Err` aborts the
    /// response (the client's download ends incomplete), and when the client goes away the
    /// producer is dropped at its next `.await`.
    ///
    /// ```
    /// use toru_plugin_api::Response;
    /// let res = Response::streamed(200, "text/plain", |mut body| async move {
    ///     for line in ["one\n", "two\n"] {
    ///         body.send(line).await?;
    ///     }
    ///     Ok(())
    /// })
    /// .with_header("content-length", "8");
    /// assert!(res.is_streamed());
    /// ```
    pub fn streamed<F, Fut>(status: u16, content_type: &str, produce: F) -> Self
    where
        F: FnOnce(BodyWriter) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), HttpError>> + Send + 'static,
    {
        let mut res = Response::new(status).with_header("content-type", content_type.to_owned());
        res.producer = Some(Producer::Body(Box::new(move |w| Box::pin(produce(w)))));
        res
    }

    /// Server-sent events (`text/event-stream`, not cached): `events` gets an [`Sse`] and sends
    /// events until it returns. See [`Sse`] for an example.
    pub fn sse<F, Fut>(events: F) -> Self
    where
        F: FnOnce(Sse) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), HttpError>> + Send + 'static,
    {
        Self::streamed(200, "text/event-stream", move |writer| async move {
            let shutdown = writer.shutdown_token().clone();
            match events(Sse::new(writer)).await {
                // Shutdown ends an event stream cleanly; the browser reconnects.
                Err(_) if shutdown.is_cancelled() => Ok(()),
                other => other,
            }
        })
        .with_header("cache-control", "no-cache")
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The first header called `name` (compared without regard to case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the body is produced after the head (a stream, events, or a WebSocket).
    pub fn is_streamed(&self) -> bool {
        self.producer.is_some()
    }

    pub(crate) fn set_producer(&mut self, producer: Producer) {
        self.producer = Some(producer);
    }

    pub(crate) fn take_producer(&mut self) -> Option<Producer> {
        self.producer.take()
    }

    /// The head in wire form: status and headers, no body.
    pub(crate) fn head(&mut self, end_stream: bool) -> HttpResponse<'static> {
        HttpResponse {
            status: self.status,
            headers: std::mem::take(&mut self.headers)
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
            body: None,
            body_base64: None,
            end_stream: Some(end_stream),
        }
    }

    /// Converts to the protocol 1 wire form: a UTF-8 body as `body`, any other as
    /// `body_base64`, an empty one as neither.
    pub(crate) fn into_wire_v1(self) -> HttpResponse<'static> {
        let (body, body_base64) = if self.body.is_empty() {
            (None, None)
        } else {
            match String::from_utf8(Vec::from(self.body)) {
                Ok(text) => (Some(text.into()), None),
                Err(e) => (None, Some(BASE64.encode(e.as_bytes()).into())),
            }
        };
        HttpResponse {
            status: self.status,
            headers: self
                .headers
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
            body,
            body_base64,
            end_stream: None,
        }
    }
}

impl From<HttpError> for Response {
    fn from(e: HttpError) -> Self {
        e.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_bodies_travel_as_text_base64_or_nothing() {
        let text = Response::text(200, "hi").into_wire_v1();
        assert_eq!(text.body.as_deref(), Some("hi"));
        assert_eq!(text.body_base64, None);
        let bin = Response::bytes(200, "application/octet-stream", vec![0xffu8, 0]).into_wire_v1();
        assert_eq!(bin.body, None);
        assert_eq!(bin.body_base64.as_deref(), Some("/wA="));
        let empty = Response::new(204).into_wire_v1();
        assert_eq!((empty.body, empty.body_base64), (None, None));
    }

    #[test]
    fn error_and_headers() {
        let res = Response::error(404, "not found").with_header("x-a", "1");
        assert_eq!(&res.body[..], br#"{"error":"not found"}"#);
        assert_eq!(res.header("X-A"), Some("1"));
        let wire = res.into_wire_v1();
        assert_eq!(wire.headers.len(), 2);
        assert_eq!(wire.status, 404);
    }

    #[test]
    fn streamed_responses_say_so_and_keep_their_head() {
        let res = Response::sse(|_| async { Ok(()) });
        assert!(res.is_streamed());
        assert_eq!(res.header("content-type"), Some("text/event-stream"));
        assert_eq!(res.header("cache-control"), Some("no-cache"));
        assert!(format!("{res:?}").contains("streamed: Some(\"body\")"));
        let chunks = futures_util::stream::iter([Bytes::from("a")]);
        assert!(Response::stream(200, "text/plain", chunks).is_streamed());
        assert!(!Response::new(204).is_streamed());
    }
}
