//! The request a handler receives, and its conversion from the wire.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::body::Body;
use super::error::{HttpError, StreamError};
use super::stream::Stream;
use super::websocket::WebSocketUpgrade;
use crate::protocol::{CowStr, HttpRequest};

/// The limit [`Request::text`] and [`Request::json`] read a body up to: 1 MiB. Read larger
/// bodies with [`Body::collect`] and a limit of your own, or as a stream with [`Body::chunk`].
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// [`StreamError::NotWebSocket`]'s text on a protocol 1 connection.
pub(crate) const NOT_ON_PROTOCOL_1: &str =
    "WebSockets need protocol 2, and the host agreed on protocol 1";

/// An HTTP request for one of the plugin's routes, as a handler receives it.
///
/// The fields are public; the methods read them the common ways. The body is a [`Body`]: read
/// it whole with [`text`](Self::text), [`json`](Self::json) or [`Body::collect`], or chunk by
/// chunk with [`Body::chunk`] as the client sends it.
///
/// ```
/// use toru_plugin_api::Request;
/// let req = Request::new("GET", "/hello-rust/echo")
///     .with_query("name=J%C3%BCrgen&x=1")
///     .with_header("x-token", "abc");
/// assert_eq!(req.subpath(), "/echo");
/// assert_eq!(req.query_param("name").as_deref(), Some("Jürgen"));
/// assert_eq!(req.header("X-Token"), Some("abc"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Request {
    /// The method, upper case (`GET`).
    pub method: String,
    /// The full path, starting with the plugin's route (`/hello-rust/count`).
    pub path: String,
    /// The raw query string without the `?`, empty when there is none.
    pub query: String,
    /// The headers in order, names in lower case. Names may repeat.
    pub headers: Vec<(String, String)>,
    /// The body: empty when there is none. Protocol 1 bodies arrive whole (base64 decoded);
    /// protocol 2 bodies stream.
    pub body: Body,
    upgrade: Upgrade,
    params: Vec<(String, String)>,
}

#[derive(Debug)]
enum Upgrade {
    No,
    /// The connection speaks protocol 1, which has no WebSockets.
    Protocol1,
    WebSocket(Arc<Stream>),
}

impl Request {
    /// A request with no query, headers or body: for a plugin's own tests.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            body: Body::empty(),
            upgrade: Upgrade::No,
            params: Vec::new(),
        }
    }

    /// Sets the raw query string (without the `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    /// Adds a header; the name is stored in lower case.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// The path after the plugin's route: `/count` for `/hello-rust/count`, and the empty string
    /// for `/hello-rust` itself. A route is always one segment, so this needs no configuration.
    pub fn subpath(&self) -> &str {
        let Some(rest) = self.path.strip_prefix('/') else {
            return &self.path;
        };
        rest.find('/').map_or("", |i| &rest[i..])
    }

    /// The first header called `name` (compared without regard to case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `name`, percent-decoded (`+` reads as a space). A
    /// parameter without `=` has the empty value.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Every query parameter in order, percent-decoded.
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.query
            .split('&')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (name, value) = part.split_once('=').unwrap_or((part, ""));
                (percent_decode(name), percent_decode(value))
            })
    }

    /// A path parameter the [`Router`](super::Router) matched: `id` for the route
    /// `/items/{id}`, `rest` for `/files/{*rest}`. Percent-encoding is left as sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn set_params(&mut self, params: Vec<(String, String)>) {
        self.params = params;
    }

    /// The whole body as text, up to [`DEFAULT_BODY_LIMIT`].
    ///
    /// # Errors
    /// [`StreamError::TooLarge`] (413 through `?`), [`StreamError::InvalidUtf8`] (400), or the
    /// stream ending.
    pub async fn text(&mut self) -> Result<String, StreamError> {
        let bytes = self.body.collect(DEFAULT_BODY_LIMIT).await?;
        String::from_utf8(Vec::from(bytes)).map_err(|_| StreamError::InvalidUtf8)
    }

    /// The whole body parsed as JSON, up to [`DEFAULT_BODY_LIMIT`].
    ///
    /// # Errors
    /// 400 when the body is not JSON of type `T`, 413 when it is too large.
    pub async fn json<T: DeserializeOwned>(&mut self) -> Result<T, HttpError> {
        let bytes = self.body.collect(DEFAULT_BODY_LIMIT).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Whether the client asks for a WebSocket (protocol 2 only).
    pub fn is_websocket(&self) -> bool {
        matches!(self.upgrade, Upgrade::WebSocket(_))
    }

    /// The client's WebSocket request, to [`accept`](WebSocketUpgrade::accept). Refuse it by
    /// answering any other response instead.
    ///
    /// # Errors
    /// [`StreamError::NotWebSocket`] when the request is not a WebSocket upgrade (426 through
    /// `?`), or the connection speaks protocol 1, which has no WebSockets (501).
    pub fn websocket(&mut self) -> Result<WebSocketUpgrade, StreamError> {
        match std::mem::replace(&mut self.upgrade, Upgrade::No) {
            Upgrade::WebSocket(stream) => {
                let offered = self
                    .headers
                    .iter()
                    .filter(|(n, _)| n == "sec-websocket-protocol")
                    .flat_map(|(_, v)| v.split(','))
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect();
                Ok(WebSocketUpgrade::new(stream, offered))
            }
            Upgrade::Protocol1 => {
                self.upgrade = Upgrade::Protocol1;
                Err(StreamError::NotWebSocket(NOT_ON_PROTOCOL_1))
            }
            Upgrade::No => Err(StreamError::NotWebSocket(
                "this route is a WebSocket: the request must ask to upgrade",
            )),
        }
    }

    /// Converts a protocol 1 request, whose body travels in the message. `frame` is the buffer
    /// `req` was decoded from: a body that borrows from it is sliced out without copying.
    pub(crate) fn from_wire_v1(mut req: HttpRequest<'_>, frame: &Bytes) -> Result<Self, BodyError> {
        let body = inline_body(req.body.take(), req.body_base64.take(), frame)?;
        let mut out = Self::from_head(req);
        out.body = Body::from(body);
        out.upgrade = Upgrade::Protocol1;
        Ok(out)
    }

    /// Converts a protocol 2 request: `body` streams in data frames when `stream` is given; a
    /// WebSocket upgrade's messages do too.
    pub(crate) fn from_wire_v2(req: HttpRequest<'_>, stream: Option<Arc<Stream>>) -> Self {
        let mut out = Self::from_head(req);
        match stream {
            Some(s) if s.is_websocket() => out.upgrade = Upgrade::WebSocket(s),
            Some(s) => out.body = Body::streaming(s),
            None => {}
        }
        out
    }

    fn from_head(req: HttpRequest<'_>) -> Self {
        Request {
            method: req.method.into_string(),
            path: req.path.into_string(),
            query: req.query.into_string(),
            headers: req
                .headers
                .into_iter()
                .map(|(n, v)| (n.into_string(), v.into_string()))
                .collect(),
            body: Body::empty(),
            upgrade: Upgrade::No,
            params: Vec::new(),
        }
    }
}

/// A protocol 1 body from `body` or `body_base64`.
fn inline_body(
    text: Option<CowStr<'_>>,
    b64: Option<CowStr<'_>>,
    frame: &Bytes,
) -> Result<Bytes, BodyError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(BodyError::Both),
        (Some(text), None) => Ok(cow_to_bytes(text, frame)),
        (None, Some(b64)) => BASE64
            .decode(b64.as_bytes())
            .map(Bytes::from)
            .map_err(BodyError::Base64),
        (None, None) => Ok(Bytes::new()),
    }
}

/// Why a protocol 1 request's body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request has both `body` and `body_base64`")]
    Both,
    #[error("the request's `body_base64` is not valid base64")]
    Base64(#[source] base64::DecodeError),
}

fn cow_to_bytes(text: CowStr<'_>, frame: &Bytes) -> Bytes {
    match text.0 {
        Cow::Borrowed(s) if !s.is_empty() => frame.slice_ref(s.as_bytes()),
        other => Bytes::from(other.into_owned()),
    }
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(json: &str) -> (Bytes, Request) {
        let frame = Bytes::copy_from_slice(json.as_bytes());
        let req: HttpRequest<'_> = serde_json::from_slice(&frame).unwrap();
        let owned = Request::from_wire_v1(req, &frame).unwrap();
        (frame, owned)
    }

    #[tokio::test]
    async fn text_body_is_sliced_from_the_frame_without_copying() {
        let (frame, mut req) = wire(r#"{"method":"POST","path":"/a/b","body":"hello"}"#);
        let body = req.body.as_bytes().unwrap().clone();
        assert_eq!(&body[..], b"hello");
        let range = frame.as_ptr_range();
        assert!(range.contains(&body.as_ptr()), "body was copied");
        assert_eq!(req.text().await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn base64_body_is_decoded_and_bad_base64_refused() {
        let (_, mut req) = wire(r#"{"method":"POST","path":"/a","body_base64":"/wD+"}"#);
        assert_eq!(
            &req.body.collect(10).await.unwrap()[..],
            &[0xff, 0x00, 0xfe]
        );
        assert_eq!(req.text().await, Err(StreamError::InvalidUtf8));
        let frame = Bytes::from_static(br#"{"method":"POST","path":"/a","body_base64":"%%"}"#);
        let bad: HttpRequest<'_> = serde_json::from_slice(&frame).unwrap();
        assert!(matches!(
            Request::from_wire_v1(bad, &frame),
            Err(BodyError::Base64(_))
        ));
        let frame =
            Bytes::from_static(br#"{"method":"POST","path":"/a","body":"a","body_base64":"YQ=="}"#);
        let both: HttpRequest<'_> = serde_json::from_slice(&frame).unwrap();
        assert!(matches!(
            Request::from_wire_v1(both, &frame),
            Err(BodyError::Both)
        ));
    }

    #[tokio::test]
    async fn escaped_text_body_is_owned() {
        let (_, mut req) = wire(r#"{"method":"POST","path":"/a","body":"a\nb"}"#);
        assert_eq!(req.text().await.unwrap(), "a\nb");
    }

    #[test]
    fn subpath_strips_the_route_segment() {
        for (path, sub) in [
            ("/hello-rust", ""),
            ("/hello-rust/", "/"),
            ("/hello-rust/count", "/count"),
            ("/hello-rust/a/b", "/a/b"),
            ("relative", "relative"),
        ] {
            assert_eq!(Request::new("GET", path).subpath(), sub, "{path}");
        }
    }

    #[test]
    fn query_params_are_percent_decoded() {
        let req = Request::new("GET", "/a").with_query("ms=250&q=a+b%2Fc&flag&bad=%zz&e=%C3%A9");
        assert_eq!(req.query_param("ms").as_deref(), Some("250"));
        assert_eq!(req.query_param("q").as_deref(), Some("a b/c"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(req.query_param("e").as_deref(), Some("é"));
        assert_eq!(req.query_param("missing"), None);
    }

    #[tokio::test]
    async fn json_body_parses_and_errors_map_to_statuses() {
        let mut req = Request::new("POST", "/a").with_body(r#"{"n": 3}"#);
        let v: serde_json::Value = req.json().await.unwrap();
        assert_eq!(v["n"], 3);
        let err = Request::new("POST", "/a")
            .json::<serde_json::Value>()
            .await
            .unwrap_err();
        assert_eq!(err.status(), 400);
        let big = vec![b' '; DEFAULT_BODY_LIMIT + 1];
        let err = Request::new("POST", "/a")
            .with_body(big)
            .json::<serde_json::Value>()
            .await
            .unwrap_err();
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn a_request_that_is_no_upgrade_has_no_websocket() {
        let mut req = Request::new("GET", "/a");
        assert!(!req.is_websocket());
        let err = HttpError::from(req.websocket().unwrap_err());
        assert_eq!(err.status(), 426);
        let frame = Bytes::from_static(br#"{"method":"GET","path":"/a"}"#);
        let wire: HttpRequest<'_> = serde_json::from_slice(&frame).unwrap();
        let mut v1 = Request::from_wire_v1(wire, &frame).unwrap();
        let err = HttpError::from(v1.websocket().unwrap_err());
        assert_eq!(err.status(), 501);
    }
}
