//! The checks every plugin passes: the protocol itself (start-up, versions, requests, KV,
//! cancel, bad input, shutdown) and the example plugins' common routes (`/`, `/count`, `/echo`,
//! `/slow`, the bundle). They run at the highest version the plugin speaks, and
//! `protocol_1_host` runs the basics again with a host that offers only version 1.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use toru_plugin_api::PluginMetadata;
use toru_plugin_api::protocol::{
    ENV_SOCKET_PATH, EXIT_CONFIG, Message, Payload, RequestId, VersionRange,
};

use super::host::{INSTANCE_ID, Inbound, Plugin, Res, Target, within};

/// A response's status and JSON body; panics on anything else.
pub(crate) fn json_of(res: &Res) -> (u16, Value) {
    let content_type = res.header("content-type");
    assert!(
        content_type.is_some_and(|ct| ct.starts_with("application/json")),
        "expected a JSON content type, got {content_type:?} in {res:?}"
    );
    let value = serde_json::from_slice(&res.body)
        .unwrap_or_else(|e| panic!("body {:?}: {e}", String::from_utf8_lossy(&res.body)));
    (res.status, value)
}

/// The response to request `id` as status and JSON.
async fn json_response(plugin: &mut Plugin, id: RequestId) -> (u16, Value) {
    json_of(&plugin.response(id).await)
}

/// An `error` reply's code and message; panics on anything else.
fn error_reply(msg: &Message<'_>) -> (String, String) {
    match &msg.payload {
        Payload::Error(e) => (e.code.to_string(), e.message.to_string()),
        _ => panic!("expected an error reply, got {msg:?}"),
    }
}

fn assert_pong(msg: &Message<'_>, id: RequestId) {
    assert_eq!(msg.request_id, Some(id), "{msg:?}");
    assert!(
        matches!(msg.payload, Payload::Pong),
        "expected pong, got {msg:?}"
    );
}

pub(crate) async fn get_json(plugin: &mut Plugin, method: &str, path: &str) -> (u16, Value) {
    let id = plugin.http(method, path, "");
    json_response(plugin, id).await
}

pub(crate) async fn metadata(t: &Target) {
    let out = within("--metadata", t.command().arg("--metadata").output())
        .await
        .expect("run --metadata");
    assert!(out.status.success(), "--metadata exited {:?}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    let meta: PluginMetadata = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one metadata object ({e}): {stdout:?}"));
    meta.validate().expect("valid metadata");
    assert_eq!(meta.id, t.id);
    assert_eq!(meta.route, t.route());
    assert_eq!(meta.name, t.name);
    assert_eq!(meta.icon, t.icon);
    assert_eq!(meta.version, t.version);
    assert_eq!(meta.author, "Toru");
    assert!(!meta.description.is_empty());
    assert_eq!(meta.protocol, Some(t.protocol));
    assert!(meta.frontend);
    assert!(!meta.license_required);
}

pub(crate) async fn started_by_hand(t: &Target) {
    let out = within(
        "the plugin started by hand to exit",
        t.command().env_remove(ENV_SOCKET_PATH).output(),
    )
    .await
    .expect("run the plugin");
    assert_eq!(
        out.status.code(),
        Some(2),
        "started by hand: {:?}",
        out.status
    );
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");
    let sentence = stderr.trim();
    assert_eq!(sentence.lines().count(), 1, "one sentence: {stderr:?}");
    for needle in ["Toru", ENV_SOCKET_PATH, "--metadata"] {
        assert!(
            sentence.contains(needle),
            "{needle:?} missing from {sentence:?}"
        );
    }
}

pub(crate) async fn init_ready(t: &Target) {
    let mut plugin = Plugin::start(t).await;
    let reply = plugin.init(VersionRange { min: 1, max: 3 }).await;
    let expected = t.protocol.max.min(3);
    assert!(
        matches!(reply.payload, Payload::Ready(r) if r.protocol_version == expected),
        "expected ready with version {expected}, the highest in common, got {reply:?}"
    );
    plugin.stderr_line("ready").await;
}

/// A host that offers only version 1 (an older Toru) is still served: greeting, echo of a body
/// (inline, base64 when binary), the counter.
pub(crate) async fn protocol_1_host(t: &Target) {
    let mut plugin = Plugin::ready_offering(t, VersionRange { min: 1, max: 1 }).await;
    assert_eq!(plugin.version, 1);
    let (status, body) = get_json(&mut plugin, "GET", &t.path("")).await;
    assert_eq!((status, &body["message"]), (200, &json!(t.greeting)));
    let id = plugin
        .http_with_body("GET", &t.path("/echo"), "", &[], &[0, 0xff], 1024)
        .await;
    let (status, body) = json_response(&mut plugin, id).await;
    assert_eq!((status, &body["body_base64"]), (200, &json!("AP8=")));
    let (status, body) = get_json(&mut plugin, "POST", &t.path("/count")).await;
    assert_eq!((status, body), (200, json!({"count": 1})));
}

pub(crate) async fn request_before_init(t: &Target) {
    let mut plugin = Plugin::start(t).await;
    let id = plugin.http("GET", &t.path(""), "");
    let (code, _) = error_reply(&plugin.reply(Some(id)).await);
    assert_eq!(code, "bad_request");
    let reply = plugin.init(VersionRange { min: 1, max: 2 }).await;
    assert!(matches!(reply.payload, Payload::Ready(_)), "{reply:?}");
}

pub(crate) async fn version_mismatch(t: &Target) {
    let mut plugin = Plugin::start(t).await;
    let reply = plugin.init(VersionRange { min: 99, max: 99 }).await;
    let (code, message) = error_reply(&reply);
    assert_eq!(code, "unsupported_protocol_version");
    assert!(
        message.contains("99") && message.contains('1'),
        "{message:?}"
    );
    let status = plugin.exit_status().await;
    let stderr = plugin.stderr_to_end().await;
    assert_eq!(status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
}

pub(crate) async fn greeting(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    for path in [t.path(""), t.path("/")] {
        let (status, body) = get_json(&mut plugin, "GET", &path).await;
        assert_eq!(status, 200, "{path}");
        let expected = json!({"message": t.greeting, "plugin": t.id, "instance_id": INSTANCE_ID});
        assert_eq!(body, expected, "{path}");
    }
}

pub(crate) async fn echo(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let path = t.path("/echo");
    let headers = [("x-test", "yes"), ("accept", "*/*")];
    let id = plugin
        .http_with_body("GET", &path, "a=1&b=x%20y", &headers, "héllo".as_bytes(), 3)
        .await;
    let (status, body) = json_response(&mut plugin, id).await;
    assert_eq!(status, 200);
    let expected = json!({
        "method": "GET", "path": path, "query": "a=1&b=x%20y",
        "headers": [["x-test", "yes"], ["accept", "*/*"]],
        "body": "héllo", "body_base64": null,
    });
    assert_eq!(body, expected);

    let id = plugin
        .http_with_body("GET", &path, "", &[], &[0xff, 0x00, 0xfe], 1024)
        .await;
    let (_, body) = json_response(&mut plugin, id).await;
    assert_eq!(
        (&body["body"], &body["body_base64"]),
        (&json!(null), &json!("/wD+"))
    );

    let (_, body) = get_json(&mut plugin, "GET", &path).await;
    assert_eq!(
        (&body["body"], &body["body_base64"]),
        (&json!(null), &json!(null))
    );
    assert_eq!(body["query"], "");
}

pub(crate) async fn slow(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = plugin.http("GET", &t.path("/slow"), "ms=10");
    let (status, body) = json_response(&mut plugin, id).await;
    assert_eq!((status, body), (200, json!({"slept_ms": 10})));
}

pub(crate) async fn method_not_allowed(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    for (method, rest) in [
        ("DELETE", ""),
        ("POST", "/"),
        ("GET", "/count"),
        ("POST", "/echo"),
        ("PUT", "/slow"),
    ] {
        let (status, body) = get_json(&mut plugin, method, &t.path(rest)).await;
        assert_eq!(status, 405, "{method} {rest}");
        assert_eq!(
            body,
            json!({"error": "method not allowed"}),
            "{method} {rest}"
        );
    }
}

pub(crate) async fn not_found(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let elsewhere = format!("{}x/echo", t.route());
    for path in [
        t.path("/nope"),
        t.path("/echo/more"),
        "/elsewhere".into(),
        elsewhere,
    ] {
        let (status, body) = get_json(&mut plugin, "GET", &path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body, json!({"error": "not found"}), "{path}");
    }
}

pub(crate) async fn kv_counter(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    for n in 1..=2 {
        let (status, body) = get_json(&mut plugin, "POST", &t.path("/count")).await;
        assert_eq!((status, body), (200, json!({"count": n})));
        let log = plugin.log().await;
        assert_eq!(log.level, toru_plugin_api::Level::Info);
        assert_eq!(log.message.as_str(), format!("counter is now {n}"));
    }
    let kv = plugin.kv.lock().unwrap();
    assert_eq!(kv.map.get("counter").map(String::as_str), Some("2"));
    assert_eq!(
        kv.ids.first(),
        Some(&1),
        "the plugin numbers its requests from 1"
    );
    assert!(
        kv.ids.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {:?}",
        kv.ids
    );
}

pub(crate) async fn kv_error(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    plugin.kv.lock().unwrap().fail_with = Some(("kv_quota_exceeded".into(), "quota full".into()));
    let (status, body) = get_json(&mut plugin, "POST", &t.path("/count")).await;
    assert_eq!(
        (status, body),
        (500, json!({"error": "kv_quota_exceeded: quota full"}))
    );
}

pub(crate) async fn concurrent_requests(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let mut sent = Vec::new();
    for i in 0..100u32 {
        let id = match i % 4 {
            0 => plugin.http("GET", &t.path(""), ""),
            1 => plugin.http("GET", &t.path("/echo"), &format!("i={i}")),
            2 => plugin.http("POST", &t.path("/count"), ""),
            _ => plugin.http("GET", &t.path("/missing"), ""),
        };
        sent.push((id, i));
    }
    let mut counts = BTreeSet::new();
    for (id, i) in sent {
        let (status, body) = json_response(&mut plugin, id).await;
        match i % 4 {
            0 => assert_eq!((status, &body["plugin"]), (200, &json!(t.id))),
            1 => assert_eq!((status, &body["query"]), (200, &json!(format!("i={i}")))),
            2 => {
                assert_eq!(status, 200, "{body}");
                let n = body["count"].as_u64().expect("a count");
                assert!(counts.insert(n), "count {n} given twice");
            }
            _ => assert_eq!(status, 404),
        }
    }
    assert_eq!(counts, (1..=25).collect::<BTreeSet<u64>>());
}

pub(crate) async fn bundle(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = plugin.request(Payload::GetBundle);
    let reply = plugin.reply(Some(id)).await;
    let Payload::Bundle(bundle) = &reply.payload else {
        panic!("expected bundle, got {reply:?}");
    };
    for needle in [
        "export function mount",
        "export function unmount",
        "__toruUnmounted",
        "count",
    ] {
        assert!(
            bundle.script.contains(needle),
            "{needle:?} missing from the bundle"
        );
    }
}

pub(crate) async fn ping_during_slow_request(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let slow = plugin.http("GET", &t.path("/slow"), "ms=60000");
    let ping = plugin.request(Payload::Ping);
    // The slow request takes a minute, far past `reply`'s 10 s limit: the pong cannot wait.
    assert_pong(&plugin.reply(Some(ping)).await, ping);
    plugin.send(&Message::with_id(slow, Payload::Cancel));
}

pub(crate) async fn cancel(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let cancelled = plugin.http("GET", &t.path("/slow"), "ms=1000");
    plugin.send(&Message::with_id(cancelled, Payload::Cancel));
    let (status, _) = get_json(&mut plugin, "GET", &t.path("")).await;
    assert_eq!(status, 200, "requests after a cancel still work");
    // Shutdown lets requests in flight finish (up to 5 s), so an uncancelled 1 s request would
    // answer before the connection closes.
    plugin.send(&Message::new(None, Payload::Shutdown));
    let after = plugin.until_eof().await;
    assert!(
        after.iter().all(|i| match i {
            Inbound::Message(m) => m.request_id != Some(cancelled),
            Inbound::Data(d) => d.stream != cancelled,
        }),
        "a cancelled request was answered: {after:?}"
    );
    assert_eq!(plugin.exit_status().await.code(), Some(0));
}

pub(crate) async fn unknown_type(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    plugin.send_json(r#"{"type":"frobnicate","timestamp":0,"request_id":4242,"payload":{}}"#);
    let (code, _) = error_reply(&plugin.reply(Some(4242)).await);
    assert_eq!(code, "unknown_type");
    let ping = plugin.request(Payload::Ping);
    assert_pong(&plugin.reply(Some(ping)).await, ping);
}

pub(crate) async fn garbage_frame(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    plugin.send_json("this is not json");
    let (code, _) = error_reply(&plugin.reply(None).await);
    assert_eq!(code, "bad_request");
    plugin.send_json(
        r#"{"type":"http_request","timestamp":0,"request_id":4343,"payload":{"method":7}}"#,
    );
    let (code, _) = error_reply(&plugin.reply(Some(4343)).await);
    assert_eq!(code, "bad_request");
    let (status, _) = get_json(&mut plugin, "GET", &t.path("")).await;
    assert_eq!(status, 200, "the connection still works");
}

pub(crate) async fn oversized_frame(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    plugin.send_raw(&0x7fff_ffffu32.to_be_bytes());
    let status = plugin.exit_status().await;
    let stderr = plugin.stderr_to_end().await;
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.trim().is_empty(), "a line on stderr says why");
}

pub(crate) async fn shutdown(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let slow = plugin.http("GET", &t.path("/slow"), "ms=2000");
    plugin.send(&Message::new(None, Payload::Shutdown));
    let late = plugin.http("GET", &t.path(""), "");
    let (code, _) = error_reply(&plugin.reply(Some(late)).await);
    assert_eq!(code, "shutting_down");
    let (status, body) = json_response(&mut plugin, slow).await;
    assert_eq!((status, body), (200, json!({"slept_ms": 2000})));
    assert!(plugin.until_eof().await.is_empty());
    assert_eq!(plugin.exit_status().await.code(), Some(0));
}

pub(crate) async fn eof(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let slow = plugin.http("GET", &t.path("/slow"), "ms=60000");
    let ping = plugin.request(Payload::Ping);
    assert_pong(&plugin.reply(Some(ping)).await, ping);
    plugin.close();
    // The slow request would take a minute: the plugin must not wait for it.
    assert_eq!(plugin.exit_status().await.code(), Some(0));
    let _ = slow;
}
