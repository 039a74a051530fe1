//! [`PluginHost::forward`]: one call that serves a plugin route of any web framework built on
//! the `http` crate, WebSocket upgrades included.

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::PluginHost;
use super::calls::ForwardedTo;
use crate::body::{BoxError, PluginBody};
use crate::error::{CallError, error_response};
use crate::websocket::WsUpgrade;

impl PluginHost {
    /// Serves a request for a plugin route: strips `prefix` (`/plugins`) from the path, finds
    /// the plugin whose route is the next segment (`/plugins/acme/x` goes to the plugin with
    /// route `/acme`, as `/acme/x`), forwards the request with its body streamed (see
    /// [`stream`](Self::stream)), and answers the plugin's response, or the error as JSON
    /// `{"error": {"code", "message"}}` with its status and `Retry-After` (see
    /// [`CallError::status`]). It never fails.
    ///
    /// A WebSocket upgrade is handled too when the request carries hyper's `OnUpgrade`
    /// extension (hyper and axum keep it there): the plugin accepts or refuses; on accept the
    /// answer is the 101, and a task does the handshake and bridges the WebSocket (see
    /// [`WebSocketSession::bridge`](crate::WebSocketSession::bridge)). Check the client's
    /// authentication and `Origin` before calling this; the host does not know your users.
    ///
    /// ```no_run
    /// # async fn demo(host: toru_host::PluginHost, request: toru_host::http::Request<hyper::body::Incoming>)
    /// # -> toru_host::http::Response<toru_host::PluginBody> {
    /// // In a hyper service, or an axum handler taking the whole request:
    /// host.forward(request, "/plugins").await
    /// # }
    /// ```
    pub async fn forward<B>(
        &self,
        mut request: http::Request<B>,
        prefix: &str,
    ) -> http::Response<PluginBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let path = request.uri().path();
        let rest = match path.strip_prefix(prefix.trim_end_matches('/')) {
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            _ => return CallError::UnknownPlugin(path.to_owned()).to_response(),
        };
        let Some(id) = self.route_owner(&rest) else {
            return CallError::UnknownPlugin(rest).to_response();
        };
        let uri = match request.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest,
        };
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                return CallError::BadRequest("the path is not a valid URI".into()).to_response();
            }
        }
        let upgrade = is_websocket_upgrade(&request)
            .then(|| {
                request
                    .extensions_mut()
                    .remove::<hyper::upgrade::OnUpgrade>()
            })
            .flatten();
        let result = match upgrade {
            Some(on_upgrade) => self.forward_websocket(&id, request, on_upgrade).await,
            None => self.stream(&id, request).await,
        };
        let mut response = result.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::warn!(plugin.id = %id, error = %e, "plugin call failed");
            } else {
                tracing::debug!(plugin.id = %id, error = %e, "plugin call refused");
            }
            e.to_response()
        });
        response
            .extensions_mut()
            .get_or_insert_with(|| ForwardedTo { plugin_id: id });
        response
    }

    async fn forward_websocket<B>(
        &self,
        id: &str,
        request: http::Request<B>,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Result<http::Response<PluginBody>, CallError> {
        // An upgrade has no body; dropped here so that the future does not hold one across an
        // await (axum's and hyper's bodies are not `Sync`).
        let request = request.map(|_| ());
        let headers = request.headers();
        let key = match (
            headers.get(header::SEC_WEBSOCKET_KEY),
            headers.get(header::SEC_WEBSOCKET_VERSION),
        ) {
            (Some(key), Some(version)) if version == "13" => key.as_bytes().to_owned(),
            _ => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
                    None,
                ));
            }
        };
        let session = match self.websocket(id, &request).await? {
            WsUpgrade::Accepted(session) => session,
            WsUpgrade::Refused(response) => return Ok(response),
        };
        let max = self.shared.settings.max_ws_message_bytes;
        let mut response = http::Response::new(PluginBody::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let out = response.headers_mut();
        for (name, value) in session.headers() {
            if name == header::SEC_WEBSOCKET_PROTOCOL {
                out.append(name, value.clone());
            }
        }
        out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let accept = derive_accept_key(&key);
        out.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a header value"),
        );
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = hyper_util::rt::TokioIo::new(upgraded);
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(max))
                        .max_frame_size(Some(max));
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    session.bridge(socket).await;
                }
                // The client went away during the handshake: the session's drop cancels.
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        Ok(response)
    }
}

/// Whether the request asks for a WebSocket (`GET`, `Connection: upgrade`,
/// `Upgrade: websocket`).
pub(crate) fn is_websocket_upgrade<B>(request: &http::Request<B>) -> bool {
    let headers = request.headers();
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade_websocket = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
    request.method() == Method::GET && connection_upgrade && upgrade_websocket
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn websocket_upgrades_are_recognised() {
        let req = |method: Method, conn: &str, up: &str| {
            http::Request::builder()
                .method(method)
                .uri("/a/ws")
                .header("connection", conn)
                .header("upgrade", up)
                .body(Bytes::new())
                .unwrap()
        };
        assert!(is_websocket_upgrade(&req(
            Method::GET,
            "Upgrade",
            "websocket"
        )));
        assert!(is_websocket_upgrade(&req(
            Method::GET,
            "keep-alive, upgrade",
            "WebSocket"
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::POST,
            "upgrade",
            "websocket"
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            "keep-alive",
            "websocket"
        )));
        assert!(!is_websocket_upgrade(&req(Method::GET, "upgrade", "h2c")));
    }
}

#[cfg(test)]
mod send_tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// axum's and hyper's request bodies are `Send` but not `Sync`: a forward of one must
    /// still be a future that a multi-threaded server can run.
    #[allow(dead_code)]
    fn forward_of_a_body_that_is_not_sync_is_send(
        host: PluginHost,
        request: http::Request<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>>,
    ) {
        let forward = host.forward(request, "/ext");
        assert_send(&forward);
    }
}
