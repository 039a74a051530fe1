//! Bodies: [`PluginBody`], a plugin's response body as an [`http_body::Body`], and the task
//! that streams a caller's request body to a plugin.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use toru_plugin_api::DataFlags;

use crate::connection::{Abort, StreamEnd, StreamHandle, StreamSender};

/// A plugin's response body: an [`http_body::Body`] of [`Bytes`], which hyper, axum and warp
/// can serve as it is.
///
/// From a protocol 2 plugin it is a stream: each chunk is handed on as the plugin sends it, and
/// the plugin may send more only as the body is read (flow control), so a slow client slows the
/// plugin and the host holds at most 256 KiB of it. Its size hint is exact when the plugin sent
/// `Content-Length`, and a body that turns out longer or shorter ends with
/// [`BodyError::LengthMismatch`]. A body the plugin cut off, or that was cut off because the
/// plugin crashed, ends with an error too, so a download never looks complete when it is not
/// (servers then abort the response). Dropping the body before its end sends the plugin `cancel`.
///
/// From a protocol 1 plugin, and for the host's own error answers, it is one chunk.
#[derive(Debug)]
pub struct PluginBody {
    inner: Inner,
}

enum Inner {
    Full(Option<Bytes>),
    Stream {
        handle: StreamHandle,
        /// Body bytes that came in the head's message, before the data frames.
        first: Option<Bytes>,
        /// What is left of the announced `Content-Length`.
        remaining: Option<u64>,
        announced: Option<u64>,
        done: bool,
    },
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Full(b) => f
                .debug_tuple("Full")
                .field(&b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Inner::Stream {
                handle, remaining, ..
            } => f
                .debug_struct("Stream")
                .field("stream", &handle.id())
                .field("remaining", remaining)
                .finish(),
        }
    }
}

/// Why a [`PluginBody`] ended before it was complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The plugin ended the stream with an `error`.
    #[error("the plugin aborted the response ({code}: {message})")]
    Plugin {
        /// The plugin's error code.
        code: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin's connection ended (it crashed, exited or broke the protocol).
    #[error("the plugin went away in the middle of the response")]
    ConnectionLost,
    /// Nothing moved on the stream for the idle timeout.
    #[error("nothing moved on the response for {0:?}")]
    Idle(Duration),
    /// The host cancelled the stream (its request body failed or was too large).
    #[error("the host cancelled the response")]
    Cancelled,
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The body's length differs from the plugin's `Content-Length`.
    #[error("the plugin announced {expected} bytes but sent {received}")]
    LengthMismatch {
        /// The announced length.
        expected: u64,
        /// What came (or the length where it went past the announced one).
        received: u64,
    },
    /// A body that is too large to collect.
    #[error("the response body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
}

impl From<StreamEnd> for BodyError {
    fn from(end: StreamEnd) -> Self {
        match end {
            // A WebSocket's end is not a body's; nobody reads a WebSocket as a body.
            StreamEnd::Finished | StreamEnd::WsClosed { .. } => BodyError::Cancelled,
            StreamEnd::Aborted(why) => why.into(),
        }
    }
}

impl From<Abort> for BodyError {
    fn from(why: Abort) -> Self {
        match why {
            Abort::Plugin { code, message } => BodyError::Plugin { code, message },
            Abort::ConnectionLost => BodyError::ConnectionLost,
            Abort::Idle(after) | Abort::HeadTimeout(after) => BodyError::Idle(after),
            Abort::Cancelled | Abort::TooManyMessages => BodyError::Cancelled,
            Abort::HostStopping => BodyError::ShuttingDown,
        }
    }
}

impl PluginBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> PluginBody {
        PluginBody {
            inner: Inner::Full(Some(bytes.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> PluginBody {
        PluginBody {
            inner: Inner::Full(None),
        }
    }

    pub(crate) fn stream(handle: StreamHandle, first: Bytes, length: Option<u64>) -> PluginBody {
        PluginBody {
            inner: Inner::Stream {
                handle,
                first: (!first.is_empty()).then_some(first),
                remaining: length,
                announced: length,
                done: false,
            },
        }
    }

    /// The whole body when it is already in memory (not a stream).
    pub fn as_full(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Full(Some(b)) => Some(b),
            Inner::Full(None) => {
                static EMPTY: Bytes = Bytes::new();
                Some(&EMPTY)
            }
            Inner::Stream { .. } => None,
        }
    }

    /// Reads the whole body, up to `limit` bytes.
    ///
    /// # Errors
    /// [`BodyError::TooLarge`] past `limit`, else how the body ended early.
    pub async fn read_all(mut self, limit: u64) -> Result<Bytes, BodyError> {
        if let Inner::Full(b) = &mut self.inner {
            let b = b.take().unwrap_or_default();
            if b.len() as u64 > limit {
                return Err(BodyError::TooLarge { limit });
            }
            return Ok(b);
        }
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        let mut total = 0u64;
        while let Some(frame) =
            std::future::poll_fn(|cx| Pin::new(&mut self).poll_frame_inner(cx)).await
        {
            let chunk = frame?;
            total += chunk.len() as u64;
            if total > limit {
                return Err(BodyError::TooLarge { limit });
            }
            match first.take() {
                // The usual case, one chunk, is kept without copying.
                None if rest.is_empty() => first = Some(chunk),
                None => rest.extend_from_slice(&chunk),
                Some(head) => {
                    rest.extend_from_slice(&head);
                    rest.extend_from_slice(&chunk);
                }
            }
        }
        Ok(first.unwrap_or_else(|| rest.freeze()))
    }

    /// The body as a `Stream` of chunks (for frameworks that take one, such as
    /// `warp::reply::stream`).
    pub fn into_stream(self) -> BodyStream {
        BodyStream { body: self }
    }

    fn poll_frame_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        match &mut self.get_mut().inner {
            Inner::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(Ok)),
            Inner::Stream {
                handle,
                first,
                remaining,
                announced,
                done,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                let mismatch = |remaining: u64, extra: u64| BodyError::LengthMismatch {
                    expected: announced.unwrap_or(0),
                    received: announced.unwrap_or(0) - remaining + extra,
                };
                loop {
                    let chunk = match first.take() {
                        Some(chunk) => chunk,
                        None => match ready!(handle.poll_data(cx)) {
                            Some(Ok((chunk, _))) => chunk,
                            None => {
                                *done = true;
                                if let Some(r) = *remaining
                                    && r > 0
                                {
                                    return Poll::Ready(Some(Err(mismatch(r, 0))));
                                }
                                return Poll::Ready(None);
                            }
                            Some(Err(end)) => {
                                *done = true;
                                return Poll::Ready(Some(Err(end.into())));
                            }
                        },
                    };
                    if let Some(r) = remaining {
                        let len = chunk.len() as u64;
                        if len > *r {
                            *done = true;
                            return Poll::Ready(Some(Err(mismatch(*r, len))));
                        }
                        *r -= len;
                    }
                    if !chunk.is_empty() {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                }
            }
        }
    }
}

impl Default for PluginBody {
    fn default() -> Self {
        PluginBody::empty()
    }
}

impl From<Bytes> for PluginBody {
    fn from(bytes: Bytes) -> Self {
        PluginBody::full(bytes)
    }
}

impl http_body::Body for PluginBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.poll_frame_inner(cx)
            .map(|item| item.map(|chunk| chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Inner::Stream { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream {
                remaining: Some(r),
                first,
                ..
            } => SizeHint::with_exact(r + first.as_ref().map_or(0, |f| f.len() as u64)),
            Inner::Stream { .. } => SizeHint::default(),
        }
    }
}

/// A [`PluginBody`] as a `Stream` of chunks, from [`PluginBody::into_stream`].
#[derive(Debug)]
pub struct BodyStream {
    body: PluginBody,
}

impl futures_util::Stream for BodyStream {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().body).poll_frame_inner(cx)
    }
}

/// Reads a caller's whole request body, up to `limit` bytes (for a protocol 1 plugin).
pub(crate) async fn collect_request<B>(body: B, limit: u64) -> Result<Bytes, crate::CallError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            crate::CallError::BadRequest(format!(
                "the request body could not be read: {}",
                e.into()
            ))
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let chunk = data.copy_to_bytes(data.remaining());
        total += chunk.len() as u64;
        if total > limit {
            return Err(crate::CallError::BodyTooLarge { limit });
        }
        match first.take() {
            None if rest.is_empty() => first = Some(chunk),
            None => rest.extend_from_slice(&chunk),
            Some(head) => {
                rest.extend_from_slice(&head);
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// A boxed error from a caller's request body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why streaming a request body to the plugin stopped.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The body is larger than the host accepts.
    TooLarge { limit: u64 },
    /// Reading the caller's body failed (the client went away).
    Read(BoxError),
    /// The stream ended first (the plugin answered, or it was cut off).
    Ended,
}

/// Streams `body` to the plugin on `sender`, at most `limit` bytes, and ends it with `END`.
/// Stops at once when the stream ends. Every failure cancels the stream.
pub(crate) async fn upload<B>(body: B, sender: StreamSender, limit: u64) -> Result<(), UploadError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let result = upload_inner(body, &sender, limit).await;
    match &result {
        Ok(()) | Err(UploadError::Ended) => {}
        Err(_) => sender.cancel(Abort::Cancelled),
    }
    result
}

async fn upload_inner<B>(body: B, sender: &StreamSender, limit: u64) -> Result<(), UploadError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    loop {
        // The error becomes a `BoxError` at once, so the future never holds a `B::Error`.
        let next = std::future::poll_fn(|cx| {
            body.as_mut()
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::<BoxError>::into)))
        });
        let frame = tokio::select! {
            frame = next => frame,
            _ = sender.ended_wait() => return Err(UploadError::Ended),
        };
        let eof = frame.is_none();
        let data = match frame {
            None => Bytes::new(),
            Some(Err(e)) => return Err(UploadError::Read(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => data.copy_to_bytes(data.remaining()),
                // Trailers: the protocol has none.
                Err(_) => continue,
            },
        };
        sent += data.len() as u64;
        if sent > limit {
            return Err(UploadError::TooLarge { limit });
        }
        let end = eof || body.is_end_stream();
        if data.is_empty() && !end {
            continue;
        }
        let flags = if end { DataFlags::END } else { DataFlags::NONE };
        sender
            .send(flags, data)
            .await
            .map_err(|_| UploadError::Ended)?;
        if end {
            return Ok(());
        }
    }
}
