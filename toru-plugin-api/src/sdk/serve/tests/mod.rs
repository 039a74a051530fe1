//! The serve loop driven over a socket pair by a test playing the host. This file holds the
//! fixture and the protocol 1 behaviour; `streams.rs` holds protocol 2's.

use std::time::Duration;

use futures_util::SinkExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use super::dispatch::is_under;
use super::*;
use crate::codec::{CodecError, DataFlags, DataFrame, Incoming};
use crate::protocol::{EXIT_CONFIG, HttpResponse, KvRequest, Level, PluginMetadata};
use crate::protocol::{HttpRequest, KvResult};
use crate::sdk::error::HttpResult;
use crate::sdk::request::Request;
use crate::sdk::response::Response;
use crate::sdk::run::effective_metadata;
use crate::sdk::{HttpError, WsMessage};

mod streams;

const WAIT: Duration = Duration::from_secs(10);

/// A plugin whose `/t/gated` handler waits for a permit, and that reports when a handler starts
/// and when it is dropped; its other routes exercise streams.
struct TestPlugin {
    gate: Arc<Semaphore>,
    dropped: mpsc::UnboundedSender<String>,
}

struct DropSignal(String, mpsc::UnboundedSender<String>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.1.send(format!("drop {}", self.0));
    }
}

#[async_trait::async_trait]
impl ToruPlugin for TestPlugin {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("t", "T", "1", "/t").with_setting(
            crate::protocol::SettingSpec::new(
                "greeting",
                crate::protocol::SettingKind::String,
                "Greeting",
            )
            .with_default("Hello"),
        )
    }

    async fn init(&self, ctx: &PluginContext) -> Result<(), InitError> {
        if let Some(reason) = ctx.setting("refuse") {
            return Err(InitError::refused(reason.as_str().unwrap_or_default()));
        }
        if ctx.setting("read_kv_in_init").is_some() {
            ctx.kv().get("boot").await?;
        }
        Ok(())
    }

    async fn handle_http(&self, ctx: &PluginContext, mut req: Request) -> HttpResult {
        let _ = self.dropped.send(format!("start {}", req.query));
        let signal = DropSignal(req.query.clone(), self.dropped.clone());
        Ok(match req.subpath() {
            "/gated" => {
                let _permit = self.gate.acquire().await.expect("gate open");
                Response::text(200, req.query.clone())
            }
            "/kv" => {
                let before = match ctx.kv().get("k").await {
                    Ok(v) => v,
                    Err(e) => return Ok(Response::error(500, &e.to_string())),
                };
                ctx.kv().set("k", "v").await.expect("set");
                ctx.info("set k");
                Response::json(200, &serde_json::json!({ "before": before }))
            }
            "/kv-error" => {
                ctx.kv().get("k").await?;
                Response::new(204)
            }
            "/panic" => panic!("boom"),
            "/binary" => Response::bytes(200, "application/octet-stream", vec![0xffu8, 0xfe]),
            "/empty" => Response::new(204),
            "/greeting" => {
                let greeting: String = ctx.setting_as("greeting").unwrap_or_default();
                Response::text(200, greeting)
            }
            // Reads the body one chunk per permit, then answers its length.
            "/upload" => {
                let mut total = 0;
                loop {
                    let _permit = self.gate.acquire().await.expect("gate open");
                    match req.body.chunk().await? {
                        Some(chunk) => total += chunk.len(),
                        None => break,
                    }
                }
                Response::text(200, total.to_string())
            }
            "/collect" => {
                let limit = req.query_param("limit").and_then(|l| l.parse().ok());
                let body = req.body.collect(limit.unwrap_or(usize::MAX)).await?;
                Response::text(200, body.len().to_string())
            }
            "/big" => Response::bytes(200, "application/octet-stream", vec![7u8; 600 * 1024]),
            // Streams `n` bytes in chunks of `chunk`, reporting when the producer is dropped.
            "/download" => {
                let n: usize = req
                    .query_param("n")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let chunk: usize = req
                    .query_param("chunk")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1024);
                Response::streamed(
                    200,
                    "application/octet-stream",
                    move |mut body| async move {
                        let _signal = signal;
                        let mut sent = 0;
                        while sent < n {
                            let len = chunk.min(n - sent);
                            body.send(vec![(sent % 251) as u8; len]).await?;
                            sent += len;
                        }
                        Ok(())
                    },
                )
            }
            // One event per permit; ends after `n` events.
            "/sse" => {
                let gate = self.gate.clone();
                let n: u32 = req
                    .query_param("n")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(3);
                Response::sse(move |mut sse| async move {
                    for i in 1..=n {
                        sse.event("tick", &i.to_string()).await?;
                        let _permit = gate.acquire().await.expect("gate open");
                    }
                    Ok(())
                })
            }
            "/fail" => Response::streamed(200, "text/plain", |mut body| async move {
                body.send("partial").await?;
                Err(HttpError::internal("the disk went away"))
            }),
            "/ws" => req
                .websocket()?
                .protocol("chat")
                .accept(|mut ws| async move {
                    while let Some(msg) = ws.recv().await? {
                        match msg {
                            WsMessage::Text(t) if t == "bye" => {
                                return Ok(ws.close(1000, "bye").await?);
                            }
                            WsMessage::Text(t) => ws.send_text(t.to_uppercase()).await?,
                            WsMessage::Binary(b) => ws.send_binary(b).await?,
                        }
                    }
                    Ok(())
                }),
            "/ws-refuse" => {
                let upgrade = req.websocket()?;
                assert_eq!(upgrade.protocols(), ["chat", "other"]);
                Response::error(403, "no WebSockets for you")
            }
            _ => Response::error(418, "the handler saw this path"),
        })
    }

    async fn settings_changed(&self, ctx: &PluginContext) {
        let greeting: String = ctx.setting_as("greeting").unwrap_or_default();
        let _ = self.dropped.send(format!("settings {greeting}"));
    }

    fn bundle(&self) -> Option<&str> {
        Some("export function mount() {}")
    }
}

struct Host {
    frames: Framed<UnixStream, FrameCodec>,
    served: JoinHandle<Result<(), ServeError>>,
    gate: Arc<Semaphore>,
    dropped: mpsc::UnboundedReceiver<String>,
}

impl Host {
    fn start() -> Self {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let gate = Arc::new(Semaphore::new(0));
        let (tx, dropped) = mpsc::unbounded_channel();
        let plugin = TestPlugin {
            gate: gate.clone(),
            dropped: tx,
        };
        Host {
            frames: Framed::new(ours, FrameCodec::new()),
            served: tokio::spawn(serve(plugin, theirs)),
            gate,
            dropped,
        }
    }

    async fn send(&mut self, msg: Message<'_>) {
        self.frames.send(msg).await.expect("send to the plugin");
    }

    async fn send_data(&mut self, stream: RequestId, flags: DataFlags, data: &[u8]) {
        let frame = DataFrame::new(stream, flags, data.to_vec());
        self.frames.send(frame).await.expect("send to the plugin");
    }

    async fn send_json(&mut self, json: &str) {
        let stream = self.frames.get_mut();
        let len = u32::try_from(json.len()).unwrap().to_be_bytes();
        stream.write_all(&len).await.unwrap();
        stream.write_all(json.as_bytes()).await.unwrap();
    }

    async fn recv_incoming_or_eof(&mut self) -> Option<Incoming> {
        let next = tokio::time::timeout(WAIT, self.frames.next())
            .await
            .expect("timed out waiting for a frame from the plugin");
        next.map(|frame| frame.expect("a valid frame"))
    }

    async fn recv_or_eof(&mut self) -> Option<Message<'static>> {
        self.recv_incoming_or_eof().await.map(|incoming| {
            let frame = incoming.into_frame().expect("a message frame");
            frame.message().unwrap().into_owned()
        })
    }

    async fn recv(&mut self) -> Message<'static> {
        self.recv_or_eof()
            .await
            .expect("the plugin closed the connection; expected a message")
    }

    async fn recv_data(&mut self) -> DataFrame {
        match self.recv_incoming_or_eof().await {
            Some(Incoming::Data(d)) => d,
            other => panic!("expected a data frame, got {other:?}"),
        }
    }

    async fn init_with(&mut self, range: VersionRange, settings: &str) {
        let json = format!(
            r#"{{"type":"init","timestamp":0,"request_id":1000,"payload":{{
                "protocol":{{"min":{},"max":{}}},"instance_id":"i-1","plugin_id":"t",
                "socket_path":"/s","log_path":"/l","settings":{settings}}}}}"#,
            range.min, range.max
        );
        self.send_json(&json).await;
    }

    /// `init` offering protocol 1 only.
    async fn init(&mut self) {
        self.init_version(VersionRange { min: 1, max: 1 }, 1).await;
    }

    /// `init` offering 1..=2: the SDK chooses 2.
    async fn init_v2(&mut self) {
        self.init_version(VersionRange::SUPPORTED, 2).await;
    }

    async fn init_version(&mut self, range: VersionRange, expect: u32) {
        self.init_with(range, "{}").await;
        let msg = self.recv().await;
        assert_eq!(msg.request_id, Some(1000));
        assert_eq!(
            msg.payload,
            Payload::Ready(Ready {
                protocol_version: expect
            })
        );
    }

    async fn get(&mut self, id: RequestId, path: &str, query: &str) {
        self.request(id, "GET", path, query, None, None).await;
    }

    async fn request(
        &mut self,
        id: RequestId,
        method: &str,
        path: &str,
        query: &str,
        end_stream: Option<bool>,
        upgrade: Option<&str>,
    ) {
        let req = HttpRequest {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: if upgrade.is_some() {
                vec![("sec-websocket-protocol".into(), "chat, other".into())]
            } else {
                vec![]
            },
            body: None,
            body_base64: None,
            end_stream,
            upgrade: upgrade.map(Into::into),
        };
        self.send(Message::with_id(id, Payload::HttpRequest(req)))
            .await;
    }

    /// Waits for the plugin to report `event` ("start q" or "drop q").
    async fn event(&mut self, event: &str) {
        let got = tokio::time::timeout(WAIT, self.dropped.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for handler event {event:?}"));
        assert_eq!(got.as_deref(), Some(event));
    }

    /// Waits for the plugin to report `event`, skipping other reports.
    async fn event_skipping_others(&mut self, event: &str) {
        let wait = async {
            while let Some(got) = self.dropped.recv().await {
                if got == event {
                    return;
                }
            }
            panic!("the plugin is gone; expected handler event {event:?}");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for handler event {event:?}"));
    }

    async fn finished(self) -> Result<(), ServeError> {
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("serve did not return within 10 s")
            .expect("serve panicked")
    }
}

fn error_code_of<'m>(msg: &'m Message<'_>) -> &'m str {
    match &msg.payload {
        Payload::Error(e) => e.code.as_str(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn response_of(msg: Message<'static>) -> HttpResponse<'static> {
    match msg.payload {
        Payload::HttpResponse(r) => r,
        other => panic!("expected http_response, got {other:?}"),
    }
}

fn head<'m>(msg: &'m Message<'_>) -> (Option<RequestId>, &'m str) {
    (msg.request_id, msg.payload.type_name())
}

#[tokio::test]
async fn init_ready_then_requests_ping_and_bundle() {
    let mut host = Host::start();
    host.init().await;
    host.get(1, "/t/binary", "").await;
    let res = response_of(host.recv().await);
    assert_eq!(res.status, 200);
    assert_eq!(res.body_base64.as_deref(), Some("//4="));
    host.send(Message::with_id(2, Payload::Ping)).await;
    assert_eq!(head(&host.recv().await), (Some(2), "pong"));
    host.send(Message::with_id(3, Payload::GetBundle)).await;
    let msg = host.recv().await;
    assert!(matches!(&msg.payload, Payload::Bundle(b) if b.script.contains("mount")));
    drop(host.frames);
    assert!(host.served.await.unwrap().is_ok());
}

#[tokio::test]
async fn metadata_gets_protocol_and_frontend_from_the_sdk() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let plugin = TestPlugin {
        gate: Arc::new(Semaphore::new(0)),
        dropped: tx,
    };
    let meta = effective_metadata(&plugin);
    assert_eq!(meta.protocol, Some(VersionRange { min: 1, max: 2 }));
    assert!(meta.frontend);
}

#[tokio::test]
async fn version_mismatch_is_refused_with_config_exit_code() {
    let mut host = Host::start();
    host.init_with(VersionRange { min: 99, max: 99 }, "{}")
        .await;
    let msg = host.recv().await;
    assert_eq!(msg.request_id, Some(1000));
    assert_eq!(
        error_code_of(&msg),
        error_code::UNSUPPORTED_PROTOCOL_VERSION
    );
    let Payload::Error(e) = &msg.payload else {
        unreachable!()
    };
    assert!(
        e.message.contains("99") && e.message.contains('1'),
        "{}",
        e.message
    );
    assert!(
        host.recv_or_eof().await.is_none(),
        "the plugin closes after refusing"
    );
    let err = host.finished().await.unwrap_err();
    assert!(matches!(err, ServeError::UnsupportedVersion { .. }));
    assert_eq!(err.exit_code(), EXIT_CONFIG);
}

#[tokio::test]
async fn init_may_refuse_to_start() {
    let mut host = Host::start();
    host.init_with(
        VersionRange { min: 1, max: 1 },
        r#"{"refuse":"license expired"}"#,
    )
    .await;
    let msg = host.recv().await;
    assert_eq!(error_code_of(&msg), error_code::INIT_REFUSED);
    let Payload::Error(e) = &msg.payload else {
        unreachable!()
    };
    assert_eq!(e.message, "license expired");
    let err = host.finished().await.unwrap_err();
    assert!(matches!(err, ServeError::InitRefused(_)));
    assert_eq!(err.exit_code(), EXIT_CONFIG);
}

#[tokio::test]
async fn kv_works_during_init_and_early_requests_are_refused() {
    let mut host = Host::start();
    host.get(1, "/t/kv", "").await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(1), "bad_request")
    );
    host.init_with(
        VersionRange { min: 1, max: 1 },
        r#"{"read_kv_in_init":true}"#,
    )
    .await;
    let kv = host.recv().await;
    assert!(matches!(kv.payload, Payload::Kv(KvRequest::Get { .. })));
    // While init waits for its KV reply, requests are refused and pings answered.
    host.get(2, "/t/kv", "").await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(2), "bad_request")
    );
    host.send(Message::with_id(3, Payload::Ping)).await;
    assert_eq!(head(&host.recv().await), (Some(3), "pong"));
    let reply = Payload::KvResult(KvResult::default());
    host.send(Message::new(kv.request_id, reply)).await;
    assert_eq!(head(&host.recv().await), (Some(1000), "ready"));
}

#[tokio::test]
async fn kv_calls_reach_the_host_and_logs_arrive() {
    let mut host = Host::start();
    host.init().await;
    host.get(7, "/t/kv", "").await;
    let get = host.recv().await;
    assert_eq!(
        get.request_id,
        Some(1),
        "the plugin numbers its requests from 1"
    );
    assert!(matches!(&get.payload, Payload::Kv(KvRequest::Get { key }) if key == "k"));
    let value = KvResult {
        value: Some("old".into()),
        ..Default::default()
    };
    host.send(Message::with_id(1, Payload::KvResult(value)))
        .await;
    let set = host.recv().await;
    assert_eq!(set.request_id, Some(2));
    assert!(
        matches!(&set.payload, Payload::Kv(KvRequest::Set { key, value }) if key == "k" && value == "v")
    );
    host.send(Message::with_id(2, Payload::KvResult(KvResult::default())))
        .await;
    let log = host.recv().await;
    assert!(
        matches!(&log.payload, Payload::Log(r) if r.level == Level::Info && r.message == "set k")
    );
    assert_eq!(log.request_id, None);
    let res = response_of(host.recv().await);
    assert_eq!(res.body.as_deref(), Some(r#"{"before":"old"}"#));
}

#[tokio::test]
async fn a_kv_error_reply_reaches_the_handler() {
    let mut host = Host::start();
    host.init().await;
    host.get(7, "/t/kv", "").await;
    let get = host.recv().await;
    host.send(Message::error(get.request_id, "kv_quota_exceeded", "full"))
        .await;
    let res = response_of(host.recv().await);
    assert_eq!(res.status, 500);
    assert_eq!(
        res.body.as_deref(),
        Some(r#"{"error":"kv_quota_exceeded: full"}"#)
    );
}

#[tokio::test]
async fn ping_is_answered_while_a_request_waits() {
    let mut host = Host::start();
    host.init().await;
    host.get(1, "/t/gated", "a").await;
    host.send(Message::with_id(2, Payload::Ping)).await;
    assert_eq!(head(&host.recv().await), (Some(2), "pong"));
    host.gate.add_permits(1);
    assert_eq!(head(&host.recv().await), (Some(1), "http_response"));
}

#[tokio::test]
async fn a_cancelled_request_is_dropped_and_never_answered() {
    let mut host = Host::start();
    host.init().await;
    host.get(1, "/t/gated", "cancelled").await;
    host.event("start cancelled").await;
    host.send(Message::with_id(1, Payload::Cancel)).await;
    host.event("drop cancelled").await;
    host.get(2, "/t/gated", "kept").await;
    host.gate.add_permits(2);
    let msg = host.recv().await;
    assert_eq!(head(&msg), (Some(2), "http_response"));
    host.send(Message::new(None, Payload::Shutdown)).await;
    assert!(
        host.recv_or_eof().await.is_none(),
        "nothing may answer request 1"
    );
    assert!(host.finished().await.is_ok());
}

#[tokio::test]
async fn shutdown_refuses_new_requests_and_drains_those_in_flight() {
    let mut host = Host::start();
    host.init().await;
    host.get(1, "/t/gated", "slow").await;
    host.send(Message::new(None, Payload::Shutdown)).await;
    host.get(2, "/t/gated", "late").await;
    host.send(Message::with_id(3, Payload::GetBundle)).await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(2), "shutting_down")
    );
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(3), "shutting_down")
    );
    host.gate.add_permits(1);
    assert_eq!(head(&host.recv().await), (Some(1), "http_response"));
    assert!(host.recv_or_eof().await.is_none());
    assert!(host.finished().await.is_ok());
}

#[tokio::test]
async fn eof_ends_serving_and_drops_handlers() {
    let mut host = Host::start();
    host.init().await;
    host.get(1, "/t/gated", "orphan").await;
    host.event("start orphan").await;
    let Host {
        frames,
        served,
        mut dropped,
        ..
    } = host;
    drop(frames);
    let result = tokio::time::timeout(WAIT, served)
        .await
        .expect("serve did not end within 10 s of EOF");
    assert!(result.unwrap().is_ok());
    assert_eq!(dropped.recv().await.as_deref(), Some("drop orphan"));
}

#[tokio::test]
async fn malformed_and_unknown_messages_get_error_replies() {
    let mut host = Host::start();
    host.init().await;
    host.send_json("this is not json").await;
    let msg = host.recv().await;
    assert_eq!((msg.request_id, error_code_of(&msg)), (None, "bad_request"));
    host.send_json(r#"{"type":"http_request","request_id":5,"payload":{"method":1}}"#)
        .await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(5), "bad_request")
    );
    host.send_json(r#"{"type":"frobnicate","request_id":6,"payload":{}}"#)
        .await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(6), "unknown_type")
    );
    host.send_json(r#"{"type":"http_request","request_id":8,"payload":{"method":"GET","path":"/t","body_base64":"%"}}"#)
        .await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(8), "bad_request")
    );
    host.send_json(r#"{"type":"init","request_id":9,"payload":{"protocol":{"min":1,"max":1},"instance_id":"i","plugin_id":"t","socket_path":"s","log_path":"l"}}"#)
        .await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(9), "bad_request")
    );
    host.send(Message::with_id(10, Payload::Ping)).await;
    assert_eq!(head(&host.recv().await), (Some(10), "pong"));
}

#[tokio::test]
async fn a_panicking_handler_and_a_duplicate_id_get_error_replies() {
    let mut host = Host::start();
    host.init().await;
    host.get(1, "/t/panic", "").await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(1), "plugin_error")
    );
    let Payload::Error(e) = &msg.payload else {
        unreachable!()
    };
    assert!(e.message.contains("boom"), "{}", e.message);
    host.get(2, "/t/gated", "").await;
    host.get(2, "/t/gated", "").await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(2), "bad_request")
    );
    host.gate.add_permits(1);
    assert_eq!(head(&host.recv().await), (Some(2), "http_response"));
}

#[tokio::test]
async fn an_oversized_frame_ends_the_connection_with_an_error() {
    let mut host = Host::start();
    host.init().await;
    host.frames
        .get_mut()
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .unwrap();
    let err = host.finished().await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Connection(CodecError::FrameTooLarge { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 1);
}

#[tokio::test]
async fn eof_before_init_ends_quietly() {
    let host = Host::start();
    let Host { frames, served, .. } = host;
    drop(frames);
    let result = tokio::time::timeout(WAIT, served)
        .await
        .expect("serve ended");
    assert!(result.unwrap().is_ok());
}

#[tokio::test]
async fn paths_outside_the_route_never_reach_the_handler() {
    let mut host = Host::start();
    host.init().await;
    for (id, path, status) in [
        (1, "/t", 418),
        (2, "/t/", 418),
        (3, "/tx", 404),
        (4, "/other/gated", 404),
    ] {
        host.get(id, path, "").await;
        let msg = host.recv().await;
        assert_eq!(msg.request_id, Some(id));
        assert_eq!(response_of(msg).status, status, "{path}");
    }
}

#[test]
fn is_under_matches_whole_segments() {
    assert!(is_under("/acme", "/acme"));
    assert!(is_under("/acme/", "/acme"));
    assert!(is_under("/acme/x/y", "/acme"));
    assert!(!is_under("/acmex", "/acme"));
    assert!(!is_under("/other/acme", "/acme"));
}
