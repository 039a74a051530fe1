//! Spec "Plugin Routes": requests to `/plugins/<route>/*` reach the plugin with the full path,
//! query and body, and the plugin's status, headers and body come back; for both examples and
//! for the protocol 1 Python plugin (`examples/hello-plugin-python-v1`).

use reqwest::Method;
use serde_json::Value;

use crate::util::{Env, Server, python_example};

const EXAMPLES: [(&str, &str); 3] = [
    ("hello-rust", "Hello from Rust!"),
    ("hello-python", "Hello from Python!"),
    ("hello-python-v1", "Hello from Python!"),
];

/// Header names in an echo, whether the plugin lists pairs or an object.
pub(crate) fn echoed_header_names(echo: &Value) -> Vec<String> {
    match &echo["headers"] {
        Value::Array(pairs) => pairs
            .iter()
            .filter_map(|p| p[0].as_str().map(str::to_ascii_lowercase))
            .collect(),
        Value::Object(map) => map.keys().map(|k| k.to_ascii_lowercase()).collect(),
        other => panic!("echo without headers: {other}"),
    }
}

pub(crate) fn echoed_header(echo: &Value, name: &str) -> Option<String> {
    match &echo["headers"] {
        Value::Array(pairs) => pairs
            .iter()
            .find(|p| p[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|p| p[1].as_str().map(str::to_owned)),
        Value::Object(map) => map.get(name).and_then(|v| v.as_str().map(str::to_owned)),
        _ => None,
    }
}

#[tokio::test]
async fn plugin_routes_forward_full_path_query_and_body_and_return_the_plugins_response() {
    let env = Env::new();
    env.install_examples();
    let examples = python_example().parent().unwrap().join("..");
    let v1 = examples.join("hello-plugin-python-v1/hello-python-v1.binary");
    env.install_file("hello-python-v1.binary", &std::fs::read(v1).unwrap());
    let server = Server::start(&env, &[]).await;
    server
        .wait_running(&["hello-rust", "hello-python", "hello-python-v1"])
        .await;
    let instance = server.json("/api/instance").await["instance_id"].clone();

    for (id, greeting) in EXAMPLES {
        // The plugin's own answer, status and headers included.
        let r = server.get(&format!("/plugins/{id}/")).await;
        assert_eq!(r.status(), 200, "{id}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{id}: {:?}",
            r.headers()
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["message"], greeting, "{body}");
        assert_eq!(body["plugin"], id);
        assert_eq!(body["instance_id"], instance, "the host's instance id");

        // Full path, query, headers and body as sent.
        let r = server
            .req(
                Method::GET,
                &format!("/plugins/{id}/echo?a=1&b=two%20words"),
            )
            .header("X-Test", "yes")
            .body("hello body")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["method"], "GET", "{echo}");
        assert_eq!(echo["path"], format!("/{id}/echo"), "the full path: {echo}");
        assert_eq!(echo["query"], "a=1&b=two%20words", "{echo}");
        assert_eq!(echo["body"], "hello body", "{echo}");
        assert_eq!(
            echoed_header(&echo, "x-test").as_deref(),
            Some("yes"),
            "{echo}"
        );

        // A body that is not text arrives intact.
        let r = server
            .req(Method::GET, &format!("/plugins/{id}/echo"))
            .body(vec![0xff_u8, 0x00, 0x10])
            .send()
            .await
            .unwrap();
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["body_base64"], "/wAQ", "{echo}");

        // Every method goes through; state lives in the plugin's KV store.
        for n in 1..=2 {
            let r = server.post(&format!("/plugins/{id}/count")).await;
            assert_eq!(r.status(), 200, "{id} count");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["count"], n, "{body}");
        }

        // The plugin's own error answers pass through as they are.
        let r = server.get(&format!("/plugins/{id}/no-such-page")).await;
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not found", "the plugin's body: {body}");
        let r = server
            .req(Method::PUT, &format!("/plugins/{id}/echo"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{id} PUT echo");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_with_a_json_error() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    for path in [
        "/plugins/nobody/",
        "/plugins/nobody",
        "/plugins/",
        "/api/nothing",
    ] {
        let r = server.get(path).await;
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    server.stop().await;
}

/// Requests in [`none_lost_or_answered_twice_over_64_connections`], and their connections.
const MANY_REQUESTS: usize = 10_000;
const MANY_CONNECTIONS: usize = 64;

/// What request `i` is, and the one answer that is its own: a greeting (counted by the
/// plugin), an echo of its own query, or the SHA-256 of its own 1 KiB body.
fn many_request(i: usize) -> (Method, String, Option<Vec<u8>>) {
    match i % 3 {
        0 => (Method::GET, "/plugins/hello-rust/".into(), None),
        1 => (Method::GET, format!("/plugins/hello-rust/echo?i={i}"), None),
        _ => {
            let body = format!("{{\"request\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)).into_bytes();
            (
                Method::POST,
                "/plugins/hello-rust/sha256".into(),
                Some(body),
            )
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The forwarding path under concurrency: 10,000 requests over 64 keep-alive connections, each
/// answered exactly once with its own answer (a mixed-up or doubled answer on a connection
/// shows as another request's answer), and the plugin's own counts match what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_lost_or_answered_twice_over_64_connections() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    let before = server.json("/plugins/hello-rust/stats").await;

    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..MANY_CONNECTIONS {
        // One client each, one connection each (its requests go one after another).
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .expect("http client");
        let url = server.url.clone();
        tasks.spawn(async move {
            let mut answered = 0usize;
            for i in (c..MANY_REQUESTS).step_by(MANY_CONNECTIONS) {
                let (method, path, body) = many_request(i);
                let mut request = client
                    .request(method, format!("{url}{path}"))
                    .bearer_auth(crate::util::SECRET);
                if let Some(body) = &body {
                    request = request
                        .header("content-type", "application/json")
                        .body(body.clone());
                }
                let r = request
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request {i}: {e}"));
                assert_eq!(r.status(), 200, "request {i}");
                let text = r.text().await.unwrap_or_else(|e| panic!("answer {i}: {e}"));
                match i % 3 {
                    0 => assert!(text.contains("Hello from Rust!"), "request {i}: {text}"),
                    1 => {
                        let echo: Value = serde_json::from_str(&text).expect("echo JSON");
                        assert_eq!(echo["query"], format!("i={i}"), "request {i}: {text}");
                    }
                    _ => assert_eq!(text, sha256_hex(&body.expect("a body")), "request {i}"),
                }
                answered += 1;
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        answered += done.expect("a connection's requests");
    }
    assert_eq!(answered, MANY_REQUESTS);

    // Nothing is in flight now: the plugin served each exactly once.
    let after = server.json("/plugins/hello-rust/stats").await;
    let count = |v: &Value, k: &str| v[k].as_u64().expect("a count");
    let greetings = (0..MANY_REQUESTS).filter(|i| i % 3 == 0).count() as u64;
    let hashes = (0..MANY_REQUESTS).filter(|i| i % 3 == 2).count() as u64;
    assert_eq!(
        count(&after, "greetings") - count(&before, "greetings"),
        greetings
    );
    assert_eq!(count(&after, "hashes") - count(&before, "hashes"), hashes);
}
