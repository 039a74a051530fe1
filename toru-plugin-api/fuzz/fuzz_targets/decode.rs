//! Arbitrary bytes through `FrameCodec::decode`, `decode_eof` and `Frame::message`: nothing may
//! panic, errors must say whether the stream survives, and every message that decodes must
//! encode and decode again to the same JSON.
//!
//! ```text
//! cd toru-plugin-api/fuzz && cargo +nightly fuzz run decode
//! ```
//!
//! The first input byte picks the frame limit (so that oversized lengths come up) and how many
//! bytes each simulated read delivers (so that headers and bodies are split across reads).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use toru_plugin_api::{CodecError, DataFrame, Frame, FrameCodec, Incoming, Payload};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max = if control & 0x80 == 0 {
        usize::from(control & 0x70) * 4
    } else {
        1 << 20
    };
    let read_size = usize::from(control & 0x0f) + 1;

    let mut codec = FrameCodec::with_max_frame_len(max);
    let mut src = BytesMut::new();
    for read in stream.chunks(read_size) {
        src.extend_from_slice(read);
        loop {
            match codec.decode(&mut src) {
                Ok(Some(frame)) => check_frame(&frame, max),
                Ok(None) => break,
                Err(e) => return check_fatal(&e),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut src) {
            Ok(Some(frame)) => check_frame(&frame, max),
            Ok(None) => {
                assert!(src.is_empty(), "decode_eof ended with bytes left");
                return;
            }
            Err(e) => return check_fatal(&e),
        }
    }
}

fn check_fatal(e: &CodecError) {
    assert!(
        matches!(
            e,
            CodecError::FrameTooLarge { .. }
                | CodecError::UnexpectedEof { .. }
                | CodecError::ShortDataFrame { .. }
        ),
        "decode failed with {e:?}"
    );
    assert!(e.is_fatal());
}

fn check_frame(item: &Incoming, max: usize) {
    match item {
        Incoming::Message(frame) => check_message(frame, max),
        Incoming::Data(data) => check_data(data, max),
    }
}

fn check_data(data: &DataFrame, max: usize) {
    assert!(data.data.len() + 9 <= max);
    let mut out = BytesMut::new();
    FrameCodec::with_max_frame_len(max)
        .encode(data, &mut out)
        .expect("a decoded data frame must encode");
    let again = FrameCodec::with_max_frame_len(max)
        .decode(&mut out)
        .expect("decode our own data frame");
    assert_eq!(again.as_ref(), Some(item_of(data)).as_ref());
}

fn item_of(data: &DataFrame) -> Incoming {
    Incoming::Data(data.clone())
}

fn check_message(frame: &Frame, max: usize) {
    assert!(frame.bytes().len() <= max);
    let msg = match frame.message() {
        Ok(msg) => msg,
        Err(e) => {
            assert!(matches!(e, CodecError::Malformed { .. }), "{e:?}");
            assert!(!e.is_fatal());
            return;
        }
    };
    let first = encode(&msg);
    let again = FrameCodec::new()
        .decode(&mut first.clone())
        .expect("decode our own frame")
        .and_then(Incoming::into_frame)
        .expect("a whole message frame");
    let reread = again.message().expect("our own encoding must decode");
    assert_eq!(reread.payload.type_name(), msg.payload.type_name());
    assert_eq!(reread.request_id, msg.request_id);
    // `init` settings hold arbitrary JSON, whose floats need not survive a round trip exactly.
    if !matches!(msg.payload, Payload::Init(_)) {
        assert_eq!(reread, msg);
        assert_eq!(encode(&reread), first);
    }
}

fn encode(msg: &toru_plugin_api::Message<'_>) -> BytesMut {
    let mut out = BytesMut::new();
    FrameCodec::new()
        .encode(msg, &mut out)
        .expect("a decoded message must encode");
    out
}
