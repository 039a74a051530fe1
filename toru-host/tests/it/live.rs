//! The live plugins folder (issue 12 items 3 to 5): files that appear, go away and are
//! replaced while the host runs are noticed without any call; a replaced file is an upgrade
//! without downtime; a broken one leaves the old version serving; start-up at scale; starts
//! that fail for lack of resources; a protocol break right after `ready`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use toru_host::{CallError, PluginHostBuilder, PluginRequest, PluginState};
use toru_host::{EventKind, EventQuery};

use crate::util::*;

/// A builder whose folder watch acts 50 ms after the last change.
fn live(env: &Env) -> PluginHostBuilder {
    let mut b = env.builder();
    b.watch_debounce(Duration::from_millis(50));
    b
}

/// A `serve` test plugin `id` that says it is `version`.
fn versioned(id: &str, mode: &str, version: &str) -> Vec<u8> {
    test_plugin_script(mode, id, &[("TORU_TEST_VERSION", version)]).into_bytes()
}

fn version_of(host: &toru_host::PluginHost, id: &str) -> String {
    host.get(id).unwrap().metadata.expect("metadata").version
}

async fn recorded(host: &toru_host::PluginHost, id: &str) -> Vec<EventKind> {
    let query = EventQuery::plugin(id).with_page(0, 1000);
    let mut events = host.events(&query).await.unwrap();
    events.reverse();
    events.into_iter().map(|e| e.kind).collect()
}

#[tokio::test]
async fn a_new_file_is_noticed_and_started_without_any_call() {
    let env = Env::new();
    let host = start_with(&live(&env)).await;
    assert!(host.list().is_empty());
    let mut rx = host.subscribe();
    env.install_test_plugin("serve", "dropped");
    let kinds = kinds_until(&mut rx, "dropped", EventKind::Started).await;
    assert_eq!(kinds, [EventKind::Discovered, EventKind::Started]);
    let resp = host
        .request_by_path(&PluginRequest::get("/dropped/hi"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    host.shutdown().await;
}

#[tokio::test]
async fn a_new_file_is_listed_but_not_started_when_new_plugins_start_disabled() {
    let env = Env::new();
    let mut b = live(&env);
    b.enable_new_plugins(false);
    let host = start_with(&b).await;
    let mut rx = host.subscribe();
    env.install_test_plugin("serve", "quiet");
    wait_event(&mut rx, "quiet", EventKind::Discovered).await;
    let info = host.get("quiet").unwrap();
    assert_eq!(info.state, PluginState::Disabled);
    assert!(!info.enabled);
    host.shutdown().await;
}

#[tokio::test]
async fn a_removed_file_stops_its_plugin_which_stays_missing_with_its_data_until_it_is_back() {
    let env = Env::new();
    let file = env.install_test_plugin("serve", "gone");
    let script = std::fs::read(&file).unwrap();
    // A setting the plugin does not declare (left by hand, or by an earlier version).
    std::fs::create_dir_all(env.plugins().join(".metadata")).unwrap();
    std::fs::write(
        env.plugins().join(".metadata/config.json"),
        r#"{"version": 1, "plugins": {"gone": {"settings": {"colour": "blue"}}}}"#,
    )
    .unwrap();
    let host = start_with(&live(&env)).await;
    serving(&host, &["gone"]).await;
    host.kv("gone").unwrap().set("kept", "yes").await.unwrap();
    let pid = pid_of(&host, "gone");
    let mut rx = host.subscribe();

    std::fs::remove_file(&file).unwrap();
    wait_event(&mut rx, "gone", EventKind::Removed).await;
    wait_gone(pid).await;
    let info = host.get("gone").unwrap();
    assert_eq!(info.state, PluginState::Missing);
    assert!(info.enabled, "it is still enabled, for when it comes back");
    assert_eq!(info.pid, None);
    let err = host
        .request_by_path(&PluginRequest::get("/gone/"))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownPlugin(_)), "{err}");
    assert_eq!(
        host.kv("gone")
            .unwrap()
            .get("kept")
            .await
            .unwrap()
            .as_deref(),
        Some("yes")
    );
    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(config.contains("\"colour\": \"blue\""), "{config}");

    // Back, under another name: the same plugin (its id), with its data.
    env.install_file("gone-again.binary", &script);
    let kinds = kinds_until(&mut rx, "gone", EventKind::Started).await;
    assert_eq!(kinds, [EventKind::Discovered, EventKind::Started]);
    assert_eq!(host.get("gone").unwrap().state, PluginState::Running);
    assert_eq!(
        host.kv("gone")
            .unwrap()
            .get("kept")
            .await
            .unwrap()
            .as_deref(),
        Some("yes")
    );
    host.shutdown().await;
}

#[tokio::test]
async fn twenty_upgrades_under_continuous_load_fail_no_request() {
    let env = Env::new();
    env.install_file("up.binary", &versioned("up", "serve", "1.0.0"));
    let host = start_with(&live(&env)).await;
    serving(&host, &["up"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (host, stop) = (host.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let request = PluginRequest::get(format!("/up/client-{c}"));
                    match host.request("up", &request).await {
                        Ok(r) if r.status == 200 => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    let mut rx = host.subscribe();
    let mut old_pids = Vec::new();
    for n in 1..=20 {
        old_pids.push(pid_of(&host, "up"));
        let contents = versioned("up", "serve", &format!("1.0.{n}"));
        // Half renamed over the old file, half written over it in place.
        if n % 2 == 0 {
            env.replace_atomically("up.binary", &contents);
        } else {
            env.overwrite("up.binary", &contents);
        }
        let upgraded = wait_event(&mut rx, "up", EventKind::Upgraded).await;
        let reason = upgraded.reason.unwrap_or_default();
        assert!(reason.ends_with(&format!("to 1.0.{n}")), "{reason}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during upgrades: {failed:?}"
        );
        served += ok;
    }
    assert!(served > 20, "the clients kept sending: {served}");

    assert_eq!(version_of(&host, "up"), "1.0.20");
    let resp = host
        .request("up", &PluginRequest::get("/up/"))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["version"], "1.0.20", "{body}");
    // Every old version finished and stopped.
    for pid in old_pids {
        wait_gone(pid).await;
    }
    let kinds = recorded(&host, "up").await;
    let count = |k| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count(EventKind::Upgraded), 20, "{kinds:?}");
    assert_eq!(count(EventKind::Crashed), 0, "{kinds:?}");
    assert_eq!(count(EventKind::UpgradeFailed), 0, "{kinds:?}");
    assert_eq!(host.get("up").unwrap().draining, 0);
    host.shutdown().await;
}

#[tokio::test]
async fn a_broken_upgrade_leaves_the_old_version_serving_and_is_reported() {
    let env = Env::new();
    env.install_file("stay.binary", &versioned("stay", "serve", "1.0.0"));
    let mut b = live(&env);
    b.start_timeout(Duration::from_secs(1));
    let host = start_with(&b).await;
    serving(&host, &["stay"]).await;
    let pid = pid_of(&host, "stay");
    let mut rx = host.subscribe();

    for (n, (mode, why)) in [
        ("exit-at-once", "exited during start-up"),
        ("never-bind", "not ready within"),
        ("bad-metadata", "cannot be loaded"),
    ]
    .into_iter()
    .enumerate()
    {
        let contents = versioned("stay", mode, &format!("2.0.{n}"));
        env.replace_atomically("stay.binary", &contents);
        let failed = wait_event(&mut rx, "stay", EventKind::UpgradeFailed).await;
        let reason = failed.reason.unwrap_or_default();
        assert!(reason.contains(why), "{mode}: {reason}");
        let info = host.get("stay").unwrap();
        assert_eq!(info.state, PluginState::Running, "{mode}");
        assert_eq!(info.pid, Some(pid), "{mode}: the old process serves on");
        assert_eq!(info.metadata.unwrap().version, "1.0.0", "{mode}");
        assert!(
            info.upgrade_error.unwrap_or_default().contains(why),
            "{mode}"
        );
        let resp = host
            .request("stay", &PluginRequest::get("/stay/"))
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{mode}");
    }
    assert!(alive(pid));

    // A good file after the broken ones: upgraded, and the report is cleared.
    env.replace_atomically("stay.binary", &versioned("stay", "serve", "3.0.0"));
    wait_event(&mut rx, "stay", EventKind::Upgraded).await;
    wait_gone(pid).await;
    let info = host.get("stay").unwrap();
    assert_eq!(info.metadata.unwrap().version, "3.0.0");
    assert_eq!(info.upgrade_error, None);
    let kinds = recorded(&host, "stay").await;
    assert!(!kinds.contains(&EventKind::Crashed), "{kinds:?}");
    host.shutdown().await;
}

#[tokio::test]
async fn an_installed_plugin_keeps_its_id_and_route_against_a_new_file_that_sorts_first() {
    let env = Env::new();
    env.install_test_plugin("serve", "owner");
    let host = start_with(&live(&env)).await;
    serving(&host, &["owner"]).await;
    let pid = pid_of(&host, "owner");
    let mut rx = host.subscribe();
    // `a-rival.binary` sorts before `owner.binary` and claims the same id.
    env.install_file(
        "a-rival.binary",
        test_plugin_script("serve", "owner", &[]).as_bytes(),
    );
    let failed = wait_event(&mut rx, "a-rival.binary", EventKind::LoadFailed).await;
    assert!(
        failed
            .reason
            .unwrap()
            .contains("already used by owner.binary"),
        "the installed plugin keeps its id"
    );
    assert_eq!(pid_of(&host, "owner"), pid);
    assert_eq!(host.route_owner("/owner/x").as_deref(), Some("owner"));
    host.shutdown().await;
}

#[tokio::test]
async fn a_metadata_timeout_is_retried_until_the_plugin_loads() {
    let env = Env::new();
    let marker = env.dir.path().join("slow-once");
    env.install_test_plugin_with(
        "metadata-slow-once",
        "slow",
        &[("TORU_TEST_MARKER", marker.to_str().unwrap())],
    );
    let mut b = live(&env);
    b.metadata_timeout(Duration::from_millis(300));
    let host = b.start().await.unwrap();
    let mut rx = host.subscribe();
    host.discovered().await;
    let failed = host.get("slow.binary").unwrap();
    assert!(
        failed.load_error.unwrap().contains("did not finish"),
        "the first --metadata timed out"
    );
    // Tried again (after a second): it answers this time.
    wait_event(&mut rx, "slow", EventKind::Started).await;
    assert!(host.get("slow.binary").is_err(), "the failure is forgotten");
    host.shutdown().await;
}

#[tokio::test]
async fn a_start_that_fails_for_lack_of_resources_is_retried_and_not_a_crash() {
    let env = Env::new();
    env.install_test_plugin("serve", "res");
    let emfile = rustix::io::Errno::MFILE.raw_os_error();
    let failures = Arc::new(AtomicU32::new(3));
    let mut b = env.builder();
    let left = Arc::clone(&failures);
    b.spawn_fault(move |id| {
        let fail = id == "res"
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        fail.then_some(emfile)
    });
    let host = b.start().await.unwrap();
    let mut rx = host.subscribe();
    let kinds = kinds_until(&mut rx, "res", EventKind::Started).await;
    assert_eq!(
        kinds,
        [
            EventKind::Discovered,
            EventKind::OutOfResources,
            EventKind::OutOfResources,
            EventKind::OutOfResources,
            EventKind::Started
        ]
    );
    let info = host.get("res").unwrap();
    assert_eq!((info.consecutive_crashes, info.restarts), (0, 0));

    // After a crash too: the resource failures of the restart are not counted.
    failures.store(2, Ordering::SeqCst);
    let pid = pid_of(&host, "res");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let kinds = kinds_until(&mut rx, "res", EventKind::Restarted).await;
    assert_eq!(
        kinds,
        [
            EventKind::Crashed,
            EventKind::Restarting,
            EventKind::OutOfResources,
            EventKind::OutOfResources,
            EventKind::Started,
            EventKind::Restarted
        ]
    );
    let info = host.get("res").unwrap();
    assert_eq!(info.consecutive_crashes, 1);
    assert!(info.enabled);
    host.shutdown().await;
}

#[tokio::test]
async fn a_protocol_break_right_after_ready_is_recorded_as_such_every_time() {
    let env = Env::new();
    env.install_test_plugin("garbage-after-ready", "gar");
    let mut b = env.builder();
    b.restart_policy(fast_restarts().with_max_consecutive_crashes(1000));
    let host = b.start().await.unwrap();
    let mut rx = host.subscribe();
    for run in 1..=20 {
        let crash = wait_event(&mut rx, "gar", EventKind::Crashed).await;
        let reason = crash.reason.unwrap_or_default();
        assert!(
            reason.contains("broke the protocol"),
            "run {run}: the protocol break is the cause, not the exit: {reason}"
        );
    }
    host.disable("gar").await.unwrap();
    host.shutdown().await;
}

#[tokio::test]
async fn two_hundred_plugins_all_load_and_start() {
    const N: usize = 200;
    let env = Env::new();
    for i in 0..N {
        env.install_test_plugin("serve", &format!("p{i:03}"));
    }
    let host = env.builder().start().await.unwrap();
    let mut rx = host.subscribe();
    let mut started = std::collections::HashSet::new();
    let wait = async {
        while started.len() < N {
            match rx.recv().await {
                Ok(e) if e.kind == EventKind::Started => {
                    started.insert(e.plugin_id);
                }
                Ok(e)
                    if matches!(
                        e.kind,
                        EventKind::Crashed | EventKind::LoadFailed | EventKind::Failed
                    ) =>
                {
                    panic!("{} did not come up: {e:?}", e.plugin_id)
                }
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), wait)
        .await
        .unwrap_or_else(|_| panic!("only {} of {N} plugins started", started.len()));
    let list = host.list();
    assert_eq!(list.len(), N);
    assert!(list.iter().all(|p| p.state == PluginState::Running));
    host.shutdown().await;
}

/// The same, for real: a host process that has run out of file descriptors (a lowered
/// `RLIMIT_NOFILE`, its table filled) cannot restart a plugin that crashed; the plugin waits in
/// `out_of_resources`, not counted as crashing, and starts once descriptors are free again.
#[tokio::test]
async fn a_host_out_of_file_descriptors_retries_the_restart_without_counting_crashes() {
    use tokio::io::AsyncBufReadExt;
    let env = Env::new();
    env.install_test_plugin("serve", "starved");
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_toru-test-host"))
        .arg(env.dir.path())
        .arg("exhaust")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the test host said nothing more")
            .unwrap()
            .expect("the test host ended early")
    };
    assert!(next_line().await.starts_with("ready "));
    let starved = next_line().await;
    assert!(
        starved.starts_with("out_of_resources") && starved.contains("Too many open files"),
        "{starved}"
    );
    // One crash (the kill), one restart, however many starts failed for want of descriptors.
    assert_eq!(next_line().await, "recovered 1 1");
    let status = tokio::time::timeout(WAIT, host.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
