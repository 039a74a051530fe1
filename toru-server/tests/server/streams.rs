//! Issue 10's "must hold", through a real toru-server process: streamed downloads and uploads
//! byte-exact, server-sent events as they happen, bounded memory under a slow client, every
//! way a stream ends, and WebSockets with the server's authentication.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use reqwest::header::{COOKIE, HeaderValue};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::util::{Env, Notices, SECRET, Server, WAIT, rss, signal};

/// `n` bytes, byte i being `i % 251`, as chunks of `chunk` bytes.
fn pattern(n: u64, chunk: usize) -> impl Iterator<Item = bytes::Bytes> {
    let block: Vec<u8> = (0..chunk + 251).map(|i| (i % 251) as u8).collect();
    let block = bytes::Bytes::from(block);
    (0..n).step_by(chunk).map(move |start| {
        let len = (n - start).min(chunk as u64) as usize;
        let from = (start % 251) as usize;
        block.slice(from..from + len)
    })
}

/// Checks that `chunk` is the pattern from byte `at` on, without building it.
fn check_pattern(at: u64, chunk: &[u8], block: &[u8]) {
    let mut pos = at;
    for piece in chunk.chunks(block.len() - 251) {
        let from = (pos % 251) as usize;
        assert!(
            piece == &block[from..from + piece.len()],
            "the body differs from the pattern within bytes {pos}..{}",
            pos + piece.len() as u64
        );
        pos += piece.len() as u64;
    }
}

async fn started(env: &Env, extra: &[&str]) -> Server {
    let server = Server::start(env, extra).await;
    server.wait_running(&["t"]).await;
    server
}

#[tokio::test]
async fn server_sent_events_reach_the_client_while_the_stream_runs() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let server = started(&env, &[]).await;
    let mut r = server.get("/plugins/t/ticks?every=30").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    // The plugin never ends this stream: each event arrives on its own.
    while !text.contains("data: 2\n\n") {
        let chunk = tokio::time::timeout(WAIT, r.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream is open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("data: 1\n\n"), "{text}");
    // The client goes away: the plugin is told.
    drop(r);
    notices.wait_prefix("cancel ").await;
    server.stop().await;
}

#[tokio::test]
async fn a_gigabyte_download_and_a_200_megabyte_upload_are_byte_exact() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let server = started(&env, &[]).await;

    let n: u64 = 1 << 30;
    let r = server.get(&format!("/plugins/t/bytes?n={n}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(n));
    let block: Vec<u8> = (0..(1 << 20) + 251).map(|i| (i % 251) as u8).collect();
    let mut body = r.bytes_stream();
    let mut at = 0u64;
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("data in time")
    {
        let chunk = chunk.expect("the download goes on");
        check_pattern(at, &chunk, &block);
        at += chunk.len() as u64;
    }
    assert_eq!(at, n);

    let n: u64 = 200 * 1000 * 1000;
    let mut expect = sha2::Sha256::new();
    for chunk in pattern(n, 1 << 20) {
        expect.update(&chunk);
    }
    let expect: String = expect
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stream = futures_util::stream::iter(pattern(n, 256 * 1024).map(Ok::<_, std::io::Error>));
    let r = server
        .req(Method::POST, "/plugins/t/sha256")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), expect);
    server.stop().await;
}

#[tokio::test]
async fn a_slow_client_keeps_the_servers_memory_bounded() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let server = started(&env, &[]).await;
    let pid = server.pid();
    // Warm up the allocator and the connection pool with a small download first.
    let small = server.get("/plugins/t/bytes?n=1000000").await;
    assert_eq!(small.bytes().await.unwrap().len(), 1_000_000);
    let before = rss(pid);
    let r = server
        .get(&format!("/plugins/t/bytes?n={}", 1u64 << 30))
        .await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    // Read 40 MB at 10 MB/s: the plugin produces far faster, so without flow control the
    // server would hold hundreds of megabytes by the end.
    let rate = 10_000_000f64;
    let started = Instant::now();
    let mut read = 0u64;
    let mut peak = before;
    while read < 40_000_000 {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("data in time")
            .unwrap()
            .unwrap();
        read += chunk.len() as u64;
        // Throttle: the next read waits until the bytes read so far are due at 10 MB/s.
        tokio::time::sleep_until((started + Duration::from_secs_f64(read as f64 / rate)).into())
            .await;
        peak = peak.max(rss(pid));
    }
    let growth = peak.saturating_sub(before);
    println!("toru-server RSS {before} -> peak {peak} bytes (+{growth})");
    assert!(
        growth < 32 * 1024 * 1024,
        "the server grew by {growth} bytes for a slow client"
    );
    drop(body);
    server.stop().await;
}

#[tokio::test]
async fn a_plugin_killed_mid_stream_ends_the_download_and_the_websocket_at_once() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let server = started(&env, &[]).await;
    let r = server.get("/plugins/t/ticks?every=20").await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    let mut ws = connect(&server, "/plugins/t/ws", None).await.unwrap();
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("A"));

    let pid = server.plugin("t").await["pid"].as_u64().unwrap();
    signal(pid as u32, rustix::process::Signal::KILL);
    let ended = async {
        loop {
            match body.next().await {
                Some(Ok(_)) => {}
                Some(Err(_)) => return "cut off",
                None => return "ended cleanly",
            }
        }
    };
    let how = tokio::time::timeout(WAIT, ended)
        .await
        .expect("the download ended promptly");
    assert_eq!(how, "cut off", "a broken stream must not look complete");
    assert_eq!(close_code(&next(&mut ws).await), Some(1011));
    server.stop().await;
}

async fn connect(
    server: &Server,
    path: &str,
    header: Option<(&str, &str)>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = format!("{}{path}", server.url.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    match header {
        Some((name, value)) => {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        None => {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {SECRET}")).unwrap(),
            );
        }
    }
    let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("a handshake in time");
    connected.map(|(ws, _)| ws)
}

async fn next(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid message");
        if !m.is_ping() && !m.is_pong() {
            return m;
        }
    }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(CloseFrame { code, .. })) => Some((*code).into()),
        _ => None,
    }
}

fn refused_status(e: tokio_tungstenite::tungstenite::Error) -> u16 {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("refused without an HTTP answer: {other}"),
    }
}

#[tokio::test]
async fn websockets_echo_with_the_servers_authentication_and_refuse_other_sites() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let server = started(&env, &["--max-ws-message-bytes", "100000"]).await;

    let mut ws = connect(&server, "/plugins/t/ws", None).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("HELLO"));
    ws.send(Message::binary(vec![0u8, 1, 255])).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 255]));
    ws.send(Message::binary(vec![0u8; 100_001])).await.unwrap();
    assert_eq!(close_code(&next(&mut ws).await), Some(1009));
    let line = notices.wait_prefix("ws_close ").await;
    assert!(line.ends_with(" 1009"), "{line}");

    // A browser's session cookie works as well as the bearer secret.
    let login = server
        .anon(Method::POST, "/api/login")
        .json(&serde_json::json!({"secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert!(login.status().is_success(), "{}", login.status());
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let origin = server.url.clone();
    let mut ws = connect(&server, "/plugins/t/ws", Some(("cookie", &cookie)))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("X"));
    ws.close(None).await.unwrap();

    // Unauthenticated: 401. From another site, even with the cookie: 403.
    let e = connect(&server, "/plugins/t/ws", Some(("x-none", "1")))
        .await
        .unwrap_err();
    assert_eq!(refused_status(e), 401);
    let url = format!("{}/plugins/t/ws", server.url.replace("http://", "ws://"));
    for evil in ["http://evil.example", "null"] {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_static(evil));
        let e = tokio_tungstenite::connect_async(request).await.unwrap_err();
        assert_eq!(refused_status(e), 403, "{evil}");
    }
    // Its own pages' origin passes.
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(&origin).unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn sigterm_closes_open_websockets_with_1001() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let mut server = started(&env, &[]).await;
    let mut ws = connect(&server, "/plugins/t/ws", None).await.unwrap();
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("A"));
    signal(server.pid(), rustix::process::Signal::TERM);
    assert_eq!(close_code(&next(&mut ws).await), Some(1001));
    let line = notices.wait_prefix("ws_close ").await;
    assert!(line.ends_with(" 1001"), "{line}");
    let status = tokio::time::timeout(WAIT, server.child.wait())
        .await
        .expect("the server exits")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn plugin_responses_cannot_set_the_session_cookie_and_are_sandboxed() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let server = started(&env, &[]).await;
    let r = server.get("/plugins/t/cookies").await;
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["theme=dark; Path=/"]);
    let r = server.get("/plugins/t/html").await;
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("sandbox "),
        "{:?}",
        r.headers()
    );
    server.stop().await;
}
