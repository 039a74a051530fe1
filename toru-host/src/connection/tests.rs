//! The connection against a fake plugin on the other end of a real socket pair, speaking the
//! wire with the codec.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use toru_plugin_api::DataFlags;
use toru_plugin_api::protocol::{HttpRequest, HttpResponse, Ready, STREAM_WINDOW};

use super::outbound::{Chunk, ControlSent, DATA_BUDGET, Outbound};
use super::*;
use crate::logs::LogConfig;
use crate::store::{KvLimits, Store};

const WAIT: Duration = Duration::from_secs(10);

struct Fake {
    conn: Connection,
    plugin: Framed<UnixStream, FrameCodec>,
    _store: Store,
    _dir: tempfile::TempDir,
}

/// A connection whose plugin agreed on `version`.
async fn fake(version: u32, limits: StreamLimits) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb"), KvLimits::default()).unwrap();
    let logs = PluginLogs::open(&dir.path().join("logs"), LogConfig::default()).unwrap();
    let (host_side, plugin_side) = UnixStream::pair().unwrap();
    let services = Services {
        kv: store.kv("p"),
        logs,
    };
    let conn = Connection::start("p", host_side, FrameCodec::new(), services, limits);
    let mut plugin = Framed::new(plugin_side, FrameCodec::new());
    // `ready` with an id nobody waits for sets the version; the pong after it proves the
    // reader has seen it.
    let ping = conn.call(Payload::Ping, WAIT);
    let answer = async {
        let msg = next_message(&mut plugin).await;
        plugin
            .send(Message::with_id(
                9999,
                Payload::Ready(Ready {
                    protocol_version: version,
                }),
            ))
            .await
            .unwrap();
        plugin
            .send(Message::new(msg.request_id, Payload::Pong))
            .await
            .unwrap();
    };
    let (reply, ()) = tokio::join!(ping, answer);
    assert!(matches!(reply, Ok(Reply::Pong)));
    assert_eq!(conn.version(), version);
    Fake {
        conn,
        plugin,
        _store: store,
        _dir: dir,
    }
}

async fn next(plugin: &mut Framed<UnixStream, FrameCodec>) -> Incoming {
    tokio::time::timeout(WAIT, plugin.next())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("a valid frame")
}

async fn next_message(plugin: &mut Framed<UnixStream, FrameCodec>) -> Message<'static> {
    match next(plugin).await {
        Incoming::Message(frame) => frame.message().unwrap().into_owned(),
        Incoming::Data(d) => panic!("expected a message, got data on stream {}", d.stream),
    }
}

fn get(path: &str) -> HttpRequest<'_> {
    HttpRequest {
        method: CowStr::borrowed("GET"),
        path: CowStr::borrowed(path),
        query: CowStr::default(),
        headers: vec![],
        body: None,
        body_base64: None,
        end_stream: Some(true),
        upgrade: None,
    }
}

fn head(status: u16, end_stream: bool) -> Payload<'static> {
    Payload::HttpResponse(HttpResponse {
        status,
        headers: vec![],
        body: None,
        body_base64: None,
        end_stream: Some(end_stream),
    })
}

async fn data_from(handle: &mut StreamHandle) -> Option<Result<stream::Piece, StreamEnd>> {
    tokio::time::timeout(WAIT, std::future::poll_fn(|cx| handle.poll_data(cx)))
        .await
        .expect("data in time")
}

/// Opens a stream and answers its head with a body to follow.
async fn open_streaming(f: &mut Fake) -> StreamHandle {
    let mut handle = f.conn.open(get("/p/x"), Kind::Http).await.unwrap();
    let req = next_message(&mut f.plugin).await;
    f.plugin
        .send(Message::new(req.request_id, head(200, false)))
        .await
        .unwrap();
    match handle.head().await.unwrap() {
        HeadOutcome::Head(h) => assert!(h.streaming),
        other => panic!("{other:?}"),
    }
    handle
}

#[tokio::test]
async fn a_body_flows_within_the_window_and_credit_is_given_back_as_it_is_consumed() {
    let mut f = fake(2, StreamLimits::default()).await;
    let mut handle = open_streaming(&mut f).await;
    let id = handle.id();
    // The whole window at once: allowed.
    let chunk = Bytes::from(vec![1u8; 64 * 1024]);
    for _ in 0..4 {
        f.plugin
            .send(DataFrame::new(id, DataFlags::NONE, chunk.clone()))
            .await
            .unwrap();
    }
    // Consuming half of it gives half back.
    let mut got = 0;
    while got < 128 * 1024 {
        got += data_from(&mut handle).await.unwrap().unwrap().0.len();
    }
    let credit = next_message(&mut f.plugin).await;
    assert_eq!(credit.request_id, Some(id));
    assert!(
        matches!(credit.payload, Payload::Credit(Credit { bytes }) if bytes as usize == got),
        "{credit:?}"
    );
    f.plugin
        .send(DataFrame::new(id, DataFlags::END, chunk.clone()))
        .await
        .unwrap();
    while let Some(piece) = data_from(&mut handle).await {
        got += piece.unwrap().0.len();
    }
    assert_eq!(got, 5 * 64 * 1024);
    assert_eq!(f.conn.in_flight(), 0, "the stream ended with END");
}

#[tokio::test]
async fn more_data_than_the_credit_breaks_the_protocol() {
    let mut f = fake(2, StreamLimits::default()).await;
    let mut handle = open_streaming(&mut f).await;
    let id = handle.id();
    let too_much = Bytes::from(vec![0u8; STREAM_WINDOW as usize + 1]);
    f.plugin
        .send(DataFrame::new(id, DataFlags::NONE, too_much))
        .await
        .unwrap();
    let reason = tokio::time::timeout(WAIT, f.conn.closed()).await.unwrap();
    assert!(
        matches!(reason, CloseReason::Protocol(Violation::OverCredit { .. })),
        "{reason}"
    );
    assert!(matches!(
        data_from(&mut handle).await,
        Some(Err(StreamEnd::Aborted(Abort::ConnectionLost)))
    ));
}

#[tokio::test]
async fn data_on_protocol_1_or_before_the_head_breaks_the_protocol() {
    let mut f = fake(1, StreamLimits::default()).await;
    f.plugin
        .send(DataFrame::new(1, DataFlags::END, Bytes::from_static(b"x")))
        .await
        .unwrap();
    let reason = tokio::time::timeout(WAIT, f.conn.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            CloseReason::Protocol(Violation::DataOnVersion1 { .. })
        ),
        "{reason}"
    );

    let mut f = fake(2, StreamLimits::default()).await;
    let handle = f.conn.open(get("/p/x"), Kind::Http).await.unwrap();
    next_message(&mut f.plugin).await;
    f.plugin
        .send(DataFrame::new(
            handle.id(),
            DataFlags::END,
            Bytes::from_static(b"x"),
        ))
        .await
        .unwrap();
    let reason = tokio::time::timeout(WAIT, f.conn.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            CloseReason::Protocol(Violation::DataBeforeHead { .. })
        ),
        "{reason}"
    );
}

#[tokio::test]
async fn data_and_credit_for_unknown_streams_are_ignored() {
    let mut f = fake(2, StreamLimits::default()).await;
    f.plugin
        .send(DataFrame::new(
            777,
            DataFlags::END,
            Bytes::from_static(b"x"),
        ))
        .await
        .unwrap();
    f.plugin
        .send(Message::with_id(777, Payload::Credit(Credit { bytes: 5 })))
        .await
        .unwrap();
    // Still serving.
    let mut handle = open_streaming(&mut f).await;
    f.plugin
        .send(DataFrame::new(
            handle.id(),
            DataFlags::END,
            Bytes::from_static(b"ok"),
        ))
        .await
        .unwrap();
    assert_eq!(&data_from(&mut handle).await.unwrap().unwrap().0[..], b"ok");
    assert!(f.conn.close_reason().is_none());
}

#[tokio::test]
async fn the_host_waits_for_credit_before_sending_more() {
    let mut f = fake(2, StreamLimits::default()).await;
    let mut req = get("/p/up");
    req.end_stream = Some(false);
    let handle = f.conn.open(req, Kind::Http).await.unwrap();
    next_message(&mut f.plugin).await;
    let sender = handle.sender();
    let body = Bytes::from(vec![3u8; STREAM_WINDOW as usize + 1000]);
    let send = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(DataFlags::END, body).await }
    });
    // Exactly the window arrives, in frames of at most 64 KiB.
    let mut got = 0;
    while got < STREAM_WINDOW as usize {
        match next(&mut f.plugin).await {
            Incoming::Data(d) => {
                assert!(d.data.len() <= MAX_DATA_FRAME);
                assert!(!d.flags.contains(DataFlags::END));
                got += d.data.len();
            }
            Incoming::Message(m) => panic!("{:?}", m.message()),
        }
    }
    assert_eq!(got, STREAM_WINDOW as usize);
    assert!(!send.is_finished());
    f.plugin
        .send(Message::with_id(
            handle.id(),
            Payload::Credit(Credit { bytes: 1000 }),
        ))
        .await
        .unwrap();
    match next(&mut f.plugin).await {
        Incoming::Data(d) => {
            assert_eq!(d.data.len(), 1000);
            assert!(d.flags.contains(DataFlags::END));
        }
        Incoming::Message(m) => panic!("{:?}", m.message()),
    }
    tokio::time::timeout(WAIT, send)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dropping_the_handle_cancels_and_the_connection_drains() {
    let mut f = fake(2, StreamLimits::default()).await;
    let handle = open_streaming(&mut f).await;
    let id = handle.id();
    assert_eq!(f.conn.in_flight(), 1);
    assert!(f.conn.drained().now_or_never().is_none());
    let drained = tokio::spawn({
        let conn = f.conn.clone();
        async move { conn.drained().await }
    });
    drop(handle);
    let cancel = next_message(&mut f.plugin).await;
    assert_eq!(cancel.request_id, Some(id));
    assert!(matches!(cancel.payload, Payload::Cancel));
    tokio::time::timeout(WAIT, drained).await.unwrap().unwrap();
    assert_eq!(f.conn.in_flight(), 0);
}

#[tokio::test]
async fn streams_over_the_limit_are_refused_without_reaching_the_plugin() {
    let limits = StreamLimits {
        max_streams: 2,
        ..StreamLimits::default()
    };
    let f = fake(2, limits).await;
    let _a = f.conn.open(get("/p/a"), Kind::Http).await.unwrap();
    let _b = f.conn.open(get("/p/b"), Kind::Http).await.unwrap();
    let third = f.conn.open(get("/p/c"), Kind::Http).await;
    assert!(
        matches!(third, Err(CallFailure::TooManyStreams { limit: 2 })),
        "{:?}",
        third.err()
    );
    // Pings are not counted.
    assert!(matches!(
        f.conn.call(Payload::Ping, Duration::from_millis(1)).await,
        Err(CallFailure::Timeout)
    ));
}

#[tokio::test]
async fn an_idle_stream_is_cancelled() {
    let limits = StreamLimits {
        idle_timeout: Duration::from_millis(100),
        ..StreamLimits::default()
    };
    let mut f = fake(2, limits).await;
    let mut handle = open_streaming(&mut f).await;
    let cancel = next_message(&mut f.plugin).await;
    assert_eq!(cancel.request_id, Some(handle.id()));
    assert!(matches!(cancel.payload, Payload::Cancel));
    assert!(matches!(
        data_from(&mut handle).await,
        Some(Err(StreamEnd::Aborted(Abort::Idle(_))))
    ));
}

#[tokio::test]
async fn an_error_after_the_head_aborts_the_stream_and_a_closed_connection_ends_every_stream() {
    let mut f = fake(2, StreamLimits::default()).await;
    let mut handle = open_streaming(&mut f).await;
    f.plugin
        .send(Message::error(Some(handle.id()), "plugin_error", "boom"))
        .await
        .unwrap();
    assert!(matches!(
        data_from(&mut handle).await,
        Some(Err(StreamEnd::Aborted(Abort::Plugin { .. })))
    ));

    let mut waiting = f.conn.open(get("/p/x"), Kind::Http).await.unwrap();
    next_message(&mut f.plugin).await;
    let mut streaming = open_streaming(&mut f).await;
    drop(f.plugin);
    let reason = tokio::time::timeout(WAIT, f.conn.closed()).await.unwrap();
    assert!(matches!(reason, CloseReason::ClosedByPlugin), "{reason}");
    assert!(matches!(
        waiting.head().await,
        Err(StreamEnd::Aborted(Abort::ConnectionLost))
    ));
    assert!(matches!(
        data_from(&mut streaming).await,
        Some(Err(StreamEnd::Aborted(Abort::ConnectionLost)))
    ));
    assert_eq!(f.conn.in_flight(), 0);
}

#[tokio::test]
async fn ending_streams_closes_websockets_with_1001_and_cancels_the_rest() {
    let mut f = fake(2, StreamLimits::default()).await;
    let mut ws = f.conn.open(get("/p/ws"), Kind::WebSocket).await.unwrap();
    let req = next_message(&mut f.plugin).await;
    f.plugin
        .send(Message::new(req.request_id, head(101, false)))
        .await
        .unwrap();
    ws.head().await.unwrap();
    let http = open_streaming(&mut f).await;
    f.conn.end_streams();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = next_message(&mut f.plugin).await;
        seen.push((m.request_id, m.payload.type_name().to_owned()));
        if let Payload::WsClose(c) = &m.payload {
            assert_eq!(c.code, 1001);
        }
    }
    seen.sort();
    let mut expect = vec![
        (Some(ws.id()), "ws_close".to_owned()),
        (Some(http.id()), "cancel".to_owned()),
    ];
    expect.sort();
    assert_eq!(seen, expect);
    assert!(matches!(
        data_from(&mut ws).await,
        Some(Err(StreamEnd::Aborted(Abort::HostStopping)))
    ));
}

#[tokio::test]
async fn websocket_messages_keep_their_flags_and_ws_close_ends_the_stream() {
    let mut f = fake(2, StreamLimits::default()).await;
    let mut ws = f.conn.open(get("/p/ws"), Kind::WebSocket).await.unwrap();
    let req = next_message(&mut f.plugin).await;
    f.plugin
        .send(Message::new(req.request_id, head(101, false)))
        .await
        .unwrap();
    ws.head().await.unwrap();
    let id = ws.id();
    f.plugin
        .send(DataFrame::new(id, DataFlags::TEXT | DataFlags::MORE, "ab"))
        .await
        .unwrap();
    f.plugin
        .send(DataFrame::new(id, DataFlags::TEXT, ""))
        .await
        .unwrap();
    let (d, flags) = data_from(&mut ws).await.unwrap().unwrap();
    assert_eq!(
        (&d[..], flags),
        (&b"ab"[..], DataFlags::TEXT | DataFlags::MORE)
    );
    let (d, flags) = data_from(&mut ws).await.unwrap().unwrap();
    assert_eq!((&d[..], flags), (&b""[..], DataFlags::TEXT));
    f.plugin
        .send(Message::with_id(
            id,
            Payload::WsClose(WsClose {
                code: 4000,
                reason: CowStr::borrowed("bye"),
            }),
        ))
        .await
        .unwrap();
    assert!(matches!(
        data_from(&mut ws).await,
        Some(Err(StreamEnd::WsClosed { code: 4000, .. }))
    ));
    // Ended by the plugin: no cancel on drop.
    drop(ws);
    f.plugin
        .send(Message::with_id(424242, Payload::Pong))
        .await
        .unwrap();
    assert_eq!(f.conn.in_flight(), 0);
}

#[tokio::test]
async fn too_many_unread_websocket_messages_end_the_stream_not_the_connection() {
    let mut f = fake(2, StreamLimits::default()).await;
    let mut ws = f.conn.open(get("/p/ws"), Kind::WebSocket).await.unwrap();
    let req = next_message(&mut f.plugin).await;
    f.plugin
        .send(Message::new(req.request_id, head(101, false)))
        .await
        .unwrap();
    ws.head().await.unwrap();
    for _ in 0..=stream::MAX_QUEUED_MESSAGES {
        f.plugin
            .feed(DataFrame::new(ws.id(), DataFlags::NONE, ""))
            .await
            .unwrap();
    }
    SinkExt::<DataFrame>::flush(&mut f.plugin).await.unwrap();
    let close = next_message(&mut f.plugin).await;
    assert!(matches!(
        close.payload,
        Payload::WsClose(WsClose { code: 1008, .. })
    ));
    let mut queued = 0;
    loop {
        match data_from(&mut ws).await {
            Some(Ok(_)) => queued += 1,
            Some(Err(StreamEnd::Aborted(Abort::TooManyMessages))) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(queued, 0, "what was queued is dropped");
    assert!(f.conn.close_reason().is_none());
}

#[tokio::test]
async fn a_head_over_the_limits_is_refused_and_the_stream_cancelled() {
    let limits = StreamLimits {
        max_head_headers: 2,
        max_head_bytes: 20,
        ..StreamLimits::default()
    };
    let mut f = fake(2, limits).await;
    for headers in [
        vec![("a", "1"), ("b", "2"), ("c", "3")],
        vec![("a", "0123456789012345678901234")],
    ] {
        let mut handle = f.conn.open(get("/p/x"), Kind::Http).await.unwrap();
        let req = next_message(&mut f.plugin).await;
        let response = Payload::HttpResponse(HttpResponse {
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| (CowStr::borrowed(n), CowStr::borrowed(v)))
                .collect(),
            body: None,
            body_base64: None,
            end_stream: Some(false),
        });
        f.plugin
            .send(Message::new(req.request_id, response))
            .await
            .unwrap();
        assert!(matches!(
            handle.head().await,
            Ok(HeadOutcome::TooLarge { .. })
        ));
        let cancel = next_message(&mut f.plugin).await;
        assert!(matches!(cancel.payload, Payload::Cancel));
    }
    assert!(f.conn.close_reason().is_none());
}

#[test]
fn the_data_lane_holds_at_most_its_budget_and_control_never_waits() {
    let (out, mut lanes) = Outbound::new();
    let chunk = || Chunk::Frame(Bytes::from(vec![0u8; 256 * 1024]));
    for _ in 0..DATA_BUDGET / (256 * 1024) {
        assert!(out.send(chunk()).now_or_never().is_some());
    }
    let mut blocked = Box::pin(out.send(chunk()));
    assert!(
        blocked.as_mut().now_or_never().is_none(),
        "the lane is full"
    );
    assert_eq!(
        out.send_control(Bytes::from_static(b"credit")),
        ControlSent::Queued
    );
    // The writer takes one out: room for the waiting sender.
    drop(lanes.take_data());
    assert!(blocked.as_mut().now_or_never().is_some());
    let big = Bytes::from(vec![0u8; outbound::CONTROL_BUDGET]);
    assert_eq!(out.send_control(big), ControlSent::Full);
}
