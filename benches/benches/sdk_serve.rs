//! The Rust SDK's per-request cost: a plugin served over a socket pair, with the benchmark
//! playing the host and keeping 64 requests in flight.
//!
//! ```text
//! cargo bench -p toru-benches --bench sdk_serve -- --warm-up-time 1 --measurement-time 5
//! ```
//!
//! - `get_small_json/protocol1` and `/protocol2`: each iteration sends 2,000 `GET /b/` requests
//!   (8 short headers, no body) and reads the 2,000 replies (a 20-byte JSON body); the figure is
//!   requests per second through `serve`: decode, dispatch to a task, the handler, encode and
//!   write. Protocol 2 answers with a head and one data frame.
//! - `download_64MiB/protocol2`: one `GET /b/download` whose handler streams 64 MiB in 64 KiB
//!   chunks through a `BodyWriter`; the benchmark reads it like a fast client, giving credit for
//!   each frame as it arrives. The figure is bytes per second through the SDK's data path.
//!
//! On a shared machine the throughput varies with the load; the instructions a fixed workload
//! takes do not. `SDK_SERVE_FIXED=N` runs N batches of `get_small_json` and exits:
//!
//! ```text
//! cargo bench -p toru-benches --bench sdk_serve --no-run   # prints the executable's path
//! SDK_SERVE_FIXED=10 SDK_SERVE_VERSION=2 valgrind --tool=callgrind <executable>
//! ```
//!
//! The instructions reported, divided by the 20,000 requests, are the cost per request (the
//! benchmark's own side of the socket included).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Encoder as _, FramedRead};
use toru_plugin_api::protocol::{HttpRequest, Init, VersionRange};
use toru_plugin_api::{
    FrameCodec, HttpResult, Message, Payload, PluginContext, PluginMetadata, Request, Response,
    ToruPlugin,
};

const BATCH: u64 = 2_000;
const IN_FLIGHT: u64 = 64;
const DOWNLOAD: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

struct Bench;

#[toru_plugin_api::async_trait]
impl ToruPlugin for Bench {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("b", "B", "1", "/b")
    }

    async fn handle_http(&self, _ctx: &PluginContext, req: Request) -> HttpResult {
        if req.subpath() != "/download" {
            return Ok(Response::json(
                200,
                &serde_json::json!({"message": "hello"}),
            ));
        }
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        Ok(Response::streamed(
            200,
            "application/octet-stream",
            move |mut body| async move {
                for _ in 0..DOWNLOAD / CHUNK as u64 {
                    body.send(chunk.clone()).await?;
                }
                Ok(())
            },
        ))
    }
}

struct Conn {
    read: FramedRead<OwnedReadHalf, FrameCodec>,
    write: OwnedWriteHalf,
    next_id: u64,
}

fn request_frame(id: u64) -> BytesMut {
    let headers = [
        ("host", "toru.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("accept-language", "en"),
        ("accept-encoding", "gzip"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-request-id", "0123456789abcdef"),
        ("referer", "http://toru.example.com/"),
    ];
    let req = HttpRequest {
        method: "GET".into(),
        path: "/b/".into(),
        query: "".into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect(),
        body: None,
        body_base64: None,
        end_stream: None,
        upgrade: None,
    };
    let mut buf = BytesMut::new();
    FrameCodec::new()
        .encode(&Message::with_id(id, Payload::HttpRequest(req)), &mut buf)
        .unwrap();
    buf
}

async fn connect(protocol: VersionRange) -> Conn {
    let (ours, theirs) = UnixStream::pair().unwrap();
    tokio::spawn(toru_plugin_api::serve(Bench, theirs));
    let (read, mut write) = ours.into_split();
    let init = Init {
        protocol,
        instance_id: "i".into(),
        plugin_id: "b".into(),
        socket_path: "/s".into(),
        log_path: "/l".into(),
        settings: Default::default(),
    };
    let mut buf = BytesMut::new();
    FrameCodec::new()
        .encode(&Message::with_id(u64::MAX, Payload::Init(init)), &mut buf)
        .unwrap();
    write.write_all(&buf).await.unwrap();
    let mut read = FramedRead::new(read, FrameCodec::new());
    let ready = read.next().await.unwrap().unwrap();
    assert!(matches!(ready, toru_plugin_api::Incoming::Message(_)));
    Conn {
        read,
        write,
        next_id: 1,
    }
}

/// Sends `BATCH` requests, at most `IN_FLIGHT` unanswered at a time, and reads every reply.
async fn batch(conn: &mut Conn) {
    let mut sent = 0;
    let mut done = 0;
    let mut out = BytesMut::new();
    while done < BATCH {
        while sent < BATCH && sent - done < IN_FLIGHT {
            out.extend_from_slice(&request_frame(conn.next_id));
            conn.next_id += 1;
            sent += 1;
        }
        if !out.is_empty() {
            conn.write.write_all(&out).await.unwrap();
            out.clear();
        }
        match conn.read.next().await.unwrap().unwrap() {
            toru_plugin_api::Incoming::Message(frame) => {
                let msg = frame.message().unwrap();
                match msg.payload {
                    Payload::HttpResponse(r) if r.end_stream != Some(false) => done += 1,
                    Payload::HttpResponse(_) => {}
                    other => panic!("unexpected {}", other.type_name()),
                }
            }
            toru_plugin_api::Incoming::Data(d) => {
                if d.flags.contains(toru_plugin_api::DataFlags::END) {
                    done += 1;
                }
            }
        }
    }
}

/// One download, read like a fast client: credit for every frame as it comes.
async fn download(conn: &mut Conn) {
    let id = conn.next_id;
    conn.next_id += 1;
    let req = HttpRequest {
        method: "GET".into(),
        path: "/b/download".into(),
        query: "".into(),
        headers: vec![],
        body: None,
        body_base64: None,
        end_stream: Some(true),
        upgrade: None,
    };
    let mut out = BytesMut::new();
    let mut codec = FrameCodec::new();
    codec
        .encode(&Message::with_id(id, Payload::HttpRequest(req)), &mut out)
        .unwrap();
    conn.write.write_all(&out).await.unwrap();
    let mut got = 0u64;
    loop {
        match conn.read.next().await.unwrap().unwrap() {
            toru_plugin_api::Incoming::Message(_) => {}
            toru_plugin_api::Incoming::Data(d) => {
                got += d.data.len() as u64;
                if d.flags.contains(toru_plugin_api::DataFlags::END) {
                    break;
                }
                out.clear();
                let credit = toru_plugin_api::protocol::Credit {
                    bytes: d.data.len() as u32,
                };
                codec
                    .encode(&Message::with_id(id, Payload::Credit(credit)), &mut out)
                    .unwrap();
                conn.write.write_all(&out).await.unwrap();
            }
        }
    }
    assert_eq!(got, DOWNLOAD);
}

fn serve_loop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("sdk_serve");
    group.throughput(Throughput::Elements(BATCH));
    let versions: &[(&str, u32)] = &[("protocol1", 1), ("protocol2", 2)];
    for &(name, max) in versions {
        let mut conn = rt.block_on(connect(VersionRange { min: 1, max }));
        group.bench_function(format!("get_small_json/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        batch(&mut conn).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("sdk_serve");
    group.throughput(Throughput::Bytes(DOWNLOAD));
    group.sample_size(20);
    let mut conn = rt.block_on(connect(VersionRange { min: 1, max: 2 }));
    group.bench_function("download_64MiB/protocol2", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    download(&mut conn).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = serve_loop
}
/// With `SDK_SERVE_FIXED=N` set, runs N batches of `get_small_json` at protocol
/// `SDK_SERVE_VERSION` (default 2) and exits, without criterion: a fixed workload to measure
/// with `perf stat` or `valgrind`, which load on the machine does not change.
fn main() {
    if let Ok(batches) = std::env::var("SDK_SERVE_FIXED") {
        let batches: u64 = batches.parse().expect("SDK_SERVE_FIXED is a number");
        let max: u32 = std::env::var("SDK_SERVE_VERSION").map_or(2, |v| v.parse().unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = connect(VersionRange { min: 1, max }).await;
            for _ in 0..batches {
                batch(&mut conn).await;
            }
        });
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
