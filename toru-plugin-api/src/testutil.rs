//! Fixtures shared by this crate's unit tests.

use crate::protocol::Payload;

/// The variant's position, from 0 to `VARIANTS - 1`. The match is exhaustive, so a new variant
/// breaks the build until the tests that list every variant cover it.
pub(crate) fn variant_index(p: &Payload<'_>) -> usize {
    match p {
        Payload::Init(_) => 0,
        Payload::Ready(_) => 1,
        Payload::HttpRequest(_) => 2,
        Payload::HttpResponse(_) => 3,
        Payload::GetBundle => 4,
        Payload::Bundle(_) => 5,
        Payload::Ping => 6,
        Payload::Pong => 7,
        Payload::Cancel => 8,
        Payload::Shutdown => 9,
        Payload::Kv(_) => 10,
        Payload::KvResult(_) => 11,
        Payload::Log(_) => 12,
        Payload::Error(_) => 13,
        Payload::Unknown(_) => 14,
        Payload::Credit(_) => 15,
        Payload::WsClose(_) => 16,
        Payload::Settings(_) => 17,
    }
}

/// How many payload variants there are.
pub(crate) const VARIANTS: usize = 18;

/// A context on protocol `version` with no settings, whose messages wait in the returned
/// receiver.
#[cfg(feature = "sdk")]
pub(crate) fn context(version: u32) -> (crate::PluginContext, crate::sdk::testing::Receiver) {
    let (queue, rx) = crate::sdk::testing::Queue::new();
    let init: crate::protocol::Init<'_> = serde_json::from_str(
        r#"{"protocol":{"min":1,"max":2},"instance_id":"i-1","plugin_id":"p",
            "socket_path":"/s","log_path":"/l"}"#,
    )
    .expect("a valid init");
    let link = std::sync::Arc::new(crate::sdk::testing::Link::new(queue));
    let ctx = crate::PluginContext::new(init, version, link, None, Vec::new());
    (ctx, rx)
}
