//! `GET /<id>/ticks`: a server-sent event stream with one event a second, its data counting
//! from 1 (protocol 2).

use toru_plugin_api::DataFlags;
use toru_plugin_api::protocol::{Message, Payload, RequestId};

use super::common::get_json;
use super::host::{Inbound, Plugin, Target, within};

/// Reads server-sent events off a stream's data frames.
pub(crate) struct Events {
    id: RequestId,
    buf: Vec<u8>,
}

impl Events {
    pub(crate) fn new(id: RequestId) -> Self {
        Events {
            id,
            buf: Vec::new(),
        }
    }

    /// The next event's `data` (its `data:` lines joined by `\n`). Comments and events without
    /// data are skipped. Panics when the stream ends first: the stream must still be open.
    pub(crate) async fn next(&mut self, plugin: &mut Plugin) -> String {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let event: Vec<u8> = self.buf.drain(..end).collect();
                let text = String::from_utf8(event).expect("events are UTF-8");
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return data.join("\n");
                }
                continue;
            }
            let frame = plugin.data(self.id).await;
            assert!(
                !frame.flags.contains(DataFlags::END),
                "the event stream ended; it should go on"
            );
            self.buf.extend_from_slice(&frame.data);
            plugin.credit(self.id, frame.data.len());
        }
    }
}

/// The end of the first event (the blank line included), with `\n` or `\r\n` line ends.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(buf);
    ["\n\n", "\r\n\r\n"]
        .iter()
        .filter_map(|sep| text.find(sep).map(|i| i + sep.len()))
        .min()
}

async fn open_ticks(plugin: &mut Plugin, t: &Target) -> RequestId {
    let id = plugin.http("GET", &t.path("/ticks"), "");
    let head = plugin.head(id).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.end_stream, Some(false), "an event stream has a body");
    let content_type = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str());
    assert!(
        content_type.is_some_and(|ct| ct.starts_with("text/event-stream")),
        "{content_type:?}"
    );
    id
}

/// The first event arrives while the stream is open, and the events count 1, 2.
pub(crate) async fn ticks_count_from_one(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open_ticks(&mut plugin, t).await;
    let mut events = Events::new(id);
    assert_eq!(events.next(&mut plugin).await, "1");
    assert_eq!(events.next(&mut plugin).await, "2");
}

/// A cancelled event stream sends nothing more (no `END`, no `error`), and the plugin serves on.
pub(crate) async fn ticks_cancel(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open_ticks(&mut plugin, t).await;
    let mut events = Events::new(id);
    assert_eq!(events.next(&mut plugin).await, "1");
    plugin.send(&Message::with_id(id, Payload::Cancel));
    for inbound in plugin.until_pong().await {
        match inbound {
            Inbound::Data(d) if d.stream == id => {
                assert!(
                    !d.flags.contains(DataFlags::END),
                    "a cancelled stream never ends"
                );
            }
            Inbound::Message(m) if m.request_id == Some(id) => {
                panic!("nothing answers a cancel: {m:?}")
            }
            _ => {}
        }
    }
    let (status, _) = get_json(&mut plugin, "GET", &t.path("")).await;
    assert_eq!(status, 200);
    let again = open_ticks(&mut plugin, t).await;
    assert_eq!(Events::new(again).next(&mut plugin).await, "1");
}

/// `shutdown` ends open event streams with their `END` (docs/protocol.md section 7), without an
/// `error` for the stream; then the plugin closes the connection and exits 0.
pub(crate) async fn ticks_end_at_shutdown(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = open_ticks(&mut plugin, t).await;
    assert_eq!(Events::new(id).next(&mut plugin).await, "1");
    plugin.send(&Message::new(None, Payload::Shutdown));
    let mut ended = false;
    for inbound in plugin.until_eof().await {
        match inbound {
            Inbound::Message(m) => assert!(
                !matches!(m.payload, Payload::Error(_)),
                "shutdown is not an error: {m:?}"
            ),
            Inbound::Data(d) if d.stream == id => {
                assert!(!ended, "data after the event stream's END: {d:?}");
                ended = d.flags.contains(DataFlags::END);
            }
            Inbound::Data(_) => {}
        }
    }
    assert!(ended, "the event stream ends with END at shutdown");
    let status = within("the plugin to exit", plugin.exit_status()).await;
    assert_eq!(status.code(), Some(0));
}
