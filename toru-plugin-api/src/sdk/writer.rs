//! The one task that writes to the socket. Everything else queues messages on its channel, so
//! nothing but this task ever waits on the host reading.

use futures_util::SinkExt;
use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use super::context::Outgoing;
use crate::codec::{CodecError, FrameCodec};
use crate::protocol::{Message, error_code};

type Sink = FramedWrite<OwnedWriteHalf, FrameCodec>;

/// Writes queued messages until `Close` (or until every sender is gone), batching what is
/// queued into one flush. Returns when the connection is closed or broken.
pub(crate) async fn write_loop(write: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut sink = FramedWrite::new(write, FrameCodec::new());
    while let Some(mut item) = rx.recv().await {
        loop {
            match item {
                Outgoing::Close => {
                    if flush(&mut sink).await.is_ok() {
                        let _ = sink.get_mut().shutdown().await;
                    }
                    return;
                }
                Outgoing::Message(msg) => {
                    if let Err(e) = feed(&mut sink, &msg).await {
                        tracing::debug!(error = %e, "writing to the host failed");
                        return;
                    }
                }
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if flush(&mut sink).await.is_err() {
            return;
        }
    }
}

async fn flush(sink: &mut Sink) -> Result<(), CodecError> {
    SinkExt::<Message<'static>>::flush(sink).await
}

/// Encodes one message. A reply too large for a frame is replaced by an `error` reply, so that
/// the host is not left waiting for it.
async fn feed(sink: &mut Sink, msg: &Message<'_>) -> Result<(), CodecError> {
    match sink.feed(msg).await {
        Err(CodecError::FrameTooLarge { len, max }) if msg.payload.is_reply() => {
            let text = format!("the reply of {len} bytes exceeds the {max}-byte frame limit");
            sink.feed(&Message::error(
                msg.request_id,
                error_code::PLUGIN_ERROR,
                text,
            ))
            .await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::StreamExt as _;
    use tokio::net::UnixStream;
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::protocol::{DEFAULT_MAX_FRAME_LEN, HttpResponse, Payload};

    #[tokio::test]
    async fn writes_in_order_replaces_oversized_replies_and_closes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(write, rx));
        let huge = "x".repeat(DEFAULT_MAX_FRAME_LEN + 1);
        tx.send(Outgoing::Message(Message::with_id(1, Payload::Pong)))
            .unwrap();
        tx.send(Outgoing::Message(Message::with_id(
            2,
            Payload::HttpResponse(HttpResponse {
                status: 200,
                headers: vec![],
                body: Some(huge.into()),
                body_base64: None,
                end_stream: None,
            }),
        )))
        .unwrap();
        tx.send(Outgoing::Close).unwrap();
        let mut frames = FramedRead::new(theirs, FrameCodec::new());
        let mut got = Vec::new();
        while let Some(frame) = frames.next().await {
            let frame = frame.unwrap().into_frame().unwrap();
            let msg = frame.message().unwrap().into_owned();
            got.push((
                msg.request_id,
                msg.payload.type_name().to_owned(),
                Bytes::len(frame.bytes()),
            ));
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].1.as_str()), (Some(1), "pong"));
        assert_eq!((got[1].0, got[1].1.as_str()), (Some(2), "error"));
        writer.await.unwrap();
    }
}
