//! The frame codec against plain `serde_json`, on the same `http_request` in the same run.
//!
//! ```text
//! cargo bench -p toru-benches --bench codec -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! The message is a realistic browser request: 8 headers (about 600 bytes of JSON with no
//! body), then bodies of 1 KiB, 64 KiB and 1 MiB of plain text. Each case is measured four ways:
//!
//! - `decode/toru`: [`FrameCodec::decode`] of the framed bytes, then [`Frame::message`], whose
//!   strings borrow from the frame.
//! - `decode/serde_json_owned`: `serde_json::from_slice` of the same JSON into an owned struct
//!   (`String` fields, `Vec<(String, String)>` headers) that mirrors the wire format: the
//!   baseline. `decode/serde_json_owned_from_str` is the same after checking the whole frame's
//!   UTF-8 first, as [`Frame::message`] does, to separate that gain from borrowing.
//! - `encode/toru`: [`FrameCodec`]'s `encode` into a reused `BytesMut`, as `FramedWrite` does.
//! - `encode/serde_json_owned`: `serde_json::to_vec` of the owned struct; and
//!   `encode/serde_json_reused_vec`, `serde_json::to_writer` into a reused `Vec`, to show how
//!   much of the difference is the buffer rather than the serialiser.
//!
//! Both decoders start from their own fresh copy of the bytes (made outside the timing), and
//! both drop what they decoded inside it. The no-body case reports messages per second
//! (`elem/s`); the others report MB/s of JSON.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};
use toru_plugin_api::protocol::{CowStr, HttpRequest};
use toru_plugin_api::{FrameCodec, Message, Payload};

/// The frame header's length (a big-endian `u32`).
const HEADER_LEN: usize = 4;

const BODY_SIZES: [(&str, usize); 4] = [
    ("0B", 0),
    ("1KiB", 1024),
    ("64KiB", 64 * 1024),
    ("1MiB", 1024 * 1024),
];

/// What a browser sends, after the host has dropped hop-by-hop headers.
const HEADERS: [(&str, &str); 8] = [
    ("host", "toru.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("accept-language", "en-GB,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    (
        "cookie",
        "toru_session=8f3c2a9d4e7b41c6a0d5e2f19b7c3a64; theme=dark",
    ),
    ("x-forwarded-for", "203.0.113.42"),
    ("x-request-id", "5b8f0c1e-3d2a-4f6b-9e7c-1a2b3c4d5e6f"),
];

const TIMESTAMP: u64 = 1_763_767_235_123;
const REQUEST_ID: u64 = 4_815_162_342;

/// The baseline: the same JSON as [`Message`] with an `http_request` payload, owned.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PlainMessage {
    #[serde(rename = "type")]
    kind: String,
    timestamp: u64,
    request_id: Option<u64>,
    payload: PlainHttpRequest,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PlainHttpRequest {
    method: String,
    path: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

/// Printable text with nothing JSON must escape.
fn body(len: usize) -> String {
    "Toru forwards this request body to the plugin unchanged. "
        .chars()
        .cycle()
        .take(len)
        .collect()
}

fn method(body: &str) -> &'static str {
    if body.is_empty() { "GET" } else { "POST" }
}

fn message(body: &str) -> Message<'_> {
    Message {
        timestamp: TIMESTAMP,
        request_id: Some(REQUEST_ID),
        payload: Payload::HttpRequest(HttpRequest {
            method: CowStr::borrowed(method(body)),
            path: CowStr::borrowed("/acme/certificates/renew"),
            query: CowStr::borrowed("dry_run=false&limit=50"),
            headers: HEADERS
                .iter()
                .map(|&(n, v)| (CowStr::borrowed(n), CowStr::borrowed(v)))
                .collect(),
            body: (!body.is_empty()).then(|| CowStr::borrowed(body)),
            body_base64: None,
            end_stream: None,
            upgrade: None,
        }),
    }
}

fn plain(body: &str) -> PlainMessage {
    PlainMessage {
        kind: "http_request".to_owned(),
        timestamp: TIMESTAMP,
        request_id: Some(REQUEST_ID),
        payload: PlainHttpRequest {
            method: method(body).to_owned(),
            path: "/acme/certificates/renew".to_owned(),
            query: "dry_run=false&limit=50".to_owned(),
            headers: HEADERS
                .iter()
                .map(|&(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body: (!body.is_empty()).then(|| body.to_owned()),
            body_base64: None,
        },
    }
}

/// The framed bytes of `msg`, after checking that both sides agree on them.
fn framed(msg: &Message<'_>, plain: &PlainMessage) -> Vec<u8> {
    let mut wire = BytesMut::new();
    FrameCodec::new().encode(msg, &mut wire).expect("encode");
    let json = &wire[HEADER_LEN..];
    assert_eq!(
        json,
        &serde_json::to_vec(plain).expect("plain encode")[..],
        "both encoders must produce the same JSON"
    );
    let decoded: PlainMessage = serde_json::from_slice(json).expect("plain decode");
    assert_eq!(&decoded, plain);
    let frame = FrameCodec::new()
        .decode(&mut wire.clone())
        .expect("decode")
        .expect("a whole frame")
        .into_frame()
        .expect("a message frame");
    assert_eq!(&frame.message().expect("message"), msg);
    wire.to_vec()
}

fn throughput(body_len: usize, json_len: usize) -> Throughput {
    if body_len == 0 {
        Throughput::Elements(1)
    } else {
        Throughput::BytesDecimal(json_len as u64)
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (label, size) in BODY_SIZES {
        let body = body(size);
        let wire = framed(&message(&body), &plain(&body));
        group.throughput(throughput(size, wire.len() - HEADER_LEN));
        let fresh = || BytesMut::from(&wire[..]);

        group.bench_function(BenchmarkId::new("toru", label), |b| {
            let mut codec = FrameCodec::new();
            b.iter_batched_ref(
                fresh,
                |src| {
                    let frame = codec.decode(src).unwrap().unwrap().into_frame().unwrap();
                    let msg = frame.message().unwrap();
                    black_box(&msg);
                },
                BatchSize::LargeInput,
            );
        });
        group.bench_function(BenchmarkId::new("serde_json_owned", label), |b| {
            b.iter_batched_ref(
                fresh,
                |src| {
                    let msg: PlainMessage = serde_json::from_slice(&src[HEADER_LEN..]).unwrap();
                    black_box(&msg);
                },
                BatchSize::LargeInput,
            );
        });
        group.bench_function(BenchmarkId::new("serde_json_owned_from_str", label), |b| {
            b.iter_batched_ref(
                fresh,
                |src| {
                    let json = std::str::from_utf8(&src[HEADER_LEN..]).unwrap();
                    let msg: PlainMessage = serde_json::from_str(json).unwrap();
                    black_box(&msg);
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (label, size) in BODY_SIZES {
        let body = body(size);
        let msg = message(&body);
        let plain = plain(&body);
        let wire = framed(&msg, &plain);
        group.throughput(throughput(size, wire.len() - HEADER_LEN));

        group.bench_function(BenchmarkId::new("toru", label), |b| {
            let mut codec = FrameCodec::new();
            let mut dst = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                dst.clear();
                codec.encode(black_box(&msg), &mut dst).unwrap();
                black_box(&dst);
            });
        });
        group.bench_function(BenchmarkId::new("serde_json_owned", label), |b| {
            b.iter(|| serde_json::to_vec(black_box(&plain)).unwrap());
        });
        group.bench_function(BenchmarkId::new("serde_json_reused_vec", label), |b| {
            let mut dst = Vec::with_capacity(wire.len());
            b.iter(|| {
                dst.clear();
                serde_json::to_writer(&mut dst, black_box(&plain)).unwrap();
                black_box(&dst);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
