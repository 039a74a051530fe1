//! The buffered HTTP request and response a caller exchanges with a plugin through the host,
//! in the `http` crate's types, converting from and to `http::Request<Bytes>` and
//! `http::Response<Bytes>`.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// An HTTP request for a plugin, whole. `path` is the full path, starting with the plugin's
/// route (`/acme/certificate`).
///
/// ```
/// use toru_host::PluginRequest;
/// use toru_host::http::Method;
///
/// let req = PluginRequest::new(Method::POST, "/acme/count")
///     .with_query("step=2")
///     .with_header("content-type", "application/json")
///     .with_body(r#"{"n": 1}"#);
/// let http: toru_host::http::Request<bytes::Bytes> = req.clone().try_into().unwrap();
/// assert_eq!(http.uri(), "/acme/count?step=2");
/// assert_eq!(toru_host::PluginRequest::from(http), req);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginRequest {
    /// The method.
    pub method: Method,
    /// The full path, starting with the plugin's route, percent-encoding as the client sent it.
    pub path: String,
    /// The raw query string without `?`, empty when there is none.
    pub query: String,
    /// The headers. The host drops credentials and hop-by-hop headers before the plugin sees
    /// them.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl PluginRequest {
    /// A `GET` of `path` with no headers and no body.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// A request with the given method (a [`Method`] or its name) and path, no headers and no
    /// body.
    ///
    /// # Panics
    /// When `method` is a name that is not a valid method.
    pub fn new<M>(method: M, path: impl Into<String>) -> Self
    where
        Method: TryFrom<M>,
        <Method as TryFrom<M>>::Error: std::fmt::Debug,
    {
        PluginRequest {
            method: Method::try_from(method).expect("a valid method"),
            path: path.into(),
            query: String::new(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// The same request with a body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The same request with one more header.
    ///
    /// # Panics
    /// When `name` is not a valid header name or `value` not a valid header value (use
    /// [`headers`](Self::headers) to add headers that come from elsewhere).
    pub fn with_header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: std::fmt::Debug,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: std::fmt::Debug,
    {
        let name = HeaderName::try_from(name).expect("a valid header name");
        let value = HeaderValue::try_from(value).expect("a valid header value");
        self.headers.append(name, value);
        self
    }

    /// The same request with a query string.
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    /// The request as an `http::Request`.
    ///
    /// # Errors
    /// When the path and query do not make a valid URI.
    pub fn into_http(self) -> Result<http::Request<Bytes>, http::Error> {
        let uri = if self.query.is_empty() {
            self.path
        } else {
            format!("{}?{}", self.path, self.query)
        };
        let mut request = http::Request::builder()
            .method(self.method)
            .uri(uri)
            .body(self.body)?;
        *request.headers_mut() = self.headers;
        Ok(request)
    }
}

impl From<http::Request<Bytes>> for PluginRequest {
    fn from(request: http::Request<Bytes>) -> Self {
        let (parts, body) = request.into_parts();
        PluginRequest {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: parts.headers,
            body,
        }
    }
}

impl TryFrom<PluginRequest> for http::Request<Bytes> {
    type Error = http::Error;

    fn try_from(request: PluginRequest) -> Result<Self, http::Error> {
        request.into_http()
    }
}

/// A plugin's HTTP response, whole, with the host's header rules applied (see
/// [`PluginHost::stream`](crate::PluginHost::stream)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers, in the plugin's order.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl PluginResponse {
    /// The first header called `name` (any case), when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl From<PluginResponse> for http::Response<Bytes> {
    fn from(response: PluginResponse) -> Self {
        let mut out = http::Response::new(response.body);
        *out.status_mut() = response.status;
        *out.headers_mut() = response.headers;
        out
    }
}

impl From<http::Response<Bytes>> for PluginResponse {
    fn from(response: http::Response<Bytes>) -> Self {
        let (parts, body) = response.into_parts();
        PluginResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_convert_both_ways() {
        let req = PluginRequest::new(Method::PUT, "/a/b%20c")
            .with_query("x=1")
            .with_header("X-Tag", "a")
            .with_header("x-tag", "b")
            .with_body(vec![0xff, 0]);
        let http = req.clone().into_http().unwrap();
        assert_eq!(http.method(), Method::PUT);
        assert_eq!(http.uri().path(), "/a/b%20c");
        assert_eq!(http.headers().get_all("x-tag").iter().count(), 2);
        assert_eq!(PluginRequest::from(http), req);
        assert!(PluginRequest::get("/a b").into_http().is_err());
    }

    #[test]
    fn responses_convert_both_ways() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let resp = PluginResponse {
            status: StatusCode::IM_A_TEAPOT,
            headers,
            body: Bytes::from_static(b"tea"),
        };
        assert_eq!(resp.header("Content-Type"), Some("text/plain"));
        let http: http::Response<Bytes> = resp.clone().into();
        assert_eq!(http.status(), 418);
        assert_eq!(PluginResponse::from(http), resp);
    }
}
