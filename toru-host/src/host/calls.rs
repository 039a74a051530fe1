//! Calls to plugins: HTTP requests (whole or streamed), WebSocket upgrades and bundles.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use toru_plugin_api::DataFlags;
use toru_plugin_api::protocol::{CowStr, HttpRequest, Payload, error_code, now_millis};

use crate::body::{BoxError, PluginBody, UploadError};
use crate::builder::PluginHostBuilder;
use crate::connection::{
    Abort, CallFailure, HeadOutcome, Kind, Leased, Reply, ResponseHead, StreamEnd, StreamHandle,
};
use crate::error::CallError;
use crate::headers::{self, ResponsePolicy};
use crate::request::{PluginRequest, PluginResponse};
use crate::state::PluginState;
use crate::websocket::{WebSocketSession, WsUpgrade};

use super::PluginHost;

/// Which plugin answered: an extension on every response from
/// [`PluginHost::stream`] and [`PluginHost::forward`] that reached a plugin (for metrics and
/// logs).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardedTo {
    /// The plugin's id.
    pub plugin_id: String,
}

/// A plugin that serves now, with what its calls need.
pub(super) struct Target {
    pub(super) id: String,
    /// Held for the call: an upgrade's old version finishes it before it stops.
    conn: Leased,
    route: String,
    csp: HeaderValue,
}

impl Target {
    fn check_path(&self, path: &str) -> Result<(), CallError> {
        check_path(&self.id, &self.route, path)
    }
}

/// Refuses a path outside the plugin's route, or with dot segments that could leave it.
fn check_path(id: &str, route: &str, path: &str) -> Result<(), CallError> {
    let inside = path == route
        || path
            .strip_prefix(route)
            .is_some_and(|rest| rest.starts_with('/'));
    let dots = path.split('/').any(|s| s == "." || s == "..");
    if inside && !dots {
        Ok(())
    } else {
        Err(CallError::OutsideRoute {
            id: id.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl PluginHost {
    /// Forwards an HTTP request to plugin `id` and reads its whole response. The simple path;
    /// see [`stream`](Self::stream) for bodies of any size.
    ///
    /// The path must be under the plugin's route. The plugin never sees the request's
    /// credentials or hop-by-hop headers, and the response gets the host's header rules (see
    /// [`stream`](Self::stream)). A request body of a protocol 1 plugin, and the response body,
    /// may be at most [`max_body_bytes`](crate::PluginHostBuilder::max_body_bytes).
    ///
    /// ```no_run
    /// # async fn demo(host: toru_host::PluginHost) -> Result<(), toru_host::CallError> {
    /// use toru_host::PluginRequest;
    /// let response = host
    ///     .request("hello-rust", &PluginRequest::get("/hello-rust/"))
    ///     .await?;
    /// println!("{} {:?}", response.status, response.body);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`CallError`] tells an unknown plugin from a disabled one, one that is not running, a
    /// timeout (the plugin was sent `cancel`, as it is when the caller stops waiting), the
    /// plugin's own error and the host's limits. [`CallError::status`] is its HTTP meaning.
    pub async fn request(
        &self,
        id: &str,
        request: &PluginRequest,
    ) -> Result<PluginResponse, CallError> {
        let http = request
            .clone()
            .into_http()
            .map_err(|e| CallError::BadRequest(format!("the path is not a valid URI: {e}")))?
            .map(http_body_util::Full::new);
        let response = self.stream(id, http).await?;
        let (parts, body) = response.into_parts();
        let limit = self.shared.settings.max_body_bytes;
        let body = body.read_all(limit).await.map_err(|e| match e {
            crate::BodyError::TooLarge { limit } => CallError::ResponseTooLarge {
                id: id.to_owned(),
                limit,
            },
            crate::BodyError::ShuttingDown => CallError::ShuttingDown,
            crate::BodyError::Plugin { code, message } => CallError::Plugin {
                id: id.to_owned(),
                code,
                message,
            },
            crate::BodyError::Idle(after) => CallError::Timeout {
                id: id.to_owned(),
                after,
            },
            _ => CallError::ConnectionLost(id.to_owned()),
        })?;
        Ok(PluginResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Forwards a request to plugin `id` with its body streamed, and answers as soon as the
    /// plugin has sent its response head, with the body as a [`PluginBody`] that streams it.
    ///
    /// - The request's path (`/acme/certificate`) must be under the plugin's route.
    /// - Its body is sent as it is read, at the pace the plugin's credit allows, and never held
    ///   whole: up to [`max_upload_bytes`](crate::PluginHostBuilder::max_upload_bytes). A body
    ///   whose `Content-Length` is at most 64 KiB is read first (the client has the
    ///   [idle timeout](crate::PluginHostBuilder::stream_idle_timeout) to send it) and sent with
    ///   the request. A protocol 1 plugin gets it whole, so up to
    ///   [`max_body_bytes`](crate::PluginHostBuilder::max_body_bytes).
    /// - The plugin never sees `Cookie`, `Authorization`, hop-by-hop headers or the ones named
    ///   in `Connection`; header names are lower case.
    /// - The response loses hop-by-hop headers and any `Set-Cookie` naming a
    ///   [protected cookie](crate::PluginHostBuilder::protected_cookies), and gets
    ///   `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox ...` (the
    ///   plugin's metadata may allow more), so its pages cannot use the host's session. It
    ///   carries a [`ForwardedTo`] extension.
    /// - The request timeout runs until the head (counted from the end of the request body);
    ///   then the [idle timeout](crate::PluginHostBuilder::stream_idle_timeout) applies.
    ///
    /// ```no_run
    /// # async fn demo(host: toru_host::PluginHost) -> Result<(), Box<dyn std::error::Error>> {
    /// use http_body_util::BodyExt;
    /// let request = toru_host::http::Request::get("/hello-rust/bytes?n=1000000")
    ///     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    /// let mut body = host.stream("hello-rust", request).await?.into_body();
    /// while let Some(frame) = body.frame().await {
    ///     let chunk = frame?.into_data().unwrap_or_default();
    ///     println!("{} bytes", chunk.len());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`request`](Self::request). Errors after the head end the body instead
    /// ([`BodyError`](crate::BodyError)).
    pub async fn stream<B>(
        &self,
        id: &str,
        request: http::Request<B>,
    ) -> Result<http::Response<PluginBody>, CallError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let target = self.target(id)?;
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        target.check_path(path)?;
        let headers = headers::to_plugin(&parts.headers)
            .map_err(|h| CallError::BadRequest(format!("header {} is not UTF-8 text", h.0)))?;
        let settings = &self.shared.settings;
        let declared = content_length(&parts.headers).or(body.size_hint().exact());
        let payload = HttpRequest {
            method: CowStr::borrowed(parts.method.as_str()),
            path: CowStr::borrowed(path),
            query: CowStr::borrowed(parts.uri.query().unwrap_or_default()),
            headers: headers
                .iter()
                .map(|(n, v)| (CowStr::borrowed(n), CowStr::borrowed(v)))
                .collect(),
            body: None,
            body_base64: None,
            end_stream: None,
            upgrade: None,
        };
        let mut response = if target.conn.streams() {
            let limit = settings.max_upload_bytes;
            if declared.is_some_and(|n| n > limit) {
                return Err(CallError::BodyTooLarge { limit });
            }
            let body = if body.is_end_stream() || declared == Some(0) {
                RequestBody::None
            } else if let Some(len) = declared.filter(|n| *n <= SMALL_BODY) {
                // Read first (a client gets the idle timeout to send it), then sent with the
                // request: the plugin reads both at once, and its handler has the whole body.
                let idle = settings.stream_idle_timeout;
                match tokio::time::timeout(idle, crate::body::collect_request(body, len)).await {
                    Ok(body) => RequestBody::Whole(body?),
                    Err(_) => {
                        return Err(CallError::Timeout {
                            id: target.id.clone(),
                            after: idle,
                        });
                    }
                }
            } else {
                RequestBody::Streamed(body)
            };
            let (head, handle) = self.exchange(&target, payload, body, Kind::Http).await?;
            self.respond(&target, head, Some(handle), false)?
        } else {
            let limit = settings.max_body_bytes;
            if declared.is_some_and(|n| n > limit) {
                return Err(CallError::BodyTooLarge { limit });
            }
            let body = crate::body::collect_request(body, limit).await?;
            let head = self.call_v1(&target, payload, &body).await?;
            self.respond(&target, head, None, false)?
        };
        response.extensions_mut().insert(ForwardedTo {
            plugin_id: target.id.clone(),
        });
        Ok(response)
    }

    /// Offers a client's WebSocket upgrade (a `GET` with `Upgrade: websocket`) to plugin `id`,
    /// for frameworks that do the handshake themselves (warp's `ws()`). The request's body is
    /// ignored; its path must be under the plugin's route. The plugin sees the path, query and
    /// headers (with `Sec-WebSocket-Protocol`, without the handshake's own headers) and accepts
    /// with 101 or answers anything else.
    ///
    /// On [`WsUpgrade::Accepted`], finish the handshake with the session's
    /// [`headers`](WebSocketSession::headers) and [`bridge`](WebSocketSession::bridge) the
    /// socket to it. A protocol 1 plugin knows nothing of WebSockets: it gets a plain `GET`,
    /// and its answer is the refusal.
    ///
    /// ```no_run
    /// # async fn demo(host: toru_host::PluginHost) -> Result<(), toru_host::CallError> {
    /// use toru_host::{WsMessage, WsUpgrade, WsEvent};
    /// let request = toru_host::http::Request::get("/hello-rust/ws").body(()).unwrap();
    /// match host.websocket("hello-rust", &request).await? {
    ///     WsUpgrade::Accepted(mut session) => {
    ///         session.send(WsMessage::Text("hi".into())).await.ok();
    ///         if let WsEvent::Message(reply) = session.recv().await {
    ///             println!("{reply:?}");
    ///         }
    ///         session.close(1000, "done").await;
    ///     }
    ///     WsUpgrade::Refused(response) => println!("refused: {}", response.status()),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub async fn websocket<B>(
        &self,
        id: &str,
        request: &http::Request<B>,
    ) -> Result<WsUpgrade, CallError> {
        let target = self.target(id)?;
        let path = request.uri().path();
        target.check_path(path)?;
        let headers = headers::to_plugin(request.headers())
            .map_err(|h| CallError::BadRequest(format!("header {} is not UTF-8 text", h.0)))?;
        let streams = target.conn.streams();
        let payload = HttpRequest {
            method: CowStr::borrowed("GET"),
            path: CowStr::borrowed(path),
            query: CowStr::borrowed(request.uri().query().unwrap_or_default()),
            headers: headers
                .iter()
                .filter(|(n, _)| streams || n != "sec-websocket-protocol")
                .map(|(n, v)| (CowStr::borrowed(n), CowStr::borrowed(v)))
                .collect(),
            body: None,
            body_base64: None,
            end_stream: None,
            upgrade: streams.then(|| CowStr::borrowed("websocket")),
        };
        let mut response = if streams {
            let (head, handle) = self
                .exchange::<http_body_util::Empty<Bytes>>(
                    &target,
                    payload,
                    RequestBody::None,
                    Kind::WebSocket,
                )
                .await?;
            if head.status == 101 && head.streaming {
                let response = self.respond(&target, head, None, true)?;
                let session = WebSocketSession::new(
                    target.id.clone(),
                    handle,
                    response.headers().clone(),
                    self.shared.settings.max_ws_message_bytes,
                );
                return Ok(WsUpgrade::Accepted(session));
            }
            self.respond(&target, head, Some(handle), false)?
        } else {
            let head = self.call_v1(&target, payload, &Bytes::new()).await?;
            self.respond(&target, head, None, false)?
        };
        response.extensions_mut().insert(ForwardedTo {
            plugin_id: target.id.clone(),
        });
        Ok(WsUpgrade::Refused(response))
    }

    /// Sends a protocol 2 request and waits for its head, streaming its body meanwhile.
    async fn exchange<B>(
        &self,
        target: &Target,
        mut payload: HttpRequest<'_>,
        body: RequestBody<B>,
        kind: Kind,
    ) -> Result<(ResponseHead, StreamHandle), CallError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let settings = &self.shared.settings;
        let timeout = settings.request_timeout;
        payload.end_stream = Some(matches!(body, RequestBody::None));
        let mut handle = match target.conn.open(payload, kind).await {
            Ok(handle) => handle,
            Err(CallFailure::Timeout) => return Err(self.timeout(&target.id)),
            Err(failure) => return Err(self.call_error(&target.id, Err(failure))),
        };
        // A streamed request body is sent from here, as part of this call: no task of its own
        // unless the head comes before the body is all sent.
        let mut upload: Option<Upload> = match body {
            RequestBody::None => None,
            RequestBody::Whole(data) => {
                // Queued right behind the request (within the first window), so both go out in
                // one write. A stream that ended already says so at its head.
                let _ = handle.sender().send(DataFlags::END, data).await;
                None
            }
            RequestBody::Streamed(body) => {
                let sender = handle.sender();
                sender.set_idle_applies(true);
                Some(
                    Box::pin(crate::body::upload(body, sender, settings.max_upload_bytes))
                        as Upload,
                )
            }
        };
        if upload.is_none() {
            // The request is sent: the request timeout runs from now (the connection's sweeper
            // keeps it, no timer per call).
            handle.set_head_deadline(Some(Instant::now() + timeout));
        }
        let outcome = loop {
            match upload.as_mut() {
                Some(sending) => tokio::select! {
                    head = handle.head() => {
                        // The plugin answered before the body was all sent (a stream both
                        // ways, or an early refusal): the rest goes on in a task.
                        if let Some(sending) = upload.take() {
                            tokio::spawn(async move {
                                let _ = sending.await;
                            });
                        }
                        break head;
                    }
                    done = sending => {
                        upload = None;
                        match done {
                            Ok(()) => {
                                handle.sender().set_idle_applies(false);
                                handle.set_head_deadline(Some(Instant::now() + timeout));
                            }
                            Err(e) => {
                                if let Some(e) = upload_error(e) {
                                    return Err(e);
                                }
                            }
                        }
                    }
                },
                None => break handle.head().await,
            }
        };
        let id = target.id.clone();
        match outcome {
            Ok(HeadOutcome::Head(head)) => Ok((head, handle)),
            Ok(HeadOutcome::Error { code, message }) => {
                Err(CallError::Plugin { id, code, message })
            }
            Ok(HeadOutcome::TooLarge { headers, bytes }) => {
                Err(self.too_large_head(&id, headers, bytes))
            }
            Err(StreamEnd::Aborted(Abort::HostStopping)) => Err(CallError::ShuttingDown),
            Err(StreamEnd::Aborted(Abort::Idle(after) | Abort::HeadTimeout(after))) => {
                Err(CallError::Timeout { id, after })
            }
            Err(_) => Err(CallError::ConnectionLost(id)),
        }
    }

    /// Sends a protocol 1 request, body included, and waits for the whole response.
    async fn call_v1(
        &self,
        target: &Target,
        mut payload: HttpRequest<'_>,
        body: &Bytes,
    ) -> Result<ResponseHead, CallError> {
        let (text, b64) = encode_body(body);
        payload.body = text;
        payload.body_base64 = b64;
        let reply = target
            .conn
            .call(
                Payload::HttpRequest(payload),
                self.shared.settings.request_timeout,
            )
            .await;
        match reply {
            Ok(Reply::Http(head)) => Ok(head),
            Ok(Reply::HeadTooLarge { headers, bytes }) => {
                Err(self.too_large_head(&target.id, headers, bytes))
            }
            other => Err(self.call_error(&target.id, other)),
        }
    }

    /// The client's response (see [`client_response`]), its faults as `BadResponse`.
    fn respond(
        &self,
        target: &Target,
        head: ResponseHead,
        handle: Option<StreamHandle>,
        websocket: bool,
    ) -> Result<http::Response<PluginBody>, CallError> {
        let protected = &self.shared.settings.protected_cookies;
        client_response(head, handle, websocket, protected, &target.csp).map_err(|reason| {
            CallError::BadResponse {
                id: target.id.clone(),
                reason,
            }
        })
    }

    fn too_large_head(&self, id: &str, headers: usize, bytes: usize) -> CallError {
        let s = &self.shared.settings;
        CallError::BadResponse {
            id: id.to_owned(),
            reason: format!(
                "its response head has {headers} headers in {bytes} bytes; the limits are {} headers and {} bytes",
                s.max_response_headers, s.max_response_head_bytes
            ),
        }
    }

    fn timeout(&self, id: &str) -> CallError {
        CallError::Timeout {
            id: id.to_owned(),
            after: self.shared.settings.request_timeout,
        }
    }

    /// The id of the plugin whose route is the first segment of `path` (`/acme/certificate`
    /// belongs to the plugin with route `/acme`).
    pub fn route_owner(&self, path: &str) -> Option<String> {
        let segment = path.trim_start_matches('/').split('/').next()?;
        self.shared
            .registry()
            .by_route(segment)
            .and_then(|e| e.metadata().map(|m| m.id.clone()))
    }

    /// Forwards a request to the plugin that owns its path; the plugin receives the full path.
    ///
    /// # Errors
    /// [`CallError::UnknownPlugin`] when no plugin owns the path, else as [`request`](Self::request).
    pub async fn request_by_path(
        &self,
        request: &PluginRequest,
    ) -> Result<PluginResponse, CallError> {
        let id = self
            .route_owner(&request.path)
            .ok_or_else(|| CallError::UnknownPlugin(request.path.clone()))?;
        self.request(&id, request).await
    }

    /// Offers a WebSocket upgrade to the plugin that owns its path, as
    /// [`websocket`](Self::websocket) does for a plugin by id; the plugin receives the full
    /// path. The session (or the refusal's [`ForwardedTo`]) names the plugin.
    ///
    /// # Errors
    /// [`CallError::UnknownPlugin`] when no plugin owns the path, else as
    /// [`websocket`](Self::websocket).
    pub async fn websocket_by_path<B>(
        &self,
        request: &http::Request<B>,
    ) -> Result<WsUpgrade, CallError> {
        let path = request.uri().path();
        let id = self
            .route_owner(path)
            .ok_or_else(|| CallError::UnknownPlugin(path.to_owned()))?;
        self.websocket(&id, request).await
    }

    /// The plugin's frontend bundle (a JavaScript module).
    ///
    /// # Errors
    /// [`CallError::NoBundle`] when the plugin has none (its metadata says so, whether it runs
    /// or not, or it answers `not_found`); else as [`request`](Self::request).
    pub async fn bundle(&self, id: &str) -> Result<String, CallError> {
        let frontend = {
            let reg = self.shared.registry();
            let entry = reg
                .plugins
                .get(id)
                .ok_or_else(|| CallError::UnknownPlugin(id.to_owned()))?;
            entry.enabled.then(|| entry.metadata().map(|m| m.frontend))
        };
        if frontend == Some(Some(false)) {
            // Its metadata says there is none: no need to ask (and wait on) the plugin.
            return Err(CallError::NoBundle(id.to_owned()));
        }
        let conn = self.target(id)?.conn;
        match conn
            .call(Payload::GetBundle, self.shared.settings.request_timeout)
            .await
        {
            Ok(Reply::Bundle(script)) => Ok(script),
            Ok(Reply::Error { code, .. }) if code == error_code::NOT_FOUND => {
                Err(CallError::NoBundle(id.to_owned()))
            }
            other => Err(self.call_error(id, other)),
        }
    }

    /// The plugin, if it serves requests now.
    pub(super) fn target(&self, id: &str) -> Result<Target, CallError> {
        let reg = self.shared.registry();
        if reg.shutting_down {
            return Err(CallError::ShuttingDown);
        }
        let entry = reg
            .plugins
            .get(id)
            .ok_or_else(|| CallError::UnknownPlugin(id.to_owned()))?;
        let meta = match &entry.found.result {
            Ok(meta) if entry.enabled => meta,
            _ => return Err(CallError::Disabled(id.to_owned())),
        };
        match (&entry.conn, entry.state.serves()) {
            (Some(conn), true) => Ok(Target {
                id: id.to_owned(),
                conn: conn.lease(),
                route: meta.route.clone(),
                csp: headers::sandbox_policy(&meta.sandbox),
            }),
            _ => Err(CallError::NotRunning {
                id: id.to_owned(),
                retry_after: retry_after(&entry.state, &self.shared.settings),
                state: entry.state.clone(),
            }),
        }
    }

    fn call_error(&self, id: &str, result: Result<Reply, CallFailure>) -> CallError {
        let id = id.to_owned();
        match result {
            Ok(Reply::Error { code, message }) => CallError::Plugin { id, code, message },
            Ok(other) => CallError::Plugin {
                id,
                code: error_code::BAD_REQUEST.into(),
                message: format!("plugin answered with an unexpected reply: {other:?}"),
            },
            Err(CallFailure::Timeout) => CallError::Timeout {
                id,
                after: self.shared.settings.request_timeout,
            },
            Err(CallFailure::Closed) => CallError::ConnectionLost(id),
            Err(CallFailure::TooLarge { len, max }) => CallError::TooLarge { len, max },
            Err(CallFailure::TooManyStreams { limit }) => CallError::TooManyStreams { id, limit },
        }
    }
}

/// The client's response to a plugin's head: status checked, headers through the host's rules
/// (`protected` cookies, the `csp`), and the body streamed from `handle` when one follows. An
/// `Err` says why the head cannot be passed on.
pub(crate) fn client_response(
    head: ResponseHead,
    handle: Option<StreamHandle>,
    websocket: bool,
    protected: &[String],
    csp: &HeaderValue,
) -> Result<http::Response<PluginBody>, String> {
    let status = StatusCode::from_u16(head.status)
        .map_err(|_| format!("status {} is not valid", head.status))?;
    if status.is_informational() && !websocket {
        return Err(format!("status {status} cannot end a response"));
    }
    let streaming = head.streaming && handle.is_some();
    let policy = ResponsePolicy {
        protected_cookies: protected,
        csp,
        keep_length: streaming,
        websocket,
    };
    let (headers, length) = headers::from_plugin(head.headers, &policy);
    let body = match handle {
        Some(handle) if streaming => PluginBody::stream(handle, head.body, length),
        _ => PluginBody::full(head.body),
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Request bodies at most this long, with their length declared, are read before the request is
/// sent, and go with it (see [`PluginHost::stream`]).
const SMALL_BODY: u64 = 64 * 1024;

/// A request's body, as it goes to the plugin.
enum RequestBody<B> {
    None,
    /// Read already: sent right behind the request.
    Whole(Bytes),
    /// Sent as it is read.
    Streamed(B),
}

/// A request body being sent (see `body::upload`).
type Upload = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), UploadError>> + Send>>;

/// The error for the caller when the upload stopped, or `None` when the stream's own end says
/// more (the plugin answered or went away first).
fn upload_error(e: UploadError) -> Option<CallError> {
    match e {
        UploadError::TooLarge { limit } => Some(CallError::BodyTooLarge { limit }),
        UploadError::Read(e) => Some(CallError::BadRequest(format!(
            "the request body could not be read: {e}"
        ))),
        UploadError::Ended => None,
    }
}

/// The request's `Content-Length`, when it has one that is a number.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Protocol 1: a body that is UTF-8 travels as it is, else base64-encoded.
fn encode_body(body: &[u8]) -> (Option<CowStr<'_>>, Option<CowStr<'static>>) {
    if body.is_empty() {
        return (None, None);
    }
    match std::str::from_utf8(body) {
        Ok(text) => (Some(CowStr::borrowed(text)), None),
        Err(_) => (None, Some(CowStr::from(BASE64.encode(body)))),
    }
}

/// When a plugin that is not serving is worth trying again.
fn retry_after(state: &PluginState, settings: &PluginHostBuilder) -> Option<Duration> {
    match state {
        PluginState::BackingOff { next_attempt_ms }
        | PluginState::OutOfResources {
            next_attempt_ms, ..
        } => Some(Duration::from_millis(
            next_attempt_ms.saturating_sub(now_millis()).max(1000),
        )),
        PluginState::Starting | PluginState::Stopping | PluginState::Upgrading { .. } => {
            Some(settings.start_timeout.min(Duration::from_secs(5)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bodies_travel_base64_and_text_as_is() {
        let (text, b64) = encode_body(&[0xff, 0x00]);
        assert_eq!(text, None);
        assert_eq!(b64.as_deref(), Some("/wA="));
        let (text, b64) = encode_body("héllo".as_bytes());
        assert_eq!(text.as_deref(), Some("héllo"));
        assert_eq!(b64, None);
    }

    #[test]
    fn paths_outside_the_route_are_refused() {
        for ok in ["/acme", "/acme/", "/acme/a/b", "/acme/a..b", "/acme/%2e%2e"] {
            assert!(check_path("acme", "/acme", ok).is_ok(), "{ok}");
        }
        for bad in [
            "/acmex",
            "/other/x",
            "/",
            "",
            "/acme/../other",
            "/acme/./x",
            "acme/x",
        ] {
            assert!(
                matches!(
                    check_path("acme", "/acme", bad),
                    Err(CallError::OutsideRoute { .. })
                ),
                "{bad}"
            );
        }
    }
}
