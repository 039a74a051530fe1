//! Each error status produced for real: a plugin that hangs (504, and it gets `cancel`, also
//! when the client goes away), one that is down (503 with Retry-After), one that errors (502),
//! an oversized body (413) and bad input (400).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::util::{Env, SECRET, Server, wait_file_contains};

async fn error_code(r: reqwest::Response) -> String {
    let body: Value = r.json().await.expect("a JSON error");
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {body}"))
        .to_owned()
}

#[tokio::test]
async fn a_hanging_plugin_times_out_with_504_and_gets_cancel_and_an_erring_one_is_502() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    let server = Server::start(&env, &["--request-timeout", "300ms"]).await;
    server.wait_running(&["x"]).await;

    let r = server.get("/plugins/x/sleep").await;
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(r).await, "plugin_timeout");
    wait_file_contains(&env.logs().join("plugins/x.log"), "cancelled request").await;

    let r = server.get("/plugins/x/error").await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "plugin_error");
    let message = body["error"]["message"].as_str().unwrap();
    // The plugin's own words (its `error` reply's message) reach the client, after the host's.
    assert_eq!(
        message, "plugin \"x\" could not handle the request: this route always fails",
        "{message}"
    );

    // It still serves.
    assert_eq!(server.get("/plugins/x/ok").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_gets_its_plugin_request_cancelled() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    let server = Server::start(&env, &["--request-timeout", "60s"]).await;
    server.wait_running(&["x"]).await;
    let gone = server
        .req(Method::GET, "/plugins/x/sleep")
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gone.is_err_and(|e| e.is_timeout()), "the client gave up");
    wait_file_contains(&env.logs().join("plugins/x.log"), "cancelled request").await;
    assert_eq!(server.get("/plugins/x/ok").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_plugin_that_is_down_is_503_with_retry_after() {
    let env = Env::new();
    env.install_test_plugin("exit-at-once", "crashy");
    env.install_test_plugin("exit78", "refused");
    let server = Server::start(&env, &[]).await;
    let mut events = server.events().await;
    // A plugin that crashes and is backing off (or starting again) before its next try.
    if server.plugin("crashy").await["restarts"] == 0 {
        events.wait_plugin("crashy", "restarting").await;
    }
    let r = server.get("/plugins/crashy/").await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(error_code(r).await, "plugin_unavailable");

    // A plugin that failed for good (exit code 78) is down too.
    if server.plugin("refused").await["state"] != "failed" {
        events.wait_plugin("refused", "failed").await;
    }
    let r = server.get("/plugins/refused/").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, "plugin_unavailable");
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_bad_input_is_400() {
    let env = Env::new();
    env.install_rust_example();
    // hello-rust speaks protocol 2: its bodies stream, under --max-upload-bytes.
    let server = Server::start(
        &env,
        &["--max-body-bytes", "1024", "--max-upload-bytes", "1024"],
    )
    .await;
    server.wait_running(&["hello-rust"]).await;

    let r = server
        .req(Method::GET, "/plugins/hello-rust/echo")
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "exactly the limit is fine");
    // /sha256 reads the whole body before it answers, so the limit, not the plugin's answer,
    // decides.
    let r = server
        .req(Method::POST, "/plugins/hello-rust/sha256")
        .body(vec![b'a'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "payload_too_large");

    // Without a Content-Length (chunked), the limit holds while reading.
    let (status, body) = raw_request(
        &server,
        &format!(
            "POST /plugins/hello-rust/sha256 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             400\r\n{a}\r\n400\r\n{a}\r\n0\r\n\r\n",
            a = "a".repeat(1024)
        ),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");

    // Bad input: a header that is not text, a login that is not JSON.
    let r = server
        .req(Method::GET, "/plugins/hello-rust/echo")
        .header(
            "X-Bin",
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "bad_request");
    let r = server
        .anon(Method::POST, "/api/login")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "bad_request");
    server.stop().await;
}

/// Sends raw bytes and returns the status and the whole answer.
async fn raw_request(server: &Server, request: &str) -> (u16, String) {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(crate::util::WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .ok();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    (status, text)
}
