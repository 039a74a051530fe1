//! Enabling, disabling, persistence and shutdown (T1, T12-T14).

use toru_host::{CallError, PluginRequest, PluginState};
use toru_host::{EventKind, EventQuery};

use crate::util::*;

#[tokio::test]
async fn both_examples_start_and_serve() {
    let env = Env::new();
    env.install_rust_example();
    env.install_python_example();
    let host = env.start().await;
    let mut rx = host.subscribe();
    for id in ["hello-rust", "hello-python"] {
        if !host.get(id).unwrap().state.serves() {
            wait_event(&mut rx, id, EventKind::Started).await;
        }
        let info = host.get(id).unwrap();
        assert_eq!(info.state, PluginState::Running);
        assert_eq!(info.protocol_version, Some(2));
        assert!(alive(info.pid.unwrap()));
    }
    host.shutdown().await;
}

#[tokio::test]
async fn disable_stops_the_rust_example_and_enable_starts_it_again() {
    let env = Env::new();
    env.install_rust_example();
    disable_and_enable(&env, "hello-rust").await;
}

#[tokio::test]
async fn disable_stops_the_python_example_and_enable_starts_it_again() {
    let env = Env::new();
    env.install_python_example();
    disable_and_enable(&env, "hello-python").await;
}

async fn disable_and_enable(env: &Env, id: &str) {
    let route = format!("/{id}/");
    let host = env.start().await;
    let mut rx = host.subscribe();
    if !host.get(id).unwrap().state.serves() {
        wait_event(&mut rx, id, EventKind::Started).await;
    }
    let pid = pid_of(&host, id);

    let info = host.disable(id).await.unwrap();
    assert_eq!(info.state, PluginState::Disabled);
    assert!(!info.enabled);
    assert!(
        !alive(pid),
        "disabled plugin's process {pid} is still there"
    );
    let kinds = kinds_until(&mut rx, id, EventKind::Disabled).await;
    assert_eq!(kinds, [EventKind::Stopped, EventKind::Disabled]);
    let err = host
        .request(id, &PluginRequest::get(&route))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Disabled(_)), "{err}");

    host.enable(id).await.unwrap();
    wait_event(&mut rx, id, EventKind::Started).await;
    let resp = host.request(id, &PluginRequest::get(&route)).await.unwrap();
    assert_eq!(resp.status, 200);
    // Enabling a running plugin changes nothing.
    let pid = pid_of(&host, id);
    host.enable(id).await.unwrap();
    assert_eq!(pid_of(&host, id), pid);

    let events = host
        .events(&EventQuery::plugin(id).with_page(0, 50))
        .await
        .unwrap();
    let kinds: Vec<_> = events.iter().rev().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Discovered,
            EventKind::Started,
            EventKind::Stopped,
            EventKind::Disabled,
            EventKind::Enabled,
            EventKind::Started,
            EventKind::Enabled,
        ]
    );
    host.shutdown().await;
}

#[tokio::test]
async fn enabled_state_survives_a_restart_and_only_enabled_plugins_start() {
    let env = Env::new();
    env.install_test_plugin("serve", "keep");
    env.install_test_plugin("serve", "drop");
    let host = env.start().await;
    host.disable("drop").await.unwrap();
    host.shutdown().await;

    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(config.contains("\"drop\""), "{config}");

    let host = env.start().await;
    serving(&host, &["keep"]).await;
    let dropped = host.get("drop").unwrap();
    assert!(!dropped.enabled);
    assert_eq!(dropped.state, PluginState::Disabled);
    assert_eq!(dropped.pid, None);
    host.shutdown().await;
}

#[tokio::test]
async fn shutdown_leaves_no_plugin_process_or_grandchild() {
    let env = Env::new();
    env.install_test_plugin("spawn-child", "parent");
    env.install_python_example();
    let host = started(&env, &["parent", "hello-python"]).await;
    let grandchild = grandchild_pid(&env, "parent");
    let pids = [
        pid_of(&host, "parent"),
        pid_of(&host, "hello-python"),
        grandchild,
    ];
    assert!(alive(grandchild));
    host.shutdown().await;
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the host's shutdown");
    }
}
