//! The state every task of one host shares.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toru_plugin_api::FrameCodec;
use toru_plugin_api::protocol::Level;
use uuid::Uuid;

use crate::builder::PluginHostBuilder;
use crate::config::Config;
use crate::events::{EventKind, PluginEvent};
use crate::logs::{LogSource, PluginLogs};
use crate::state::{Entry, Registry, Runner};
use crate::store::Store;

pub(crate) struct Shared {
    pub(crate) settings: PluginHostBuilder,
    pub(crate) codec: FrameCodec,
    pub(crate) store: Store,
    pub(crate) logs: PluginLogs,
    pub(crate) log_dir: PathBuf,
    pub(crate) socket_dir: PathBuf,
    pub(crate) instance_id: Uuid,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) config: Mutex<Config>,
    pub(crate) events: broadcast::Sender<PluginEvent>,
    /// Serialises enable, disable, restart and rescan.
    pub(crate) manage: tokio::sync::Mutex<()>,
    pub(crate) tasks: TaskTracker,
    /// Kills plugin process groups if the host dies without stopping them.
    pub(crate) reaper: crate::process::Reaper,
    /// Keeps each plugin's processes together, under its limits.
    pub(crate) containers: crate::contain::Containers,
    pub(crate) shutdown: CancellationToken,
}

impl Shared {
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().expect("registry lock")
    }

    pub(crate) fn config(&self) -> MutexGuard<'_, Config> {
        self.config.lock().expect("config lock")
    }

    /// The limits plugin `id` runs under: the host's defaults with its overrides.
    pub(crate) fn limits_for(&self, id: &str) -> crate::contain::limits::Limits {
        let overrides = self
            .config()
            .plugin(id)
            .map(|p| p.limits)
            .unwrap_or_default();
        overrides.apply(&self.settings.default_limits)
    }

    /// Applies `f` to plugin `id`'s entry, if it still exists.
    pub(crate) fn update<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.registry().plugins.get_mut(id).map(f)
    }

    /// Records an event durably, then sends it to subscribers and the supervisor log.
    pub(crate) async fn emit(&self, event: PluginEvent) {
        let level = match event.kind {
            EventKind::Crashed | EventKind::Unhealthy | EventKind::Restarting => Level::Warn,
            EventKind::Failed | EventKind::LoadFailed => Level::Error,
            EventKind::Disabled if event.reason.as_deref() != Some(OPERATOR) => Level::Error,
            _ => Level::Info,
        };
        let mut line = event.kind.as_str().to_owned();
        if let Some(exit) = &event.exit {
            line.push_str(&format!(" ({exit})"));
        }
        if let Some(delay) = event.delay_ms {
            line.push_str(&format!(" in {delay} ms"));
        }
        if let Some(reason) = &event.reason {
            line.push_str(": ");
            line.push_str(reason);
        }
        self.logs
            .supervisor(level, &event.plugin_id, event.kind.as_str(), &line);
        // What happened to the plugin belongs in its own log too, beside its last words.
        if matches!(
            event.kind,
            EventKind::Crashed
                | EventKind::Unhealthy
                | EventKind::Restarting
                | EventKind::Disabled
                | EventKind::Failed
        ) {
            self.logs.write(
                &event.plugin_id,
                level,
                LogSource::Host,
                &format!("toru: plugin {line}"),
                None,
            );
        }
        match level {
            Level::Error => {
                tracing::error!(plugin.id = %event.plugin_id, event = %event.kind, reason = ?event.reason, "plugin event")
            }
            Level::Warn => {
                tracing::warn!(plugin.id = %event.plugin_id, event = %event.kind, reason = ?event.reason, exit = ?event.exit, "plugin event")
            }
            _ => tracing::info!(plugin.id = %event.plugin_id, event = %event.kind, "plugin event"),
        }
        if let Err(e) = self.store.record_event(&event).await {
            tracing::error!(plugin.id = %event.plugin_id, error = %e, "cannot record plugin event");
        }
        let _ = self.events.send(event);
    }

    /// Starts a supervisor task for `id` and records it in the entry.
    pub(crate) fn start_runner(self: &Arc<Self>, entry: &mut Entry) {
        let Ok(meta) = &entry.found.result else {
            return;
        };
        let stop = CancellationToken::new();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        entry.runner = Some(Runner {
            stop: stop.clone(),
            done: done_rx,
        });
        entry.state = crate::state::PluginState::Starting;
        let shared = Arc::clone(self);
        let id = meta.id.clone();
        let file = entry.found.file.clone();
        self.tasks.spawn(async move {
            crate::supervisor::run(shared, id, file, stop).await;
            let _ = done_tx.send(true);
        });
    }
}

/// The reason recorded when an operator disables a plugin.
pub(crate) const OPERATOR: &str = "disabled by an operator";

/// Stops a runner and waits until its task has finished.
pub(crate) async fn stop_runner(runner: Runner) {
    runner.stop.cancel();
    let mut done = runner.done;
    let _ = done.wait_for(|d| *d).await;
}
