//! The HTTP request and response a caller exchanges with a plugin through the host.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use toru_plugin_api::Frame;
use toru_plugin_api::protocol::{CowStr, Header, HttpRequest, HttpResponse};

/// An HTTP request for a plugin. `path` is the full path, starting with the plugin's route
/// (`/acme/certificate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRequest {
    /// The method, upper case.
    pub method: String,
    /// The full path, starting with the plugin's route.
    pub path: String,
    /// The raw query string without `?`.
    pub query: String,
    /// Headers, names in lower case; names may repeat.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl PluginRequest {
    /// A `GET` of `path` with no headers and no body.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// A request with the given method and path, no headers and no body.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        PluginRequest {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// The same request with a body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The same request with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The same request with a query string.
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    /// The protocol message's payload, borrowing from the request. A body that is not UTF-8
    /// travels base64-encoded.
    pub(crate) fn to_protocol(&self) -> HttpRequest<'_> {
        let (body, body_base64) = encode_body(&self.body);
        HttpRequest {
            method: CowStr::borrowed(&self.method),
            path: CowStr::borrowed(&self.path),
            query: CowStr::borrowed(&self.query),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (CowStr::borrowed(n), CowStr::borrowed(v)))
                .collect(),
            body,
            body_base64,
            end_stream: None,
            upgrade: None,
        }
    }
}

fn encode_body(body: &[u8]) -> (Option<CowStr<'_>>, Option<CowStr<'static>>) {
    if body.is_empty() {
        return (None, None);
    }
    match std::str::from_utf8(body) {
        Ok(text) => (Some(CowStr::borrowed(text)), None),
        Err(_) => (None, Some(CowStr::from(BASE64.encode(body)))),
    }
}

/// A plugin's HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginResponse {
    /// The status code.
    pub status: u16,
    /// The headers, in the plugin's order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl PluginResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Converts the protocol payload. A text body that borrows from the frame is sliced out of
    /// it without copying.
    pub(crate) fn from_frame(frame: &Frame, r: HttpResponse<'_>) -> Result<Self, String> {
        if !(100..=999).contains(&r.status) {
            return Err(format!("plugin sent an invalid HTTP status {}", r.status));
        }
        let body = match (r.body, r.body_base64) {
            (Some(_), Some(_)) => {
                return Err("plugin sent both body and body_base64".into());
            }
            (Some(text), None) => slice_or_copy(frame, text),
            (None, Some(b64)) => Bytes::from(
                BASE64
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("plugin sent body_base64 that is not base64: {e}"))?,
            ),
            (None, None) => Bytes::new(),
        };
        Ok(PluginResponse {
            status: r.status,
            headers: r.headers.into_iter().map(own_header).collect(),
            body,
        })
    }
}

fn own_header((name, value): Header<'_>) -> (String, String) {
    (name.into_string(), value.into_string())
}

fn slice_or_copy(frame: &Frame, text: CowStr<'_>) -> Bytes {
    match text.0 {
        std::borrow::Cow::Borrowed(s) => frame.bytes().slice_ref(s.as_bytes()),
        std::borrow::Cow::Owned(s) => Bytes::from(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bodies_travel_base64_and_text_as_is() {
        let req = PluginRequest::new("POST", "/a").with_body(vec![0xff, 0x00]);
        let p = req.to_protocol();
        assert_eq!(p.body, None);
        assert_eq!(p.body_base64.as_deref(), Some("/wA="));
        let req = PluginRequest::new("POST", "/a").with_body("héllo");
        assert_eq!(req.to_protocol().body.as_deref(), Some("héllo"));
    }

    #[test]
    fn response_body_is_sliced_from_the_frame() {
        let json = br#"{"type":"http_response","request_id":1,"payload":{"status":200,"headers":[["a","b"]],"body":"hi"}}"#;
        let frame = Frame::new(Bytes::from_static(json));
        let Ok(msg) = frame.message() else { panic!() };
        let toru_plugin_api::Payload::HttpResponse(r) = msg.payload else {
            panic!()
        };
        let resp = PluginResponse::from_frame(&frame, r).unwrap();
        assert_eq!(resp.body, "hi");
        assert_eq!(resp.header("A"), Some("b"));
    }

    #[test]
    fn invalid_responses_are_refused() {
        for json in [
            r#"{"type":"http_response","payload":{"status":42}}"#,
            r#"{"type":"http_response","payload":{"status":200,"body":"a","body_base64":"YQ=="}}"#,
            r#"{"type":"http_response","payload":{"status":200,"body_base64":"!!"}}"#,
        ] {
            let frame = Frame::new(Bytes::from(json));
            let msg = frame.message().unwrap();
            let toru_plugin_api::Payload::HttpResponse(r) = msg.payload else {
                panic!()
            };
            assert!(PluginResponse::from_frame(&frame, r).is_err(), "{json}");
        }
    }
}
