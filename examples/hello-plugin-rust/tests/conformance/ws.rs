//! `GET /<id>/ws`: a WebSocket that answers each text message upper-cased and each binary
//! message as it is (protocol 2).

use toru_plugin_api::DataFlags;
use toru_plugin_api::protocol::{Message, Payload, RequestId, WsClose};

use super::common::get_json;
use super::host::{Inbound, Plugin, Target, WINDOW};

/// Opens the WebSocket; returns its stream id.
async fn open(plugin: &mut Plugin, t: &Target) -> RequestId {
    let id = plugin.http_head("GET", &t.path("/ws"), "", &[], false, Some("websocket"));
    let head = plugin.head(id).await;
    assert_eq!(head.status, 101, "the plugin accepts: {head:?}");
    assert_eq!(head.end_stream, Some(false), "{head:?}");
    id
}

/// The next whole message on stream `id`: its `TEXT` flag and bytes, from however many frames.
async fn message(plugin: &mut Plugin, id: RequestId) -> (bool, Vec<u8>) {
    let mut bytes = Vec::new();
    loop {
        let frame = plugin.data(id).await;
        bytes.extend_from_slice(&frame.data);
        if !frame.data.is_empty() {
            plugin.credit(id, frame.data.len());
        }
        if !frame.flags.contains(DataFlags::MORE) {
            return (frame.flags.contains(DataFlags::TEXT), bytes);
        }
    }
}

/// Sends one message on stream `id`, split into frames of at most `chunk` bytes within the
/// plugin's window.
async fn send(plugin: &mut Plugin, id: RequestId, text: bool, bytes: &[u8], chunk: usize) {
    let kind = if text {
        DataFlags::TEXT
    } else {
        DataFlags::NONE
    };
    let mut rest = bytes;
    loop {
        let n = if rest.is_empty() {
            0
        } else {
            plugin.take_window(id, rest.len().min(chunk)).await
        };
        let (part, tail) = rest.split_at(n);
        rest = tail;
        let flags = if rest.is_empty() {
            kind
        } else {
            kind | DataFlags::MORE
        };
        plugin.send_data(id, flags, part);
        if rest.is_empty() {
            return;
        }
    }
}

pub(crate) async fn ws_echo(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open(&mut plugin, t).await;
    for text in ["hello", "Grüße, é!", ""] {
        send(&mut plugin, id, true, text.as_bytes(), 1024).await;
        let (is_text, reply) = message(&mut plugin, id).await;
        assert!(is_text, "a text message is answered with text");
        assert_eq!(String::from_utf8(reply).unwrap(), text.to_uppercase());
    }
    let binary = [0u8, 1, 0xfe, 0xff, b'a'];
    send(&mut plugin, id, false, &binary, 1024).await;
    assert_eq!(message(&mut plugin, id).await, (false, binary.to_vec()));
}

/// A message in several frames (`MORE`) is one message.
pub(crate) async fn ws_fragments(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open(&mut plugin, t).await;
    send(&mut plugin, id, true, b"abcdefg", 3).await;
    assert_eq!(message(&mut plugin, id).await, (true, b"ABCDEFG".to_vec()));
}

/// A message larger than the window goes both ways under flow control: the suite sends it as
/// the plugin gives credit, and the plugin answers in frames that fit the suite's window.
pub(crate) async fn ws_larger_than_the_window(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open(&mut plugin, t).await;
    let text: Vec<u8> = (0..WINDOW + 100_000)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    send(&mut plugin, id, true, &text, 64 * 1024).await;
    let (is_text, reply) = message(&mut plugin, id).await;
    assert!(is_text);
    assert_eq!(reply, text.to_ascii_uppercase());
}

/// The client closes: the plugin sends nothing more on the stream (nobody answers a
/// `ws_close`) and serves on.
pub(crate) async fn ws_client_closes(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open(&mut plugin, t).await;
    let close = WsClose {
        code: 1000,
        reason: "bye".into(),
    };
    plugin.send(&Message::with_id(id, Payload::WsClose(close)));
    for inbound in plugin.until_pong().await {
        match inbound {
            Inbound::Data(d) if d.stream == id => panic!("data after the client's close: {d:?}"),
            Inbound::Message(m) if m.request_id == Some(id) => {
                panic!("nothing answers a ws_close: {m:?}")
            }
            _ => {}
        }
    }
    let (status, _) = get_json(&mut plugin, "GET", &t.path("")).await;
    assert_eq!(status, 200);
}

/// The client's connection drops (`cancel`): the session ends quietly.
pub(crate) async fn ws_cancel(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open(&mut plugin, t).await;
    plugin.send(&Message::with_id(id, Payload::Cancel));
    for inbound in plugin.until_pong().await {
        if let Inbound::Message(m) = inbound {
            assert_ne!(m.request_id, Some(id), "nothing answers a cancel: {m:?}");
        }
    }
    let other = open(&mut plugin, t).await;
    send(&mut plugin, other, true, b"still here", 1024).await;
    assert_eq!(
        message(&mut plugin, other).await,
        (true, b"STILL HERE".to_vec())
    );
}

/// Shutdown closes the WebSocket with 1001, then the plugin exits 0.
pub(crate) async fn ws_closed_at_shutdown(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open(&mut plugin, t).await;
    plugin.send(&Message::new(None, Payload::Shutdown));
    let msg = plugin.reply(Some(id)).await;
    let Payload::WsClose(close) = &msg.payload else {
        panic!("expected ws_close 1001, got {msg:?}")
    };
    assert_eq!(close.code, 1001);
    plugin.until_eof().await;
    assert_eq!(plugin.exit_status().await.code(), Some(0));
}

/// A plain `GET` (no upgrade) of the WebSocket route is refused with a 4xx.
pub(crate) async fn ws_needs_an_upgrade(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = plugin.http("GET", &t.path("/ws"), "");
    let res = plugin.response(id).await;
    assert!((400..500).contains(&res.status), "{res:?}");
}
