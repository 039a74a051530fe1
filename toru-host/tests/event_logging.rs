//! The library's own logging of events through `tracing`, in a test binary of its own: a
//! `tracing` subscriber set for one thread does not reliably see call sites that other tests'
//! threads registered first, so this test does not share its process.

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "it/util.rs"]
mod util;

use std::sync::{Arc, Mutex};

use toru_host::{EventKind, EventQuery};

use util::{Env, start_with, wait_event};

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
