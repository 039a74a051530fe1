//! Bodies as streams: [`Body`], a request's body as it arrives, and [`BodyWriter`], a response's
//! body as the handler produces it. Both hold the protocol's flow control for the handler: reading
//! gives the host credit for what was read, and writing waits for the host's credit.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use futures_util::Stream as FuturesStream;
use tokio_util::sync::CancellationToken;

use super::error::StreamError;
use super::stream::{Ended, Recv, Stream};
use crate::codec::DataFlags;

/// A request's body: whole in memory, or streaming in from the host (protocol 2).
///
/// Read it whole with [`collect`](Self::collect) (up to a limit), or chunk by chunk with
/// [`chunk`](Self::chunk) as the client sends it. Reading is what gives the host room to send
/// more: a handler that reads slowly slows the client's upload down, and the plugin never holds
/// more than 256 KiB of it unread.
///
/// ```
/// # async fn demo() -> Result<(), toru_plugin_api::StreamError> {
/// use toru_plugin_api::Body;
/// let mut body = Body::from("hello");
/// assert_eq!(&body.collect(1024).await?[..], b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Body(Inner);

#[derive(Debug, Default)]
enum Inner {
    /// Whole in memory; `collect` keeps it, `chunk` takes it.
    Full(Bytes),
    Streaming(Arc<Stream>),
    /// Read to the end by `chunk`, or abandoned over a limit.
    #[default]
    Done,
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Body(Inner::Done)
    }

    pub(crate) fn streaming(stream: Arc<Stream>) -> Self {
        Body(Inner::Streaming(stream))
    }

    /// The body, when it is whole in memory: a protocol 1 body, one made in a test, or one
    /// [`collect`](Self::collect)ed already. `None` while it streams.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.0 {
            Inner::Full(bytes) => Some(bytes),
            Inner::Streaming(_) | Inner::Done => None,
        }
    }

    /// Whether the body is still arriving from the host.
    pub fn is_streaming(&self) -> bool {
        matches!(self.0, Inner::Streaming(_))
    }

    /// The next chunk of the body, waiting for it; `None` at the end. Chunks are as the host
    /// sent them (up to 256 KiB each).
    ///
    /// # Errors
    /// [`StreamError::Cancelled`] when the host ended the request (the client went away), or
    /// [`StreamError::Closed`] when the response has already ended.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, StreamError> {
        match &mut self.0 {
            Inner::Full(bytes) => {
                let bytes = std::mem::take(bytes);
                self.0 = Inner::Done;
                Ok((!bytes.is_empty()).then_some(bytes))
            }
            Inner::Done => Ok(None),
            Inner::Streaming(stream) => match stream.recv().await {
                Recv::Data(_, data) => Ok(Some(data)),
                Recv::End => {
                    self.0 = Inner::Done;
                    Ok(None)
                }
                Recv::Ended(why) => Err(ended_error(&why)),
            },
        }
    }

    /// The whole body, read to its end. It stays in the body, so a second call returns it again.
    ///
    /// # Errors
    /// [`StreamError::TooLarge`] as soon as more than `limit` bytes have come (the rest is not
    /// read, and the body is left empty); otherwise as [`chunk`](Self::chunk).
    pub async fn collect(&mut self, limit: usize) -> Result<Bytes, StreamError> {
        if let Inner::Full(bytes) = &self.0 {
            if bytes.len() > limit {
                self.0 = Inner::Done;
                return Err(StreamError::TooLarge { limit });
            }
            return Ok(bytes.clone());
        }
        let mut whole = BytesMut::new();
        let mut first: Option<Bytes> = None;
        while let Some(chunk) = self.chunk().await? {
            let len = first.as_ref().map_or(0, Bytes::len) + whole.len() + chunk.len();
            if len > limit {
                self.0 = Inner::Done;
                return Err(StreamError::TooLarge { limit });
            }
            // A body of one chunk is kept as it came, without copying.
            match first.take() {
                None if whole.is_empty() => first = Some(chunk),
                Some(earlier) => {
                    whole.extend_from_slice(&earlier);
                    whole.extend_from_slice(&chunk);
                }
                None => whole.extend_from_slice(&chunk),
            }
        }
        let bytes = first.unwrap_or_else(|| whole.freeze());
        self.0 = Inner::Full(bytes.clone());
        Ok(bytes)
    }

    /// The body as a [`Stream`](futures_util::Stream) of chunks, for code that takes one.
    pub fn into_stream(self) -> impl FuturesStream<Item = Result<Bytes, StreamError>> + Send {
        futures_util::stream::unfold(Some(self), |body| async move {
            let mut body = body?;
            match body.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body(Inner::Full(bytes))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body(Inner::Full(bytes.into()))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body(Inner::Full(text.into()))
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body(Inner::Full(Bytes::from_static(text.as_bytes())))
    }
}

pub(crate) fn ended_error(why: &Ended) -> StreamError {
    match why {
        Ended::Cancelled => StreamError::Cancelled,
        Ended::ClientClosed(_) | Ended::GoingAway | Ended::Finished => StreamError::Closed,
    }
}

/// Sends a streamed response's body, given to the closure of
/// [`Response::streamed`](super::Response::streamed).
///
/// [`send`](Self::send) waits while the host has no room for more (its 256 KiB window for the
/// stream is used up, because the client reads slowly), so a producer never runs ahead of its
/// reader. When the client goes away, `send` fails with [`StreamError::Cancelled`] (and the
/// producer is usually dropped at its next `.await` before that).
///
/// On a protocol 1 connection the body is collected instead and sent whole when the closure
/// returns, up to about 12 MiB (the frame limit).
#[derive(Debug)]
pub struct BodyWriter {
    sink: Sink,
    shutdown: CancellationToken,
}

#[derive(Debug)]
enum Sink {
    Stream(Arc<Stream>),
    Collect { buf: Collected, limit: usize },
}

/// What a collecting [`BodyWriter`] gathered (protocol 1), readable after its producer
/// returned.
#[derive(Debug, Clone, Default)]
pub(crate) struct Collected(Arc<Mutex<BytesMut>>);

impl Collected {
    fn lock(&self) -> std::sync::MutexGuard<'_, BytesMut> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what was gathered.
    pub(crate) fn take(&self) -> Bytes {
        self.lock().split().freeze()
    }
}

impl BodyWriter {
    pub(crate) fn streaming(stream: Arc<Stream>, shutdown: CancellationToken) -> Self {
        BodyWriter {
            sink: Sink::Stream(stream),
            shutdown,
        }
    }

    /// A writer that gathers the body in memory (protocol 1), and the handle to read it.
    pub(crate) fn collecting(limit: usize, shutdown: CancellationToken) -> (Self, Collected) {
        let buf = Collected::default();
        let writer = BodyWriter {
            sink: Sink::Collect {
                buf: buf.clone(),
                limit,
            },
            shutdown,
        };
        (writer, buf)
    }

    /// Sends the next part of the body, waiting for the host to have room for it. Large data
    /// goes out in several frames; empty data sends nothing.
    ///
    /// Not cancel-safe: do not race it in `select!` against something that may win (the host's
    /// room it took would be lost).
    ///
    /// # Errors
    /// [`StreamError::Cancelled`] when the client went away or the connection closed;
    /// [`StreamError::TooLarge`] past the protocol 1 limit.
    pub async fn send(&mut self, data: impl Into<Bytes>) -> Result<(), StreamError> {
        let mut data = data.into();
        match &mut self.sink {
            Sink::Collect { buf, limit } => {
                let mut buf = buf.lock();
                if buf.len() + data.len() > *limit {
                    return Err(StreamError::TooLarge { limit: *limit });
                }
                buf.extend_from_slice(&data);
                Ok(())
            }
            Sink::Stream(stream) => {
                while !data.is_empty() {
                    let n = stream
                        .reserve(data.len())
                        .await
                        .map_err(|why| ended_error(&why))?;
                    let part = if n == data.len() {
                        std::mem::take(&mut data)
                    } else {
                        data.split_to(n)
                    };
                    let sent = stream
                        .link()
                        .send_data(stream.id(), DataFlags::NONE, part)
                        .await;
                    if !sent {
                        return Err(StreamError::Cancelled);
                    }
                }
                Ok(())
            }
        }
    }

    /// Whether the plugin is shutting down. A producer that would run for long (an event
    /// stream) should end soon after this turns true; shutdown waits up to 5 s for it.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdk::link::Link;
    use crate::sdk::writer::Queue;

    #[tokio::test]
    async fn a_full_body_is_taken_by_chunk_and_kept_by_collect() {
        let mut body = Body::from("abc");
        assert_eq!(&body.collect(3).await.unwrap()[..], b"abc");
        assert_eq!(&body.collect(3).await.unwrap()[..], b"abc");
        assert_eq!(body.chunk().await.unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(body.chunk().await.unwrap(), None);
        assert_eq!(
            Body::from("abcd").collect(3).await,
            Err(StreamError::TooLarge { limit: 3 })
        );
        assert_eq!(Body::empty().chunk().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_streaming_body_collects_chunks_and_stops_at_the_limit() {
        let (queue, _rx) = Queue::new();
        let link = Arc::new(Link::new(queue));
        let stream = Stream::new(1, link.clone(), false);
        for part in ["ab", "cd"] {
            stream.push(DataFlags::NONE, Bytes::from(part)).unwrap();
        }
        stream.push(DataFlags::END, Bytes::from("e")).unwrap();
        let mut body = Body::streaming(stream);
        assert_eq!(&body.collect(5).await.unwrap()[..], b"abcde");
        assert!(body.as_bytes().is_some());

        let stream = Stream::new(2, link, false);
        stream.push(DataFlags::NONE, Bytes::from("abc")).unwrap();
        stream.push(DataFlags::NONE, Bytes::from("def")).unwrap();
        let mut body = Body::streaming(stream.clone());
        assert_eq!(
            body.collect(4).await,
            Err(StreamError::TooLarge { limit: 4 })
        );
        assert_eq!(body.chunk().await, Ok(None));
        stream.end(Ended::Cancelled);
        let mut body = Body::streaming(stream);
        assert_eq!(body.chunk().await, Err(StreamError::Cancelled));
    }

    #[tokio::test]
    async fn a_collecting_writer_refuses_past_its_limit() {
        let (mut w, collected) = BodyWriter::collecting(4, CancellationToken::new());
        w.send("ab").await.unwrap();
        w.send(Bytes::new()).await.unwrap();
        assert_eq!(w.send("cde").await, Err(StreamError::TooLarge { limit: 4 }));
        w.send("cd").await.unwrap();
        drop(w);
        assert_eq!(&collected.take()[..], b"abcd");
    }
}
