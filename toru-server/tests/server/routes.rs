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
