//! Spec "Plugin Lifecycle" through HTTP: enabling spawns and opens the routes, disabling stops
//! the process and closes them, the state survives a restart, and SIGTERM leaves no plugin
//! process behind.

use serde_json::Value;

use crate::util::{Env, Server, alive, wait_file_contains};

fn pid(info: &Value) -> u64 {
    info["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {info}"))
}

#[tokio::test]
async fn disable_stops_the_process_and_closes_routes_and_enable_brings_both_back() {
    let env = Env::new();
    env.install_examples();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust", "hello-python"]).await;

    for id in ["hello-rust", "hello-python"] {
        let before = pid(&server.plugin(id).await);
        assert!(alive(before), "{id} runs as pid {before}");

        let mut events = server.events().await;
        let r = server.post(&format!("/api/plugins/{id}/disable")).await;
        assert_eq!(r.status(), 200);
        let info: Value = r.json().await.unwrap();
        assert_eq!(info["enabled"], false, "{info}");
        assert_eq!(info["state"], "disabled", "{info}");
        assert!(info["pid"].is_null(), "{info}");
        // It was asked to shut down, and did, by itself: exit code 0.
        assert_eq!(info["last_exit"], serde_json::json!({"code": 0}), "{info}");
        assert!(!alive(before), "{id}'s process {before} is gone");
        events.wait_plugin(id, "disabled").await;

        let r = server.get(&format!("/plugins/{id}/")).await;
        assert_eq!(r.status(), 404, "{id}'s route while disabled");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "plugin_disabled", "{body}");

        let r = server.post(&format!("/api/plugins/{id}/enable")).await;
        assert_eq!(r.status(), 200);
        let info: Value = r.json().await.unwrap();
        assert_eq!(info["enabled"], true, "{info}");
        events.wait_plugin(id, "started").await;
        let after = pid(&server.plugin(id).await);
        assert_ne!(after, before, "a new process");
        assert!(alive(after));
        let r = server.get(&format!("/plugins/{id}/")).await;
        assert_eq!(r.status(), 200, "{id}'s route after enabling");
    }

    // Enabling a running plugin changes nothing; unknown plugins are 404.
    let running = pid(&server.plugin("hello-rust").await);
    let r = server.post("/api/plugins/hello-rust/enable").await;
    assert_eq!(r.status(), 200);
    assert_eq!(pid(&server.plugin("hello-rust").await), running);
    for action in ["enable", "disable"] {
        let r = server.post(&format!("/api/plugins/nobody/{action}")).await;
        assert_eq!(r.status(), 404, "{action}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_plugin");
    }
    server.stop().await;
}

#[tokio::test]
async fn enabled_state_survives_a_restart_and_only_enabled_plugins_start() {
    let env = Env::new();
    env.install_examples();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust", "hello-python"]).await;
    let r = server.post("/api/plugins/hello-python/disable").await;
    assert_eq!(r.status(), 200);
    assert!(server.stop().await.success());

    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(config.contains("hello-python"), "{config}");

    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    let python = server.plugin("hello-python").await;
    assert_eq!(python["enabled"], false, "{python}");
    assert_eq!(python["state"], "disabled", "{python}");
    assert!(python["pid"].is_null(), "not spawned: {python}");
    assert_eq!(server.get("/plugins/hello-python/").await.status(), 404);
    assert_eq!(server.get("/plugins/hello-rust/").await.status(), 200);

    let r = server.post("/api/plugins/hello-python/enable").await;
    assert_eq!(r.status(), 200);
    assert!(server.stop().await.success());

    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust", "hello-python"]).await;
    assert_eq!(server.plugin("hello-python").await["enabled"], true);
    assert_eq!(server.get("/plugins/hello-python/").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn sigterm_stops_every_plugin_process_and_the_server() {
    let env = Env::new();
    env.install_examples();
    env.install_test_plugin("spawn-child", "kids");
    let server = Server::start(&env, &[]).await;
    server
        .wait_running(&["hello-rust", "hello-python", "kids"])
        .await;
    let list = server.json("/api/plugins").await;
    let pids: Vec<u64> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(pid)
        .collect();
    assert_eq!(pids.len(), 3, "{list}");
    // The test plugin's own child, which only the end of its process group takes with it. The
    // plugin writes its pid before answering `init`, so it is there once the plugin runs.
    let grandchild: u64 = std::fs::read_to_string(env.plugins().join("kids.child-pid"))
        .expect("the child's pid file")
        .trim()
        .parse()
        .expect("a pid");
    for p in pids.iter().chain([&grandchild]) {
        assert!(alive(*p), "{p} runs before SIGTERM");
    }

    let status = server.stop().await;
    assert!(
        status.success(),
        "toru-server exits cleanly on SIGTERM: {status}"
    );
    for p in pids.iter().chain([&grandchild]) {
        assert!(!alive(*p), "process {p} outlived the server");
    }
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    let slow = tokio::spawn(
        server
            .req(reqwest::Method::GET, "/plugins/hello-rust/slow?ms=1000")
            .send(),
    );
    // The server logs each request as it starts (RUST_LOG=info).
    wait_file_contains(
        &env.dir.path().join("server.log"),
        "path=/plugins/hello-rust/slow",
    )
    .await;
    let status = server.stop().await;
    assert!(status.success(), "{status}");
    let r = slow.await.unwrap().expect("an answer");
    assert_eq!(r.status(), 200, "the request in flight was answered");
}
