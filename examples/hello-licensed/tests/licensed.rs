//! License checks in the example plugins, run as real processes with this test playing the host
//! over a real Unix socket: `hello-licensed` (Ed25519, through the Rust SDK) and the Python
//! example (HMAC, standard library only), whose verdicts must match the Rust verifier's word for
//! word, on hand-picked keys and on thousands of mutated ones.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use toru_plugin_api::license::{Issuer, LicenseClaims, LicensePolicy, Timestamp};
use toru_test_support::{Mutation, Rng, mutate};

const INSTANCE: &str = "6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f";
const OTHER_INSTANCE: &str = "0b7e1f7a-0d7c-4b61-8a3c-9f2e4d5c6b7a";
const WAIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

fn rust_plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hello-licensed"))
}

fn python_plugin() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../hello-plugin-python/hello-plugin-python.binary"
    ))
}

/// The demo vendor key that issues licenses for hello-licensed.
fn demo_vendor() -> Issuer {
    Issuer::parse(include_str!("../demo-vendor-key.secret")).expect("the demo key parses")
}

/// The demo HMAC secret embedded in the Python example, read from the script itself.
fn python_secret() -> Issuer {
    let script = std::fs::read_to_string(python_plugin()).expect("read the python plugin");
    let start = script
        .find("toru1.hmac-secret.")
        .expect("the script embeds an hmac secret");
    let text = &script[start..];
    Issuer::parse(&text[..text.find('"').expect("a quoted secret")]).expect("the secret parses")
}

fn claims(plugin: &str, instance: &str, features: &[&str]) -> LicenseClaims {
    let now = Timestamp::now();
    let mut claims = LicenseClaims::new(plugin, instance, now);
    claims.expires_at = Some(now.add_days(30));
    claims.features = features.iter().map(|f| f.to_string()).collect();
    claims
}

/// A plugin process with this test as its host.
struct Plugin {
    child: Child,
    stream: UnixStream,
    stderr: JoinHandle<String>,
    next_id: u64,
    _dir: TempDir,
}

impl Plugin {
    async fn start(exe: &Path) -> Plugin {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("p.sock");
        let mut child = Command::new(exe)
            .env("TORU_SOCKET_PATH", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text).await;
            text
        });
        let stream = within("the plugin's socket to accept a connection", async {
            // Polls until the plugin listens, failing at once if it exits first.
            let mut poll = tokio::time::interval(Duration::from_millis(5));
            loop {
                if let Ok(stream) = UnixStream::connect(&socket).await {
                    return stream;
                }
                tokio::select! {
                    status = child.wait() => panic!("the plugin exited ({status:?}) before listening"),
                    _ = poll.tick() => {}
                }
            }
        })
        .await;
        Plugin {
            child,
            stream,
            stderr,
            next_id: 1,
            _dir: dir,
        }
    }

    async fn send(&mut self, msg: Value) {
        let json = serde_json::to_vec(&msg).unwrap();
        let mut frame = (json.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&json);
        self.stream.write_all(&frame).await.expect("write a frame");
    }

    /// The next message that is not a `log` notice.
    async fn recv(&mut self) -> Value {
        within("a message from the plugin", async {
            loop {
                let mut len = [0u8; 4];
                self.stream
                    .read_exact(&mut len)
                    .await
                    .expect("a frame header");
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                self.stream
                    .read_exact(&mut body)
                    .await
                    .expect("a frame body");
                let msg: Value = serde_json::from_slice(&body).expect("a JSON frame");
                if msg["type"] != "log" {
                    return msg;
                }
            }
        })
        .await
    }

    async fn request(&mut self, type_name: &str, payload: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"type": type_name, "timestamp": 0, "request_id": id, "payload": payload});
        self.send(msg).await;
        let reply = self.recv().await;
        assert_eq!(reply["request_id"], id, "a reply to request {id}: {reply}");
        reply
    }

    /// Sends `init` with `settings` on `instance` and returns the reply.
    async fn init(&mut self, instance: &str, settings: Value) -> Value {
        let payload = json!({
            "protocol": {"min": 1, "max": 1}, "instance_id": instance, "plugin_id": "x",
            "socket_path": "/s", "log_path": "/l", "settings": settings,
        });
        self.request("init", payload).await
    }

    async fn get(&mut self, path: &str) -> (u64, Value) {
        let payload = json!({"method": "GET", "path": path, "query": "", "headers": []});
        let reply = self.request("http_request", payload).await;
        assert_eq!(reply["type"], "http_response", "{reply}");
        let body = reply["payload"]["body"].as_str().expect("a text body");
        (
            reply["payload"]["status"].as_u64().unwrap(),
            serde_json::from_str(body).unwrap(),
        )
    }

    /// Waits for the process to exit; returns its exit code and its stderr.
    async fn exit(mut self) -> (Option<i32>, String) {
        let status = within("the plugin to exit", self.child.wait())
            .await
            .unwrap();
        let stderr = within("the plugin's stderr to close", self.stderr)
            .await
            .unwrap();
        (status.code(), stderr)
    }

    async fn shutdown(mut self) {
        self.send(json!({"type": "shutdown", "timestamp": 0, "request_id": null}))
            .await;
        let (code, stderr) = self.exit().await;
        assert_eq!(code, Some(0), "exit after shutdown; stderr: {stderr}");
    }
}

/// Starts the plugin with `settings`, expects `init_refused` with `reason` and exit code 78, with
/// the reason on stderr.
async fn assert_refused(exe: &Path, instance: &str, settings: Value, reason: &str) {
    let mut plugin = Plugin::start(exe).await;
    let reply = plugin.init(instance, settings).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["payload"]["code"], "init_refused", "{reply}");
    assert_eq!(reply["payload"]["message"], reason, "{reply}");
    let (code, stderr) = plugin.exit().await;
    assert_eq!(
        code,
        Some(78),
        "exit code after a refused license; stderr: {stderr}"
    );
    assert!(stderr.contains(reason), "the reason on stderr: {stderr}");
}

#[tokio::test]
async fn rust_plugin_runs_with_a_valid_key_and_shows_its_features() {
    let key = demo_vendor().issue(&claims("hello-licensed", INSTANCE, &["reports"]));
    let mut plugin = Plugin::start(&rust_plugin()).await;
    let reply = plugin.init(INSTANCE, json!({"license_key": key})).await;
    assert_eq!(reply["type"], "ready", "{reply}");
    let (status, body) = plugin.get("/hello-licensed/").await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], "Hello from a licensed plugin!");
    assert_eq!(body["instance_id"], INSTANCE);
    assert_eq!(body["license"]["features"], json!(["reports"]));
    assert!(
        body["license"]["expires_at"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{body}"
    );
    let (status, body) = plugin.get("/hello-licensed/report").await;
    assert_eq!(
        (status, &body["feature"]),
        (200, &json!("reports")),
        "{body}"
    );
    plugin.shutdown().await;

    // Without the feature, the report is forbidden.
    let key = demo_vendor().issue(&claims("hello-licensed", INSTANCE, &[]));
    let mut plugin = Plugin::start(&rust_plugin()).await;
    assert_eq!(
        plugin.init(INSTANCE, json!({"license_key": key})).await["type"],
        "ready"
    );
    let (status, body) = plugin.get("/hello-licensed/report").await;
    assert_eq!(status, 403, "{body}");
    plugin.shutdown().await;
}

#[tokio::test]
async fn rust_plugin_refuses_bad_keys_and_exits_78() {
    let exe = rust_plugin();
    let key = demo_vendor().issue(&claims("hello-licensed", OTHER_INSTANCE, &[]));
    let reason =
        format!("license key is for instance {OTHER_INSTANCE}, not this instance ({INSTANCE})");
    assert_refused(&exe, INSTANCE, json!({"license_key": key}), &reason).await;

    let reason =
        "no license key: paste one in the plugin's details panel (the `license_key` setting)";
    assert_refused(&exe, INSTANCE, json!({}), reason).await;

    let mut old = LicenseClaims::new("hello-licensed", INSTANCE, "2024-01-01".parse().unwrap());
    old.expires_at = Some("2025-01-01".parse().unwrap());
    let reason = "license key expired on 2025-01-01T00:00:00Z";
    assert_refused(
        &exe,
        INSTANCE,
        json!({"license_key": demo_vendor().issue(&old)}),
        reason,
    )
    .await;

    // A key from another vendor (another key, same key id) fails the signature check.
    let stranger = Issuer::ed25519_from_seed("demo-2026", [3; 32]).unwrap();
    let key = stranger.issue(&claims("hello-licensed", INSTANCE, &[]));
    let reason = "license key signature does not match (ed25519 key \"demo-2026\"): the key was \
                  altered or not issued by this plugin's vendor";
    assert_refused(&exe, INSTANCE, json!({"license_key": key}), reason).await;
}

/// The Rust verifier's verdict on `key` with the Python plugin's secret.
fn rust_verdict(key: &str, instance: &str) -> Result<LicenseClaims, String> {
    let policy = LicensePolicy::new()
        .with_key(python_secret().verifying_key())
        .unwrap();
    policy
        .verify(key, "hello-python", instance, Timestamp::now())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn python_plugin_without_a_key_runs_as_a_community_plugin() {
    for settings in [
        json!({}),
        json!({"license_key": null}),
        json!({"license_key": " "}),
    ] {
        let mut plugin = Plugin::start(&python_plugin()).await;
        assert_eq!(plugin.init(INSTANCE, settings).await["type"], "ready");
        let (status, body) = plugin.get("/hello-python/").await;
        assert_eq!(status, 200);
        assert!(body.get("license").is_none(), "no license shown: {body}");
        plugin.shutdown().await;
    }
}

#[tokio::test]
async fn python_plugin_accepts_a_key_from_the_rust_issuer() {
    let key = python_secret().issue(&claims("hello-python", INSTANCE, &["pro", "sso"]));
    assert!(rust_verdict(&key, INSTANCE).is_ok());
    // Wrapped across lines, as a mail client might: still the same key.
    let wrapped = format!("{}\n  {}\n", &key[..50], &key[50..]);
    for key in [key, wrapped] {
        let mut plugin = Plugin::start(&python_plugin()).await;
        let reply = plugin.init(INSTANCE, json!({"license_key": key})).await;
        assert_eq!(reply["type"], "ready", "{reply}");
        let (status, body) = plugin.get("/hello-python/").await;
        assert_eq!(status, 200);
        assert_eq!(body["license"]["features"], json!(["pro", "sso"]), "{body}");
        plugin.shutdown().await;
    }
}

#[tokio::test]
async fn python_plugin_refuses_what_rust_refuses_with_the_same_reason() {
    let issuer = python_secret();
    let valid = issuer.issue(&claims("hello-python", INSTANCE, &[]));
    let parts: Vec<&str> = valid.split('.').collect();

    // The payload rewritten for another instance, the signature kept.
    let mut forged_claims = claims("hello-python", OTHER_INSTANCE, &[]);
    forged_claims.issued_at = Timestamp::now();
    let forged = issuer.issue(&forged_claims);
    let tampered = format!("{}.{}", &forged[..forged.rfind('.').unwrap()], parts[4]);

    let mut expired = LicenseClaims::new("hello-python", INSTANCE, "2024-01-01".parse().unwrap());
    expired.expires_at = Some("2025-01-01".parse().unwrap());
    let other_kid = Issuer::hmac("other-kid", &[5; 32]).unwrap();
    let ed25519 = Issuer::ed25519_from_seed("demo-hmac", [5; 32]).unwrap();

    let cases = [
        ("tampered", tampered),
        (
            "other instance",
            issuer.issue(&claims("hello-python", OTHER_INSTANCE, &[])),
        ),
        (
            "other plugin",
            issuer.issue(&claims("hello-rust", INSTANCE, &[])),
        ),
        ("expired", issuer.issue(&expired)),
        (
            "unknown key id",
            other_kid.issue(&claims("hello-python", INSTANCE, &[])),
        ),
        (
            "ed25519 key",
            ed25519.issue(&claims("hello-python", INSTANCE, &[])),
        ),
        ("truncated", valid[..valid.len() - 5].to_owned()),
        ("extra dot", format!("{valid}.")),
        ("bad base64", valid.replacen(".eyJ", ".ey+", 1)),
        ("wrong version", valid.replacen("toru1", "toru2", 1)),
        ("not a key", "hello".to_owned()),
    ];
    for (what, key) in cases {
        let reason = rust_verdict(&key, INSTANCE).expect_err(what);
        assert_refused(
            &python_plugin(),
            INSTANCE,
            json!({"license_key": key}),
            &reason,
        )
        .await;
    }
    // hello-python declares `license_key` as a secret setting, so the host never sends it
    // anything but text; a number sent anyway is the SDK's to refuse (logged, never used), and
    // the plugin starts as a community plugin, with no license.
    let mut plugin = Plugin::start(&python_plugin()).await;
    let reply = plugin.init(INSTANCE, json!({"license_key": 42})).await;
    assert_eq!(reply["type"], "ready", "{reply}");
    plugin.shutdown().await;
}

/// Feeds thousands of keys, valid and mutated, to the Python verifier in one process (the script
/// imported as a module) and to the Rust one: both must accept the same keys with the same claims
/// and refuse the others with the same message.
#[tokio::test]
async fn python_verifier_agrees_with_rust_on_mutated_keys() {
    let issuer = python_secret();
    let now = Timestamp::now();
    let mut rng = Rng::new(0x2545_F491_4F6C_DD1D);
    let mut keys = Vec::new();
    let mut expired = LicenseClaims::new("hello-python", INSTANCE, "2024-01-01".parse().unwrap());
    expired.expires_at = Some("2025-01-01".parse().unwrap());
    for claims in [
        claims("hello-python", INSTANCE, &["pro"]),
        claims("hello-python", OTHER_INSTANCE, &[]),
        claims("hello-rust", INSTANCE, &[]),
        expired,
    ] {
        let key = issuer.issue(&claims);
        keys.push(key.clone());
        keys.extend((0..500).map(|_| mutate(&mut rng, &key, &Mutation::TEXT)));
    }
    let script = r#"
import importlib.machinery, importlib.util, json, sys
path, plugin, instance, now = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
loader = importlib.machinery.SourceFileLoader("hello_python", path)
module = importlib.util.module_from_spec(importlib.util.spec_from_loader("hello_python", loader))
loader.exec_module(module)
for key in json.load(sys.stdin):
    try:
        claims = module.verify_license(key, plugin, instance, now)
        print(json.dumps({"ok": claims}))
    except module.LicenseError as e:
        print(json.dumps({"err": str(e)}))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(python_plugin())
        .args(["hello-python", INSTANCE, &now.as_unix().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(&keys).unwrap())
        .await
        .unwrap();
    drop(stdin);
    let out = within("python to check the keys", child.wait_with_output())
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), keys.len());

    let policy = LicensePolicy::new()
        .with_key(issuer.verifying_key())
        .unwrap();
    let mut accepted = 0;
    let mut reasons = std::collections::HashSet::new();
    for (key, python) in keys.iter().zip(&verdicts) {
        match policy.verify(key, "hello-python", INSTANCE, now) {
            Ok(claims) => {
                accepted += 1;
                let ok = &python["ok"];
                assert_eq!(ok["features"], json!(claims.features), "{key:?}: {python}");
                assert_eq!(
                    ok["issued_at"],
                    claims.issued_at.as_unix(),
                    "{key:?}: {python}"
                );
            }
            Err(e) => {
                assert_eq!(python["err"], e.to_string(), "{key:?}");
                reasons.insert(std::mem::discriminant(&e));
            }
        }
    }
    // The valid key (and mutations that only add whitespace) pass; the rest fail for many
    // different reasons.
    assert!(accepted >= 1, "the valid key passes");
    assert!(
        reasons.len() >= 7,
        "only {} kinds of refusal were seen",
        reasons.len()
    );
}
