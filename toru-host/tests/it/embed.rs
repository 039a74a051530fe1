//! Issue 15's "one call per job" through the library alone: switching a plugin on and off,
//! waiting until it serves (or why it does not), the KV handle of a plugin that does not exist,
//! paths outside a plugin's route, events from the very first, the library's own event logging,
//! the application's settings, and what dropping the last handle does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use toru_host::{
    CallError, EventKind, EventQuery, ExitStatus, LogQuery, ManageError, NotReady, PluginRequest,
    PluginState, RestartPolicy, Store, StoreError, WsEvent, WsMessage, WsUpgrade,
};

use crate::util::{Env, WAIT, alive, pid_of, start_with, started, wait_event, wait_gone};

#[tokio::test]
async fn set_enabled_switches_a_plugin_off_and_on_in_one_call() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    let host = started(&env, &["x"]).await;
    let pid = pid_of(&host, "x");

    let info = host.set_enabled("x", false).await.unwrap();
    assert!(!info.enabled);
    assert_eq!(info.state, PluginState::Disabled);
    wait_gone(pid).await;
    let refused = host.request("x", &PluginRequest::get("/x/ok")).await;
    assert!(
        matches!(refused, Err(CallError::Disabled(_))),
        "{refused:?}"
    );

    let info = host.set_enabled("x", true).await.unwrap();
    assert!(info.enabled);
    let info = host.wait_ready("x", WAIT).await.unwrap();
    assert_eq!(info.state, PluginState::Running);
    assert_ne!(info.pid, Some(pid));

    let unknown = host.set_enabled("nope", true).await;
    assert!(
        matches!(unknown, Err(ManageError::UnknownPlugin(ref id)) if id == "nope"),
        "{unknown:?}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn enable_and_wait_answers_once_the_plugin_serves() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    let mut b = env.builder();
    b.enable_new_plugins(false);
    let host = start_with(&b).await;
    assert_eq!(host.get("x").unwrap().state, PluginState::Disabled);

    let info = host.enable_and_wait("x", WAIT).await.unwrap();
    assert_eq!(info.state, PluginState::Running);
    // No 503 in between: the plugin serves as soon as the call returns.
    let response = host.request("x", &PluginRequest::get("/x/ok")).await;
    assert_eq!(response.unwrap().status, 200);
    host.shutdown().await;
}

#[tokio::test]
async fn wait_ready_says_why_a_plugin_does_not_serve() {
    let env = Env::new();
    env.install_test_plugin("serve", "ok");
    env.install_test_plugin("exit-at-once", "crashy");
    env.install_test_plugin("exit78", "refused");
    env.install_test_plugin("never-init", "slow");
    env.install_test_plugin("bad-metadata", "bad");
    // Restarts a second apart: the crashing plugin is waited for through its next start.
    let mut b = env.builder();
    b.restart_policy(RestartPolicy::default());
    let host = start_with(&b).await;

    let info = host.wait_ready("ok", WAIT).await.unwrap();
    assert_eq!(info.id, "ok");
    assert!(info.state.serves(), "{:?}", info.state);

    // A crash during the wait is reported with how the process ended.
    match host.wait_ready("crashy", WAIT).await {
        Err(NotReady::Crashed {
            id, reason, exit, ..
        }) => {
            assert_eq!(id, "crashy");
            assert_eq!(exit, Some(ExitStatus::Code(1)), "{reason}");
            assert!(reason.contains("exit code 1"), "{reason}");
        }
        other => panic!("a crash, not {other:?}"),
    }

    // Exit code 78: failed for good, with the reason.
    match host.wait_ready("refused", WAIT).await {
        Err(NotReady::Failed { id, reason }) => {
            assert_eq!(id, "refused");
            assert!(reason.contains("78"), "{reason}");
        }
        other => panic!("a failure, not {other:?}"),
    }

    // A plugin that never answers `init` is still starting when the time is up.
    let e = host
        .wait_ready("slow", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, NotReady::Timeout { state: PluginState::Starting, after, .. } if *after == Duration::from_millis(200)),
        "{e:?}"
    );
    assert_eq!((e.status().as_u16(), e.code()), (503, "plugin_unavailable"));
    assert!(e.retry_after().is_some());

    // Nothing to wait for.
    let e = host.wait_ready("nope", WAIT).await.unwrap_err();
    assert!(
        matches!(e, NotReady::Manage(ManageError::UnknownPlugin(_))),
        "{e:?}"
    );
    assert_eq!(e.status().as_u16(), 404);
    let e = host.wait_ready("bad.binary", WAIT).await.unwrap_err();
    assert!(
        matches!(e, NotReady::Manage(ManageError::NotLoadable { .. })),
        "{e:?}"
    );
    host.disable("ok").await.unwrap();
    let e = host.wait_ready("ok", WAIT).await.unwrap_err();
    assert!(
        matches!(e, NotReady::Disabled(ref id) if id == "ok"),
        "{e:?}"
    );
    assert_eq!(e.to_response().status(), 404);

    host.shutdown().await;
    let e = host.wait_ready("ok", WAIT).await.unwrap_err();
    assert!(
        matches!(e, NotReady::Manage(ManageError::ShuttingDown)),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_wait_ends_when_the_host_shuts_down() {
    let env = Env::new();
    env.install_test_plugin("never-init", "slow");
    let host = env.start().await;
    let waiting = tokio::spawn({
        let host = host.clone();
        async move { host.wait_ready("slow", Duration::from_secs(3600)).await }
    });
    host.shutdown().await;
    let outcome = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the wait ends with the host")
        .unwrap();
    assert!(
        matches!(outcome, Err(NotReady::Manage(ManageError::ShuttingDown))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn the_kv_of_a_plugin_the_host_does_not_know_is_an_error() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    env.install_test_plugin("bad-metadata", "bad");
    let host = started(&env, &["x"]).await;

    let e = host.kv("no-such-plugin").unwrap_err();
    assert!(matches!(e, ManageError::UnknownPlugin(ref id) if id == "no-such-plugin"));
    let e = host.kv("bad.binary").unwrap_err();
    assert!(matches!(e, ManageError::NotLoadable { .. }), "{e:?}");

    let kv = host.kv("x").unwrap();
    kv.set("k", "v").await.unwrap();
    // A disabled plugin keeps its namespace.
    host.disable("x").await.unwrap();
    let kv = host.kv("x").unwrap();
    assert_eq!(kv.get("k").await.unwrap().as_deref(), Some("v"));
    host.shutdown().await;

    // Nothing was written under the unknown id.
    let store = Store::open(&env.data().join("toru.redb"), Default::default()).unwrap();
    let keys = store.kv("no-such-plugin").list("", None, 10).await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_path_outside_the_plugins_route_is_refused_before_the_plugin_sees_it() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    env.install_test_plugin("serve", "y");
    let host = started(&env, &["x", "y"]).await;
    for path in ["/y/ok", "/", "/xx/ok", "/x/../y/ok", "/x/./ok"] {
        let e = host
            .request("x", &PluginRequest::get(path))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CallError::OutsideRoute { id, path: p } if id == "x" && p == path),
            "{path}: {e:?}"
        );
        assert_eq!(e.status().as_u16(), 404, "{path}");
    }
    assert_eq!(
        host.request("x", &PluginRequest::get("/x/ok"))
            .await
            .unwrap()
            .status,
        200
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_subscription_made_on_the_builder_sees_every_event_from_the_first() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    let mut b = env.builder();
    let mut events = b.subscribe();
    let host = b.start().await.unwrap();
    let first = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(
        (first.plugin_id.as_str(), first.kind),
        ("x", EventKind::Discovered)
    );
    wait_event(&mut events, "x", EventKind::Started).await;
    host.shutdown().await;
}

/// Events with target `toru_host::events`, by plugin id, as a `tracing` subscriber sees them.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Plugin(Option<String>);
        impl tracing::field::Visit for Plugin {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "plugin.id" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if event.metadata().target() == "toru_host::events" {
            let mut plugin = Plugin(None);
            event.record(&mut plugin);
            self.0.lock().unwrap().push(plugin.0.unwrap_or_default());
        }
    }
}

/// The library logs each event through `tracing` unless told not to. On one thread (a
/// current-thread runtime), so that the subscriber set here sees every task's events.
#[tokio::test(flavor = "current_thread")]
async fn the_librarys_own_event_logging_can_be_switched_off() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let logged = Logged::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logged.clone()));
    // Another test's thread may have registered the library's log call sites while this
    // subscriber was being set (their interest then cached as "never"): ask again.
    tracing::callsite::rebuild_interest_cache();
    for log in [true, false] {
        let env = Env::new();
        env.install_test_plugin("serve", "x");
        let mut b = env.builder();
        b.log_events(log);
        let mut events = b.subscribe();
        let host = b.start().await.unwrap();
        wait_event(&mut events, "x", EventKind::Started).await;
        host.shutdown().await;
        let lines = std::mem::take(&mut *logged.0.lock().unwrap());
        if log {
            assert!(lines.iter().any(|id| id == "x"), "{lines:?}");
        } else {
            assert!(lines.is_empty(), "logged although switched off: {lines:?}");
            // Still recorded.
            let events = host_events(&env).await;
            assert!(events.contains(&EventKind::Started), "{events:?}");
        }
    }
}

/// The kinds recorded in `env`'s database, oldest first (no host running).
async fn host_events(env: &Env) -> Vec<EventKind> {
    let mut b = env.builder();
    b.enable_new_plugins(false);
    let host = start_with(&b).await;
    let mut kinds: Vec<_> = host
        .events(&EventQuery::all().with_page(0, 1000))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    kinds.reverse();
    host.shutdown().await;
    kinds
}

#[tokio::test]
async fn app_settings_reach_only_the_applications_own_settings() {
    let env = Env::new();
    let host = env.start().await;
    let settings = host.app_settings();
    assert_eq!(settings.get("theme").unwrap(), None);
    settings.set("theme", "dark").await.unwrap();
    assert_eq!(settings.get("theme").unwrap().as_deref(), Some("dark"));
    // The host's own id can be read, never written.
    let id = host.instance_id().to_string();
    assert_eq!(settings.get("instance_id").unwrap(), Some(id.clone()));
    let e = settings.set("instance_id", "mine").await.unwrap_err();
    assert!(matches!(e, StoreError::Reserved { .. }), "{e:?}");
    let e = settings.set("", "x").await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
    let e = settings.set(&"k".repeat(1025), "x").await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
    host.shutdown().await;
    assert!(matches!(settings.get("theme"), Err(StoreError::Closed)));

    // While no host runs, the same settings through the store; the id is the same.
    let store = Store::open(&env.data().join("toru.redb"), Default::default()).unwrap();
    assert_eq!(store.instance_id().to_string(), id);
    assert_eq!(
        store.app_settings().get("theme").unwrap().as_deref(),
        Some("dark")
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn dropping_the_last_handle_stops_every_plugin() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    let host = started(&env, &["x"]).await;
    let pid = pid_of(&host, "x");
    // Another handle keeps the host running.
    drop(host.clone());
    assert!(alive(pid));
    assert_eq!(
        host.request("x", &PluginRequest::get("/x/ok"))
            .await
            .unwrap()
            .status,
        200
    );
    let mut events = host.subscribe();
    drop(host);
    wait_gone(pid).await;
    // Once the shutdown is done, nothing holds the host: its event stream ends, and the
    // database is released (a new store opens it).
    let end = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(RecvError::Closed) = events.recv().await {
                return;
            }
        }
    });
    end.await.expect("the host is gone");
    let store = Store::open(&env.data().join("toru.redb"), Default::default()).unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn every_shutdown_call_waits_until_the_host_has_stopped() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    let host = started(&env, &["x"]).await;
    let pid = pid_of(&host, "x");
    let (a, b) = (host.clone(), host.clone());
    // Both return only once the plugin is gone, whichever started the shutdown.
    tokio::join!(a.shutdown(), b.shutdown());
    assert!(!alive(pid), "the plugin still runs after shutdown returned");
    host.shutdown().await;
}

#[tokio::test]
async fn a_websocket_by_path_reaches_the_plugin_that_owns_the_route() {
    let env = Env::new();
    env.install_test_plugin("v2", "t");
    let host = started(&env, &["t"]).await;
    let request = |path: &str| toru_host::http::Request::get(path).body(()).unwrap();
    let WsUpgrade::Accepted(mut session) = host.websocket_by_path(&request("/t/ws")).await.unwrap()
    else {
        panic!("the plugin accepts");
    };
    assert_eq!(session.plugin_id(), "t");
    session.send(WsMessage::Text("hi".into())).await.unwrap();
    let echo = tokio::time::timeout(WAIT, session.recv()).await.unwrap();
    assert!(
        matches!(&echo, WsEvent::Message(WsMessage::Text(t)) if t == "HI"),
        "{echo:?}"
    );
    session.close(1000, "done").await;
    let e = host
        .websocket_by_path(&request("/nobody/ws"))
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::UnknownPlugin(_)), "{e:?}");
    assert_eq!(e.plugin_id(), None);
    host.shutdown().await;
}

#[tokio::test]
async fn a_bundle_a_plugin_does_not_have_is_no_bundle_whether_it_runs_or_not() {
    let env = Env::new();
    env.install_rust_example();
    env.install_test_plugin("never-init", "slow");
    let host = env.start().await;
    host.wait_ready("hello-rust", WAIT).await.unwrap();
    let script = host.bundle("hello-rust").await.unwrap();
    assert!(script.contains("export"), "a module: {script:.80}");
    // The test plugin's metadata says it has no frontend: not asked, though it is not running.
    let e = host.bundle("slow").await.unwrap_err();
    assert!(
        matches!(e, CallError::NoBundle(ref id) if id == "slow"),
        "{e:?}"
    );
    assert_eq!((e.status().as_u16(), e.code()), (404, "no_bundle"));
    assert_eq!(e.plugin_id(), Some("slow"));
    let e = host.bundle("nope").await.unwrap_err();
    assert!(matches!(e, CallError::UnknownPlugin(_)), "{e:?}");
    host.shutdown().await;
}

#[tokio::test]
async fn logs_and_events_of_a_plugin_the_host_does_not_know_are_unknown_plugin() {
    let env = Env::new();
    env.install_test_plugin("serve", "x");
    env.install_file("broken plugin #1.binary", b"#!/bin/sh\nexit 3\n");
    let host = started(&env, &["x"]).await;

    let e = host.logs("nope", &LogQuery::default()).await.unwrap_err();
    assert!(matches!(e, ManageError::UnknownPlugin(_)), "{e:?}");
    let e = host.events(&EventQuery::plugin("nope")).await.unwrap_err();
    assert!(matches!(e, ManageError::UnknownPlugin(_)), "{e:?}");

    // A file that failed to load is known by its name, which cannot name a log file: it has
    // an empty log and its events.
    let name = "broken plugin #1.binary";
    assert!(host.get(name).unwrap().load_error.is_some());
    let page = host.logs(name, &LogQuery::new(0, 10)).await.unwrap();
    assert!(page.entries.is_empty() && !page.has_more, "{page:?}");
    let events = host.events(&EventQuery::plugin(name)).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == EventKind::LoadFailed),
        "{events:?}"
    );
    let page = host.logs("x", &LogQuery::default()).await.unwrap();
    assert_eq!(page.page_size, LogQuery::DEFAULT_PAGE_SIZE);
    host.shutdown().await;
}
