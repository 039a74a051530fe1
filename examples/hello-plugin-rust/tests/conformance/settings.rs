//! Settings: the plugin declares a `greeting` setting (text, default `Hello`) that
//! `GET /<id>/` greets with, takes it from `init`, and applies a `settings` message without a
//! restart (`live_settings`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use toru_plugin_api::PluginMetadata;
use toru_plugin_api::protocol::{Message, Payload, SettingKind, SettingsUpdate, VersionRange};

use super::common::get_json;
use super::host::{Plugin, Target, within};

/// The greeting `GET /<id>/` answers with `word` as the setting.
fn greeting_with(t: &Target, word: &str) -> String {
    t.greeting.replacen("Hello", word, 1)
}

pub(crate) async fn settings_declared(t: &Target) {
    let out = within("--metadata", t.command().arg("--metadata").output())
        .await
        .expect("run --metadata");
    let meta: PluginMetadata = serde_json::from_slice(&out.stdout).expect("metadata");
    let greeting = meta
        .settings
        .iter()
        .find(|s| s.name == "greeting")
        .expect("a greeting setting");
    assert_eq!(greeting.kind, SettingKind::String);
    assert_eq!(greeting.default, Some(json!("Hello")));
    assert!(meta.live_settings, "the plugin applies settings live");
}

pub(crate) async fn settings_from_init(t: &Target) {
    let mut plugin = Plugin::start(t).await;
    let settings = BTreeMap::from([("greeting".to_owned(), json!("Howdy"))]);
    let reply = plugin
        .init_with(VersionRange { min: 1, max: 2 }, settings)
        .await;
    assert!(matches!(reply.payload, Payload::Ready(_)), "{reply:?}");
    let (status, body) = get_json(&mut plugin, "GET", &t.path("/")).await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], json!(greeting_with(t, "Howdy")));
}

/// A `settings` message changes the greeting while the plugin runs.
pub(crate) async fn settings_applied_live(t: &Target) {
    let mut plugin = Plugin::ready(t).await;
    let settings = BTreeMap::from([("greeting".to_owned(), json!("Hi"))]);
    plugin.send(&Message::new(
        None,
        Payload::Settings(SettingsUpdate { settings }),
    ));
    let expected = json!(greeting_with(t, "Hi"));
    // The plugin may apply them a moment later: ask until it does.
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    within("the greeting to change", async {
        loop {
            poll.tick().await;
            let (_, body) = get_json(&mut plugin, "GET", &t.path("/")).await;
            if body["message"] == expected {
                return;
            }
        }
    })
    .await;
}
