//! `/plugins/<route>/<rest>`: every method forwarded to the plugin whose route is `/<route>`,
//! with the full path `/<route>/<rest>`, the query and the body.
//!
//! The server's own credentials (the `Cookie` and `Authorization` headers) never reach a plugin,
//! and hop-by-hop headers are dropped both ways. When the client goes away, the request's
//! future is dropped and the host sends the plugin `cancel`.

use std::time::Instant;

use bytes::Bytes;
use toru_host::{PluginRequest, PluginResponse};
use warp::filters::BoxedFilter;
use warp::filters::path::Tail;
use warp::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::{ApiError, State, access, body, with_state};

/// Headers that belong to one connection, never forwarded (RFC 9110, section 7.6.1), plus the
/// non-standard ones proxies also drop.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The server's credentials: a plugin must never see them.
const CREDENTIALS: &[&str] = &["cookie", "authorization"];

pub(crate) fn routes(state: &State) -> BoxedFilter<(Response,)> {
    warp::path("plugins")
        .and(access::authenticated(state))
        .and(warp::method())
        .and(warp::path::tail())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(body::limited(state.max_body_bytes))
        .and(with_state(state))
        .and_then(forward)
        .boxed()
}

/// The raw query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

async fn forward(
    method: Method,
    tail: Tail,
    query: String,
    headers: HeaderMap,
    body: Bytes,
    state: State,
) -> Result<Response, Rejection> {
    let path = format!("/{}", tail.as_str());
    let Some(id) = state.host.route_owner(&path) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_plugin",
            "no plugin serves this path",
        )
        .reject());
    };
    let request = PluginRequest {
        method: method.as_str().to_owned(),
        path,
        query,
        headers: request_headers(&headers).map_err(ApiError::reject)?,
        body,
    };
    let started = Instant::now();
    let response = match state.host.request(&id, &request).await {
        Ok(response) => into_response(response),
        Err(e) => ApiError::from(e).into_response(),
    };
    crate::metrics::record_request(&id, response.status().as_u16(), started.elapsed());
    Ok(response)
}

/// Names listed in `Connection` headers: hop-by-hop for this message only.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The headers a plugin gets: names in lower case, without credentials and hop-by-hop headers.
/// A value that is not text is refused (400).
pub(crate) fn request_headers(headers: &HeaderMap) -> Result<Vec<(String, String)>, ApiError> {
    let listed = connection_tokens(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.as_str();
        if CREDENTIALS.contains(&name)
            || HOP_BY_HOP.contains(&name)
            || listed.iter().any(|t| t == name)
        {
            continue;
        }
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| ApiError::bad_request(format!("header {name} is not UTF-8 text")))?;
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// The plugin's response as the client gets it: hop-by-hop headers and `Content-Length` (the
/// server sets its own) dropped, and invalid headers skipped.
pub(crate) fn into_response(plugin: PluginResponse) -> Response {
    let status = StatusCode::from_u16(plugin.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let listed = connection_tokens(
        plugin
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_str()),
    );
    let mut response = Response::new(plugin.body.into());
    *response.status_mut() = status;
    let out = response.headers_mut();
    for (name, value) in &plugin.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            tracing::debug!(header = %name, "plugin sent an invalid header name; dropped");
            continue;
        };
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower)
            || lower == "content-length"
            || listed.iter().any(|t| t == lower)
        {
            continue;
        }
        match HeaderValue::from_str(value) {
            Ok(value) => {
                out.append(name, value);
            }
            Err(_) => {
                tracing::debug!(header = %name, "plugin sent an invalid header value; dropped")
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_here() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("toru_session=x"));
        h.insert("authorization", HeaderValue::from_static("Bearer s"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-private", HeaderValue::from_static("hop"));
        h.insert("X-Custom", HeaderValue::from_static("kept"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:3000"));
        let out = request_headers(&h).unwrap();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-custom", "host"], "{out:?}");
        assert_eq!(out[0].1, "kept");
    }

    #[test]
    fn a_header_that_is_not_text_is_bad_input() {
        let mut h = HeaderMap::new();
        h.insert("x-bin", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let err = request_headers(&h).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn plugin_responses_keep_status_headers_and_body() {
        let r = into_response(PluginResponse {
            status: 418,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("set-cookie".into(), "a=1".into()),
                ("set-cookie".into(), "b=2".into()),
                ("connection".into(), "close".into()),
                ("transfer-encoding".into(), "chunked".into()),
                ("content-length".into(), "999".into()),
                ("bad header".into(), "x".into()),
                ("x-bad-value".into(), "a\nb".into()),
            ],
            body: Bytes::from_static(b"{}"),
        });
        assert_eq!(r.status(), StatusCode::IM_A_TEAPOT);
        let h = r.headers();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        for gone in [
            "connection",
            "transfer-encoding",
            "content-length",
            "x-bad-value",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }
}
