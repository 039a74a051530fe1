//! Protocol 2: bodies streamed both ways under flow control, events, WebSockets, and how
//! streams end.

use super::*;
use crate::protocol::{Credit, STREAM_WINDOW, WsClose};

const WINDOW: usize = STREAM_WINDOW as usize;

fn head_of(msg: &Message<'_>) -> (u16, Option<bool>) {
    match &msg.payload {
        Payload::HttpResponse(r) => (r.status, r.end_stream),
        other => panic!("expected http_response, got {other:?}"),
    }
}

fn header<'m>(msg: &'m Message<'_>, name: &str) -> Option<&'m str> {
    match &msg.payload {
        Payload::HttpResponse(r) => r
            .headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_str()),
        _ => None,
    }
}

impl Host {
    async fn credit(&mut self, stream: RequestId, bytes: usize) {
        let credit = Credit {
            bytes: bytes as u32,
        };
        self.send(Message::with_id(stream, Payload::Credit(credit)))
            .await;
    }

    /// Reads stream `id`'s body to its `END`, giving credit for each frame as it comes.
    async fn read_body(&mut self, id: RequestId) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let frame = self.recv_data().await;
            assert_eq!(frame.stream, id);
            body.extend_from_slice(&frame.data);
            if frame.flags.contains(DataFlags::END) {
                return body;
            }
            self.credit(id, frame.data.len()).await;
        }
    }

    /// Sends a ping and returns every frame that comes before its pong. Since the plugin queues
    /// everything it sends in order, what a handler would send without waiting is here.
    async fn until_pong(&mut self, ping: RequestId) -> Vec<Incoming> {
        self.send(Message::with_id(ping, Payload::Ping)).await;
        let mut before = Vec::new();
        loop {
            let incoming = self.recv_incoming_or_eof().await.expect("a frame");
            if let Incoming::Message(frame) = &incoming {
                let msg = frame.message().unwrap();
                if msg.request_id == Some(ping) && matches!(msg.payload, Payload::Pong) {
                    return before;
                }
            }
            before.push(incoming);
        }
    }

    /// The next message that is not a log line.
    async fn recv_skipping_logs(&mut self) -> Message<'static> {
        loop {
            let msg = self.recv().await;
            if !matches!(msg.payload, Payload::Log(_)) {
                return msg;
            }
        }
    }

    async fn upgrade(&mut self, id: RequestId, path: &str) -> Message<'static> {
        self.request(id, "GET", path, "", Some(true), Some("websocket"))
            .await;
        self.recv().await
    }
}

#[tokio::test]
async fn a_whole_response_is_its_head_and_one_end_frame() {
    let mut host = Host::start();
    host.init_v2().await;
    host.get(1, "/t/binary", "").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    let data = host.recv_data().await;
    assert_eq!((data.stream, data.flags), (1, DataFlags::END));
    assert_eq!(&data.data[..], &[0xff, 0xfe]);
    host.get(2, "/t/empty", "").await;
    assert_eq!(head_of(&host.recv().await), (204, Some(true)));
    host.get(3, "/elsewhere", "").await;
    assert_eq!(head_of(&host.recv().await), (404, Some(false)));
    assert_eq!(
        &host.recv_data().await.data[..],
        br#"{"error":"not found"}"#
    );
}

#[tokio::test]
async fn a_body_larger_than_the_window_waits_for_credit() {
    let mut host = Host::start();
    host.init_v2().await;
    host.get(1, "/t/big", "").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    let before = host.until_pong(2).await;
    let sent: usize = before
        .iter()
        .map(|i| match i {
            Incoming::Data(d) => {
                assert!(!d.flags.contains(DataFlags::END));
                d.data.len()
            }
            other => panic!("expected data, got {other:?}"),
        })
        .sum();
    assert_eq!(sent, WINDOW, "the plugin sends exactly one window");
    host.credit(1, 600 * 1024 - WINDOW).await;
    let rest = host.read_body(1).await;
    assert_eq!(sent + rest.len(), 600 * 1024);
}

#[tokio::test]
async fn a_request_body_is_credited_as_the_handler_reads_it() {
    let mut host = Host::start();
    host.init_v2().await;
    host.request(1, "POST", "/t/upload", "", Some(false), None)
        .await;
    for _ in 0..4 {
        host.send_data(1, DataFlags::NONE, &[1; WINDOW / 4]).await;
    }
    // The handler has read nothing: no credit.
    assert!(host.until_pong(2).await.is_empty());
    host.gate.add_permits(2);
    let credit = host.recv().await;
    assert_eq!(credit.request_id, Some(1));
    assert_eq!(
        credit.payload,
        Payload::Credit(Credit {
            bytes: STREAM_WINDOW / 2
        })
    );
    host.send_data(1, DataFlags::NONE, &[2; WINDOW / 2]).await;
    host.send_data(1, DataFlags::END, b"end").await;
    host.gate.add_permits(100);
    let mut msgs = Vec::new();
    loop {
        let msg = host.recv().await;
        if matches!(msg.payload, Payload::HttpResponse(_)) {
            break;
        }
        msgs.push(msg);
    }
    assert!(
        msgs.iter().all(|m| matches!(m.payload, Payload::Credit(_))),
        "{msgs:?}"
    );
    let data = host.recv_data().await;
    let expected = WINDOW + WINDOW / 2 + 3;
    assert_eq!(&data.data[..], expected.to_string().as_bytes());
}

#[tokio::test]
async fn data_past_the_window_ends_that_stream_only() {
    let mut host = Host::start();
    host.init_v2().await;
    host.request(1, "POST", "/t/upload", "q", Some(false), None)
        .await;
    host.event("start q").await;
    host.send_data(1, DataFlags::NONE, &vec![0; WINDOW]).await;
    host.send_data(1, DataFlags::NONE, b"x").await;
    let msg = host.recv().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(1), "bad_request")
    );
    host.event("drop q").await;
    host.get(2, "/t/greeting", "").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
}

#[tokio::test]
async fn collect_stops_at_its_limit_with_413() {
    let mut host = Host::start();
    host.init_v2().await;
    host.request(1, "POST", "/t/collect", "limit=10", Some(false), None)
        .await;
    host.send_data(1, DataFlags::NONE, &[0; 8]).await;
    host.send_data(1, DataFlags::END, &[0; 8]).await;
    assert_eq!(head_of(&host.recv().await), (413, Some(false)));
    let body = host.recv_data().await;
    assert!(
        std::str::from_utf8(&body.data)
            .unwrap()
            .contains("10-byte limit"),
        "{body:?}"
    );
    host.request(2, "POST", "/t/collect", "", Some(false), None)
        .await;
    host.send_data(2, DataFlags::NONE, b"abc").await;
    host.send_data(2, DataFlags::END, b"").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    assert_eq!(&host.recv_data().await.data[..], b"3");
}

#[tokio::test]
async fn a_streamed_response_flows_with_credit_and_ends() {
    let mut host = Host::start();
    host.init_v2().await;
    host.get(1, "/t/download", "n=700000&chunk=100000").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    let body = host.read_body(1).await;
    assert_eq!(body.len(), 700_000);
    for (i, chunk) in body.chunks(100_000).enumerate() {
        let expected = ((i * 100_000) % 251) as u8;
        assert!(chunk.iter().all(|&b| b == expected), "chunk {i}");
    }
}

#[tokio::test]
async fn cancel_mid_stream_drops_the_producer_and_ends_nothing() {
    let mut host = Host::start();
    host.init_v2().await;
    let q = "n=100000000&chunk=65536";
    host.get(1, "/t/download", q).await;
    host.event(&format!("start {q}")).await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    host.get(1, "/t/download", "").await;
    let msg = loop {
        match host.recv_incoming_or_eof().await.expect("a frame") {
            Incoming::Data(_) => {}
            Incoming::Message(frame) => break frame.message().unwrap().into_owned(),
        }
    };
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(1), "bad_request"),
        "the stream still holds id 1"
    );
    host.send(Message::with_id(1, Payload::Cancel)).await;
    host.event(&format!("drop {q}")).await;
    let before = host.until_pong(2).await;
    for incoming in before {
        if let Incoming::Data(d) = incoming {
            assert!(
                !d.flags.contains(DataFlags::END),
                "a cancelled stream never ends"
            );
        }
    }
    host.get(3, "/t/download", "n=10&chunk=5").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    assert_eq!(host.read_body(3).await.len(), 10);
}

#[tokio::test]
async fn events_arrive_one_by_one_before_the_stream_ends() {
    let mut host = Host::start();
    host.init_v2().await;
    host.get(1, "/t/sse", "n=2").await;
    let head = host.recv().await;
    assert_eq!(head_of(&head), (200, Some(false)));
    assert_eq!(header(&head, "content-type"), Some("text/event-stream"));
    let first = host.recv_data().await;
    assert_eq!(&first.data[..], b"event: tick\ndata: 1\n\n");
    assert_eq!(first.flags, DataFlags::NONE);
    host.gate.add_permits(1);
    assert_eq!(
        &host.recv_data().await.data[..],
        b"event: tick\ndata: 2\n\n"
    );
    host.gate.add_permits(1);
    let end = host.recv_data().await;
    assert_eq!((end.flags, end.data.len()), (DataFlags::END, 0));
}

#[tokio::test]
async fn an_error_after_the_head_aborts_the_stream() {
    let mut host = Host::start();
    host.init_v2().await;
    host.get(1, "/t/fail", "").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    assert_eq!(&host.recv_data().await.data[..], b"partial");
    let msg = host.recv_skipping_logs().await;
    assert_eq!(
        (msg.request_id, error_code_of(&msg)),
        (Some(1), "plugin_error")
    );
    let Payload::Error(e) = &msg.payload else {
        unreachable!()
    };
    assert!(e.message.contains("the disk went away"), "{}", e.message);
}

#[tokio::test]
async fn websocket_messages_echo_and_the_client_closes() {
    let mut host = Host::start();
    host.init_v2().await;
    let head = host.upgrade(1, "/t/ws").await;
    assert_eq!(head_of(&head), (101, Some(false)));
    assert_eq!(header(&head, "sec-websocket-protocol"), Some("chat"));
    host.send_data(1, DataFlags::TEXT, b"hello").await;
    let echo = host.recv_data().await;
    assert_eq!(
        (echo.flags, &echo.data[..]),
        (DataFlags::TEXT, &b"HELLO"[..])
    );
    host.send_data(1, DataFlags::TEXT | DataFlags::MORE, b"ab")
        .await;
    host.send_data(1, DataFlags::TEXT, b"c").await;
    assert_eq!(&host.recv_data().await.data[..], b"ABC");
    host.send_data(1, DataFlags::NONE, &[0, 159, 255]).await;
    let echo = host.recv_data().await;
    assert_eq!(
        (echo.flags, &echo.data[..]),
        (DataFlags::NONE, &[0, 159, 255][..])
    );
    let close = WsClose {
        code: 1000,
        reason: "done".into(),
    };
    host.send(Message::with_id(1, Payload::WsClose(close)))
        .await;
    // The session ends; nobody answers a ws_close.
    assert!(host.until_pong(2).await.is_empty());
}

#[tokio::test]
async fn websocket_the_plugin_closes_with_its_code_and_reason() {
    let mut host = Host::start();
    host.init_v2().await;
    host.upgrade(1, "/t/ws").await;
    host.send_data(1, DataFlags::TEXT, b"bye").await;
    let msg = host.recv().await;
    assert_eq!(msg.request_id, Some(1));
    let Payload::WsClose(close) = &msg.payload else {
        panic!("expected ws_close, got {msg:?}")
    };
    assert_eq!((close.code, close.reason.as_str()), (1000, "bye"));
    assert!(host.until_pong(2).await.is_empty(), "one ws_close only");
}

#[tokio::test]
async fn websocket_messages_larger_than_the_window_are_fragmented_both_ways() {
    let mut host = Host::start();
    host.init_v2().await;
    host.upgrade(1, "/t/ws").await;
    let len = WINDOW + 50_000;
    host.send_data(1, DataFlags::TEXT | DataFlags::MORE, &vec![b'a'; WINDOW])
        .await;
    // The plugin took the fragment and gave its window back.
    let credit = host.recv().await;
    assert_eq!(
        credit.payload,
        Payload::Credit(Credit {
            bytes: STREAM_WINDOW
        })
    );
    host.send_data(1, DataFlags::TEXT, &vec![b'a'; 50_000])
        .await;
    let first = host.recv_data().await;
    assert_eq!(first.flags, DataFlags::TEXT | DataFlags::MORE);
    assert_eq!(first.data.len(), WINDOW);
    assert!(
        host.until_pong(2).await.is_empty(),
        "the rest waits for credit"
    );
    host.credit(1, WINDOW).await;
    let last = host.recv_data().await;
    assert_eq!(last.flags, DataFlags::TEXT);
    assert_eq!(first.data.len() + last.data.len(), len);
    assert!(first.data.iter().chain(&last.data[..]).all(|&b| b == b'A'));
}

#[tokio::test]
async fn websockets_are_refused_with_any_response_or_need_an_upgrade() {
    let mut host = Host::start();
    host.init_v2().await;
    let head = host.upgrade(1, "/t/ws-refuse").await;
    assert_eq!(head_of(&head), (403, Some(false)));
    let body = host.recv_data().await;
    assert_eq!(&body.data[..], br#"{"error":"no WebSockets for you"}"#);
    host.get(2, "/t/ws", "").await;
    assert_eq!(head_of(&host.recv().await), (426, Some(false)));
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_ends_event_streams() {
    let mut host = Host::start();
    host.init_v2().await;
    host.upgrade(1, "/t/ws").await;
    host.get(2, "/t/sse", "n=100").await;
    assert_eq!(head_of(&host.recv().await), (200, Some(false)));
    assert_eq!(
        &host.recv_data().await.data[..],
        b"event: tick\ndata: 1\n\n"
    );
    host.send(Message::new(None, Payload::Shutdown)).await;
    let msg = host.recv().await;
    assert_eq!(msg.request_id, Some(1));
    let Payload::WsClose(close) = &msg.payload else {
        panic!("expected ws_close, got {msg:?}")
    };
    assert_eq!(close.code, 1001);
    // The event stream ends at its next event.
    host.gate.add_permits(1);
    let end = host.recv_data().await;
    assert_eq!(
        (end.stream, end.flags, end.data.len()),
        (2, DataFlags::END, 0)
    );
    assert!(host.recv_or_eof().await.is_none());
    assert!(host.finished().await.is_ok());
}

#[tokio::test]
async fn settings_reach_the_context_and_the_hook() {
    let mut host = Host::start();
    host.init_v2().await;
    host.get(1, "/t/greeting", "").await;
    host.recv().await;
    assert_eq!(&host.recv_data().await.data[..], b"Hello", "the default");
    let update =
        r#"{"type":"settings","request_id":null,"payload":{"settings":{"greeting":"Howdy"}}}"#;
    host.send_json(update).await;
    host.event_skipping_others("settings Howdy").await;
    host.get(2, "/t/greeting", "").await;
    host.recv().await;
    assert_eq!(&host.recv_data().await.data[..], b"Howdy");
    let bad = r#"{"type":"settings","request_id":null,"payload":{"settings":{"greeting":5}}}"#;
    host.send_json(bad).await;
    let log = host.recv().await;
    assert!(
        matches!(&log.payload, Payload::Log(l) if l.level == Level::Error),
        "{log:?}"
    );
    host.event_skipping_others("settings Howdy").await;
}

#[tokio::test]
async fn on_protocol_1_streams_are_collected_and_websockets_refused() {
    let mut host = Host::start();
    host.init().await;
    host.get(1, "/t/download", "n=1000&chunk=300").await;
    let res = response_of(host.recv().await);
    assert_eq!(res.status, 200);
    let body = res.body_base64.map(|b| b.len()).unwrap_or(0) + res.body.map_or(0, |b| b.len());
    assert!(body > 0);
    host.gate.add_permits(1);
    host.get(2, "/t/sse", "n=1").await;
    let res = response_of(host.recv().await);
    assert_eq!(res.body.as_deref(), Some("event: tick\ndata: 1\n\n"));
    host.get(3, "/t/ws", "").await;
    assert_eq!(response_of(host.recv_skipping_logs().await).status, 501);
    host.get(4, "/t/fail", "").await;
    let msg = host.recv_skipping_logs().await;
    assert_eq!(error_code_of(&msg), "plugin_error");
}

#[tokio::test]
async fn a_head_request_gets_the_head_only_and_nothing_is_produced() {
    let mut host = Host::start();
    host.init_v2().await;
    let q = "n=100000000&chunk=65536";
    host.request(1, "HEAD", "/t/download", q, Some(true), None)
        .await;
    host.event(&format!("start {q}")).await;
    let head = host.recv().await;
    assert_eq!(head_of(&head), (200, Some(true)));
    assert_eq!(
        header(&head, "content-type"),
        Some("application/octet-stream")
    );
    host.event(&format!("drop {q}")).await;
    assert!(host.until_pong(2).await.is_empty());
}
