//! The frame codec: a 4-byte big-endian header, then the frame's bytes.
//!
//! ```text
//! message frame (protocol 1 and 2): top bit of the header clear
//! +---- len: u32 (big-endian) ----+---------- JSON message (len bytes) ----------+
//! | 00 00 00 2a                   | {"type":"ping","timestamp":..,"request_id":1..}|
//! +-------------------------------+------------------------------------------------+
//!
//! data frame (protocol 2 only): top bit of the header set; len counts stream + flags + data
//! +---- 0x80000000 | len ---------+---- stream: u64 (BE) ----+ flags +-- data (len - 9) --+
//! | 80 00 00 0e                   | 00 00 00 00 00 00 00 03  |  01   | 68 65 6c 6c 6f     |
//! +-------------------------------+--------------------------+-------+--------------------+
//! ```
//!
//! [`FrameCodec`] is a tokio-util [`Decoder`] and [`Encoder`]. Decoding yields an [`Incoming`]:
//! either a [`Frame`], one message's JSON cut from the read buffer without copying, which
//! [`Frame::message`] parses into a [`Message`] that borrows from it; or a [`DataFrame`], raw
//! bytes of a stream (a request or response body, a WebSocket message). A length over the limit
//! is refused from the header alone, before anything is allocated for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::{DEFAULT_MAX_FRAME_LEN, EnvelopeHead, Message, RequestId};

const HEADER_LEN: usize = 4;

/// The header bit that marks a data frame.
const DATA_BIT: u32 = 0x8000_0000;

/// A data frame's bytes before its data: the stream id (8) and the flags (1).
const DATA_PREFIX_LEN: usize = 9;

/// The bytes of a data frame before its data: the 4-byte header, the stream id and the flags.
pub const DATA_HEADER_LEN: usize = HEADER_LEN + DATA_PREFIX_LEN;

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
    /// A data frame is shorter than its stream id and flags (9 bytes). The stream cannot be
    /// trusted after it: close it.
    #[error("data frame of {len} bytes is shorter than its 9-byte stream id and flags")]
    ShortDataFrame {
        /// The frame's length.
        len: usize,
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

/// The flags of a [`DataFrame`]: a byte of bits. Bits this crate does not know are kept, and
/// ignored by receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DataFlags(pub u8);

impl DataFlags {
    /// No flags: a body chunk with more to come, or a whole binary WebSocket message.
    pub const NONE: DataFlags = DataFlags(0);
    /// HTTP bodies: the last data frame of this direction of the stream (it may carry data).
    pub const END: DataFlags = DataFlags(0x01);
    /// WebSockets: the message is text (UTF-8); without it, binary.
    pub const TEXT: DataFlags = DataFlags(0x02);
    /// WebSockets: the message continues in the stream's next data frame.
    pub const MORE: DataFlags = DataFlags(0x04);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: DataFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for DataFlags {
    type Output = DataFlags;

    fn bitor(self, rhs: DataFlags) -> DataFlags {
        DataFlags(self.0 | rhs.0)
    }
}

/// Protocol 2: raw bytes of one stream, a request's or response's body or a WebSocket message
/// (or part of one). `stream` is the id of the `http_request` that opened the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// The stream: the id of the `http_request` that opened it (the host's id space).
    pub stream: RequestId,
    /// What the data is (see [`DataFlags`]).
    pub flags: DataFlags,
    /// The bytes, cut from the read buffer without copying.
    pub data: Bytes,
}

impl DataFrame {
    /// A data frame.
    pub fn new(stream: RequestId, flags: DataFlags, data: impl Into<Bytes>) -> Self {
        DataFrame {
            stream,
            flags,
            data: data.into(),
        }
    }

    /// The 13 bytes that go before `data_len` bytes of data on stream `stream`, for writers that
    /// send the data from its own buffer instead of copying it into the frame.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] when the frame would be longer than `max_frame_len`.
    pub fn header(
        stream: RequestId,
        flags: DataFlags,
        data_len: usize,
        max_frame_len: usize,
    ) -> Result<[u8; DATA_HEADER_LEN], CodecError> {
        let len = DATA_PREFIX_LEN + data_len;
        if len > max_frame_len || len > (DATA_BIT - 1) as usize {
            return Err(CodecError::FrameTooLarge {
                len,
                max: max_frame_len,
            });
        }
        let mut head = [0u8; DATA_HEADER_LEN];
        head[..4].copy_from_slice(&(len as u32 | DATA_BIT).to_be_bytes());
        head[4..12].copy_from_slice(&stream.to_be_bytes());
        head[12] = flags.0;
        Ok(head)
    }
}

/// One frame off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message's JSON.
    Message(Frame),
    /// Protocol 2: a stream's raw bytes.
    Data(DataFrame),
}

impl Incoming {
    /// The message frame, or `None` for a data frame.
    pub fn into_frame(self) -> Option<Frame> {
        match self {
            Incoming::Message(frame) => Some(frame),
            Incoming::Data(_) => None,
        }
    }
}

/// The frame codec (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with the default 16 MiB frame limit.
    pub fn new() -> Self {
        Self::with_max_frame_len(DEFAULT_MAX_FRAME_LEN)
    }

    /// A codec that refuses frames longer than `max` bytes, both ways.
    ///
    /// # Panics
    /// When `max` does not fit the 31-bit length of the header (2 GiB).
    pub fn with_max_frame_len(max: usize) -> Self {
        assert!(
            max < DATA_BIT as usize,
            "frame limit {max} does not fit the 31-bit length of a data frame"
        );
        FrameCodec { max_frame_len: max }
    }

    /// The frame limit, in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl Decoder for FrameCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let header = u32::from_be_bytes(header.try_into().expect("4-byte header"));
        let is_data = header & DATA_BIT != 0;
        let len = (header & !DATA_BIT) as usize;
        if len > self.max_frame_len {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if is_data && len < DATA_PREFIX_LEN {
            return Err(CodecError::ShortDataFrame { len });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        if !is_data {
            return Ok(Some(Incoming::Message(Frame(src.split_to(len).freeze()))));
        }
        let stream = src.get_u64();
        let flags = DataFlags(src.get_u8());
        let data = src.split_to(len - DATA_PREFIX_LEN).freeze();
        Ok(Some(Incoming::Data(DataFrame {
            stream,
            flags,
            data,
        })))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::UnexpectedEof {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<&Message<'_>> for FrameCodec {
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

impl Encoder<Message<'_>> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Message<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&msg, dst)
    }
}

impl Encoder<&DataFrame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &DataFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let head = DataFrame::header(
            frame.stream,
            frame.flags,
            frame.data.len(),
            self.max_frame_len,
        )?;
        dst.reserve(head.len() + frame.data.len());
        dst.put_slice(&head);
        dst.put_slice(&frame.data);
        Ok(())
    }
}

impl Encoder<DataFrame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: DataFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests;
