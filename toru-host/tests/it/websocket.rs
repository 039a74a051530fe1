//! WebSockets to a protocol 2 plugin: the session API, and `PluginHost::forward` behind a real
//! hyper server with a real WebSocket client (handshake, echo, pings, close codes both ways,
//! the message limit, a plugin that crashes, a host that stops).

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toru_host::http::Request;
use toru_host::{PluginHost, WsEvent, WsMessage, WsUpgrade};

use crate::util::*;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_request(path: &str) -> Request<()> {
    Request::get(path)
        .header("sec-websocket-protocol", "chat")
        .body(())
        .unwrap()
}

async fn recv(session: &mut toru_host::WebSocketSession) -> WsEvent {
    tokio::time::timeout(WAIT, session.recv())
        .await
        .expect("a WebSocket event in time")
}

#[tokio::test]
async fn a_session_echoes_both_kinds_and_passes_close_codes_both_ways() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let host = started(&env, &["t"]).await;

    let WsUpgrade::Accepted(mut session) = host.websocket("t", &ws_request("/t/ws")).await.unwrap()
    else {
        panic!("refused")
    };
    assert_eq!(session.protocol(), Some("chat"));
    session.send(WsMessage::Text("hello".into())).await.unwrap();
    assert_eq!(
        recv(&mut session).await,
        WsEvent::Message(WsMessage::Text("HELLO".into()))
    );
    // Larger than a data frame and than the window: split, and waits for credit.
    let big = Bytes::from((0..700_000).map(|i| (i % 7) as u8).collect::<Vec<u8>>());
    session.send(WsMessage::Binary(big.clone())).await.unwrap();
    assert_eq!(
        recv(&mut session).await,
        WsEvent::Message(WsMessage::Binary(big))
    );
    session.send(WsMessage::Text("close".into())).await.unwrap();
    assert_eq!(
        recv(&mut session).await,
        WsEvent::Close {
            code: 4000,
            reason: "bye".into()
        }
    );

    let WsUpgrade::Accepted(session) = host.websocket("t", &ws_request("/t/ws")).await.unwrap()
    else {
        panic!("refused")
    };
    session.close(1000, "done").await;
    let line = notices.wait_prefix("ws_close ").await;
    assert!(line.ends_with(" 1000"), "{line}");

    // Refused: the plugin's own answer.
    let WsUpgrade::Refused(response) = host.websocket("t", &ws_request("/t/nope")).await.unwrap()
    else {
        panic!("accepted a path without a WebSocket")
    };
    assert_eq!(response.status(), 404);
    host.shutdown().await;
}

#[tokio::test]
async fn a_plugin_message_over_the_limit_or_a_crash_ends_the_session_with_1011() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let mut b = env.builder();
    b.max_ws_message_bytes(100_000);
    let host = b.start().await.unwrap();
    serving(&host, &["t"]).await;
    let WsUpgrade::Accepted(mut session) = host.websocket("t", &ws_request("/t/ws")).await.unwrap()
    else {
        panic!("refused")
    };
    session
        .send(WsMessage::Text("big:100001".into()))
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut session).await,
        WsEvent::Close { code: 1011, .. }
    ));
    let line = notices.wait_prefix("ws_close ").await;
    assert!(line.ends_with(" 1009"), "{line}");

    let WsUpgrade::Accepted(mut session) = host.websocket("t", &ws_request("/t/ws")).await.unwrap()
    else {
        panic!("refused")
    };
    session.send(WsMessage::Text("crash".into())).await.unwrap();
    assert!(matches!(
        recv(&mut session).await,
        WsEvent::Close { code: 1011, .. }
    ));
    host.shutdown().await;
}

/// A hyper server that serves everything under `/plugins` with `forward`, upgrades included.
async fn serve(host: PluginHost) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let host = host.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let host = host.clone();
                    async move { Ok::<_, std::convert::Infallible>(host.forward(req, "/plugins").await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    let (client, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("a handshake in time")
        .expect("the handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    client
}

async fn next(client: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid message");
        if !m.is_ping() {
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

#[tokio::test]
async fn forward_upgrades_a_hyper_connection_and_bridges_it() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let mut b = env.builder();
    b.max_ws_message_bytes(200_000);
    let host = b.start().await.unwrap();
    serving(&host, &["t"]).await;
    let addr = serve(host.clone()).await;

    let mut client = connect(addr, "/plugins/t/ws").await;
    client.send(Message::text("abc")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("ABC"));
    client.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(vec![1u8, 2, 3]));
    // Pings are the host's to answer.
    client
        .send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if m == Message::Pong(Bytes::from_static(b"p")) {
            break;
        }
    }
    // The plugin closes: its code reaches the client.
    client.send(Message::text("close")).await.unwrap();
    assert_eq!(close_code(&next(&mut client).await), Some(4000));

    // The client closes: its code reaches the plugin.
    let mut client = connect(addr, "/plugins/t/ws").await;
    client
        .close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let line = notices.wait_prefix("ws_close ").await;
    assert!(line.ends_with(" 1000"), "{line}");

    // Too big from the client: 1009 both ways.
    let mut client = connect(addr, "/plugins/t/ws").await;
    client
        .send(Message::binary(vec![0u8; 200_001]))
        .await
        .unwrap();
    assert_eq!(close_code(&next(&mut client).await), Some(1009));
    let line = notices.wait_prefix("ws_close ").await;
    assert!(line.ends_with(" 1009"), "{line}");

    // Gone without a close: the plugin gets cancel.
    let client = connect(addr, "/plugins/t/ws").await;
    drop(client);
    notices.wait_prefix("cancel ").await;

    // The plugin crashes: 1011, promptly.
    let mut client = connect(addr, "/plugins/t/ws").await;
    client.send(Message::text("crash")).await.unwrap();
    assert_eq!(close_code(&next(&mut client).await), Some(1011));
    host.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_both_ways() {
    let env = Env::new();
    let mut notices = Notices::new(env.dir.path());
    env.install_notifying_plugin("v2", "t", &notices);
    let host = started(&env, &["t"]).await;
    let addr = serve(host.clone()).await;
    let mut client = connect(addr, "/plugins/t/ws").await;
    client.send(Message::text("x")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("X"));
    let shutdown = tokio::spawn({
        let host = host.clone();
        async move { host.shutdown().await }
    });
    assert_eq!(close_code(&next(&mut client).await), Some(1001));
    let line = notices.wait_prefix("ws_close ").await;
    assert!(line.ends_with(" 1001"), "{line}");
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_upgrade_to_a_protocol_1_plugin_is_its_plain_answer() {
    let env = Env::new();
    env.install_python_v1_example();
    let host = started(&env, &["hello-python-v1"]).await;
    let WsUpgrade::Refused(response) = host
        .websocket("hello-python-v1", &ws_request("/hello-python-v1/ws"))
        .await
        .unwrap()
    else {
        panic!("a protocol 1 plugin cannot accept a WebSocket")
    };
    assert_ne!(response.status(), 101);
    host.shutdown().await;
}
