//! Runs the example as a real process with the real example plugin (and a test plugin that
//! never gets ready), and checks the forwarding and error statuses toru-server has: a GET, a
//! POST with a body, a streamed download, a WebSocket echo, 404, 503 with `Retry-After` while a
//! plugin starts and after it is killed, 504, credentials kept from the plugin; then the admin
//! API, and a Ctrl-C that stops every plugin with streams still open.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

/// The example, running: its address, its log lines and the child process.
struct App {
    url: String,
    log: mpsc::UnboundedReceiver<String>,
    child: Child,
    http: reqwest::Client,
}

impl App {
    async fn start(plugins: &Path, data: &Path, extra: &[&str]) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_embed-axum"))
            .args(["--bind", "127.0.0.1:0", "--plugins-dir"])
            .arg(plugins)
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the example starts");
        let (tx, log) = mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("app: {line}");
                let _ = tx.send(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .expect("the address in time")
            .unwrap()
            .expect("a line on stdout");
        let url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{first}"))
            .to_owned();
        App {
            url,
            log,
            child,
            http: reqwest::Client::new(),
        }
    }

    /// Waits for the log line of `event` of plugin `id`.
    async fn wait_event(&mut self, id: &str, event: &str) -> String {
        let (plugin, kind) = (format!("plugin={id} "), format!("event={event} "));
        let wait = async {
            while let Some(line) = self.log.recv().await {
                if line.contains(&plugin) && line.contains(&kind) {
                    return line;
                }
            }
            panic!("the app ended before {event} of {id}")
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {event} of {id}"))
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url))
    }

    async fn plugins(&self) -> Vec<Value> {
        let list: Value = self
            .get("/admin/plugins")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list.as_array().expect("a list").clone()
    }

    async fn pid(&self, id: &str) -> u32 {
        let plugins = self.plugins().await;
        let plugin = plugins.iter().find(|p| p["id"] == id).expect("listed");
        plugin["pid"].as_u64().unwrap_or_else(|| panic!("{plugin}")) as u32
    }
}

async fn error(r: reqwest::Response) -> (StatusCode, Option<String>, String) {
    let status = r.status();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.expect("a JSON error");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, retry, code)
}

fn install(plugins: &Path) {
    std::fs::create_dir_all(plugins).unwrap();
    let hello = toru_test_support::workspace_binary("hello-plugin-rust", "hello-plugin-rust");
    std::fs::copy(hello, plugins.join("hello-rust.binary")).unwrap();
    // A plugin that never answers `init`: it is `starting` for as long as the test runs.
    let test_plugin = toru_test_support::workspace_binary("toru-host", "toru-test-plugin");
    let script = format!(
        "#!/bin/sh\nexec '{}' never-init starting \"$@\"\n",
        test_plugin.display()
    );
    let path = plugins.join("starting.binary");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn serves_plugins_like_toru_server_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::Builder::new()
        .prefix("ea")
        .tempdir_in("/tmp")
        .unwrap();
    let plugins = dir.path().join("plugins");
    install(&plugins);
    let mut app = App::start(
        &plugins,
        &dir.path().join("data"),
        &["--request-timeout", "1s"],
    )
    .await;
    app.wait_event("hello-rust", "started").await;

    // A GET: the plugin's own answer, the path under its route.
    let r = app.get("/ext/hello-rust/").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Hello from Rust!", "{body}");
    let echo: Value = app
        .get("/ext/hello-rust/echo?a=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/hello-rust/echo", "{echo}");
    assert_eq!(echo["query"], "a=1", "{echo}");

    // A POST with a body, streamed to the plugin, which hashes it.
    let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let expect = format!("{:x}", sha2::Sha256::digest(&upload));
    let r = app
        .post("/ext/hello-rust/sha256")
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), expect);

    // A streamed download, byte-exact.
    let n = 5_000_000usize;
    let r = app
        .get(&format!("/ext/hello-rust/bytes?n={n}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(n as u64));
    let mut at = 0usize;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        for byte in chunk.unwrap() {
            assert_eq!(byte, (at % 251) as u8, "byte {at}");
            at += 1;
        }
    }
    assert_eq!(at, n);

    // A WebSocket echo through axum's upgrade.
    let ws_url = format!("{}/ext/hello-rust/ws", app.url.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("HELLO"));
    ws.send(Message::binary(vec![0u8, 255])).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::binary(vec![0u8, 255]));
    ws.close(None).await.unwrap();

    // Credentials and hop-by-hop headers never reach the plugin.
    let echo: Value = app
        .get("/ext/hello-rust/echo")
        .header("Cookie", "session=secret")
        .header("Authorization", "Bearer secret")
        .header("Connection", "x-a")
        .header("X-A", "hop")
        .header("X-Kept", "yes")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
        .collect();
    for gone in ["cookie", "authorization", "connection", "x-a"] {
        assert!(!names.contains(&gone.to_owned()), "{gone}: {names:?}");
    }
    assert!(names.contains(&"x-kept".to_owned()), "{names:?}");

    // 404 for a route no plugin has, and for anything else.
    for path in ["/ext/nobody/x", "/ext/nobody", "/elsewhere"] {
        let (status, _, code) = error(app.get(path).send().await.unwrap()).await;
        assert_eq!(status, 404, "{path}");
        assert!(!code.is_empty(), "{path}");
    }
    let (_, _, code) = error(app.get("/ext/nobody/x").send().await.unwrap()).await;
    assert_eq!(code, "unknown_plugin");

    // 503 with Retry-After while a plugin starts.
    let (status, retry, code) = error(app.get("/ext/starting/").send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "plugin_unavailable")
    );
    assert!(retry.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));

    // 504 when the plugin takes longer than the request timeout.
    let (status, _, code) = error(
        app.get("/ext/hello-rust/slow?ms=20000")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "plugin_timeout")
    );

    // The admin API: list, disable (404 from then on), enable (serves when it answers).
    let listed = app.plugins().await;
    assert!(
        listed
            .iter()
            .any(|p| p["id"] == "hello-rust" && p["state"] == "running")
    );
    // (Or backing off, between two starts that never end in `ready`.)
    assert!(
        listed
            .iter()
            .any(|p| p["id"] == "starting" && p["state"] != "running")
    );
    let r = app
        .post("/admin/plugins/hello-rust/disable")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _, code) = error(app.get("/ext/hello-rust/").send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "plugin_disabled")
    );
    let r = app
        .post("/admin/plugins/hello-rust/enable")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(
        app.get("/ext/hello-rust/").send().await.unwrap().status(),
        200
    );
    let (status, _, code) =
        error(app.post("/admin/plugins/nope/enable").send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_plugin")
    );

    // 503 with Retry-After after the plugin is killed, until it is back (a second later).
    let mut unavailable = None;
    for _ in 0..5 {
        let pid = app.pid("hello-rust").await;
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        app.wait_event("hello-rust", "crashed").await;
        let r = app.get("/ext/hello-rust/").send().await.unwrap();
        if r.status() == StatusCode::OK {
            // Already back: this machine took longer than the restart delay to ask. Again.
            app.wait_event("hello-rust", "started").await;
            continue;
        }
        unavailable = Some(error(r).await);
        break;
    }
    let (status, retry, code) = unavailable.expect("a 503 in one of five kills");
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "plugin_unavailable")
    );
    assert!(retry.is_some(), "Retry-After");
    app.wait_event("hello-rust", "started").await;

    // Ctrl-C with a WebSocket and an event stream open: both end, every plugin stops, the
    // process exits cleanly.
    let pids: Vec<u32> = app
        .plugins()
        .await
        .iter()
        .filter_map(|p| p["pid"].as_u64().map(|pid| pid as u32))
        .collect();
    assert!(!pids.is_empty());
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let ticks = app.get("/ext/hello-rust/ticks").send().await.unwrap();
    assert_eq!(ticks.status(), 200);
    let pid = app.child.id().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the WebSocket ends");
    assert_eq!(close, Some(1001), "going away");
    let status = tokio::time::timeout(WAIT, app.child.wait())
        .await
        .expect("the app exits after Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(
            !toru_test_support::alive(pid),
            "plugin process {pid} is left"
        );
    }
    drop(ticks);
}
