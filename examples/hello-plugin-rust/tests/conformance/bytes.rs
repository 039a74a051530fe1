//! `GET /<id>/bytes?n=N`: exactly N bytes, byte `i` being `i % 251`, with `Content-Length: N`,
//! produced only as fast as the client reads.

use toru_plugin_api::DataFlags;
use toru_plugin_api::protocol::{Message, Payload, RequestId, VersionRange};

use super::host::{Inbound, Plugin, Target, WINDOW};

fn pattern_ok(body: &[u8], from: usize) -> bool {
    body.iter()
        .enumerate()
        .all(|(i, &b)| b == ((from + i) % 251) as u8)
}

pub(crate) async fn bytes_exact(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    for n in [0usize, 1, 1000, 5_000_000] {
        let id = plugin.http("GET", &t.path("/bytes"), &format!("n={n}"));
        let res = plugin.response(id).await;
        assert_eq!(res.status, 200, "n={n}");
        assert_eq!(res.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(res.body.len(), n);
        assert!(pattern_ok(&res.body, 0), "byte i is i % 251 (n={n})");
    }
    let id = plugin.http("GET", &t.path("/bytes"), "n=ten");
    assert_eq!(plugin.response(id).await.status, 400);
}

/// Without credit the plugin stops at the window; with credit it goes on.
pub(crate) async fn bytes_wait_for_credit(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let n = 10 * 1024 * 1024;
    let id = plugin.http("GET", &t.path("/bytes"), &format!("n={n}"));
    plugin.head(id).await;
    let got = read_window_without_credit(&mut plugin, id).await;
    assert!(pattern_ok(&got, 0));
    // Whatever the plugin would send without credit is queued before the pong.
    for inbound in plugin.until_pong().await {
        if let Inbound::Data(d) = inbound {
            assert_ne!(d.stream, id, "data past the window");
        }
    }
    plugin.credit(id, WINDOW);
    let rest = plugin.body(id).await;
    assert_eq!(got.len() + rest.len(), n);
    assert!(pattern_ok(&rest, WINDOW));
}

/// Reads stream `id` until the plugin has used its whole first window, giving no credit.
async fn read_window_without_credit(plugin: &mut Plugin, id: RequestId) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < WINDOW {
        let frame = plugin.data(id).await;
        assert!(
            !frame.flags.contains(DataFlags::END),
            "the body ended early"
        );
        got.extend_from_slice(&frame.data);
    }
    assert_eq!(got.len(), WINDOW);
    got
}

/// `cancel` stops the producer: after it, credit wakes nothing up.
pub(crate) async fn bytes_cancel_stops_the_producer(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let id = plugin.http("GET", &t.path("/bytes"), "n=1073741824");
    plugin.head(id).await;
    read_window_without_credit(&mut plugin, id).await;
    plugin.send(&Message::with_id(id, Payload::Cancel));
    plugin.credit(id, 1024 * 1024);
    for _ in 0..2 {
        for inbound in plugin.until_pong().await {
            match inbound {
                Inbound::Data(d) => assert_ne!(d.stream, id, "data after cancel: {d:?}"),
                Inbound::Message(m) => {
                    assert_ne!(m.request_id, Some(id), "nothing answers a cancel: {m:?}")
                }
            }
        }
    }
}

/// A version 1 host gets the body whole (it is small enough).
pub(crate) async fn bytes_on_protocol_1(t: &Target) {
    let mut plugin = Plugin::ready_offering(t, VersionRange { min: 1, max: 1 }).await;
    let id = plugin.http("GET", &t.path("/bytes"), "n=300000");
    let res = plugin.response(id).await;
    assert_eq!((res.status, res.body.len()), (200, 300_000));
    assert!(pattern_ok(&res.body, 0));
}
