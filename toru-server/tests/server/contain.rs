//! Containment and limits through the server: a plugin's `setsid` daemon (and its `--metadata`
//! run's) is gone after the server's SIGTERM and after its SIGKILL; `/api/plugins` says how
//! each plugin is contained and limited; `PUT /api/plugins/:id/limits` sets a plugin's own
//! limits, and refuses bad ones with a message per field.

use reqwest::Method;
use serde_json::{Value, json};

use crate::util::{Env, Server, alive, pid_file, signal, wait_gone};

#[tokio::test]
async fn sigterm_leaves_no_daemon_behind() {
    let env = Env::new();
    env.install_test_plugin("daemon", "demon");
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["demon"]).await;
    wait_gone(pid_file(&env, "demon.meta-daemon-pid")).await;
    let daemon = pid_file(&env, "demon.daemon-pid");
    assert!(alive(daemon), "the daemon runs beside its plugin");
    let status = server.stop().await;
    assert!(status.success(), "{status}");
    assert!(!alive(daemon), "the daemon {daemon} outlived the server");
}

#[tokio::test]
async fn sigkill_leaves_no_daemon_behind() {
    let env = Env::new();
    env.install_test_plugin("daemon", "demon");
    let mut server = Server::start(&env, &[]).await;
    server.wait_running(&["demon"]).await;
    let plugin = server.plugin("demon").await["pid"].as_u64().unwrap();
    let daemon = pid_file(&env, "demon.daemon-pid");
    assert!(alive(daemon));
    signal(server.pid(), rustix::process::Signal::KILL);
    server.child.wait().await.unwrap();
    wait_gone(plugin).await;
    wait_gone(daemon).await;
}

#[tokio::test]
async fn plugins_say_how_they_are_contained_and_limited() {
    let env = Env::new();
    env.install_test_plugin("echo", "plain");
    let server = Server::start(
        &env,
        &["--plugin-memory-limit", "256MiB", "--plugin-cpu", "50%"],
    )
    .await;
    server.wait_running(&["plain"]).await;
    let info = server.plugin("plain").await;
    let containment = info["containment"].as_str().unwrap_or_default();
    assert!(
        ["cgroup-v2", "cgroup-v1", "pid-namespace", "subreaper"].contains(&containment),
        "{info}"
    );
    assert_eq!(info["limits"]["memory"], 256 << 20, "{info}");
    assert_eq!(info["limits"]["cpu"], 0.5, "{info}");
    assert_eq!(info["limits"]["open_files"], 1024, "{info}");
    assert_eq!(info["limit_overrides"], json!({}), "{info}");
    assert_eq!(info["limits_enforced_by"]["open_files"], "rlimit", "{info}");
    let instance = server.json("/api/instance").await;
    assert_eq!(instance["containment"], containment, "{instance}");
    assert_eq!(
        instance["default_limits"]["memory"],
        256 << 20,
        "{instance}"
    );
    // The log says it too.
    let log = crate::util::wait_file_contains(
        &env.logs().join("plugin-supervisor.log"),
        &format!("containment: {containment}"),
    )
    .await;
    assert!(log.contains("plain"), "{log}");
    server.stop().await;
}

#[tokio::test]
async fn limits_are_set_through_the_api_and_bad_ones_are_refused_per_field() {
    let env = Env::new();
    env.install_test_plugin("echo", "plain");
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["plain"]).await;
    let before = server.plugin("plain").await["pid"].as_u64().unwrap();
    let put = |body: Value| {
        server
            .req(Method::PUT, "/api/plugins/plain/limits")
            .json(&body)
            .send()
    };

    let r = put(json!({"memory": "lots", "processes": 0, "cpu": "50%", "disk": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "bad_limits", "{body}");
    let fields = error["fields"].as_object().expect("fields");
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["disk", "memory", "processes"], "{body}");
    assert!(
        fields["memory"]
            .as_str()
            .unwrap()
            .contains("\"lots\" is not a size"),
        "{body}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("processes: 0 is out of range"),
        "{body}"
    );
    let r = put(json!(["not", "an", "object"])).await.unwrap();
    assert_eq!(r.status(), 400);
    // Nothing was stored, and the plugin was left alone.
    let info = server.plugin("plain").await;
    assert_eq!(info["limit_overrides"], json!({}), "{info}");
    assert_eq!(info["pid"].as_u64(), Some(before));

    let mut events = server.events().await;
    let r = put(json!({"memory": "64MiB", "open_files": 100, "cpu": "unlimited"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["limits"]["memory"], 64 << 20, "{info}");
    assert_eq!(info["limits"]["cpu"], "unlimited", "{info}");
    assert_eq!(
        info["limit_overrides"],
        json!({"memory": 64 << 20, "open_files": 100, "cpu": "unlimited"}),
        "{info}"
    );
    events.wait_plugin("plain", "started").await;
    let after = server.plugin("plain").await["pid"].as_u64().unwrap();
    assert_ne!(after, before, "restarted under its new limits");
    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(config.contains("\"open_files\": 100"), "{config}");

    let r = put(json!({})).await.unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(
        info["limit_overrides"],
        json!({}),
        "back to the defaults: {info}"
    );

    let r = server
        .req(Method::PUT, "/api/plugins/nobody/limits")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}
