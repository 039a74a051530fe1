//! Forwarding requests to plugins, and plugins that break the protocol (T8, T16-T19).

use std::time::Duration;

use toru_host::EventKind;
use toru_host::{CallError, PluginRequest, PluginState};

use crate::util::*;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn requests_reach_both_examples_with_the_full_path_and_the_instance_id() {
    let env = Env::new();
    env.install_rust_example();
    env.install_python_example();
    let host = started(&env, &["hello-rust", "hello-python"]).await;
    for (id, route) in [
        ("hello-rust", "/hello-rust"),
        ("hello-python", "/hello-python"),
    ] {
        let resp = host
            .request(id, &PluginRequest::get(format!("{route}/")))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            json(&resp.body)["instance_id"],
            host.instance_id().to_string()
        );

        let req = PluginRequest::get(format!("{route}/echo"))
            .with_query("a=1&b=two")
            .with_header("x-test", "yes")
            .with_body(vec![0u8, 159, 146, 150]);
        let resp = host.request_by_path(&req).await.unwrap();
        assert_eq!(resp.status, 200, "{id}");
        let echo = json(&resp.body);
        assert_eq!(echo["path"], format!("{route}/echo"), "{id}");
        assert_eq!(echo["query"], "a=1&b=two", "{id}");
        assert!(
            echo["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == "x-test" && h[1] == "yes"),
            "{id}: {echo}"
        );
        // Not UTF-8: it travelled base64-encoded and came back the same.
        assert_eq!(echo["body_base64"], "AJ+Slg==", "{id}: {echo}");

        let resp = host
            .request_by_path(&PluginRequest::get(format!("{route}/nope")))
            .await
            .unwrap();
        assert_eq!(resp.status, 404);
        assert!(host.bundle(id).await.unwrap().contains("mount"));
    }
    let err = host
        .request_by_path(&PluginRequest::get("/nobody/here"))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownPlugin(_)), "{err}");
    let err = host
        .request("ghost", &PluginRequest::get("/ghost/"))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownPlugin(_)), "{err}");
    host.shutdown().await;
}

#[tokio::test]
async fn a_thousand_concurrent_requests_through_one_plugin_are_all_answered() {
    let env = Env::new();
    env.install_rust_example();
    let host = started(&env, &["hello-rust"]).await;
    let calls = (0..1000).map(|i| {
        let host = host.clone();
        async move {
            let req = PluginRequest::get("/hello-rust/echo").with_query(format!("i={i}"));
            let resp = host.request("hello-rust", &req).await.unwrap();
            assert_eq!(json(&resp.body)["query"], format!("i={i}"));
        }
    });
    futures_util::future::join_all(calls).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_plugin_error_and_a_timeout_are_told_apart_and_the_timeout_cancels() {
    let env = Env::new();
    env.install_test_plugin("serve", "t");
    let mut b = env.builder();
    b.request_timeout(Duration::from_millis(300));
    let host = start_with(&b).await;
    serving(&host, &["t"]).await;
    let err = host
        .request("t", &PluginRequest::get("/t/error"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Plugin { code, .. } if code == "plugin_error"),
        "{err}"
    );
    let err = host
        .request("t", &PluginRequest::get("/t/sleep"))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    // The plugin still serves, and it was told to stop working on the slow request.
    let resp = host
        .request("t", &PluginRequest::get("/t/ok"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    host.shutdown().await;
    let log = std::fs::read_to_string(env.logs().join("plugins/t.log")).unwrap();
    assert!(log.contains("cancelled request"), "{log}");
}

#[tokio::test]
async fn plugins_that_break_the_protocol_are_stopped_with_the_reason_and_others_carry_on() {
    let env = Env::new();
    env.install_test_plugin("garbage", "garbage");
    env.install_test_plugin("oversized", "big");
    env.install_python_example();
    let host = started(&env, &["garbage", "big", "hello-python"]).await;
    let mut rx = host.subscribe();
    for (id, expect) in [
        ("garbage", "not a valid protocol message"),
        ("big", "exceeds"),
    ] {
        let pid = pid_of(&host, id);
        let err = host
            .request(id, &PluginRequest::get(format!("/{id}/x")))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost(_)), "{err}");
        let crash = wait_event(&mut rx, id, EventKind::Crashed).await;
        let reason = crash.reason.unwrap_or_default();
        assert!(reason.contains(expect), "{id}: {reason}");
        assert!(!alive(pid), "{id}'s process {pid} is still running");
        let resp = host
            .request("hello-python", &PluginRequest::get("/hello-python/"))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
    }
    host.shutdown().await;
}

#[tokio::test]
async fn plugins_that_never_get_ready_time_out_as_crashes() {
    let env = Env::new();
    env.install_test_plugin("never-bind", "nobind");
    env.install_test_plugin("never-init", "noinit");
    env.install_test_plugin("exit-at-once", "quitter");
    let mut b = env.builder();
    b.start_timeout(Duration::from_millis(500));
    let host = start_with(&b).await;
    for (id, expect) in [
        ("nobind", "not ready within"),
        ("noinit", "not ready within"),
        ("quitter", "exit code 1"),
    ] {
        let recorded = wait_recorded(&host, id, EventKind::Crashed).await;
        let crash = recorded
            .iter()
            .find(|e| e.kind == EventKind::Crashed)
            .unwrap();
        let reason = crash.reason.clone().unwrap_or_default();
        assert!(reason.contains(expect), "{id}: {reason}");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn an_incompatible_plugin_fails_once_and_is_not_restarted() {
    let env = Env::new();
    env.install_test_plugin("old-protocol", "old");
    let host = env.start().await;
    let recorded = wait_recorded(&host, "old", EventKind::Failed).await;
    assert!(
        !recorded.iter().any(|e| e.kind == EventKind::Crashed),
        "{recorded:?}"
    );
    let info = host.get("old").unwrap();
    assert!(
        matches!(&info.state, PluginState::Failed { reason } if reason.contains("incompatible")),
        "{info:?}"
    );
    assert_eq!(info.restarts, 0);
    host.shutdown().await;
}
