//! The edge with a real listener on 127.0.0.1:0 and raw TCP clients: what closes a connection,
//! what does not, the cap, upgrades and shutdown. (`tests/server/edge.rs` attacks the whole
//! server under a small open-file limit.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// Answers `/` with `ok`, `/peer` with the client's address, `/hold` once `release` is notified,
/// and `/upgrade` with 101, then echoes the upgraded bytes.
#[derive(Clone, Default)]
struct TestService {
    /// Notified when a `/hold` request has arrived.
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

type Reply = Response<Full<Bytes>>;

impl tower_service::Service<Request<Incoming>> for TestService {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let release = Arc::clone(&self.release);
        let entered = Arc::clone(&self.entered);
        Box::pin(async move {
            let text = |s: String| Response::new(Full::new(Bytes::from(s)));
            Ok(match request.uri().path() {
                "/peer" => text(format!("{:?}", request.extensions().get::<PeerAddr>())),
                "/hold" => {
                    entered.notify_one();
                    release.notified().await;
                    text("released".into())
                }
                "/upgrade" => {
                    let upgrade = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let mut io = hyper_util::rt::TokioIo::new(upgraded);
                        let mut buf = [0u8; 64];
                        while let Ok(n @ 1..) = io.read(&mut buf).await {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                }
                _ => text("ok".into()),
            })
        })
    }
}

struct Edge {
    addr: SocketAddr,
    service: TestService,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(header: Duration, idle: Duration, max_connections: usize) -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TestService::default();
    let shutdown = CancellationToken::new();
    let config = EdgeConfig {
        timeouts: Timeouts { header, idle },
        max_connections,
    };
    let task = tokio::spawn(serve(
        listener,
        service.clone(),
        NoDirect,
        config,
        shutdown.clone(),
    ));
    Edge {
        addr,
        service,
        shutdown,
        task,
    }
}

const LONG: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_millis(300);

async fn connect(edge: &Edge) -> TcpStream {
    TcpStream::connect(edge.addr).await.unwrap()
}

/// Sends `GET path` (keep-alive) and reads the response up to the end of `body`.
async fn get(conn: &mut TcpStream, path: &str, body: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&response).ends_with(body) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response to {path}: {response:?}");
            response.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("no response to {path}"));
    String::from_utf8(response).unwrap()
}

/// Waits until the server closes `conn` (EOF or reset), failing after [`WAIT`].
async fn closed(conn: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("the server did not close {what}"));
}

#[tokio::test]
async fn a_silent_connection_and_a_slow_header_are_closed_after_the_header_timeout() {
    let edge = start(SHORT, LONG, 100).await;
    let mut silent = connect(&edge).await;
    let mut slow = connect(&edge).await;
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // One more header line every 50 ms: bytes keep coming, the head never ends.
    let trickle = async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for i in 0.. {
            tick.tick().await;
            if slow
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = trickle => {}
        () = tokio::time::sleep(WAIT) => panic!("the slow header was never cut off"),
    }
    closed(&mut silent, "a connection that sent nothing").await;
    edge.shutdown.cancel();
    edge.task.await.unwrap();
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_but_not_during_a_request() {
    let edge = start(SHORT, SHORT, 100).await;
    let mut held = connect(&edge).await;
    held.write_all(b"GET /hold HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut idle = connect(&edge).await;
    assert!(get(&mut idle, "/", "ok").await.starts_with("HTTP/1.1 200"));
    closed(&mut idle, "a connection idle after its response").await;
    // `held` has waited for its answer longer than both timeouts; it still gets it.
    edge.service.release.notify_one();
    let mut response = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, held.read(&mut response))
        .await
        .expect("the held response")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&response[..n]).ends_with("released"),
        "{:?}",
        String::from_utf8_lossy(&response[..n])
    );
    // Then it is idle, and goes too.
    closed(&mut held, "the held connection once idle").await;
}

#[tokio::test]
async fn at_the_cap_a_new_connection_closes_the_one_idle_the_longest() {
    let edge = start(LONG, LONG, 3).await;
    let mut oldest = connect(&edge).await;
    assert!(get(&mut oldest, "/", "ok").await.contains("200"));
    let mut middle = connect(&edge).await;
    assert!(get(&mut middle, "/", "ok").await.contains("200"));
    let mut newest = connect(&edge).await;
    assert!(get(&mut newest, "/", "ok").await.contains("200"));
    // `oldest` serves a second request, so `middle` is now the one idle the longest.
    assert!(get(&mut oldest, "/", "ok").await.contains("200"));
    let mut fourth = connect(&edge).await;
    assert!(get(&mut fourth, "/", "ok").await.contains("200"));
    closed(&mut middle, "the connection idle the longest").await;
    assert!(get(&mut oldest, "/", "ok").await.contains("200"));
    assert!(get(&mut newest, "/", "ok").await.contains("200"));
}

#[tokio::test]
async fn upgraded_connections_work_and_keep_their_slot() {
    let edge = start(SHORT, SHORT, 1).await;
    let mut upgraded = connect(&edge).await;
    upgraded
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, upgraded.read(&mut head))
        .await
        .expect("the 101")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    // The only slot is the upgraded connection's, which is not idle: a new connection waits.
    let mut waiting = connect(&edge).await;
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Upgraded bytes are echoed, long after the timeouts would have closed an idle connection.
    for word in ["one", "two"] {
        upgraded.write_all(word.as_bytes()).await.unwrap();
        let mut echo = [0u8; 3];
        tokio::time::timeout(WAIT, upgraded.read_exact(&mut echo))
            .await
            .expect("the echo")
            .unwrap();
        assert_eq!(&echo, word.as_bytes());
    }
    let mut first = [0u8; 1];
    drop(upgraded);
    // Its slot is free once it is closed: the waiting connection is served.
    tokio::time::timeout(WAIT, waiting.read_exact(&mut first))
        .await
        .expect("the waiting connection is served once the slot is free")
        .unwrap();
    assert_eq!(&first, b"H");
}

#[tokio::test]
async fn each_request_carries_the_clients_address() {
    let edge = start(LONG, LONG, 10).await;
    let mut conn = connect(&edge).await;
    let local = conn.local_addr().unwrap();
    let response = get(&mut conn, "/peer", "))").await;
    assert!(
        response.ends_with(&format!("Some(PeerAddr({local:?}))")),
        "{response}"
    );
}

#[tokio::test]
async fn shutdown_stops_accepting_closes_idle_connections_and_lets_requests_finish() {
    let edge = start(LONG, LONG, 10).await;
    let mut idle = connect(&edge).await;
    assert!(get(&mut idle, "/", "ok").await.contains("200"));
    let mut held = connect(&edge).await;
    held.write_all(b"GET /hold HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(WAIT, edge.service.entered.notified())
        .await
        .expect("the held request reaches the service");
    edge.shutdown.cancel();
    closed(&mut idle, "an idle connection at shutdown").await;
    assert!(!edge.task.is_finished(), "a request is still in flight");
    edge.service.release.notify_one();
    let mut response = String::new();
    tokio::time::timeout(WAIT, held.read_to_string(&mut response))
        .await
        .expect("the held response, then the close")
        .unwrap();
    assert!(response.ends_with("released"), "{response}");
    tokio::time::timeout(WAIT, edge.task)
        .await
        .expect("serve returns once every connection is done")
        .unwrap();
    assert!(
        TcpStream::connect(edge.addr).await.is_err(),
        "the listener is closed"
    );
}
