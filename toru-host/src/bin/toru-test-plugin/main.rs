//! A plugin that misbehaves on purpose, for toru-host's integration tests.
//!
//! `toru-test-plugin <mode> <id> [--metadata]`. Tests put a two-line shell script in the
//! plugins folder (`exec toru-test-plugin <mode> <id> "$@"`), so one binary plays every part.
//! It speaks the protocol by hand with the codec (not the SDK), so it can break every rule.
//! Modes starting with `v2` speak protocol 2 (see `v2.rs`).

mod v2;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::codec::Framed;
use toru_plugin_api::protocol::{
    CowStr, HttpResponse, Payload, PluginMetadata, Ready, VersionRange, error_code,
};
use toru_plugin_api::{FrameCodec, Message};

fn metadata(mode: &str, id: &str) -> Option<String> {
    let meta = PluginMetadata {
        id: id.into(),
        name: format!("Test {mode}"),
        version: "0.0.1".into(),
        author: "toru tests".into(),
        description: format!("misbehaves: {mode}"),
        icon: "🧪".into(),
        route: format!("/{id}"),
        protocol: Some(VersionRange::SUPPORTED),
        frontend: false,
        license_required: false,
        sandbox: if mode == "v2-sandboxed" {
            vec!["allow-same-origin".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    match mode {
        "no-metadata" => None,
        "bad-metadata" => {
            Some(r#"{"id": "Not Valid", "name": "x", "version": "1", "route": "/x"}"#.into())
        }
        "metadata-fails" => {
            eprintln!("metadata is broken today");
            std::process::exit(3)
        }
        "metadata-hangs" => loop {
            std::thread::park();
        },
        _ => Some(serde_json::to_string(&meta).expect("metadata serialises")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, id) = match args.as_slice() {
        [_, mode, id, ..] => (mode.as_str(), id.as_str()),
        _ => {
            eprintln!("usage: toru-test-plugin <mode> <id> [--metadata]");
            std::process::exit(2);
        }
    };
    if args.iter().any(|a| a == "--metadata") {
        if let Some(json) = metadata(mode, id) {
            println!("{json}");
        }
        return;
    }
    eprintln!("INFO test plugin {id} starting in mode {mode}");
    match mode {
        "exit-at-once" => std::process::exit(1),
        "exit78" => {
            eprintln!("ERROR license key refused: it was issued for another instance");
            std::process::exit(78);
        }
        "never-bind" => loop {
            std::thread::park();
        },
        "stderr-flood" => {
            // 50 MB in one go: the host must keep reading without blocking the plugin.
            let line = format!("WARN {}\n", "x".repeat(1019));
            let mut err = std::io::stderr().lock();
            for _ in 0..(50 * 1024) {
                std::io::Write::write_all(&mut err, line.as_bytes()).expect("stderr");
            }
            std::io::Write::flush(&mut err).expect("stderr");
        }
        _ => {}
    }
    let path = std::env::var(toru_plugin_api::protocol::ENV_SOCKET_PATH).expect("socket path");
    let listener = UnixListener::bind(&path).expect("bind");
    let (stream, _) = listener.accept().await.expect("accept");
    drop(listener);
    if mode.starts_with("v2") {
        let notify = args
            .iter()
            .find_map(|a| a.strip_prefix("--notify=").map(str::to_owned));
        v2::serve(stream, mode, notify).await;
        return;
    }
    if mode == "spawn-child" {
        // A grandchild that would outlive us if the host did not kill our process group.
        #[allow(clippy::zombie_processes)] // the host kills and reaps the whole group
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        eprintln!("INFO child pid {}", child.id());
        // The plugin runs in the plugins folder; the test reads this file there.
        std::fs::write(format!("{id}.child-pid"), child.id().to_string()).expect("pid file");
    }
    let mut framed = Framed::new(stream, FrameCodec::new());
    let mut served = 0u32;
    while let Some(frame) = framed.next().await {
        let Some(frame) = frame.expect("frame").into_frame() else {
            continue;
        };
        let msg = frame.message().expect("message");
        let id_ = msg.request_id;
        let reply = match msg.payload {
            Payload::Init(init) => match mode {
                "never-init" => continue,
                "old-protocol" => Message::error(
                    id_,
                    error_code::UNSUPPORTED_PROTOCOL_VERSION,
                    format!(
                        "this plugin speaks protocol 0 only; the host offered {}",
                        init.protocol
                    ),
                ),
                "needs-key"
                    if init.settings.get("license_key").and_then(|v| v.as_str())
                        == Some("good") =>
                {
                    Message::new(
                        id_,
                        Payload::Ready(Ready {
                            protocol_version: 1,
                        }),
                    )
                }
                "refuse-init" | "needs-key" => {
                    let reply =
                        Message::error(id_, error_code::INIT_REFUSED, "license key missing");
                    framed.send(reply).await.expect("send");
                    eprintln!("ERROR license key missing");
                    std::process::exit(78);
                }
                _ => Message::new(
                    id_,
                    Payload::Ready(Ready {
                        protocol_version: 1,
                    }),
                ),
            },
            Payload::Ping if mode == "hang" => continue,
            Payload::Ping => Message::new(id_, Payload::Pong),
            Payload::HttpRequest(req) => {
                served += 1;
                match (mode, req.path.rsplit('/').next().unwrap_or("")) {
                    (_, "panic") => panic!("asked to panic"),
                    (_, "exit") => std::process::exit(1),
                    // Never answer: the host times out and sends `cancel`.
                    (_, "sleep") => continue,
                    (_, "error") => {
                        Message::error(id_, error_code::PLUGIN_ERROR, "this route always fails")
                    }
                    ("garbage", _) => {
                        let inner = framed.get_mut();
                        inner
                            .write_all(&[0, 0, 0, 5, b'n', b'o', b'p', b'e', b'!'])
                            .await
                            .expect("write");
                        continue;
                    }
                    ("oversized", _) => {
                        framed
                            .get_mut()
                            .write_all(&u32::MAX.to_be_bytes())
                            .await
                            .expect("write");
                        continue;
                    }
                    ("hang", _) => {
                        // Stop reading altogether: pings go unanswered.
                        std::thread::sleep(Duration::from_secs(3600));
                        continue;
                    }
                    _ => {
                        let body =
                            serde_json::json!({"path": req.path, "served": served}).to_string();
                        Message::new(
                            id_,
                            Payload::HttpResponse(HttpResponse {
                                status: 200,
                                headers: vec![(
                                    CowStr::borrowed("content-type"),
                                    CowStr::borrowed("application/json"),
                                )],
                                body: Some(body.into()),
                                body_base64: None,
                                end_stream: None,
                            }),
                        )
                        .into_owned()
                    }
                }
            }
            Payload::Cancel => {
                eprintln!("INFO cancelled request {}", id_.unwrap_or(0));
                continue;
            }
            Payload::Shutdown => std::process::exit(0),
            _ => continue,
        };
        framed.send(reply.into_owned()).await.expect("send");
    }
}
