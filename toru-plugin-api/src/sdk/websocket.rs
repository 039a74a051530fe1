//! WebSockets (protocol 2): [`WebSocketUpgrade`], a client's request to accept or refuse, and
//! [`WebSocket`], an accepted one.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::body::ended_error;
use super::error::{HttpError, StreamError};
use super::response::{Producer, Response};
use super::stream::{CloseFrame, Ended, Recv, Stream};
use crate::codec::DataFlags;
use crate::protocol::{Message, Payload, WsClose};

/// The largest message [`WebSocket::recv`] assembles by default: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The longest close reason the protocol carries, in bytes (RFC 6455's 123).
const MAX_REASON: usize = 123;

/// A client's request to open a WebSocket, from [`Request::websocket`](super::Request::websocket).
///
/// [`accept`](Self::accept) it, which answers 101 and runs the session, or refuse it by
/// answering any other response (a 403, a 404, ...), which the client gets as it is.
///
/// ```no_run
/// use toru_plugin_api::{HttpResult, PluginContext, Request, WsMessage};
///
/// async fn echo(_: PluginContext, mut req: Request) -> HttpResult {
///     Ok(req.websocket()?.accept(|mut ws| async move {
///         while let Some(msg) = ws.recv().await? {
///             ws.send(msg).await?;
///         }
///         Ok(())
///     }))
/// }
/// ```
#[derive(Debug)]
pub struct WebSocketUpgrade {
    stream: Arc<Stream>,
    offered: Vec<String>,
    chosen: Option<String>,
}

impl WebSocketUpgrade {
    pub(crate) fn new(stream: Arc<Stream>, offered: Vec<String>) -> Self {
        WebSocketUpgrade {
            stream,
            offered,
            chosen: None,
        }
    }

    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`), in its order of
    /// preference.
    pub fn protocols(&self) -> &[String] {
        &self.offered
    }

    /// Chooses the subprotocol to answer with. A name the client did not offer is ignored.
    pub fn protocol(mut self, name: &str) -> Self {
        if self.offered.iter().any(|p| p == name) {
            self.chosen = Some(name.to_owned());
        }
        self
    }

    /// Accepts: the response is 101, and `session` runs with the [`WebSocket`] once it has been
    /// sent. When `session` returns `Ok` the SDK closes the WebSocket with 1000 (unless it is
    /// closed already); an `Err` closes it with 1011 on the client's side.
    pub fn accept<F, Fut>(self, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), HttpError>> + Send + 'static,
    {
        let mut res = Response::new(101);
        if let Some(protocol) = self.chosen {
            res.headers
                .push(("sec-websocket-protocol".to_owned(), protocol));
        }
        let session =
            Box::new(move |ws: WebSocket| -> super::response::BoxedRun { Box::pin(session(ws)) });
        res.set_producer(Producer::WebSocket(self.stream, session));
        res
    }
}

/// One WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

/// An accepted WebSocket: receive and send messages, close with a code and a reason.
///
/// Flow control holds both ways: [`send`](Self::send) waits while the client is not reading, and
/// a session that does not call [`recv`](Self::recv) stops the client's messages after 256 KiB.
/// To send while also waiting for messages, race [`recv`](Self::recv) (which is cancel-safe) in
/// `tokio::select!` against your own source, and send in its branch.
#[derive(Debug)]
pub struct WebSocket {
    stream: Arc<Stream>,
    max_message: usize,
    partial: BytesMut,
    partial_text: bool,
    in_message: bool,
    close: Option<CloseFrame>,
}

impl WebSocket {
    pub(crate) fn new(stream: Arc<Stream>) -> Self {
        WebSocket {
            stream,
            max_message: DEFAULT_MAX_MESSAGE,
            partial: BytesMut::new(),
            partial_text: false,
            in_message: false,
            close: None,
        }
    }

    /// Sets the largest message [`recv`](Self::recv) accepts (default
    /// [`DEFAULT_MAX_MESSAGE`]); a larger one closes the WebSocket with 1009.
    pub fn set_max_message(&mut self, bytes: usize) {
        self.max_message = bytes;
    }

    /// The next message, or `None` once the WebSocket is closed: by the client (see
    /// [`close_frame`](Self::close_frame)), by this side, or by the plugin shutting down (code
    /// 1001). Cancel-safe.
    ///
    /// # Errors
    /// [`StreamError::TooLarge`] for a message over the limit and [`StreamError::InvalidUtf8`]
    /// for text that is not UTF-8 (the WebSocket is closed with 1009 or 1007);
    /// [`StreamError::Cancelled`] when the client's connection dropped.
    pub async fn recv(&mut self) -> Result<Option<WsMessage>, StreamError> {
        loop {
            let (flags, data) = match self.stream.recv().await {
                Recv::Data(flags, data) => (flags, data),
                Recv::End => return Ok(None),
                Recv::Ended(Ended::ClientClosed(frame)) => {
                    self.close = Some(frame);
                    return Ok(None);
                }
                Recv::Ended(Ended::GoingAway) => {
                    self.close = Some(CloseFrame {
                        code: 1001,
                        reason: "the plugin is shutting down".into(),
                    });
                    return Ok(None);
                }
                Recv::Ended(Ended::Finished) => return Ok(None),
                Recv::Ended(Ended::Cancelled) => return Err(StreamError::Cancelled),
            };
            if !self.in_message {
                self.in_message = true;
                self.partial_text = flags.contains(DataFlags::TEXT);
            }
            if self.partial.len() + data.len() > self.max_message {
                self.partial = BytesMut::new();
                self.in_message = false;
                let _ = self.close_with(1009, "message too big").await;
                return Err(StreamError::TooLarge {
                    limit: self.max_message,
                });
            }
            let last = !flags.contains(DataFlags::MORE);
            let whole = match (last, self.partial.is_empty()) {
                (true, true) => data,
                (true, false) => {
                    self.partial.extend_from_slice(&data);
                    self.partial.split().freeze()
                }
                (false, _) => {
                    self.partial.extend_from_slice(&data);
                    continue;
                }
            };
            self.in_message = false;
            if !self.partial_text {
                return Ok(Some(WsMessage::Binary(whole)));
            }
            match String::from_utf8(Vec::from(whole)) {
                Ok(text) => return Ok(Some(WsMessage::Text(text))),
                Err(_) => {
                    let _ = self.close_with(1007, "text is not UTF-8").await;
                    return Err(StreamError::InvalidUtf8);
                }
            }
        }
    }

    /// How the client closed the WebSocket, once [`recv`](Self::recv) has returned `None` for
    /// that reason.
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.close.as_ref()
    }

    /// Sends a message, waiting while the client is not reading. A message larger than the
    /// window goes out in several frames.
    ///
    /// # Errors
    /// [`StreamError::Closed`] once the WebSocket is closed, [`StreamError::Cancelled`] when
    /// the client's connection dropped.
    pub async fn send(&mut self, msg: WsMessage) -> Result<(), StreamError> {
        let (kind, mut data) = match msg {
            WsMessage::Text(text) => (DataFlags::TEXT, Bytes::from(text)),
            WsMessage::Binary(data) => (DataFlags::NONE, data),
        };
        loop {
            let n = self
                .stream
                .reserve(data.len())
                .await
                .map_err(|why| ended_error(&why))?;
            let part = if n == data.len() {
                std::mem::take(&mut data)
            } else {
                data.split_to(n)
            };
            let flags = if data.is_empty() {
                kind
            } else {
                kind | DataFlags::MORE
            };
            let link = self.stream.link();
            if !link.send_data(self.stream.id(), flags, part).await {
                return Err(StreamError::Cancelled);
            }
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Sends a text message.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), StreamError> {
        self.send(WsMessage::Text(text.into())).await
    }

    /// Sends a binary message.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), StreamError> {
        self.send(WsMessage::Binary(data.into())).await
    }

    /// Closes the WebSocket with `code` and `reason` (cut to 123 bytes); the client gets them.
    /// Does nothing when it is closed already.
    ///
    /// # Errors
    /// [`StreamError::Cancelled`] when the connection to the host is gone.
    pub async fn close(mut self, code: u16, reason: &str) -> Result<(), StreamError> {
        self.close_with(code, reason).await
    }

    async fn close_with(&mut self, code: u16, reason: &str) -> Result<(), StreamError> {
        let closed = send_close(&self.stream, code, reason).await;
        self.stream.end(Ended::Finished);
        closed
    }
}

/// Sends `ws_close` on `stream` unless the plugin has sent its last frame already or the stream
/// was cancelled.
pub(crate) async fn send_close(
    stream: &Stream,
    code: u16,
    reason: &str,
) -> Result<(), StreamError> {
    if matches!(stream.ended(), Some(Ended::ClientClosed(_))) || !stream.finish_sending() {
        return Ok(());
    }
    let reason = truncate(reason, MAX_REASON);
    let msg = Message::with_id(
        stream.id(),
        Payload::WsClose(WsClose {
            code,
            reason: reason.into(),
        }),
    );
    if stream.link().send(&msg).await {
        Ok(())
    } else {
        Err(StreamError::Cancelled)
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("bye", 123), "bye");
        let long = "é".repeat(100);
        let cut = truncate(&long, MAX_REASON);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
