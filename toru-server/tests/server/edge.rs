//! The server's edge attacked as an outsider would: a real server under the common service limit
//! of 1,024 open files, thousands of connections that send nothing or a header a line at a time,
//! and a plugin that crashes meanwhile.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::util::{Env, SECRET, Server, WAIT, signal, wait_file_contains};

/// The open-file limit many service managers give a service.
const LIMIT: u64 = 1024;

/// Raises this test process's own open-file limit: it opens thousands of sockets.
fn raise_own_fd_limit(need: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { maximum, .. } = getrlimit(Resource::Nofile);
    let hard = maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= need,
        "this test opens {need} sockets; the hard open-file limit is {hard} (raise it)"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: maximum,
            maximum,
        },
    )
    .expect("raise the soft open-file limit");
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors")
        .count()
}

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// A client that opens a new connection for every request (a pooled one may have been closed
/// by the server for being idle).
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

async fn fresh_get(server: &Server, path: &str) -> reqwest::Response {
    let request = fresh_client()
        .get(format!("{}{path}", server.url))
        .bearer_auth(SECRET)
        .send();
    tokio::time::timeout(WAIT, request)
        .await
        .unwrap_or_else(|_| panic!("GET {path} was not answered"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Waits until the server closes `conn` (EOF or reset).
async fn wait_closed(conn: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let wait = async { while let Ok(1..) = conn.read(&mut buf).await {} };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("the server did not close {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_stop_neither_healthz_nor_a_plugin_restart() {
    raise_own_fd_limit(4096);
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start_limited(&env, &[], LIMIT).await;
    server.wait_running(&["hello-rust"]).await;
    let mut events = server.events().await;
    let addr = addr(&server);

    // 1,100 connections that send nothing, and 1,500 that send a request head a line at a time
    // and never end it: 2,600 connections against 1,024 descriptors.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut slow = Vec::new();
    for _ in 0..1500 {
        let mut conn = TcpStream::connect(&addr).await.expect("connect");
        let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(conn);
    }
    // The attacker's pace, not a synchronisation: a header line to each every 500 ms.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            for conn in &mut slow {
                let _ = conn.write_all(b"X-Slow: 1\r\n").await;
            }
        }
    });

    let r = fresh_get(&server, "/healthz").await;
    assert_eq!(r.status(), StatusCode::OK, "/healthz under attack");

    // A plugin that crashes now is restarted: there are descriptors left for it.
    let pid = server.plugin("hello-rust").await["pid"]
        .as_u64()
        .expect("a pid");
    signal(pid as u32, rustix::process::Signal::KILL);
    events.wait_plugin("hello-rust", "crashed").await;
    events.wait_plugin("hello-rust", "started").await;
    let r = fresh_get(&server, "/plugins/hello-rust/").await;
    assert_eq!(r.status(), StatusCode::OK, "the restarted plugin serves");
    let r = fresh_get(&server, "/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);

    let in_use = open_descriptors(server.pid());
    assert!(in_use < LIMIT as usize, "{in_use} descriptors in use");
    let metrics = fresh_get(&server, "/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("toru_http_connections_closed_total{reason=\"evicted\"}"),
        "idle connections made room for new ones: {metrics}"
    );
    trickle.abort();
    drop(idle);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_after_their_timeouts_but_streams_are_not() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &["--header-timeout", "500ms", "--idle-timeout", "1s"]).await;
    server.wait_running(&["hello-rust"]).await;
    let mut events = server.events().await;
    let addr = addr(&server);

    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut kept_alive = TcpStream::connect(&addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"}") {
            let n = kept_alive.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response");
            response.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("a response");
    assert!(response.starts_with(b"HTTP/1.1 200"));

    wait_closed(&mut silent, "a connection that sent nothing").await;
    wait_closed(&mut kept_alive, "a kept-alive connection left idle").await;

    // The event stream has been open longer than both timeouts; it still delivers.
    let r = server.post("/api/plugins/hello-rust/disable").await;
    assert_eq!(r.status(), StatusCode::OK);
    events.wait_plugin("hello-rust", "disabled").await;
    server.stop().await;
}

#[tokio::test]
async fn out_of_descriptors_the_server_closes_idle_connections_and_keeps_answering() {
    raise_own_fd_limit(1024);
    let env = Env::new();
    // A cap above the open-file limit: accept itself runs out of descriptors.
    let server = Server::start_limited(&env, &["--max-connections", "1000"], 256).await;
    let addr = addr(&server);
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let r = fresh_get(&server, "/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);
    wait_file_contains(
        &env.dir.path().join("server.log"),
        "cannot accept connections: out of descriptors",
    )
    .await;
    let r = fresh_get(&server, "/api/plugins").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body["plugins"].is_array());
    drop(idle);
    assert!(server.stop().await.success());
}
