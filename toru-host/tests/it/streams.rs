//! Protocol 2 through the library alone: streamed downloads and uploads, server-sent events,
//! every way a stream ends, the limits, and the header rules (issue 10, issue 15).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Body as _;
use http_body_util::BodyExt;
use toru_host::EventKind;
use toru_host::http::{self, Method, Request, StatusCode};
use toru_host::{BodyError, CallError, ForwardedTo, PluginBody, PluginRequest};

use crate::util::*;

fn get(path: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(path)
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// The next chunk of a body, in time.
async fn next_chunk(body: &mut PluginBody) -> Option<Result<Bytes, BodyError>> {
    tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("a chunk in time")
        .map(|f| f.map(|f| f.into_data().unwrap()))
}

/// `n` bytes, byte i being `i % 251`, in chunks of `chunk` bytes.
fn pattern(n: usize, chunk: usize) -> impl Iterator<Item = Bytes> + Send {
    (0..n).step_by(chunk).map(move |start| {
        (start..(start + chunk).min(n))
            .map(|i| (i % 251) as u8)
            .collect::<Bytes>()
    })
}

fn pattern_stream(n: usize, chunk: usize) -> impl futures_util::Stream<Item = Bytes> + Send {
    futures_util::stream::iter(pattern(n, chunk))
}

fn sha256_hex(data: impl IntoIterator<Item = Bytes>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for chunk in data {
        h.update(&chunk);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_download_streams_byte_exact_with_an_exact_length() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let host = started(&env, &["t"]).await;
    assert_eq!(host.get("t").unwrap().protocol_version, Some(2));
    let n = 5_000_003u64;
    let response = host
        .stream("t", get(&format!("/t/bytes?n={n}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], n.to_string().as_str());
    assert_eq!(
        response
            .extensions()
            .get::<ForwardedTo>()
            .unwrap()
            .plugin_id,
        "t"
    );
    let mut body = response.into_body();
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(n));
    let mut at = 0u64;
    while let Some(chunk) = next_chunk(&mut body).await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= 256 * 1024);
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b as u64, (at + i as u64) % 251, "byte {}", at + i as u64);
        }
        at += chunk.len() as u64;
    }
    assert_eq!(at, n);
    host.shutdown().await;
}

#[tokio::test]
async fn an_upload_streams_to_the_plugin_and_one_over_the_limit_is_refused() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let mut b = env.builder();
    b.max_upload_bytes(30_000_000);
    let host = b.start().await.unwrap();
    serving(&host, &["t"]).await;

    let n = 20_000_000;
    let expect = sha256_hex(pattern(n, 100_000));
    let body = http_body_util::StreamBody::new(
        pattern_stream(n, 100_000).map(|b| Ok::<_, std::io::Error>(http_body::Frame::data(b))),
    );
    let request = Request::post("/t/sha256").body(body).unwrap();
    let response = host.stream("t", request).await.unwrap();
    assert_eq!(response.status(), 200);
    let digest = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&digest).unwrap(), expect);

    // Announced too large: refused before the plugin hears of it.
    let request = Request::post("/t/sha256")
        .header("content-length", "30000001")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let err = host.stream("t", request).await.unwrap_err();
    assert!(
        matches!(err, CallError::BodyTooLarge { limit: 30_000_000 }),
        "{err}"
    );
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Found too large while streaming: 413, and the plugin is told to stop.
    let body = http_body_util::StreamBody::new(
        pattern_stream(31_000_000, 1_000_000)
            .map(|b| Ok::<_, std::io::Error>(http_body::Frame::data(b))),
    );
    let err = host
        .stream("t", Request::post("/t/sha256").body(body).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::BodyTooLarge { .. }), "{err}");
    notices.wait_prefix("cancel ").await;
    host.shutdown().await;
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_and_a_client_that_leaves_cancels() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let host = started(&env, &["t"]).await;
    let response = host.stream("t", get("/t/ticks?every=20")).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    // The stream never ends by itself: these arrive while it runs.
    for k in 1..=3 {
        let chunk = next_chunk(&mut body).await.unwrap().unwrap();
        assert_eq!(chunk, format!("data: {k}\n\n"));
    }
    drop(body);
    notices.wait_prefix("cancel ").await;
    assert_eq!(
        host.get("t").unwrap().state,
        toru_host::PluginState::Running
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_plugin_that_dies_or_fails_mid_stream_ends_the_body_with_an_error() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let host = started(&env, &["t"]).await;

    let mut body = host
        .stream("t", get("/t/error-after-head"))
        .await
        .unwrap()
        .into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "0123456789");
    let err = next_chunk(&mut body).await.unwrap().unwrap_err();
    assert!(matches!(err, BodyError::Plugin { .. }), "{err}");

    for (n, length) in [(100, 200), (300, 200)] {
        let mut body = host
            .stream("t", get(&format!("/t/bytes?n={n}&length={length}")))
            .await
            .unwrap()
            .into_body();
        let err = loop {
            match next_chunk(&mut body).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("a body of {n} bytes passed for {length}"),
            }
        };
        assert!(
            matches!(err, BodyError::LengthMismatch { expected: 200, .. }),
            "{err}"
        );
    }

    let mut rx = host.subscribe();
    let mut body = host
        .stream("t", get("/t/crash-mid?n=1000"))
        .await
        .unwrap()
        .into_body();
    let err = loop {
        match next_chunk(&mut body).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the body of a crashed plugin looked complete"),
        }
    };
    assert_eq!(err, BodyError::ConnectionLost);
    wait_event(&mut rx, "t", EventKind::Crashed).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_producer_that_ignores_credit_is_disconnected_as_a_crash() {
    let env = Env::new();
    env.install_test_plugin("v2-no-credit", "t");
    let host = started(&env, &["t"]).await;
    let mut rx = host.subscribe();
    // Not reading the body: only the window's worth may come.
    let response = host.stream("t", get("/t/bytes?n=10000000")).await.unwrap();
    let crash = wait_event(&mut rx, "t", EventKind::Crashed).await;
    let reason = crash.reason.unwrap_or_default();
    assert!(reason.contains("credit"), "{reason}");
    let mut body = response.into_body();
    let err = loop {
        match next_chunk(&mut body).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the body looked complete"),
        }
    };
    assert_eq!(err, BodyError::ConnectionLost);
    host.shutdown().await;
}

#[tokio::test]
async fn a_plugin_that_never_reads_its_socket_is_killed_and_its_callers_released() {
    let env = Env::new();
    env.install_test_plugin("v2-deaf", "t");
    let mut b = env.builder();
    b.health_policy(
        toru_host::HealthPolicy::default()
            .with_interval(Duration::from_millis(100))
            .with_timeout(Duration::from_millis(200))
            .with_max_missed(3),
    )
    .request_timeout(Duration::from_secs(60));
    let host = b.start().await.unwrap();
    serving(&host, &["t"]).await;
    let mut rx = host.subscribe();
    // Megabytes of uploads: far more than the socket's buffer and the host's queue hold.
    let uploads = (0..4).map(|_| {
        let host = host.clone();
        tokio::spawn(async move {
            let body = http_body_util::StreamBody::new(
                pattern_stream(8_000_000, 64 * 1024)
                    .map(|b| Ok::<_, std::io::Error>(http_body::Frame::data(b))),
            );
            host.stream("t", Request::post("/t/sha256").body(body).unwrap())
                .await
        })
    });
    let crash = wait_event(&mut rx, "t", EventKind::Crashed).await;
    assert!(
        crash.reason.as_deref().unwrap_or("").contains("ping"),
        "{crash:?}"
    );
    // Every caller is released: cut off with the connection, or (when its request came after
    // the kill) told the plugin is not running.
    for upload in uploads {
        let result = tokio::time::timeout(WAIT, upload).await.unwrap().unwrap();
        assert!(
            matches!(
                result,
                Err(CallError::ConnectionLost(_) | CallError::NotRunning { .. })
            ),
            "{:?}",
            result.map(|r| r.status())
        );
    }
    host.shutdown().await;
}

#[tokio::test]
async fn streams_over_the_limit_get_503_and_an_idle_stream_is_cancelled() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let mut b = env.builder();
    b.max_streams_per_plugin(2)
        .stream_idle_timeout(Duration::from_millis(300));
    let host = b.start().await.unwrap();
    serving(&host, &["t"]).await;

    let first = host.stream("t", get("/t/ticks?every=50")).await.unwrap();
    let second = host.stream("t", get("/t/ticks?every=50")).await.unwrap();
    let err = host.stream("t", get("/t/ticks")).await.unwrap_err();
    assert!(
        matches!(err, CallError::TooManyStreams { limit: 2, .. }),
        "{err}"
    );
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(err.retry_after().is_some());
    drop((first, second));
    notices.wait_prefix("cancel ").await;
    notices.wait_prefix("cancel ").await;

    // Nothing moves on this one after its head.
    let mut body = host.stream("t", get("/t/idle")).await.unwrap().into_body();
    let err = next_chunk(&mut body).await.unwrap().unwrap_err();
    assert!(matches!(err, BodyError::Idle(_)), "{err}");
    notices.wait_prefix("cancel ").await;
    host.shutdown().await;
}

/// Issue 15: through the library alone, the caller's credentials and hop-by-hop headers never
/// reach a plugin, whichever protocol it speaks.
#[tokio::test]
async fn credentials_and_hop_by_hop_headers_never_reach_a_plugin() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    env.install_python_example();
    let host = started(&env, &["t", "hello-python"]).await;
    for (id, path) in [("t", "/t/echo"), ("hello-python", "/hello-python/echo")] {
        let request = PluginRequest::get(path)
            .with_header("Cookie", "toru_session=secret")
            .with_header("Authorization", "Bearer secret")
            .with_header("Connection", "x-a")
            .with_header("X-A", "hop")
            .with_header("Keep-Alive", "timeout=5")
            .with_header("X-Kept", "yes");
        let response = host.request(id, &request).await.unwrap();
        assert_eq!(response.status, 200, "{id}");
        let echo: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        let names: Vec<String> = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap().to_owned())
            .collect();
        for gone in ["cookie", "authorization", "connection", "x-a", "keep-alive"] {
            assert!(
                !names.iter().any(|n| n.eq_ignore_ascii_case(gone)),
                "{id}: {names:?}"
            );
        }
        assert!(names.contains(&"x-kept".to_owned()), "{id}: {names:?}");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn response_heads_over_the_limits_are_502_and_the_plugin_carries_on() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let host = started(&env, &["t"]).await;
    for (query, ok) in [
        ("n=128&size=8", true),
        ("n=129&size=8", false),
        ("n=1&size=65000", true),
        ("n=2&size=40000", false),
        // The head that once panicked the server: 40,000 headers.
        ("n=40000&size=1", false),
    ] {
        let result = host
            .request("t", &PluginRequest::get(format!("/t/headers?{query}")))
            .await;
        match (ok, result) {
            (true, Ok(r)) => assert_eq!(r.status, 200, "{query}"),
            (false, Err(e @ CallError::BadResponse { .. })) => {
                assert_eq!(e.status(), StatusCode::BAD_GATEWAY, "{query}");
                assert_eq!(e.code(), "plugin_bad_response");
            }
            (_, other) => panic!("{query}: {other:?}"),
        }
    }
    let r = host
        .request("t", &PluginRequest::get("/t/status?code=103"))
        .await;
    assert!(matches!(r, Err(CallError::BadResponse { .. })), "{r:?}");
    let r = host
        .request("t", &PluginRequest::get("/t/status?code=101"))
        .await;
    assert!(matches!(r, Err(CallError::BadResponse { .. })), "{r:?}");
    assert_eq!(
        host.request("t", &PluginRequest::get("/t/status?code=204"))
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(host.get("t").unwrap().restarts, 0);
    host.shutdown().await;
}

#[tokio::test]
async fn protected_cookies_are_dropped_and_every_response_is_sandboxed() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    env.install_test_plugin("v2-sandboxed", "s");
    let mut b = env.builder();
    b.protected_cookies(["toru_session"]);
    let host = b.start().await.unwrap();
    serving(&host, &["t", "s"]).await;
    let r = host
        .request("t", &PluginRequest::get("/t/cookies"))
        .await
        .unwrap();
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["theme=dark; Path=/"]);
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let r = host
        .request("t", &PluginRequest::get("/t/html"))
        .await
        .unwrap();
    assert_eq!(
        r.headers["content-security-policy"],
        "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
    );
    let r = host
        .request("s", &PluginRequest::get("/s/html"))
        .await
        .unwrap();
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("sandbox ") && csp.ends_with(" allow-same-origin"),
        "{csp}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn paths_outside_the_route_and_unknown_plugins_are_refused() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let host = started(&env, &["t"]).await;
    for path in ["/other/echo", "/tt/echo", "/t/../other"] {
        let err = host
            .request("t", &PluginRequest::get(path))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::OutsideRoute { .. }),
            "{path}: {err}"
        );
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
    }
    host.shutdown().await;
}

#[tokio::test]
async fn forward_serves_any_framework_with_every_error_mapped() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    env.install_python_example();
    let host = started(&env, &["t", "hello-python"]).await;
    let forward = |path: &str| {
        let host = host.clone();
        let request = get(path);
        async move { host.forward(request, "/plugins").await }
    };
    let r = forward("/plugins/t/bytes?n=70000").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().size_hint().exact(), Some(70000));
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes().len(),
        70000
    );

    let json = |r: http::Response<PluginBody>| {
        let body = r.body().as_full().cloned().unwrap();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    for (path, status, code) in [
        ("/plugins/nobody/x", 404, "unknown_plugin"),
        ("/elsewhere/t/x", 404, "unknown_plugin"),
        ("/plugins/t/error", 502, "plugin_error"),
    ] {
        let r = forward(path).await;
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(json(r)["error"]["code"], code, "{path}");
    }
    host.disable("hello-python").await.unwrap();
    let r = forward("/plugins/hello-python/").await;
    assert_eq!(r.status(), 404);
    assert_eq!(json(r)["error"]["code"], "plugin_disabled");
    host.shutdown().await;
    let r = forward("/plugins/t/echo").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test]
async fn a_protocol_1_plugin_works_through_the_streaming_api_with_its_body_buffered() {
    let env = Env::new();
    env.install_python_v1_example();
    let mut b = env.builder();
    b.max_body_bytes(1000);
    let host = b.start().await.unwrap();
    serving(&host, &["hello-python-v1"]).await;
    assert_eq!(
        host.get("hello-python-v1").unwrap().protocol_version,
        Some(1)
    );
    let body = http_body_util::StreamBody::new(
        futures_util::stream::iter(["he", "llo"])
            .map(|s| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(s)))),
    );
    let request = Request::builder()
        .method(Method::GET)
        .uri("/hello-python-v1/echo?x=1")
        .body(body)
        .unwrap();
    let r = host.stream("hello-python-v1", request).await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["query"], "x=1");
    let big = PluginRequest::new(Method::GET, "/hello-python-v1/echo").with_body(vec![b'a'; 1001]);
    let err = host.request("hello-python-v1", &big).await.unwrap_err();
    assert!(
        matches!(err, CallError::BodyTooLarge { limit: 1000 }),
        "{err}"
    );
    host.shutdown().await;
}
