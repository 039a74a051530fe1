//! The caller's side of a stream: the head and data the plugin sends ([`StreamHandle`]), and
//! the data the host sends ([`StreamSender`], which an upload task may hold on its own).

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::oneshot;
use toru_plugin_api::DataFlags;
use toru_plugin_api::protocol::{CowStr, Payload, RequestId, WsClose};

use super::stream::{Abort, HeadOutcome, Kind, Piece, Stream, StreamEnd};
use super::{Connection, MAX_DATA_FRAME};
use toru_plugin_api::Message;

/// Sends the host's data on a stream. Clones share the stream.
#[derive(Clone)]
pub(crate) struct StreamSender {
    conn: Connection,
    stream: Arc<Stream>,
}

impl StreamSender {
    pub(crate) fn id(&self) -> RequestId {
        self.stream.id
    }

    /// Sends `data` in data frames of at most 64 KiB, each when the plugin's credit allows.
    /// `flags` go on the last frame (`END` ends a body); every frame of a WebSocket message but
    /// its last gets `MORE`. Empty data still sends one frame.
    ///
    /// # Errors
    /// How the stream ended, when it has: nothing more may be sent on it.
    pub(crate) async fn send(&self, flags: DataFlags, data: Bytes) -> Result<(), StreamEnd> {
        let mut rest = data;
        loop {
            let want = rest.len().min(MAX_DATA_FRAME);
            let n = loop {
                let credit = self.stream.credit.notified();
                tokio::pin!(credit);
                credit.as_mut().enable();
                match self.stream.take_window(want)? {
                    Some(n) => break n,
                    None => credit.await,
                }
            };
            let piece = rest.split_to(n);
            let last = rest.is_empty();
            let frame_flags = match (last, self.stream.kind) {
                (true, _) => flags,
                (false, Kind::WebSocket) => flags | DataFlags::MORE,
                (false, Kind::Http) => DataFlags(flags.0 & !DataFlags::END.0),
            };
            if self
                .conn
                .send_data(self.stream.id, frame_flags, piece)
                .await
                .is_err()
            {
                return Err(self.end_or_lost());
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Closes the WebSocket from the host's side (the client closed it): the plugin gets
    /// `ws_close`, in order after the messages before it, and the stream ends.
    pub(crate) async fn ws_close(&self, code: u16, reason: &str) -> Result<(), StreamEnd> {
        if let Some(end) = self.stream.ended() {
            return Err(end);
        }
        let message = Message::with_id(
            self.stream.id,
            Payload::WsClose(WsClose {
                code,
                reason: CowStr::borrowed(reason),
            }),
        );
        self.stream.ws_closed(code, reason.to_owned());
        self.conn.remove_stream(self.stream.id);
        self.conn
            .send(&message)
            .await
            .map_err(|_| self.end_or_lost())
    }

    /// Cuts the stream off: the plugin gets `cancel`, the caller `why`.
    pub(crate) fn cancel(&self, why: Abort) {
        self.conn.cancel_stream(&self.stream, why);
    }

    /// Whether the idle timeout applies now (not while the request timeout does).
    pub(crate) fn set_idle_applies(&self, applies: bool) {
        self.stream.set_idle_applies(applies);
    }

    /// Something moved that the connection does not see (a client's WebSocket ping).
    pub(crate) fn touch(&self) {
        self.stream.touch();
    }

    /// Resolves once the stream has ended.
    pub(crate) async fn ended_wait(&self) {
        loop {
            let woken = self.stream.credit.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.stream.ended().is_some() {
                return;
            }
            woken.await;
        }
    }

    fn end_or_lost(&self) -> StreamEnd {
        self.stream
            .ended()
            .unwrap_or(StreamEnd::Aborted(Abort::ConnectionLost))
    }
}

/// The caller's handle on a stream it opened. Dropping it before the stream ended sends the
/// plugin `cancel`.
pub(crate) struct StreamHandle {
    sender: StreamSender,
    head_rx: Option<oneshot::Receiver<HeadOutcome>>,
}

impl StreamHandle {
    pub(crate) fn new(
        conn: Connection,
        stream: Arc<Stream>,
        head_rx: oneshot::Receiver<HeadOutcome>,
    ) -> StreamHandle {
        StreamHandle {
            sender: StreamSender { conn, stream },
            head_rx: Some(head_rx),
        }
    }

    /// The sending side, for a task of its own.
    pub(crate) fn sender(&self) -> StreamSender {
        self.sender.clone()
    }

    pub(crate) fn id(&self) -> RequestId {
        self.sender.stream.id
    }

    /// When the head is due: past it, the connection's sweeper cancels the stream, and
    /// [`head`](Self::head) ends with [`Abort::HeadTimeout`]. `None` while the request body is
    /// sent.
    pub(crate) fn set_head_deadline(&self, at: Option<std::time::Instant>) {
        self.sender.stream.set_head_deadline(at);
    }

    /// Waits for the plugin's answer to the request. Cancel-safe: dropping the future and
    /// calling again waits on.
    ///
    /// # Errors
    /// How the stream ended when it ended without an answer (the connection was lost, the
    /// stream cancelled).
    pub(crate) async fn head(&mut self) -> Result<HeadOutcome, StreamEnd> {
        let Some(rx) = self.head_rx.as_mut() else {
            return Err(self.sender.end_or_lost());
        };
        let result = rx.await;
        self.head_rx = None;
        result.map_err(|_| self.sender.end_or_lost())
    }

    /// The plugin's next data. `Ready(None)` when a body is complete; an `Err` when the
    /// stream was cut off or the plugin closed its WebSocket (again on every later poll).
    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Piece, StreamEnd>>> {
        match self.sender.stream.poll_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some((piece, grant))) => {
                if let Some(bytes) = grant {
                    self.sender.conn.send_credit(self.id(), bytes);
                }
                Poll::Ready(Some(Ok(piece)))
            }
            Poll::Ready(None) => match self.sender.stream.ended() {
                None | Some(StreamEnd::Finished) => Poll::Ready(None),
                Some(end) => Poll::Ready(Some(Err(end))),
            },
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let stream = &self.sender.stream;
        if stream.ended().is_none() {
            self.sender.conn.send_cancel(stream.id);
            stream.abort(Abort::Cancelled);
        }
        self.sender.conn.remove_stream(stream.id);
    }
}
