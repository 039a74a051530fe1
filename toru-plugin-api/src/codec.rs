//! The frame codec: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
//!
//! ```text
//! +---- len: u32 (big-endian) ----+---------- JSON message (len bytes) ----------+
//! | 00 00 00 2a                   | {"type":"ping","timestamp":..,"request_id":1..}|
//! +-------------------------------+------------------------------------------------+
//! ```
//!
//! [`JsonCodec`] is a tokio-util [`Decoder`] and [`Encoder`]. Decoding yields a [`Frame`], the
//! message's bytes cut from the read buffer without copying; [`Frame::message`] parses it into a
//! [`Message`] that borrows from the frame. A length over the limit is refused from the header
//! alone, before anything is allocated for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::{DEFAULT_MAX_FRAME_LEN, EnvelopeHead, Message, RequestId};

const HEADER_LEN: usize = 4;

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame's length is over the limit. The stream cannot be resynchronised: close it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame is not a valid protocol message. The stream is still in sync: the receiver may
    /// answer with an `error` reply (using `request_id` when it could be read) and carry on.
    #[error("frame is not a valid protocol message{}", describe(.type_name, .request_id))]
    Malformed {
        /// The message's `type`, when it could be read.
        type_name: Option<String>,
        /// The message's `request_id`, when it could be read.
        request_id: Option<RequestId>,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({buffered} bytes buffered)")]
    UnexpectedEof {
        /// The bytes read of the unfinished frame, header included.
        buffered: usize,
    },
    /// Reading or writing the socket failed.
    #[error("plugin socket i/o failed")]
    Io(#[from] std::io::Error),
}

fn describe(type_name: &Option<String>, request_id: &Option<RequestId>) -> String {
    match (type_name, request_id) {
        (Some(t), Some(id)) => format!(" (type {t:?}, request {id})"),
        (Some(t), None) => format!(" (type {t:?})"),
        (None, Some(id)) => format!(" (request {id})"),
        (None, None) => String::new(),
    }
}

impl CodecError {
    /// Whether the connection can carry on after this error. Only a malformed message leaves
    /// the stream in sync.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CodecError::Malformed { .. })
    }
}

/// One message's JSON, cut from the read buffer without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Wraps bytes that hold one message's JSON.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Frame(bytes.into())
    }

    /// The JSON bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Parses the frame into a message that borrows from it.
    ///
    /// # Errors
    /// [`CodecError::Malformed`] when the bytes are not a valid message, with the `type` and
    /// `request_id` when those could still be read, so the receiver can answer.
    pub fn message(&self) -> Result<Message<'_>, CodecError> {
        // Checking the whole frame's UTF-8 in one pass costs far less than serde_json checking
        // each borrowed string on its own. Bytes that are not UTF-8 go the slow way, which gives
        // the same result and error as before.
        let parsed = match std::str::from_utf8(&self.0) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(&self.0),
        };
        parsed.map_err(|source| {
            let head: EnvelopeHead = serde_json::from_slice(&self.0).unwrap_or_default();
            CodecError::Malformed {
                type_name: head.type_name,
                request_id: head.request_id,
                source,
            }
        })
    }
}

/// The frame codec (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct JsonCodec {
    max_frame_len: usize,
}

impl Default for JsonCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonCodec {
    /// A codec with the default 16 MiB frame limit.
    pub fn new() -> Self {
        Self::with_max_frame_len(DEFAULT_MAX_FRAME_LEN)
    }

    /// A codec that refuses frames longer than `max` bytes, both ways.
    ///
    /// # Panics
    /// When `max` does not fit the 32-bit length header.
    pub fn with_max_frame_len(max: usize) -> Self {
        assert!(
            u32::try_from(max).is_ok(),
            "frame limit {max} does not fit the 32-bit length header"
        );
        JsonCodec { max_frame_len: max }
    }

    /// The frame limit, in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl Decoder for JsonCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(header.try_into().expect("4-byte header")) as usize;
        if len > self.max_frame_len {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(Frame(src.split_to(len).freeze())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::UnexpectedEof {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<&Message<'_>> for JsonCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = serde_json::to_writer(BytesWriter(dst), msg) {
            dst.truncate(start);
            return Err(CodecError::Io(e.into()));
        }
        let len = dst.len() - start - HEADER_LEN;
        if len > self.max_frame_len {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Appends to a `BytesMut`. serde_json writes every quote, colon and comma on its own; bytes'
/// `Writer` sends each through `write` and an out-of-line `put_slice`, which made encoding
/// about twice as slow as writing into a `Vec`.
struct BytesWriter<'a>(&'a mut BytesMut);

impl std::io::Write for BytesWriter<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Encoder<Message<'_>> for JsonCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Message<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&msg, dst)
    }
}

#[cfg(test)]
mod tests;
