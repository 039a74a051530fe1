//! The codec against real bytes, named for the behaviour, in the manner of tokio-util's
//! `tests/length_delimited.rs`: frames arrive whole, split, several at once, or cut short.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

use super::*;
use crate::protocol::{
    Bundle, CowStr, Credit, ErrorReply, HttpRequest, HttpResponse, Init, KvRequest, KvResult,
    Level, LogRecord, Payload, Ready, SettingsUpdate, VersionRange, WsClose,
};
use crate::testutil::{VARIANTS, variant_index};

const PING: &str = r#"{"type":"ping","timestamp":5,"request_id":7,"payload":{}}"#;
const PONG: &str = r#"{"type":"pong","timestamp":6,"request_id":7,"payload":{}}"#;
const LOG: &str =
    r#"{"type":"log","timestamp":8,"request_id":null,"payload":{"level":"info","message":"hi"}}"#;

/// `json` behind its 4-byte big-endian length.
fn framed(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// The message frame in a decoded item; these tests decode messages only unless they say so.
trait MessageFrame {
    fn frame(self) -> Frame;
}

impl MessageFrame for Incoming {
    fn frame(self) -> Frame {
        self.into_frame()
            .expect("a message frame, not a data frame")
    }
}

/// Every frame that `decode` yields from `src`, then whatever is left.
fn drain(codec: &mut FrameCodec, src: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode(src).expect("decode failed") {
        frames.push(frame.frame());
    }
    frames
}

/// Feeds `chunks` one after another, decoding after each, as a socket's reads would.
fn decode_chunks<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<Frame> {
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        src.extend_from_slice(chunk);
        frames.extend(drain(&mut codec, &mut src));
    }
    assert!(src.is_empty(), "{} bytes left undecoded", src.len());
    frames
}

fn as_json(frames: &[Frame]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| std::str::from_utf8(f.bytes()).expect("frame is UTF-8"))
        .collect()
}

fn s(text: &str) -> CowStr<'_> {
    CowStr::borrowed(text)
}

/// One message of every payload variant, with escapes, non-ASCII text and optional fields set,
/// so that a round trip exercises both borrowed and owned strings.
fn every_variant() -> Vec<Message<'static>> {
    let headers = vec![
        (s("host"), s("example.com")),
        (s("x-quoted"), s("say \"hi\"\n\u{1F600}")),
    ];
    let payloads = vec![
        Payload::Init(Init {
            protocol: VersionRange { min: 1, max: 2 },
            instance_id: s("0f8c2c43-7d4e-4b1e-9b53-0c8b6c1d2e3f"),
            plugin_id: s("acme"),
            socket_path: s("/tmp/t/acme.sock"),
            log_path: s("/tmp/t/logs/acme.log"),
            settings: BTreeMap::from([
                ("license_key".to_owned(), serde_json::json!("K-123")),
                (
                    "nested".to_owned(),
                    serde_json::json!({"a": [1, 2.5, null]}),
                ),
            ]),
        }),
        Payload::Ready(Ready {
            protocol_version: 1,
        }),
        Payload::HttpRequest(HttpRequest {
            method: s("POST"),
            path: s("/acme/count"),
            query: s("a=1&b=%20"),
            headers: headers.clone(),
            body: Some(s("{\"n\":1}")),
            body_base64: None,
            end_stream: None,
            upgrade: None,
        }),
        Payload::HttpRequest(HttpRequest {
            method: s("PUT"),
            path: s("/acme/blob"),
            query: s(""),
            headers: Vec::new(),
            body: None,
            body_base64: Some(s("/wD+")),
            end_stream: None,
            upgrade: None,
        }),
        Payload::HttpRequest(HttpRequest {
            method: s("GET"),
            path: s("/acme/ws"),
            query: s(""),
            headers: vec![(s("sec-websocket-protocol"), s("chat"))],
            body: None,
            body_base64: None,
            end_stream: Some(true),
            upgrade: Some(s("websocket")),
        }),
        Payload::HttpResponse(HttpResponse {
            status: 404,
            headers,
            body: Some(s("not here")),
            body_base64: None,
            end_stream: None,
        }),
        Payload::HttpResponse(HttpResponse {
            status: 200,
            headers: vec![(s("content-type"), s("text/event-stream"))],
            body: None,
            body_base64: None,
            end_stream: Some(false),
        }),
        Payload::Credit(Credit { bytes: 131_072 }),
        Payload::Settings(SettingsUpdate {
            settings: BTreeMap::from([("greeting".to_owned(), serde_json::json!("Howdy"))]),
        }),
        Payload::WsClose(WsClose {
            code: 1000,
            reason: s("bye"),
        }),
        Payload::GetBundle,
        Payload::Bundle(Bundle {
            script: s("export function mount(c, api) {}\nexport function unmount(c) {}\n"),
        }),
        Payload::Ping,
        Payload::Pong,
        Payload::Cancel,
        Payload::Shutdown,
        Payload::Kv(KvRequest::Get { key: s("count") }),
        Payload::Kv(KvRequest::Set {
            key: s("count"),
            value: s("42"),
        }),
        Payload::Kv(KvRequest::Delete { key: s("count") }),
        Payload::Kv(KvRequest::List {
            prefix: s("user/"),
            after: Some(s("user/7")),
            limit: Some(10),
        }),
        Payload::Kv(KvRequest::List {
            prefix: s(""),
            after: None,
            limit: None,
        }),
        Payload::KvResult(KvResult {
            value: Some(s("42")),
            existed: Some(true),
            keys: Some(vec![s("a"), s("b\tc")]),
        }),
        Payload::KvResult(KvResult::default()),
        Payload::Log(LogRecord {
            level: Level::Warn,
            message: s("disk at 91%"),
            error: Some(s("ENOSPC")),
        }),
        Payload::Error(ErrorReply {
            code: s("not_found"),
            message: s("no bundle"),
        }),
        Payload::Unknown(s("frobnicate")),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Message {
            timestamp: 1_763_767_235_123 + i as u64,
            request_id: (!matches!(payload, Payload::Log(_))).then_some(i as u64 + 1),
            payload,
        })
        .collect()
}

fn encode_one(codec: &mut FrameCodec, msg: &Message<'_>) -> BytesMut {
    let mut dst = BytesMut::new();
    codec.encode(msg, &mut dst).expect("encode failed");
    dst
}

#[test]
fn read_empty_buffer_yields_nothing() {
    let mut src = BytesMut::new();
    assert!(FrameCodec::new().decode(&mut src).unwrap().is_none());
}

#[test]
fn read_single_frame_one_packet() {
    assert_eq!(as_json(&decode_chunks([&framed(PING)[..]])), [PING]);
}

#[test]
fn read_several_frames_in_one_read() {
    let bytes = [framed(PING), framed(LOG), framed(PONG)].concat();
    assert_eq!(as_json(&decode_chunks([&bytes[..]])), [PING, LOG, PONG]);
}

#[test]
fn read_header_split_across_reads() {
    let bytes = framed(PING);
    for cut in 1..HEADER_LEN {
        let (a, b) = bytes.split_at(cut);
        let mut codec = FrameCodec::new();
        let mut src = BytesMut::from(a);
        assert!(codec.decode(&mut src).unwrap().is_none(), "cut at {cut}");
        assert_eq!(src.len(), cut, "a partial header must stay buffered");
        src.extend_from_slice(b);
        let frame = codec
            .decode(&mut src)
            .unwrap()
            .expect("whole frame")
            .frame();
        assert_eq!(as_json(&[frame]), [PING]);
    }
}

#[test]
fn read_body_split_across_reads() {
    let bytes = framed(LOG);
    for cut in HEADER_LEN..bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(as_json(&decode_chunks([a, b])), [LOG], "cut at {cut}");
    }
}

#[test]
fn read_byte_by_byte() {
    let bytes = [framed(PING), framed(LOG), framed(PONG)].concat();
    let frames = decode_chunks(bytes.chunks(1));
    assert_eq!(as_json(&frames), [PING, LOG, PONG]);
}

#[test]
fn read_frames_split_at_every_position() {
    let bytes = [framed(PING), framed(""), framed(LOG)].concat();
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(
            as_json(&decode_chunks([a, b])),
            [PING, "", LOG],
            "cut at {cut}"
        );
    }
}

#[test]
fn read_frame_does_not_copy_the_buffer() {
    let mut src = BytesMut::from(&framed(PING)[..]);
    let body_ptr = src[HEADER_LEN..].as_ptr();
    let frame = FrameCodec::new().decode(&mut src).unwrap().unwrap().frame();
    assert_eq!(frame.bytes().as_ptr(), body_ptr);
}

#[test]
fn read_oversized_length_is_refused_before_allocating() {
    let mut codec = FrameCodec::with_max_frame_len(1024);
    let mut src = BytesMut::with_capacity(64);
    src.put_u32(0x7fff_ffff);
    src.put_slice(br#"{"type":"pi"#);
    let capacity = src.capacity();
    let err = codec.decode(&mut src).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLarge {
                len: 0x7fff_ffff,
                max: 1024
            }
        ),
        "{err:?}"
    );
    assert!(err.is_fatal());
    assert_eq!(
        src.capacity(),
        capacity,
        "the buffer grew for a refused frame"
    );
}

#[test]
fn read_oversized_length_is_refused_from_the_header_alone() {
    let mut codec = FrameCodec::new();
    let claimed = DEFAULT_MAX_FRAME_LEN + 1;
    let mut src = BytesMut::with_capacity(HEADER_LEN);
    src.put_u32(claimed as u32);
    let err = codec.decode(&mut src).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len, max } if len == claimed && max == DEFAULT_MAX_FRAME_LEN),
        "{err:?}"
    );
    assert!(src.capacity() < claimed, "capacity {}", src.capacity());
    assert_eq!(
        err.to_string(),
        "frame of 16777217 bytes exceeds the 16777216-byte limit"
    );
    let err = codec.decode_eof(&mut src).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err:?}");
}

#[test]
fn read_length_exactly_at_the_limit_is_accepted() {
    let mut at_limit = FrameCodec::with_max_frame_len(PING.len());
    let mut src = BytesMut::from(&framed(PING)[..]);
    let frame = at_limit
        .decode(&mut src)
        .unwrap()
        .expect("frame at the limit")
        .frame();
    assert_eq!(as_json(&[frame]), [PING]);

    let mut below = FrameCodec::with_max_frame_len(PING.len() - 1);
    let mut src = BytesMut::from(&framed(PING)[..]);
    let err = below.decode(&mut src).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len, max } if len == PING.len() && max == PING.len() - 1),
        "{err:?}"
    );
}

#[test]
fn read_waits_for_the_body_without_consuming_the_header() {
    let bytes = framed(PING);
    let mut src = BytesMut::from(&bytes[..10]);
    assert!(FrameCodec::new().decode(&mut src).unwrap().is_none());
    assert_eq!(&src[..], &bytes[..10]);
    assert!(src.capacity() >= bytes.len(), "room reserved for the frame");
}

#[test]
fn read_garbage_json_is_malformed_but_not_fatal() {
    let bytes = [framed("not json at all"), framed(PING)].concat();
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::from(&bytes[..]);
    let garbage = codec
        .decode(&mut src)
        .unwrap()
        .expect("garbage frame")
        .frame();
    let err = garbage.message().unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Malformed {
                type_name: None,
                request_id: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_fatal());
    assert_eq!(err.to_string(), "frame is not a valid protocol message");
    assert!(std::error::Error::source(&err).is_some());

    // The stream is still in sync: the next frame decodes.
    let next = codec.decode(&mut src).unwrap().expect("next frame").frame();
    assert_eq!(next.message().unwrap().payload, Payload::Ping);
}

#[test]
fn read_malformed_payload_recovers_type_and_request_id() {
    let json = r#"{"type":"http_request","timestamp":1,"request_id":9,"payload":{"method":5}}"#;
    let mut src = BytesMut::from(&framed(json)[..]);
    let frame = FrameCodec::new().decode(&mut src).unwrap().unwrap().frame();
    let err = frame.message().unwrap_err();
    match &err {
        CodecError::Malformed {
            type_name,
            request_id,
            ..
        } => {
            assert_eq!(type_name.as_deref(), Some("http_request"));
            assert_eq!(*request_id, Some(9));
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(!err.is_fatal());
    assert_eq!(
        err.to_string(),
        r#"frame is not a valid protocol message (type "http_request", request 9)"#
    );
}

#[test]
fn read_malformed_frames_of_every_kind() {
    for json in [
        "",
        "{",
        "[]",
        "null",
        r#"{"timestamp":1}"#,
        r#"{"type":"ping"} trailing"#,
        r#"{"type":7,"request_id":1}"#,
        r#"{"type":"ping","request_id":-1}"#,
        r#"{"type":"log","payload":{"level":"loud","message":"x"}}"#,
        "{\"type\":\"log\",\"payload\":{\"level\":\"info\",\"message\":\"\u{0}\"}}",
    ] {
        let err = Frame::new(json.as_bytes().to_vec()).message().unwrap_err();
        assert!(
            matches!(err, CodecError::Malformed { .. }),
            "{json:?}: {err:?}"
        );
    }
    let invalid_utf8 = b"{\"type\":\"log\",\"payload\":{\"level\":\"info\",\"message\":\"\xff\"}}";
    let err = Frame::new(&invalid_utf8[..]).message().unwrap_err();
    assert!(matches!(err, CodecError::Malformed { .. }), "{err:?}");
}

#[test]
fn read_zero_length_frame_is_malformed() {
    let mut src = BytesMut::from(&[0u8, 0, 0, 0][..]);
    let frame = FrameCodec::new()
        .decode(&mut src)
        .unwrap()
        .expect("empty frame")
        .frame();
    assert!(frame.bytes().is_empty());
    assert!(matches!(frame.message(), Err(CodecError::Malformed { .. })));
}

#[test]
fn read_unknown_type_is_a_payload_not_an_error() {
    let json = r#"{"type":"frobnicate","timestamp":3,"request_id":11,"payload":{"x":[1,{"y":2}]}}"#;
    let mut src = BytesMut::from(&framed(json)[..]);
    let frame = FrameCodec::new().decode(&mut src).unwrap().unwrap().frame();
    let msg = frame.message().expect("unknown types decode");
    assert_eq!(msg.payload, Payload::Unknown(s("frobnicate")));
    assert_eq!(msg.request_id, Some(11));
    assert_eq!(msg.payload.type_name(), "frobnicate");
}

#[test]
fn eof_on_a_frame_boundary_ends_the_stream() {
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::from(&framed(PING)[..]);
    let frame = codec
        .decode_eof(&mut src)
        .unwrap()
        .expect("last frame")
        .frame();
    assert_eq!(as_json(&[frame]), [PING]);
    assert!(codec.decode_eof(&mut src).unwrap().is_none());
    assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
}

#[test]
fn eof_in_the_middle_of_a_frame_is_unexpected() {
    let bytes = framed(PING);
    for cut in 1..bytes.len() {
        let mut src = BytesMut::from(&bytes[..cut]);
        let err = FrameCodec::new().decode_eof(&mut src).unwrap_err();
        assert!(
            matches!(err, CodecError::UnexpectedEof { buffered } if buffered == cut),
            "cut at {cut}: {err:?}"
        );
        assert!(err.is_fatal());
    }
}

#[test]
fn encode_writes_the_length_then_the_json() {
    let msg = Message {
        timestamp: 5,
        request_id: Some(7),
        payload: Payload::Ping,
    };
    let dst = encode_one(&mut FrameCodec::new(), &msg);
    assert_eq!(&dst[..], &framed(PING)[..]);
}

#[test]
fn encode_appends_to_what_is_buffered() {
    let mut codec = FrameCodec::new();
    let mut dst = BytesMut::from(&b"already"[..]);
    let ping = Message {
        timestamp: 5,
        request_id: Some(7),
        payload: Payload::Ping,
    };
    let pong = Message {
        timestamp: 6,
        payload: Payload::Pong,
        ..ping.clone()
    };
    codec.encode(&ping, &mut dst).unwrap();
    codec.encode(pong, &mut dst).unwrap();
    assert_eq!(
        &dst[..],
        &[&b"already"[..], &framed(PING), &framed(PONG)].concat()[..]
    );
}

#[test]
fn encode_round_trips_every_payload_variant() {
    let messages = every_variant();
    let mut seen = [false; VARIANTS];
    for m in &messages {
        seen[variant_index(&m.payload)] = true;
    }
    assert!(seen.iter().all(|&s| s), "variants missing: {seen:?}");

    let mut codec = FrameCodec::new();
    let mut wire = BytesMut::new();
    for m in &messages {
        codec.encode(m, &mut wire).unwrap();
    }
    let frames = drain(&mut codec, &mut wire);
    assert!(wire.is_empty());
    assert_eq!(frames.len(), messages.len());
    for (frame, sent) in frames.iter().zip(&messages) {
        let got = frame.message().unwrap_or_else(|e| panic!("{sent:?}: {e}"));
        assert_eq!(&got, sent);
        assert_eq!(got.payload.type_name(), sent.payload.type_name());
    }
}

#[test]
fn encode_over_the_limit_leaves_the_buffer_unchanged() {
    let script = "x".repeat(200);
    let big = Message {
        timestamp: 1,
        request_id: Some(1),
        payload: Payload::Bundle(Bundle { script: s(&script) }),
    };
    let mut codec = FrameCodec::with_max_frame_len(100);
    let mut dst = BytesMut::new();
    codec
        .encode(&Message::with_id(2, Payload::Ping), &mut dst)
        .unwrap();
    let before = dst.clone();

    let err = codec.encode(&big, &mut dst).unwrap_err();
    let expected_len = serde_json::to_vec(&big).unwrap().len();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len, max: 100 } if len == expected_len),
        "{err:?}"
    );
    assert!(err.is_fatal());
    assert_eq!(dst, before, "a refused frame must leave nothing behind");
}

#[test]
fn encode_exactly_at_the_limit_is_accepted() {
    let msg = Message {
        timestamp: 5,
        request_id: Some(7),
        payload: Payload::Ping,
    };
    let mut dst = BytesMut::new();
    FrameCodec::with_max_frame_len(PING.len())
        .encode(&msg, &mut dst)
        .expect("a frame at the limit is allowed");
    assert_eq!(&dst[..], &framed(PING)[..]);

    let err = FrameCodec::with_max_frame_len(PING.len() - 1)
        .encode(&msg, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err:?}");
}

#[test]
#[should_panic(expected = "does not fit the 31-bit length")]
fn limit_beyond_the_header_panics() {
    FrameCodec::with_max_frame_len(0x8000_0000);
}

/// A data frame's bytes: the header with its top bit set, the stream id, the flags, the data.
fn data_frame(stream: u64, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = ((9 + data.len()) as u32 | 0x8000_0000)
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(data);
    out
}

#[test]
fn read_data_frame_between_messages() {
    let mut bytes = framed(PING);
    bytes.extend(data_frame(3, 0x01, b"hello"));
    bytes.extend(framed(PONG));
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::from(&bytes[..]);
    assert_eq!(
        codec.decode(&mut src).unwrap().unwrap().frame().bytes(),
        PING
    );
    let Some(Incoming::Data(data)) = codec.decode(&mut src).unwrap() else {
        panic!("expected a data frame");
    };
    assert_eq!(data.stream, 3);
    assert_eq!(data.flags, DataFlags::END);
    assert!(data.flags.contains(DataFlags::END) && !data.flags.contains(DataFlags::TEXT));
    assert_eq!(&data.data[..], b"hello");
    assert_eq!(
        codec.decode(&mut src).unwrap().unwrap().frame().bytes(),
        PONG
    );
    assert!(src.is_empty());
}

#[test]
fn read_data_frame_split_at_every_position() {
    let bytes = data_frame(u64::MAX, 0x06, &[0, 1, 2, 255]);
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        let mut codec = FrameCodec::new();
        let mut src = BytesMut::new();
        src.extend_from_slice(a);
        let first = codec.decode(&mut src).unwrap();
        src.extend_from_slice(b);
        let item = first.or_else(|| codec.decode(&mut src).unwrap());
        let Some(Incoming::Data(data)) = item else {
            panic!("cut at {cut}: no data frame");
        };
        assert_eq!(
            (data.stream, data.flags, &data.data[..]),
            (
                u64::MAX,
                DataFlags::TEXT | DataFlags::MORE,
                &[0u8, 1, 2, 255][..]
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn read_empty_data_frame_ends_a_stream() {
    let mut src = BytesMut::from(&data_frame(9, 0x01, b"")[..]);
    let Some(Incoming::Data(data)) = FrameCodec::new().decode(&mut src).unwrap() else {
        panic!("expected a data frame");
    };
    assert!(data.data.is_empty() && data.flags.contains(DataFlags::END));
}

#[test]
fn read_data_frame_does_not_copy_the_buffer() {
    let mut src = BytesMut::from(&data_frame(1, 0, b"payload")[..]);
    let data_ptr = src[13..].as_ptr();
    let Some(Incoming::Data(data)) = FrameCodec::new().decode(&mut src).unwrap() else {
        panic!("expected a data frame");
    };
    assert_eq!(data.data.as_ptr(), data_ptr);
}

#[test]
fn read_data_frame_shorter_than_its_prefix_is_fatal() {
    for len in 0..9u32 {
        let mut src = BytesMut::new();
        src.put_u32(len | 0x8000_0000);
        src.put_slice(&[0; 9]);
        let err = FrameCodec::new().decode(&mut src).unwrap_err();
        assert!(matches!(err, CodecError::ShortDataFrame { len: l } if l == len as usize));
        assert!(err.is_fatal());
    }
}

#[test]
fn read_oversized_data_frame_is_refused_from_the_header_alone() {
    let mut codec = FrameCodec::with_max_frame_len(64);
    let mut src = BytesMut::new();
    src.put_u32(65 | 0x8000_0000);
    let err = codec.decode(&mut src).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len: 65, max: 64 }),
        "{err:?}"
    );
}

#[test]
fn encode_data_frame_round_trips_and_matches_its_header() {
    let mut codec = FrameCodec::new();
    let frame = DataFrame::new(42, DataFlags::TEXT, &b"hi there"[..]);
    let mut dst = BytesMut::new();
    codec.encode(&frame, &mut dst).unwrap();
    assert_eq!(&dst[..], &data_frame(42, 0x02, b"hi there")[..]);
    let head = DataFrame::header(42, DataFlags::TEXT, 8, DEFAULT_MAX_FRAME_LEN).unwrap();
    assert_eq!(&dst[..DATA_HEADER_LEN], &head);
    assert_eq!(codec.decode(&mut dst).unwrap(), Some(Incoming::Data(frame)));
}

#[test]
fn encode_data_frame_over_the_limit_is_refused() {
    let mut codec = FrameCodec::with_max_frame_len(16);
    let mut dst = BytesMut::new();
    let err = codec
        .encode(DataFrame::new(1, DataFlags::NONE, vec![0u8; 8]), &mut dst)
        .unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len: 17, max: 16 }),
        "{err:?}"
    );
    assert!(dst.is_empty());
}

#[test]
fn limit_is_reported() {
    assert_eq!(FrameCodec::new().max_frame_len(), DEFAULT_MAX_FRAME_LEN);
    assert_eq!(FrameCodec::default().max_frame_len(), DEFAULT_MAX_FRAME_LEN);
    assert_eq!(FrameCodec::with_max_frame_len(10).max_frame_len(), 10);
}

#[test]
fn decoded_strings_borrow_from_the_frame() {
    let json = r#"{"type":"http_request","request_id":1,"payload":{"method":"GET","path":"/a","headers":[["host","h"],["q","\"x\""]]}}"#;
    let frame = Frame::new(json.as_bytes().to_vec());
    let msg = frame.message().unwrap();
    let Payload::HttpRequest(req) = &msg.payload else {
        panic!("expected http_request, got {:?}", msg.payload);
    };
    let range = frame.bytes().as_ptr_range();
    assert!(range.contains(&req.path.as_ptr()));
    assert!(matches!(req.headers[0].1.0, Cow::Borrowed("h")));
    assert!(matches!(&req.headers[1].1.0, Cow::Owned(v) if v == "\"x\""));
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn framed_pipe_carries_every_variant_through_tiny_reads() {
    // A 7-byte pipe makes every frame arrive in several reads.
    let (a, b) = tokio::io::duplex(7);
    let mut writer = FramedWrite::new(a, FrameCodec::new());
    let mut reader = FramedRead::new(b, FrameCodec::new());
    let sent = every_variant();

    let write = async {
        for m in &sent {
            writer.send(m).await.expect("send");
        }
        SinkExt::<&Message<'_>>::close(&mut writer)
            .await
            .expect("close");
        drop(writer);
    };
    let read = async {
        let mut got = Vec::new();
        while let Some(frame) = reader.next().await {
            let frame = frame.expect("frame").frame();
            got.push(frame.message().expect("message").into_owned());
        }
        got
    };
    let ((), got) = tokio::time::timeout(IO_TIMEOUT, async { tokio::join!(write, read) })
        .await
        .expect("timed out waiting for every message to cross the pipe");
    assert_eq!(got, sent);
}

#[tokio::test]
async fn framed_read_reports_a_frame_cut_short_by_eof() {
    let bytes = [framed(PING), framed(LOG)].concat();
    let cut = framed(PING).len() + 10;
    // The pipe holds everything written, so the write completes before anyone reads.
    let (mut a, b) = tokio::io::duplex(bytes.len());
    let mut reader = FramedRead::new(b, FrameCodec::new());

    let wait = async {
        a.write_all(&bytes[..cut]).await.unwrap();
        drop(a);
        let first = reader
            .next()
            .await
            .expect("first frame")
            .expect("whole frame")
            .frame();
        let second = reader.next().await.expect("an error for the cut frame");
        (first, second, reader.next().await)
    };
    let (first, second, end) = tokio::time::timeout(IO_TIMEOUT, wait)
        .await
        .expect("timed out waiting for the reader to see eof");
    assert_eq!(as_json(&[first]), [PING]);
    assert!(
        matches!(second, Err(CodecError::UnexpectedEof { buffered: 10 })),
        "{second:?}"
    );
    assert!(end.is_none());
}

#[tokio::test]
async fn framed_read_refuses_an_oversized_frame_from_a_socket() {
    const MAX: usize = 64 * 1024;
    let (mut a, b) = tokio::net::UnixStream::pair().unwrap();
    let mut reader = FramedRead::new(b, FrameCodec::with_max_frame_len(MAX));
    a.write_all(&(MAX as u32 + 1).to_be_bytes()).await.unwrap();
    let got = tokio::time::timeout(IO_TIMEOUT, reader.next())
        .await
        .expect("timed out waiting for the oversized header to be refused");
    assert!(
        matches!(got, Some(Err(CodecError::FrameTooLarge { len, max: MAX })) if len == MAX + 1),
        "{got:?}"
    );
    assert!(
        reader.read_buffer().capacity() < MAX,
        "the read buffer grew to {} bytes for a refused frame",
        reader.read_buffer().capacity()
    );
}

#[tokio::test]
async fn framed_unix_socket_carries_a_one_mib_body() {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let mut writer = FramedWrite::new(a, FrameCodec::new());
    let mut reader = FramedRead::new(b, FrameCodec::new());
    let body = "lorem ipsum dolor sit amet ".repeat(40_000);
    let sent = Message::with_id(
        3,
        Payload::HttpRequest(HttpRequest {
            method: s("POST"),
            path: s("/acme/upload"),
            query: s(""),
            headers: vec![(s("content-type"), s("text/plain"))],
            body: Some(s(&body)),
            body_base64: None,
            end_stream: None,
            upgrade: None,
        }),
    );

    let write = async {
        writer.send(&sent).await.expect("send");
    };
    let read = async {
        reader
            .next()
            .await
            .expect("a frame")
            .expect("frame")
            .frame()
    };
    let ((), frame) = tokio::time::timeout(IO_TIMEOUT, async { tokio::join!(write, read) })
        .await
        .expect("timed out waiting for the 1 MiB message");
    assert_eq!(frame.message().unwrap(), sent);
}
