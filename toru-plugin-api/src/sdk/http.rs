//! Owned request and response types for handlers, and their conversion to and from the wire.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{CowStr, HttpRequest, HttpResponse};

/// An HTTP request for one of the plugin's routes, as a handler receives it.
///
/// The fields are public; the methods read them the common ways.
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The body, empty when there is none. Bodies that travelled base64-encoded are decoded.
    pub body: Bytes,
}

impl Request {
    /// A request with no query, headers or body: for a plugin's own tests.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            body: Bytes::new(),
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
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
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

    /// The body as text, when it is valid UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Converts a wire request. `frame` is the buffer `req` was decoded from: a body that
    /// borrows from it is sliced out without copying.
    pub(crate) fn from_wire(req: HttpRequest<'_>, frame: &Bytes) -> Result<Self, BodyError> {
        let body = match (req.body, req.body_base64) {
            (Some(_), Some(_)) => return Err(BodyError::Both),
            (Some(text), None) => cow_to_bytes(text, frame),
            (None, Some(b64)) => BASE64
                .decode(b64.as_bytes())
                .map(Bytes::from)
                .map_err(BodyError::Base64)?,
            (None, None) => Bytes::new(),
        };
        Ok(Request {
            method: req.method.into_string(),
            path: req.path.into_string(),
            query: req.query.into_string(),
            headers: req
                .headers
                .into_iter()
                .map(|(n, v)| (n.into_string(), v.into_string()))
                .collect(),
            body,
        })
    }
}

/// Why a request's body could not be read.
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

/// An HTTP response from a handler.
///
/// ```
/// use toru_plugin_api::Response;
/// let res = Response::json(201, &serde_json::json!({"id": 7})).with_header("x-request", "abc");
/// assert_eq!(res.status, 201);
/// assert_eq!(res.header("content-type"), Some("application/json"));
/// assert_eq!(&res.body[..], br#"{"id":7}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body. Text travels as is; anything else travels base64-encoded.
    pub body: Bytes,
}

impl Response {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
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

    /// JSON `{"error": message}`, the shape the example plugins use for errors.
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
        }
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

    /// Converts to the wire form: a UTF-8 body as `body`, any other as `body_base64`, an empty
    /// one as neither.
    pub(crate) fn into_wire(self) -> HttpResponse<'static> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(json: &str) -> (Bytes, Request) {
        let frame = Bytes::copy_from_slice(json.as_bytes());
        let req: HttpRequest<'_> = serde_json::from_slice(&frame).unwrap();
        let owned = Request::from_wire(req, &frame).unwrap();
        (frame, owned)
    }

    #[test]
    fn text_body_is_sliced_from_the_frame_without_copying() {
        let (frame, req) = wire(r#"{"method":"POST","path":"/a/b","body":"hello"}"#);
        assert_eq!(&req.body[..], b"hello");
        let range = frame.as_ptr_range();
        assert!(range.contains(&req.body.as_ptr()), "body was copied");
        assert_eq!(req.body_text(), Some("hello"));
    }

    #[test]
    fn base64_body_is_decoded_and_bad_base64_refused() {
        let (_, req) = wire(r#"{"method":"POST","path":"/a","body_base64":"/wD+"}"#);
        assert_eq!(&req.body[..], &[0xff, 0x00, 0xfe]);
        assert_eq!(req.body_text(), None);
        let frame = Bytes::from_static(br#"{"method":"POST","path":"/a","body_base64":"%%"}"#);
        let bad: HttpRequest<'_> = serde_json::from_slice(&frame).unwrap();
        assert!(matches!(
            Request::from_wire(bad, &frame),
            Err(BodyError::Base64(_))
        ));
        let frame =
            Bytes::from_static(br#"{"method":"POST","path":"/a","body":"a","body_base64":"YQ=="}"#);
        let both: HttpRequest<'_> = serde_json::from_slice(&frame).unwrap();
        assert!(matches!(
            Request::from_wire(both, &frame),
            Err(BodyError::Both)
        ));
    }

    #[test]
    fn escaped_text_body_is_owned() {
        let (_, req) = wire(r#"{"method":"POST","path":"/a","body":"a\nb"}"#);
        assert_eq!(&req.body[..], b"a\nb");
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

    #[test]
    fn json_body_parses() {
        let req = Request::new("POST", "/a").with_body(r#"{"n": 3}"#);
        let v: serde_json::Value = req.json().unwrap();
        assert_eq!(v["n"], 3);
        assert!(
            Request::new("POST", "/a")
                .json::<serde_json::Value>()
                .is_err()
        );
    }

    #[test]
    fn response_bodies_travel_as_text_base64_or_nothing() {
        let text = Response::text(200, "hi").into_wire();
        assert_eq!(text.body.as_deref(), Some("hi"));
        assert_eq!(text.body_base64, None);
        let bin = Response::bytes(200, "application/octet-stream", vec![0xffu8, 0]).into_wire();
        assert_eq!(bin.body, None);
        assert_eq!(bin.body_base64.as_deref(), Some("/wA="));
        let empty = Response::new(204).into_wire();
        assert_eq!((empty.body, empty.body_base64), (None, None));
    }

    #[test]
    fn error_and_headers() {
        let res = Response::error(404, "not found").with_header("x-a", "1");
        assert_eq!(&res.body[..], br#"{"error":"not found"}"#);
        assert_eq!(res.header("X-A"), Some("1"));
        let wire = res.into_wire();
        assert_eq!(wire.headers.len(), 2);
        assert_eq!(wire.status, 404);
    }
}
