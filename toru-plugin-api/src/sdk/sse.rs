//! Server-sent events: [`Sse`], the sender [`Response::sse`](super::Response::sse) hands its
//! closure.

use bytes::{BufMut as _, BytesMut};

use super::body::BodyWriter;
use super::error::StreamError;

/// Sends server-sent events (a `text/event-stream` body): each event reaches the browser's
/// `EventSource` as soon as it is sent.
///
/// ```no_run
/// use std::time::Duration;
/// use toru_plugin_api::{HttpResult, PluginContext, Request, Response};
///
/// async fn ticks(_: PluginContext, _: Request) -> HttpResult {
///     Ok(Response::sse(|mut sse| async move {
///         for n in 1.. {
///             sse.event("tick", &n.to_string()).await?;
///             tokio::time::sleep(Duration::from_secs(1)).await;
///         }
///         Ok(())
///     }))
/// }
/// ```
///
/// Each method waits while the client is not reading (flow control), and fails with
/// [`StreamError::Cancelled`] once the client has gone. Once the plugin is shutting down they
/// fail with [`StreamError::ShuttingDown`], and the stream ends cleanly when the closure returns
/// that error: the browser's `EventSource` reconnects to the restarted plugin by itself.
#[derive(Debug)]
pub struct Sse {
    body: BodyWriter,
}

impl Sse {
    pub(crate) fn new(body: BodyWriter) -> Self {
        Sse { body }
    }

    /// An event called `name` (the `EventSource`'s `addEventListener(name, ...)`) with `data`.
    /// Line breaks in `data` become several `data:` lines, which the browser joins again; line
    /// breaks in `name` become spaces.
    ///
    /// # Errors
    /// See the [type docs](Self).
    pub async fn event(&mut self, name: &str, data: &str) -> Result<(), StreamError> {
        let mut out = BytesMut::with_capacity(name.len() + data.len() + 16);
        out.put_slice(b"event: ");
        put_single_line(&mut out, name);
        out.put_u8(b'\n');
        put_data(&mut out, data);
        self.send(out).await
    }

    /// An event without a name (the `EventSource`'s `onmessage`) with `data`.
    ///
    /// # Errors
    /// See the [type docs](Self).
    pub async fn data(&mut self, data: &str) -> Result<(), StreamError> {
        let mut out = BytesMut::with_capacity(data.len() + 8);
        put_data(&mut out, data);
        self.send(out).await
    }

    /// A comment line, which the browser ignores: send one now and then (`": keep-alive"`) on a
    /// stream that may stay quiet, so the host's idle timeout does not end it.
    ///
    /// # Errors
    /// See the [type docs](Self).
    pub async fn comment(&mut self, text: &str) -> Result<(), StreamError> {
        let mut out = BytesMut::with_capacity(text.len() + 4);
        for line in lines(text) {
            out.put_slice(b": ");
            out.put_slice(line.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
        self.send(out).await
    }

    async fn send(&mut self, event: BytesMut) -> Result<(), StreamError> {
        if self.body.is_shutting_down() {
            return Err(StreamError::ShuttingDown);
        }
        self.body.send(event.freeze()).await
    }

    /// Whether the plugin is shutting down (the next event fails with
    /// [`StreamError::ShuttingDown`]).
    pub fn is_shutting_down(&self) -> bool {
        self.body.is_shutting_down()
    }
}

/// Splits at `\r\n`, `\r` and `\n`, the line ends of the event-stream format.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            Some(i) => {
                let skip = if text[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[i + skip..]);
                Some(&text[..i])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

fn put_data(out: &mut BytesMut, data: &str) {
    for line in lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

fn put_single_line(out: &mut BytesMut, text: &str) {
    for (i, line) in lines(text).enumerate() {
        if i > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;

    use crate::sdk::body::Collected;

    fn sse() -> (Sse, CancellationToken, Collected) {
        let token = CancellationToken::new();
        let (writer, collected) = BodyWriter::collecting(1 << 20, token.clone());
        (Sse::new(writer), token, collected)
    }

    #[tokio::test]
    async fn formats_events_data_and_comments() {
        let (mut sse, _, collected) = sse();
        sse.event("tick", "1").await.unwrap();
        sse.data("a\nb\r\nc\rd").await.unwrap();
        sse.event("odd\nname", "").await.unwrap();
        sse.comment("keep-alive").await.unwrap();
        let text = collected.take();
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            "event: tick\ndata: 1\n\n\
             data: a\ndata: b\ndata: c\ndata: d\n\n\
             event: odd name\ndata: \n\n\
             : keep-alive\n\n"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_the_events() {
        let (mut sse, token, _) = sse();
        sse.data("x").await.unwrap();
        token.cancel();
        assert!(sse.is_shutting_down());
        assert_eq!(sse.data("y").await, Err(StreamError::ShuttingDown));
    }
}
