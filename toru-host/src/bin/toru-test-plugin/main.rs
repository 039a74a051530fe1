//! A plugin that misbehaves on purpose, for toru-host's integration tests.
//!
//! `toru-test-plugin <mode> <id> [--metadata]`. Tests put a two-line shell script in the
//! plugins folder (`exec toru-test-plugin <mode> <id> "$@"`), so one binary plays every part.
//! It speaks the protocol by hand with the codec (not the SDK), so it can break every rule.
//!
//! Files it writes for the test go to `$TORU_TEST_DIR` (the script sets it to the plugins
//! folder), since a `--metadata` run has no other way to tell where that is.
//! The script may set `TORU_TEST_VERSION` (the version its metadata declares and its answers
//! carry), `TORU_TEST_GATE` (a file `--metadata` waits for, in mode `metadata-gate`) and
//! `TORU_TEST_MARKER` (a file whose absence makes `--metadata` hang once, in mode
//! `metadata-slow-once`).
//!
//! Modes starting with `v2` speak protocol 2 (see `v2.rs`).

mod v2;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::codec::Framed;
use toru_plugin_api::protocol::{
    CowStr, HttpResponse, Payload, PluginMetadata, Ready, SettingSpec, VersionRange, error_code,
};
use toru_plugin_api::{FrameCodec, Message};

fn version() -> String {
    std::env::var("TORU_TEST_VERSION").unwrap_or_else(|_| "0.0.1".into())
}

fn metadata(mode: &str, id: &str) -> Option<String> {
    let meta = PluginMetadata {
        id: id.into(),
        name: format!("Test {mode}"),
        version: version(),
        author: "toru tests".into(),
        description: format!("misbehaves: {mode}"),
        icon: "🧪".into(),
        route: format!("/{id}"),
        protocol: Some(VersionRange::SUPPORTED),
        frontend: false,
        license_required: mode == "needs-key",
        sandbox: if mode == "v2-sandboxed" {
            vec!["allow-same-origin".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let meta = match mode {
        "settings" | "live-settings" => PluginMetadata {
            settings: test_settings(),
            live_settings: mode == "live-settings",
            ..meta
        },
        _ => meta,
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
        "metadata-gate" => {
            // Waits until the test opens the gate (a test plugin may poll; a test may not).
            let gate = std::env::var("TORU_TEST_GATE").expect("TORU_TEST_GATE");
            while !std::path::Path::new(&gate).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(serde_json::to_string(&meta).expect("metadata serialises"))
        }
        "metadata-slow-once" => {
            let marker = std::env::var("TORU_TEST_MARKER").expect("TORU_TEST_MARKER");
            if std::fs::metadata(&marker).is_err() {
                std::fs::write(&marker, b"").expect("marker");
                loop {
                    std::thread::park();
                }
            }
            Some(serde_json::to_string(&meta).expect("metadata serialises"))
        }
        _ => Some(serde_json::to_string(&meta).expect("metadata serialises")),
    }
}

/// What modes `settings` and `live-settings` declare: one setting of every type, and a
/// required one.
fn test_settings() -> Vec<SettingSpec> {
    serde_json::from_value(serde_json::json!([
        {"name": "greeting", "label": "Greeting", "type": "string", "default": "Hello"},
        {"name": "retries", "label": "Retries", "type": "number", "default": 3},
        {"name": "verbose", "label": "Verbose", "type": "boolean", "default": false},
        {"name": "mode", "label": "Mode", "type": "choice", "choices": ["fast", "safe"], "default": "safe"},
        {"name": "api_token", "label": "API token", "type": "secret"},
        {"name": "endpoint", "label": "Endpoint", "type": "string", "required": true},
    ]))
    .expect("test settings")
}

/// Starts a daemon the way a careless plugin would: a double fork and `setsid`, so that it
/// leaves the plugin's process group and session. Writes its pid (as the host sees it, which
/// `/proc/self` gives even in a PID namespace) to `file` in `$TORU_TEST_DIR` before returning.
fn daemonize(file: &str) {
    let script = r#"( setsid sh -c 'read -r pid rest < /proc/self/stat; echo "$pid"; exec sleep 1000 > /dev/null' & )"#;
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        // Its stderr is the plugin's, as a careless daemon's would be (`output()` would wait
        // for the daemon to close a piped one).
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("start the daemon");
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!pid.is_empty(), "the daemon did not say its pid");
    let dir = std::env::var("TORU_TEST_DIR").unwrap_or_else(|_| ".".into());
    let path = std::path::Path::new(&dir).join(file);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &pid).expect("daemon pid file");
    std::fs::rename(&tmp, &path).expect("daemon pid file");
}

fn text_response(id: Option<u64>, body: String) -> Message<'static> {
    Message::new(
        id,
        Payload::HttpResponse(HttpResponse {
            status: 200,
            headers: vec![(
                CowStr::borrowed("content-type"),
                CowStr::borrowed("text/plain"),
            )],
            body: Some(body.into()),
            body_base64: None,
            end_stream: None,
        }),
    )
    .into_owned()
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
        if mode == "daemon" {
            daemonize(&format!("{id}.meta-daemon-pid"));
        }
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
        "daemon" => daemonize(&format!("{id}.daemon-pid")),
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
        // The child's pid as the host sees it, which differs in a PID namespace: `/proc` is
        // the host's, so its `self` and `children` name host pids.
        let host_pid = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|me| {
                let me = me.to_string_lossy().into_owned();
                std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).ok()
            })
            .and_then(|c| c.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| child.id().to_string());
        eprintln!("INFO child pid {host_pid}");
        // The plugin runs in the plugins folder; the test reads this file there.
        std::fs::write(format!("{id}.child-pid"), host_pid).expect("pid file");
    }
    let mut framed = Framed::new(stream, FrameCodec::new());
    let mut served = 0u32;
    // The settings from `init`, and from `settings` messages in mode `live-settings`.
    let mut settings = serde_json::Map::new();
    while let Some(frame) = framed.next().await {
        let Some(frame) = frame.expect("frame").into_frame() else {
            continue;
        };
        let msg = frame.message().expect("message");
        let id_ = msg.request_id;
        let reply = match msg.payload {
            Payload::Init(init) => match mode {
                "never-init" => continue,
                "settings" | "live-settings" => {
                    settings = init.settings.into_iter().collect();
                    Message::new(
                        id_,
                        Payload::Ready(Ready {
                            protocol_version: 1,
                        }),
                    )
                }
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
                "garbage-after-ready" => {
                    let ready = Message::new(
                        id_,
                        Payload::Ready(Ready {
                            protocol_version: 1,
                        }),
                    );
                    framed.send(ready.into_owned()).await.expect("send");
                    // Right after `ready`, a frame that is not a message; then, when the host
                    // closes the socket, a clean exit (code 0).
                    framed
                        .get_mut()
                        .write_all(&[0, 0, 0, 5, b'n', b'o', b'p', b'e', b'!'])
                        .await
                        .expect("write");
                    continue;
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
                    // A status no HTTP response can have.
                    ("bad-status", _) => Message::new(
                        id_,
                        Payload::HttpResponse(HttpResponse {
                            status: 1000,
                            headers: Vec::new(),
                            body: None,
                            body_base64: None,
                            end_stream: None,
                        }),
                    ),
                    ("settings" | "live-settings", _) => text_response(
                        id_,
                        serde_json::json!({"settings": settings, "pid": std::process::id()})
                            .to_string(),
                    ),
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
                    (_, "hog") => {
                        // Allocates and touches memory without bound, a MiB at a time.
                        let mut hoard: Vec<Vec<u8>> = Vec::new();
                        loop {
                            hoard.push(vec![1u8; 1 << 20]);
                        }
                    }
                    (_, "fork-bomb") => {
                        // The classic: every process starts two more, in the background.
                        let _ = std::process::Command::new("/bin/sh")
                            .arg("-c")
                            .arg("bomb() { bomb | bomb & }; bomb")
                            .spawn();
                        continue;
                    }
                    (_, "open-files") => {
                        // Opens files until the kernel refuses, and says how many it has open.
                        let mut files = Vec::new();
                        while let Ok(f) = std::fs::File::open("/dev/null") {
                            files.push(f);
                            if files.len() > 1_000_000 {
                                break;
                            }
                        }
                        // One back, for the folder that lists them.
                        files.pop();
                        let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
                        text_response(id_, format!("{open}"))
                    }
                    ("hang", _) => {
                        // Stop reading altogether: pings go unanswered.
                        std::thread::sleep(Duration::from_secs(3600));
                        continue;
                    }
                    _ => {
                        let body = serde_json::json!({
                            "path": req.path,
                            "served": served,
                            "version": version(),
                        })
                        .to_string();
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
            Payload::Settings(update) if mode == "live-settings" => {
                settings = update.settings.into_iter().collect();
                continue;
            }
            _ => continue,
        };
        framed.send(reply.into_owned()).await.expect("send");
    }
}
