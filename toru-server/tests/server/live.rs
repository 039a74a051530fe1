//! The live plugins folder through HTTP: `POST /api/plugins/rescan` (authenticated, same-origin),
//! files noticed without any call, and a server that listens at once with 200 plugins in its
//! folder while their `--metadata` has not even answered.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::util::{Env, Server, workspace_binary};

#[tokio::test]
async fn rescan_finds_a_new_file_and_says_so_and_is_refused_without_credentials_or_cross_site() {
    let env = Env::new();
    let server = Server::start(&env, &["--no-watch", "--rescan-interval", "1h"]).await;
    env.install_test_plugin("serve", "fresh");

    let r = server
        .anon(Method::POST, "/api/plugins/rescan")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = server
        .req(Method::POST, "/api/plugins/rescan")
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = server.get("/api/plugins/fresh").await;
    assert_eq!(r.status(), 404, "nothing scanned yet: the watch is off");

    let mut events = server.events().await;
    let r = server.post("/api/plugins/rescan").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["report"]["discovered"],
        serde_json::json!(["fresh"]),
        "{body}"
    );
    let listed: Vec<&str> = body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(listed, ["fresh"], "{body}");
    events.wait_plugin("fresh", "started").await;
    assert_eq!(server.get("/plugins/fresh/x").await.status(), 200);

    // Removed: the next rescan says so, and the plugin is listed as missing.
    std::fs::remove_file(env.plugins().join("fresh.binary")).unwrap();
    let body: Value = server
        .post("/api/plugins/rescan")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["report"]["removed"],
        serde_json::json!(["fresh"]),
        "{body}"
    );
    let info = server.plugin("fresh").await;
    assert_eq!(info["state"], "missing", "{info}");
    assert_eq!(server.get("/plugins/fresh/x").await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn a_replaced_file_is_upgraded_and_the_api_shows_the_new_metadata() {
    let env = Env::new();
    let bin = workspace_binary("toru-host", "toru-test-plugin");
    let script = |version: &str| {
        format!(
            "#!/bin/sh\nexport TORU_TEST_VERSION='{version}'\nexec '{}' serve up \"$@\"\n",
            bin.display()
        )
    };
    env.install_file("up.binary", script("1.0.0").as_bytes());
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["up"]).await;
    let mut events = server.events().await;
    // Written beside it, then renamed over it: noticed without any call.
    let tmp = env.install_file(".up.binary.tmp", script("1.1.0").as_bytes());
    std::fs::rename(&tmp, env.plugins().join("up.binary")).unwrap();
    let upgraded = events.wait_plugin("up", "upgraded").await;
    assert_eq!(upgraded["reason"], "version 1.0.0 to 1.1.0", "{upgraded}");
    let info = server.plugin("up").await;
    assert_eq!(info["metadata"]["version"], "1.1.0", "{info}");
    assert_eq!(info["state"], "running", "{info}");
    let body: Value = server.get("/plugins/up/").await.json().await.unwrap();
    assert_eq!(body["version"], "1.1.0", "{body}");
    server.stop().await;
}

#[tokio::test]
async fn with_200_plugins_the_server_listens_before_any_metadata_is_read_and_all_come_up() {
    const N: usize = 200;
    let env = Env::new();
    let bin = workspace_binary("toru-host", "toru-test-plugin");
    let gate = env.dir.path().join("gate");
    for i in 0..N {
        let script = format!(
            "#!/bin/sh\nexport TORU_TEST_GATE='{}'\nexec '{}' metadata-gate p{i:03} \"$@\"\n",
            gate.display(),
            bin.display()
        );
        env.install_file(&format!("p{i:03}.binary"), script.as_bytes());
    }
    // Every plugin's `--metadata` waits for the gate: whatever the server answers now, it
    // answers without having read any.
    let server = Server::start(&env, &[]).await;
    let r = server.anon(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let list = server.json("/api/plugins").await;
    assert_eq!(list["plugins"], serde_json::json!([]), "{list}");

    let mut events = server.events().await;
    std::fs::write(&gate, b"open").unwrap();
    let mut started = HashSet::new();
    let wait = async {
        while started.len() < N {
            let (name, event) = events.next().await.expect("the event stream ends");
            if name != "plugin" {
                continue;
            }
            let id = event["plugin_id"].as_str().unwrap_or_default().to_owned();
            match event["kind"].as_str() {
                Some("started") => {
                    started.insert(id);
                }
                Some("crashed" | "failed" | "load_failed") => {
                    panic!("{id} did not come up: {event}")
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), wait)
        .await
        .unwrap_or_else(|_| panic!("only {} of {N} plugins started", started.len()));
    let list = server.json("/api/plugins").await;
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), N);
    assert!(plugins.iter().all(|p| p["state"] == "running"));
    server.stop().await;
}
