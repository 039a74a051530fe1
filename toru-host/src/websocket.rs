//! WebSockets to plugins: the session a plugin accepted, and the bridge between it and a
//! client's WebSocket (tokio-tungstenite's, warp's, or any that implements [`BridgeMessage`]).
//!
//! The host does the handshake; the plugin sees the request and answers 101 to accept. Then
//! messages travel as data frames with flow control both ways: the bridge reads the client's
//! next message only when the plugin has credit for it, and the plugin may send only as fast as
//! the client's socket takes its messages. The client's pings are answered by the WebSocket
//! library; the plugin never sees them. Close codes pass both ways; a plugin that crashes
//! closes the client's WebSocket with 1011, a host that shuts down with 1001.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::HeaderMap;
use toru_plugin_api::DataFlags;

use crate::body::PluginBody;
use crate::connection::{Abort, StreamEnd, StreamHandle, StreamSender};

/// What a plugin answered to a WebSocket upgrade ([`PluginHost::websocket`](crate::PluginHost::websocket)).
#[derive(Debug)]
pub enum WsUpgrade {
    /// The plugin accepted (101). Finish the client's handshake, adding
    /// [`WebSocketSession::headers`] to the 101, then bridge the client's socket to the session.
    Accepted(WebSocketSession),
    /// The plugin refused, with this response for the client as it is.
    Refused(http::Response<PluginBody>),
}

/// A WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl WsMessage {
    /// The message's size in bytes.
    pub fn len(&self) -> usize {
        match self {
            WsMessage::Text(t) => t.len(),
            WsMessage::Binary(b) => b.len(),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What comes from the plugin's side of a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A message for the client.
    Message(WsMessage),
    /// The WebSocket is over: close the client's with this code and reason. The plugin closed
    /// it (its code), the plugin crashed or broke a rule (1011), the host is shutting down or
    /// the socket was idle (1001). Every later call returns it again.
    Close {
        /// The close code (RFC 6455 section 7.4).
        code: u16,
        /// The reason, at most 123 bytes.
        reason: String,
    },
}

/// The WebSocket was closed; nothing more can be sent on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the WebSocket is closed")]
pub struct WsClosed;

/// A WebSocket a plugin accepted. Send the client's messages with [`send`](Self::send), pass
/// the plugin's on from [`recv`](Self::recv), or let [`bridge`](Self::bridge) do both with
/// the client's socket. Dropping it without a close tells the plugin the client went away
/// (`cancel`).
#[derive(Debug)]
pub struct WebSocketSession {
    sender: WsSender,
    receiver: WsReceiver,
    headers: HeaderMap,
    plugin_id: String,
}

/// The sending half of a [`WebSocketSession`]: the client's messages to the plugin.
#[derive(Clone)]
pub struct WsSender {
    stream: StreamSender,
}

/// The receiving half of a [`WebSocketSession`]: the plugin's messages to the client.
pub struct WsReceiver {
    handle: StreamHandle,
    max_message: usize,
    closed: Option<(u16, String)>,
}

impl std::fmt::Debug for WsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSender")
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl std::fmt::Debug for WsReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReceiver")
            .field("stream", &self.handle.id())
            .finish_non_exhaustive()
    }
}

/// A reason fits a close frame (123 bytes), cut on a character boundary.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

impl WebSocketSession {
    pub(crate) fn new(
        plugin_id: String,
        handle: StreamHandle,
        headers: HeaderMap,
        max_message: usize,
    ) -> WebSocketSession {
        WebSocketSession {
            sender: WsSender {
                stream: handle.sender(),
            },
            receiver: WsReceiver {
                handle,
                max_message,
                closed: None,
            },
            headers,
            plugin_id,
        }
    }

    /// The plugin that accepted the WebSocket.
    pub fn plugin_id(&self) -> &str {
        &self.plugin_id
    }

    /// Headers for the client's 101 answer, from the plugin's (`Sec-WebSocket-Protocol` when it
    /// chose a subprotocol).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The subprotocol the plugin chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.headers
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
    }

    /// Sends a client's message to the plugin (see [`WsSender::send`]).
    ///
    /// # Errors
    /// [`WsClosed`] when the WebSocket is closed.
    pub async fn send(&self, message: WsMessage) -> Result<(), WsClosed> {
        self.sender.send(message).await
    }

    /// The plugin's next message, or how the WebSocket ended (see [`WsReceiver::recv`]).
    pub async fn recv(&mut self) -> WsEvent {
        self.receiver.recv().await
    }

    /// Closes the WebSocket from the client's side: the plugin gets `ws_close` with the code.
    pub async fn close(self, code: u16, reason: &str) {
        self.sender.close(code, reason).await;
    }

    /// The two halves, to use from two tasks.
    pub fn split(self) -> (WsSender, WsReceiver) {
        (self.sender, self.receiver)
    }

    /// Bridges a client's WebSocket to this session until either side closes, then closes the
    /// other: messages both ways with backpressure, close codes both ways, a client's message
    /// over the limit closed with 1009, a client that vanishes reported to the plugin as
    /// `cancel`. Pings are answered by the socket's own library.
    pub async fn bridge<S, M, E>(self, socket: S)
    where
        S: Stream<Item = Result<M, E>> + Sink<M> + Send + Unpin,
        M: BridgeMessage,
        E: std::error::Error + 'static,
    {
        let (mut sink, mut client) = socket.split();
        let (sender, mut receiver) = self.split();
        let max_message = receiver.max_message;
        let outcome = {
            let to_plugin = async {
                while let Some(item) = client.next().await {
                    let frame = match item {
                        Ok(message) => message.into_frame(),
                        Err(e) if is_too_large(&e) => return Ended::TooBig,
                        Err(e) => {
                            tracing::debug!(error = %e, "client's WebSocket failed");
                            break;
                        }
                    };
                    match frame {
                        ClientFrame::Message(m) if m.len() > max_message => return Ended::TooBig,
                        ClientFrame::Message(m) => {
                            if sender.send(m).await.is_err() {
                                // The plugin's side ended; `to_client` says how.
                                return Ended::Plugin;
                            }
                        }
                        ClientFrame::Ping => sender.keep_alive(),
                        ClientFrame::Close(code, reason) => {
                            // 1005: the client gave no code.
                            sender.close(code.unwrap_or(1005), &reason).await;
                            return Ended::Client;
                        }
                    }
                }
                // Gone without a close: the plugin gets `cancel`.
                sender.cancel();
                Ended::Client
            };
            let to_client = async {
                loop {
                    match receiver.recv().await {
                        WsEvent::Message(m) => {
                            if sink.send(M::from_message(m)).await.is_err() {
                                sender.cancel();
                                return None;
                            }
                        }
                        WsEvent::Close { code, reason } => return Some((code, reason)),
                    }
                }
            };
            tokio::pin!(to_plugin, to_client);
            tokio::select! {
                ended = &mut to_plugin => match ended {
                    Ended::Plugin => Err(to_client.await),
                    ended => Ok(ended),
                },
                close = &mut to_client => Err(close),
            }
        };
        match outcome {
            Ok(Ended::TooBig) => {
                sender
                    .close(1009, "the message is larger than the host allows")
                    .await;
                let _ = sink.send(M::close(1009, "message too big")).await;
                let _ = tokio::time::timeout(CLOSING, sink.close()).await;
            }
            Ok(_) => {
                let _ = tokio::time::timeout(CLOSING, sink.close()).await;
            }
            Err(close) => {
                if let Some((code, reason)) = close {
                    let _ = sink.send(M::close(code, &reason)).await;
                }
                // Wait (a little) for the client's answering close, passing nothing on.
                let drain = async { while let Some(Ok(_)) = client.next().await {} };
                let _ = tokio::time::timeout(CLOSING, drain).await;
            }
        }
    }
}

/// How long the bridge waits for the client's side of a closing handshake.
const CLOSING: Duration = Duration::from_secs(5);

/// Why the client-to-plugin half of a bridge stopped.
enum Ended {
    /// The client closed or went away; the plugin has been told.
    Client,
    /// The client sent a message over the limit.
    TooBig,
    /// The plugin's side ended first.
    Plugin,
}

/// Whether a client socket's error is a message over the size limit.
fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) =
            err.downcast_ref::<WsError>()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl WsSender {
    /// Sends a client's message to the plugin, in data frames of at most 64 KiB, each when the
    /// plugin's credit allows: a plugin that reads slowly slows this down.
    ///
    /// # Errors
    /// [`WsClosed`] when the WebSocket is closed.
    pub async fn send(&self, message: WsMessage) -> Result<(), WsClosed> {
        let (flags, data) = match message {
            WsMessage::Text(t) => (DataFlags::TEXT, Bytes::from(t)),
            WsMessage::Binary(b) => (DataFlags::NONE, b),
        };
        self.stream.send(flags, data).await.map_err(|_| WsClosed)
    }

    /// Closes the WebSocket from the client's side: the plugin gets `ws_close` with the code
    /// and reason (cut to 123 bytes). Does nothing when it is closed already.
    pub async fn close(&self, code: u16, reason: &str) {
        let _ = self.stream.ws_close(code, &close_reason(reason)).await;
    }

    /// Ends the WebSocket because the client went away without closing it: the plugin gets
    /// `cancel`.
    pub fn cancel(&self) {
        self.stream.cancel(Abort::Cancelled);
    }

    /// Counts as activity for the idle timeout (a client's ping, which the plugin never sees).
    pub fn keep_alive(&self) {
        self.stream.touch();
    }
}

impl WsReceiver {
    /// The plugin's next message, waiting for it, or how the WebSocket ended. Reading it grants
    /// the plugin credit for more. A plugin's message over the host's limit, or text that is
    /// not UTF-8, ends the WebSocket (1011 for the client; the plugin gets `ws_close` 1009 or
    /// 1007).
    pub async fn recv(&mut self) -> WsEvent {
        if let Some((code, reason)) = &self.closed {
            return WsEvent::Close {
                code: *code,
                reason: reason.clone(),
            };
        }
        let event = self.next().await;
        if let WsEvent::Close { code, reason } = &event {
            self.closed = Some((*code, reason.clone()));
        }
        event
    }

    async fn next(&mut self) -> WsEvent {
        let mut message: Option<(bool, BytesMut)> = None;
        loop {
            let piece = std::future::poll_fn(|cx| self.handle.poll_data(cx)).await;
            let (data, flags) = match piece {
                Some(Ok(piece)) => piece,
                Some(Err(end)) => return close_event(end),
                None => return close_event(StreamEnd::Aborted(Abort::Cancelled)),
            };
            let (text, buf) =
                message.get_or_insert_with(|| (flags.contains(DataFlags::TEXT), BytesMut::new()));
            if buf.len() + data.len() > self.max_message {
                self.refuse(1009, "the message is larger than the host allows")
                    .await;
                return WsEvent::Close {
                    code: 1011,
                    reason: "the plugin sent a message that is too big".into(),
                };
            }
            buf.extend_from_slice(&data);
            if flags.contains(DataFlags::MORE) {
                continue;
            }
            let (text, buf) = (*text, std::mem::take(buf));
            return if text {
                match String::from_utf8(buf.to_vec()) {
                    Ok(t) => WsEvent::Message(WsMessage::Text(t)),
                    Err(_) => {
                        self.refuse(1007, "a text message is not UTF-8").await;
                        WsEvent::Close {
                            code: 1011,
                            reason: "the plugin sent text that is not UTF-8".into(),
                        }
                    }
                }
            } else {
                WsEvent::Message(WsMessage::Binary(buf.freeze()))
            };
        }
    }

    /// Ends the WebSocket for the plugin with `code`.
    async fn refuse(&mut self, code: u16, reason: &str) {
        let _ = self.handle.sender().ws_close(code, reason).await;
    }
}

fn close_event(end: StreamEnd) -> WsEvent {
    let (code, reason) = match end {
        StreamEnd::WsClosed { code, reason } => (code, reason),
        StreamEnd::Finished => (1000, String::new()),
        StreamEnd::Aborted(Abort::HostStopping) => (1001, "the server is shutting down".into()),
        StreamEnd::Aborted(Abort::Idle(_) | Abort::HeadTimeout(_)) => {
            (1001, "idle for too long".into())
        }
        StreamEnd::Aborted(Abort::TooManyMessages) => {
            (1011, "the client fell too far behind".into())
        }
        StreamEnd::Aborted(_) => (1011, "the plugin went away".into()),
    };
    WsEvent::Close {
        code,
        reason: close_reason(&reason),
    }
}

/// What the bridge needs from a WebSocket library's message type.
pub trait BridgeMessage: Sized {
    /// What the message is.
    fn into_frame(self) -> ClientFrame;
    /// A message to the client.
    fn from_message(message: WsMessage) -> Self;
    /// A close frame to the client.
    fn close(code: u16, reason: &str) -> Self;
}

/// A client's WebSocket frame, as the bridge sees it.
#[derive(Debug)]
pub enum ClientFrame {
    /// A text or binary message.
    Message(WsMessage),
    /// A ping or a pong (answered by the library).
    Ping,
    /// The client closes, with its code (none: 1005) and reason.
    Close(Option<u16>, String),
}

impl BridgeMessage for tokio_tungstenite::tungstenite::Message {
    fn into_frame(self) -> ClientFrame {
        use tokio_tungstenite::tungstenite::Message as M;
        match self {
            M::Text(t) => ClientFrame::Message(WsMessage::Text(t.as_str().to_owned())),
            M::Binary(b) => ClientFrame::Message(WsMessage::Binary(b)),
            M::Ping(_) | M::Pong(_) | M::Frame(_) => ClientFrame::Ping,
            M::Close(frame) => match frame {
                Some(f) => ClientFrame::Close(Some(f.code.into()), f.reason.as_str().to_owned()),
                None => ClientFrame::Close(None, String::new()),
            },
        }
    }

    fn from_message(message: WsMessage) -> Self {
        use tokio_tungstenite::tungstenite::Message as M;
        match message {
            WsMessage::Text(t) => M::text(t),
            WsMessage::Binary(b) => M::binary(b),
        }
    }

    fn close(code: u16, reason: &str) -> Self {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        tokio_tungstenite::tungstenite::Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: close_reason(reason).into(),
        }))
    }
}
