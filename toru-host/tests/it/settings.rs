//! Plugin settings through the host: checked against the declarations, stored in config.json,
//! sent in `init`, and applied live (same process) or by a restart; a required one missing
//! keeps the plugin from starting; secrets never leave the host but to the plugin.

use serde_json::{Map, Value, json};
use toru_host::EventKind;
use toru_host::{ManageError, PluginHost, PluginRequest, PluginState};

use crate::util::*;

fn changes(value: Value) -> Map<String, Value> {
    serde_json::from_value(value).unwrap()
}

/// What a `settings` test plugin last got, and its pid.
async fn seen(host: &PluginHost, id: &str) -> (Value, u64) {
    let r = host
        .request(id, &PluginRequest::get(format!("/{id}/")))
        .await
        .expect("the plugin answers");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    (body["settings"].clone(), body["pid"].as_u64().unwrap())
}

const SECRET: &str = "tok-3c1e9b7f-never-shown";

#[tokio::test]
async fn a_required_setting_keeps_the_plugin_from_starting_until_it_is_set() {
    let env = Env::new();
    env.install_test_plugin("settings", "s");
    let host = env.start().await;
    let events = wait_recorded(&host, "s", EventKind::Failed).await;
    let failed = events.iter().find(|e| e.kind == EventKind::Failed).unwrap();
    let reason = failed.reason.clone().unwrap_or_default();
    assert_eq!(
        reason,
        "setting \"endpoint\" is required and has no value; set it in the plugin's settings"
    );
    assert!(
        !events.iter().any(|e| e.kind == EventKind::Started),
        "never started: {events:?}"
    );
    let info = host.get("s").unwrap();
    assert_eq!(info.state, PluginState::Failed { reason });
    assert_eq!(info.pid, None);
    assert_eq!(info.last_exit, None, "no process was spawned");

    // Bad values: the whole change is refused, a message per field, nothing stored.
    let err = host
        .set_settings(
            "s",
            &changes(json!({
                "endpoint": "https://example.net", "retries": "three", "verbose": 1,
                "mode": "slow", "api_token": 7, "nope": true,
            })),
        )
        .await
        .unwrap_err();
    let ManageError::InvalidSettings(fields) = err else {
        panic!("{err}")
    };
    let names: Vec<&str> = fields.0.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["retries", "verbose", "mode", "api_token", "nope"]);
    let config = env.plugins().join(".metadata/config.json");
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    assert!(!text.contains("example.net"), "nothing stored: {text}");
    assert!(matches!(
        host.get("s").unwrap().state,
        PluginState::Failed { .. }
    ));

    // Set: the plugin starts with it, the defaults filled in, and the secret.
    let mut rx = host.subscribe();
    host.set_settings(
        "s",
        &changes(json!({"endpoint": "https://example.net", "api_token": SECRET})),
    )
    .await
    .unwrap();
    let changed = wait_event(&mut rx, "s", EventKind::SettingsChanged).await;
    assert_eq!(
        changed.reason.as_deref(),
        Some("api_token, endpoint changed; restarted to apply them")
    );
    wait_event(&mut rx, "s", EventKind::Started).await;
    let info = host.get("s").unwrap();
    assert_eq!(info.state, PluginState::Running);
    assert_eq!(info.last_error, None, "the failure is history once it runs");
    let (got, _) = seen(&host, "s").await;
    assert_eq!(
        got,
        json!({"greeting": "Hello", "retries": 3, "verbose": false, "mode": "safe",
               "api_token": SECRET, "endpoint": "https://example.net"})
    );

    // Shown: values in effect, the secret only as set.
    let shown = serde_json::to_value(&info.settings).unwrap();
    assert_eq!(shown[0]["name"], "greeting");
    assert_eq!(shown[0]["value"], "Hello");
    assert_eq!(shown[0]["set"], false);
    assert_eq!(shown[4]["name"], "api_token");
    assert_eq!(shown[4]["set"], true);
    assert!(shown[4].get("value").is_none(), "{shown}");
    let listed = serde_json::to_string(&host.list()).unwrap();
    assert!(!listed.contains(SECRET), "{listed}");

    // A required setting cannot be cleared.
    let err = host
        .set_settings("s", &changes(json!({"endpoint": null})))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("endpoint: a value is required"),
        "{err}"
    );

    // Stored only in config.json, private to its owner; nowhere in the events or the logs.
    host.shutdown().await;
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(SECRET), "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "config.json is {mode:o}");
    assert_secret_nowhere(&env.logs(), SECRET);
    assert_secret_nowhere(&env.data(), SECRET);
}

/// Fails when `secret` is in any file under `dir`.
pub fn assert_secret_nowhere(dir: &std::path::Path, secret: &str) {
    let mut stack = vec![dir.to_owned()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "the secret is in {}", path.display());
            }
        }
    }
    assert!(files > 0, "nothing to look in under {}", dir.display());
}

#[tokio::test]
async fn a_plugin_without_live_settings_is_restarted_with_the_new_values() {
    let env = Env::new();
    env.install_test_plugin("settings", "s");
    let mut config = json!({"version": 1, "plugins": {"s": {"settings": {"endpoint": "e"}}}});
    std::fs::create_dir_all(env.plugins().join(".metadata")).unwrap();
    std::fs::write(
        env.plugins().join(".metadata/config.json"),
        config.to_string(),
    )
    .unwrap();
    let host = started(&env, &["s"]).await;
    let (got, pid) = seen(&host, "s").await;
    assert_eq!(got["greeting"], "Hello");

    let mut rx = host.subscribe();
    host.set_settings("s", &changes(json!({"greeting": "Howdy", "mode": "fast"})))
        .await
        .unwrap();
    let kinds = kinds_until(&mut rx, "s", EventKind::Started).await;
    assert_eq!(
        kinds,
        [
            EventKind::Stopped,
            EventKind::SettingsChanged,
            EventKind::Started
        ]
    );
    let (got, new_pid) = seen(&host, "s").await;
    assert_ne!(new_pid, pid, "a new process");
    assert_eq!(got["greeting"], "Howdy");
    assert_eq!(got["mode"], "fast");

    // The same values again change nothing: no restart, no event.
    host.set_settings("s", &changes(json!({"greeting": "Howdy"})))
        .await
        .unwrap();
    assert_eq!(seen(&host, "s").await.1, new_pid);
    host.shutdown().await;
    config["plugins"]["s"]["settings"]["greeting"] = "Howdy".into();
    let stored: Value = serde_json::from_slice(
        &std::fs::read(env.plugins().join(".metadata/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["plugins"]["s"]["settings"]["greeting"], "Howdy");
    assert_eq!(stored["plugins"]["s"]["settings"]["mode"], "fast");
}

#[tokio::test]
async fn a_plugin_with_live_settings_gets_them_without_a_restart() {
    let env = Env::new();
    env.install_test_plugin("live-settings", "l");
    std::fs::create_dir_all(env.plugins().join(".metadata")).unwrap();
    std::fs::write(
        env.plugins().join(".metadata/config.json"),
        json!({"version": 1, "plugins": {"l": {"settings": {"endpoint": "e"}}}}).to_string(),
    )
    .unwrap();
    let host = started(&env, &["l"]).await;
    let (_, pid) = seen(&host, "l").await;

    let mut rx = host.subscribe();
    host.set_settings(
        "l",
        &changes(json!({"greeting": "Howdy", "verbose": true, "api_token": SECRET})),
    )
    .await
    .unwrap();
    let event = wait_event(&mut rx, "l", EventKind::SettingsChanged).await;
    assert_eq!(
        event.reason.as_deref(),
        Some("api_token, greeting, verbose changed; applied while it runs")
    );
    // The message is on its way; the plugin answers in order, so a request after it sees it.
    let (got, same_pid) = seen(&host, "l").await;
    assert_eq!(same_pid, pid, "no restart");
    assert_eq!(
        got,
        json!({"greeting": "Howdy", "retries": 3, "verbose": true, "mode": "safe",
               "api_token": SECRET, "endpoint": "e"}),
        "all of its settings, defaults filled in"
    );
    assert_eq!(host.get("l").unwrap().restarts, 0);

    // Removing a value brings its default back, live too.
    host.set_settings("l", &changes(json!({"greeting": null})))
        .await
        .unwrap();
    assert_eq!(seen(&host, "l").await.0["greeting"], "Hello");
    host.shutdown().await;
    assert_secret_nowhere(&env.logs(), SECRET);
}

#[tokio::test]
async fn a_plugin_that_takes_no_license_key_refuses_one() {
    let env = Env::new();
    env.install_test_plugin("echo", "e");
    let host = started(&env, &["e"]).await;
    let err = host
        .set_license_key("e", Some("toru1.x"))
        .await
        .unwrap_err();
    let ManageError::InvalidSettings(fields) = err else {
        panic!("{err}")
    };
    assert_eq!(fields.0[0].0, "license_key");
    assert!(fields.0[0].1.contains("it takes none"), "{fields}");
    assert!(!host.get("e").unwrap().license_key_set);
    assert!(
        matches!(
            host.set_settings("nobody", &Map::new()).await,
            Err(ManageError::UnknownPlugin(_))
        ),
        "an unknown plugin"
    );
    host.shutdown().await;
}

/// A new version that needs a setting the running one does not declare: the upgrade fails and
/// the old version serves on; the new setting is shown and may be set, and setting it tries the
/// upgrade again.
#[tokio::test]
async fn an_upgrade_held_back_by_a_new_required_setting_goes_ahead_once_it_is_set() {
    let env = Env::new();
    env.install_test_plugin("serve", "u");
    let host = started(&env, &["u"]).await;
    let mut rx = host.subscribe();
    env.replace_atomically(
        "u.binary",
        test_plugin_script("settings", "u", &[("TORU_TEST_VERSION", "2.0.0")]).as_bytes(),
    );
    host.rescan().await.unwrap();
    let failed = wait_event(&mut rx, "u", EventKind::UpgradeFailed).await;
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("setting \"endpoint\" is required"),
        "{reason}"
    );
    let info = host.get("u").unwrap();
    assert_eq!(
        info.state,
        PluginState::Running,
        "the old version serves on"
    );
    let names: Vec<&str> = info.settings.iter().map(|s| s.spec.name.as_str()).collect();
    assert!(names.contains(&"endpoint"), "{names:?}");

    host.set_settings("u", &changes(json!({"endpoint": "https://example.net"})))
        .await
        .unwrap();
    wait_event(&mut rx, "u", EventKind::Upgraded).await;
    let info = host.get("u").unwrap();
    assert_eq!(info.metadata.unwrap().version, "2.0.0");
    assert_eq!(info.upgrade_error, None);
    let (got, _) = seen(&host, "u").await;
    assert_eq!(got["endpoint"], "https://example.net");
    host.shutdown().await;
}
