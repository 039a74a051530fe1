//! The plugin's side of the connection, shared by the serve loop, every handler and every
//! context clone: sending (encoded by the sender, queued for the writer) and the plugin's own
//! requests waiting for the host's reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio_util::codec::Encoder as _;

use super::error::KvError;
use super::writer::{Outgoing, Pushing, Queue, QueueError};
use crate::codec::{CodecError, DataFlags, DataFrame, FrameCodec};
use crate::protocol::{ErrorReply, KvResult, Message, Payload, RequestId, error_code};

/// A reply to one of the plugin's own requests.
pub(crate) type Reply = Result<KvResult<'static>, ErrorReply<'static>>;

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Link {
    queue: Queue,
    codec: FrameCodec,
    /// The plugin's own requests waiting for a reply, by request id.
    pending: Mutex<HashMap<RequestId, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
}

impl Link {
    pub(crate) fn new(queue: Queue) -> Self {
        Link {
            queue,
            codec: FrameCodec::new(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// The largest frame the host accepts, in bytes.
    pub(crate) fn max_frame_len(&self) -> usize {
        self.codec.max_frame_len()
    }

    /// Encodes one message. A reply too large for a frame becomes an `error` reply, so that the
    /// host is not left waiting for it; any other message that large is dropped (`None`).
    pub(crate) fn encode(&self, msg: &Message<'_>) -> Option<Bytes> {
        let mut buf = BytesMut::with_capacity(256);
        let mut codec = self.codec;
        match codec.encode(msg, &mut buf) {
            Ok(()) => Some(buf.freeze()),
            Err(CodecError::FrameTooLarge { len, max }) if msg.payload.is_reply() => {
                let text = format!("the reply of {len} bytes exceeds the {max}-byte frame limit");
                let error = Message::error(msg.request_id, error_code::PLUGIN_ERROR, text);
                buf.clear();
                codec.encode(&error, &mut buf).ok()?;
                Some(buf.freeze())
            }
            Err(e) => {
                eprintln!("ERROR dropped a {} message: {e}", msg.payload.type_name());
                None
            }
        }
    }

    /// Queues a message, waiting for room. Returns false once the connection is closing.
    ///
    /// The message is encoded at the call, so the future holds only its bytes (these futures sit
    /// in every request's task).
    pub(crate) fn send(&self, msg: &Message<'_>) -> impl Future<Output = bool> + Send + '_ {
        let pushing = self
            .encode(msg)
            .map(|f| self.queue.push(Outgoing::Frames(f)));
        async move {
            match pushing {
                Some(pushing) => pushing.await.is_ok(),
                None => !self.queue.is_closed(),
            }
        }
    }

    /// A message encoded as an item for [`push`](Self::push); `None` when it cannot be encoded
    /// (see [`encode`](Self::encode)).
    pub(crate) fn message_item(&self, msg: &Message<'_>) -> Option<Outgoing> {
        self.encode(msg).map(Outgoing::Frames)
    }

    /// A message and a data frame as one item for [`push`](Self::push), written together: a
    /// response's head and its whole body.
    pub(crate) fn message_and_data_item(
        &self,
        msg: &Message<'_>,
        stream: RequestId,
        flags: DataFlags,
        data: Bytes,
    ) -> Option<Outgoing> {
        let frames = self.encode(msg)?;
        let head = self.data_header(stream, flags, data.len())?;
        Some(Outgoing::FramesAndData { frames, head, data })
    }

    /// Queues an item, waiting for room. Fails once the connection is closing.
    pub(crate) fn push(&self, item: Outgoing) -> Pushing<'_> {
        self.queue.push(item)
    }

    /// Queues a message if there is room now.
    pub(crate) fn try_send(&self, msg: &Message<'_>) -> Result<(), QueueError> {
        match self.encode(msg) {
            Some(frame) => self.queue.try_push(Outgoing::Frames(frame)),
            None => Ok(()),
        }
    }

    /// Queues a message without waiting, even when the queue is full (see
    /// [`Queue::force_push`]).
    pub(crate) fn force_send(&self, msg: &Message<'_>) {
        if let Some(frame) = self.encode(msg) {
            let _ = self.queue.force_push(Outgoing::Frames(frame));
        }
    }

    /// Queues one data frame, waiting for room. The caller has checked the stream's window.
    pub(crate) async fn send_data(&self, stream: RequestId, flags: DataFlags, data: Bytes) -> bool {
        let Some(head) = self.data_header(stream, flags, data.len()) else {
            return false;
        };
        self.queue.push(Outgoing::Data { head, data }).await.is_ok()
    }

    fn data_header(
        &self,
        stream: RequestId,
        flags: DataFlags,
        len: usize,
    ) -> Option<[u8; crate::codec::DATA_HEADER_LEN]> {
        DataFrame::header(stream, flags, len, self.max_frame_len()).ok()
    }

    /// Asks the writer to close the connection after everything queued so far.
    pub(crate) fn close(&self) {
        self.queue.close();
    }

    /// Holds what is sent until [`release`](Self::release), which writes it together (see
    /// [`Queue::hold`]).
    pub(crate) fn hold(&self) {
        self.queue.hold();
    }

    /// Writes what was sent since [`hold`](Self::hold).
    pub(crate) fn release(&self) {
        self.queue.release();
    }

    /// Routes a reply to the request waiting for it. Returns false when none is.
    pub(crate) fn resolve(&self, id: RequestId, reply: Reply) -> bool {
        let waiter = self.lock_pending().remove(&id);
        waiter.is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Fails every request still waiting, once the host is gone.
    pub(crate) fn disconnect(&self) {
        self.lock_pending().clear();
    }

    pub(crate) fn lock_pending(
        &self,
    ) -> MutexGuard<'_, HashMap<RequestId, oneshot::Sender<Reply>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a request and waits for its reply.
    pub(crate) async fn call(&self, payload: Payload<'_>) -> Result<KvResult<'static>, KvError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        // Removes the entry if the caller stops waiting (a cancelled handler).
        let _guard = PendingGuard { link: self, id };
        if !self.send(&Message::with_id(id, payload)).await {
            return Err(KvError::Disconnected);
        }
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(KvError::Host {
                code: e.code.into_string(),
                message: e.message.into_string(),
            }),
            Err(_) => Err(KvError::Disconnected),
        }
    }
}

struct PendingGuard<'a> {
    link: &'a Link,
    id: RequestId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link.lock_pending().remove(&self.id);
    }
}
