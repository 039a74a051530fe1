//! Crashes, restarts with backoff, health checks, disabling unstable plugins (T15, T23).

use std::time::Duration;

use toru_host::{EventKind, EventQuery, ExitStatus};
use toru_host::{HealthPolicy, PluginHost, PluginRequest, PluginState};

use crate::util::*;

/// The Python example serves throughout every test here, to show other plugins carry on.
async fn neighbour_serves(host: &PluginHost) {
    let resp = host
        .request("hello-python", &PluginRequest::get("/hello-python/"))
        .await
        .expect("the neighbour plugin keeps serving");
    assert_eq!(resp.status, 200);
}

async fn start_with_neighbour(env: &Env, builder: toru_host::PluginHostBuilder) -> PluginHost {
    env.install_python_example();
    let host = start_with(&builder).await;
    serving(&host, &["hello-python"]).await;
    host
}

#[tokio::test]
async fn panics_exits_and_outside_kills_are_restarted_with_events_in_order() {
    let env = Env::new();
    env.install_test_plugin("serve", "p");
    let host = start_with_neighbour(&env, env.builder()).await;
    let mut rx = host.subscribe();
    serving(&host, &["p"]).await;
    // A panic in a handler, an exit(1), and a SIGKILL from outside.
    for (how, exit) in [
        ("panic", ExitStatus::Code(101)),
        ("exit", ExitStatus::Code(1)),
        ("sigkill", ExitStatus::Signal(9)),
    ] {
        let pid = pid_of(&host, "p");
        if how == "sigkill" {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            )
            .unwrap();
        } else {
            let err = host
                .request("p", &PluginRequest::get(format!("/p/{how}")))
                .await;
            assert!(err.is_err(), "{how}: the plugin answered instead of dying");
        }
        let mut crash_reason = String::new();
        let mut kinds = Vec::new();
        wait_for(&mut rx, "p to restart", |e| {
            if e.plugin_id == "p" {
                kinds.push(e.kind);
                if e.kind == EventKind::Crashed {
                    crash_reason = e.reason.clone().unwrap_or_default();
                }
            }
            e.plugin_id == "p" && e.kind == EventKind::Restarted
        })
        .await;
        assert_eq!(
            kinds,
            [
                EventKind::Crashed,
                EventKind::Restarting,
                EventKind::Started,
                EventKind::Restarted
            ],
            "{how}"
        );
        assert!(
            crash_reason.contains(&exit.to_string()),
            "{how}: {crash_reason}"
        );
        let info = host.get("p").unwrap();
        assert_eq!(info.last_exit, Some(exit), "{how}");
        assert_eq!(info.last_error, None, "{how}: cleared once it runs again");
        assert_eq!(info.state, PluginState::Running, "{how}");
        assert_ne!(info.pid, Some(pid), "{how}");
        neighbour_serves(&host).await;
    }
    let crashes = host
        .events(&EventQuery::plugin("p").with_page(0, 100))
        .await
        .unwrap();
    let panic_crash = crashes
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Crashed)
        .expect("a recorded crash");
    assert!(
        panic_crash
            .stderr_tail
            .iter()
            .any(|l| l.contains("asked to panic")),
        "{panic_crash:?}"
    );
    assert_eq!(host.get("p").unwrap().restarts, 3);
    host.shutdown().await;
    // The crashes are in the plugin's own log, beside its last lines.
    let host = env.start().await;
    let page = host
        .logs("p", &toru_host::LogQuery::new(0, 1000))
        .await
        .unwrap();
    let crashes = page
        .entries
        .iter()
        .filter(|e| e.source == toru_host::LogSource::Host && e.message.contains("crashed"))
        .count();
    assert_eq!(crashes, 3, "{page:?}");
    host.shutdown().await;
}

#[tokio::test]
async fn a_plugin_that_stops_answering_pings_is_killed_and_restarted() {
    let env = Env::new();
    env.install_test_plugin("hang", "h");
    let mut b = env.builder();
    b.health_policy(
        HealthPolicy::default()
            .with_interval(Duration::from_millis(30))
            .with_timeout(Duration::from_millis(30))
            .with_max_missed(3),
    );
    let host = start_with_neighbour(&env, b).await;
    let recorded = wait_recorded(&host, "h", EventKind::Restarted).await;
    let kinds: Vec<EventKind> = recorded.iter().map(|e| e.kind).collect();
    let from = kinds
        .iter()
        .position(|k| *k == EventKind::Unhealthy)
        .expect("unhealthy");
    assert_eq!(
        kinds[from..from + 5],
        [
            EventKind::Unhealthy,
            EventKind::Crashed,
            EventKind::Restarting,
            EventKind::Started,
            EventKind::Restarted
        ]
    );
    let crash = host
        .events(&EventQuery::plugin("h").with_page(0, 100))
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == EventKind::Crashed)
        .unwrap();
    assert!(crash.reason.unwrap().contains("missed 3 health pings"));
    assert_eq!(crash.exit, Some(ExitStatus::Signal(9)));
    neighbour_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_plugin_that_always_crashes_is_disabled_after_exactly_ten_and_stays_disabled() {
    let env = Env::new();
    env.install_test_plugin("exit-at-once", "c");
    let host = start_with_neighbour(&env, env.builder()).await;
    let recorded = wait_recorded(&host, "c", EventKind::Disabled).await;
    let count = |kind| recorded.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(EventKind::Crashed), 10, "{recorded:?}");
    assert_eq!(count(EventKind::Restarting), 9, "{recorded:?}");
    assert_eq!(recorded.last().unwrap().kind, EventKind::Disabled);
    let disabled = recorded
        .iter()
        .find(|e| e.kind == EventKind::Disabled)
        .unwrap();
    assert!(
        disabled
            .reason
            .as_deref()
            .unwrap()
            .contains("10 times in a row")
    );
    let info = host.get("c").unwrap();
    assert!(!info.enabled);
    assert_eq!(info.state, PluginState::Disabled);
    neighbour_serves(&host).await;
    host.shutdown().await;

    // The decision was persisted: a new host does not start it.
    let host = env.start().await;
    assert!(!host.get("c").unwrap().enabled);
    assert_eq!(host.get("c").unwrap().state, PluginState::Disabled);
    // Enabling starts it again, with a fresh count.
    let mut rx = host.subscribe();
    host.enable("c").await.unwrap();
    let crash = wait_event(&mut rx, "c", EventKind::Crashed).await;
    assert_eq!(crash.exit, Some(ExitStatus::Code(1)));
    assert!(host.get("c").unwrap().consecutive_crashes <= 10);
    host.disable("c").await.unwrap();
    host.shutdown().await;
}

#[tokio::test]
async fn exit_78_fails_without_restart_and_keeps_the_last_log_lines() {
    let env = Env::new();
    env.install_test_plugin("exit78", "lic");
    let host = start_with_neighbour(&env, env.builder()).await;
    let recorded = wait_recorded(&host, "lic", EventKind::Failed).await;
    let failed = recorded
        .iter()
        .find(|e| e.kind == EventKind::Failed)
        .unwrap()
        .clone();
    assert_eq!(failed.exit, Some(ExitStatus::Code(78)));
    assert!(
        failed
            .stderr_tail
            .iter()
            .any(|l| l.contains("license key refused")),
        "{failed:?}"
    );
    assert!(failed.reason.unwrap().contains("license key refused"));
    let info = host.get("lic").unwrap();
    assert_eq!(info.restarts, 0);
    assert!(
        info.enabled,
        "a failed plugin stays enabled, waiting for a fix"
    );
    assert!(
        !recorded
            .iter()
            .any(|e| e.kind == EventKind::Crashed || e.kind == EventKind::Restarting)
    );
    neighbour_serves(&host).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_refused_init_fails_with_the_plugins_reason() {
    let env = Env::new();
    env.install_test_plugin("refuse-init", "r");
    let host = env.start().await;
    let recorded = wait_recorded(&host, "r", EventKind::Failed).await;
    let failed = recorded.last().unwrap();
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap()
            .contains("license key missing"),
        "{failed:?}"
    );
    assert_eq!(failed.exit, Some(ExitStatus::Code(78)));
    host.shutdown().await;
}

#[tokio::test]
async fn storing_a_license_key_restarts_the_plugin_with_it() {
    let env = Env::new();
    env.install_test_plugin("needs-key", "k");
    let host = env.start().await;
    wait_recorded(&host, "k", EventKind::Failed).await;
    assert!(!host.get("k").unwrap().license_key_set);

    let mut rx = host.subscribe();
    let info = host.set_license_key("k", Some("bad")).await.unwrap();
    assert!(info.license_key_set);
    wait_event(&mut rx, "k", EventKind::Failed).await;

    host.set_license_key("k", Some(" good\n")).await.unwrap();
    wait_event(&mut rx, "k", EventKind::Started).await;
    assert_eq!(host.get("k").unwrap().state, PluginState::Running);
    host.shutdown().await;
    // The key was persisted, trimmed, for the next start.
    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(config.contains("\"license_key\": \"good\""), "{config}");
}
