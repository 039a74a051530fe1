//! The state every task of one host shares, and the one place a plugin's state changes:
//! [`Shared::transition`].

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedMutexGuard, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toru_plugin_api::FrameCodec;
use toru_plugin_api::protocol::Level;
use uuid::Uuid;

use crate::builder::PluginHostBuilder;
use crate::config::Config;
use crate::events::{EventKind, PluginEvent};
use crate::logs::{LogSource, PluginLogs};
use crate::state::machine::{self, Change};
use crate::state::{Entry, PluginState, Registry};
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
    /// Bounds how many `--metadata` runs and plugin starts (spawn to `ready`) run at once.
    pub(crate) launch: Semaphore,
    /// Numbers socket files, so that every process gets its own.
    pub(crate) next_socket: AtomicU64,
    /// The folder scanner's state; held for the whole of a scan, so scans never overlap.
    pub(crate) scan: tokio::sync::Mutex<crate::host::ScanState>,
    /// True once the first scan of the plugins folder has loaded every file it found.
    pub(crate) discovered: tokio::sync::watch::Sender<bool>,
    pub(crate) tasks: TaskTracker,
    /// Kills plugin process groups if the host dies without stopping them.
    pub(crate) reaper: crate::process::Reaper,
    /// Keeps each plugin's processes together, under its limits.
    pub(crate) containers: crate::contain::Containers,
    pub(crate) shutdown: CancellationToken,
    /// True once a shutdown has stopped everything.
    pub(crate) stopped: tokio::sync::watch::Sender<bool>,
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

    /// Applies `f` to plugin `id`'s entry, if it still exists. For what is not the plugin's
    /// state (its state changes only through [`transition`](Self::transition)).
    pub(crate) fn update<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.registry().plugins.get_mut(id).map(f)
    }

    /// Changes plugin `id`'s state: checks `change` against the state machine, applies it and
    /// `effect` (what else changes with it) to the entry under the registry lock, and emits
    /// its events. Returns the new state, or `None` when the plugin is gone or the machine
    /// refused the change (a bug, logged as such; the state is left as it was).
    ///
    /// One plugin's changes and events happen in the same order: a change waits until the
    /// previous one's events are out. A caller that stops waiting does not cut its events off.
    pub(crate) async fn transition(
        self: &Arc<Self>,
        id: &str,
        change: Change,
        effect: impl FnOnce(&mut Entry),
    ) -> Option<PluginState> {
        let order = Arc::clone(&self.registry().plugins.get(id)?.order);
        let turn = order.lock_owned().await;
        let (state, events) = {
            let mut reg = self.registry();
            let entry = reg.plugins.get_mut(id)?;
            match machine::next(&entry.state, &change, entry.enabled) {
                Ok((to, kinds)) => {
                    let events = machine::events(id, &change, kinds);
                    entry.state = to.clone();
                    entry.apply(&change);
                    effect(entry);
                    (to, events)
                }
                Err(illegal) => {
                    drop(reg);
                    tracing::error!(plugin.id = %id, error = %illegal, "bug: a state change the state machine does not allow was refused");
                    self.logs
                        .supervisor(Level::Error, id, "bug", &format!("refused an {illegal}"));
                    return None;
                }
            }
        };
        self.emit_in_order(turn, events).await;
        Some(state)
    }

    /// Emits events for plugin `id` that no state change of its own comes with (it was just
    /// found, or could not be loaded), in order with its other events.
    pub(crate) async fn announce(self: &Arc<Self>, id: &str, events: Vec<PluginEvent>) {
        let Some(order) = self
            .registry()
            .plugins
            .get(id)
            .map(|e| Arc::clone(&e.order))
        else {
            // Forgotten already: its events still say what happened.
            for event in events {
                self.emit(event).await;
            }
            return;
        };
        let turn = order.lock_owned().await;
        self.emit_in_order(turn, events).await;
    }

    /// Emits `events` in a task of their own that holds the plugin's turn, so that a caller
    /// that stops waiting cannot leave a state change without its events.
    async fn emit_in_order(self: &Arc<Self>, turn: OwnedMutexGuard<()>, events: Vec<PluginEvent>) {
        if events.is_empty() {
            return;
        }
        let shared = Arc::clone(self);
        let emitted = self.tasks.spawn(async move {
            for event in events {
                shared.emit(event).await;
            }
            drop(turn);
        });
        let _ = emitted.await;
    }

    /// Records an event durably, then sends it to subscribers and the supervisor log.
    pub(crate) async fn emit(&self, event: PluginEvent) {
        let level = match event.kind {
            EventKind::Crashed
            | EventKind::Unhealthy
            | EventKind::Restarting
            | EventKind::OutOfResources => Level::Warn,
            EventKind::Failed | EventKind::LoadFailed | EventKind::UpgradeFailed => Level::Error,
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
                | EventKind::OutOfResources
                | EventKind::Upgraded
                | EventKind::UpgradeFailed
                | EventKind::Removed
        ) {
            self.logs.write(
                &event.plugin_id,
                level,
                LogSource::Host,
                &format!("toru: plugin {line}"),
                None,
            );
        }
        if self.settings.log_events {
            crate::events::log(level, &event);
        }
        if let Err(e) = self.store.record_event(&event).await {
            tracing::error!(plugin.id = %event.plugin_id, error = %e, "cannot record plugin event");
        }
        let _ = self.events.send(event);
    }

    /// Waits for plugin `id`'s turn to be changed by an operator (enable, disable, restart,
    /// upgrade, removal): one at a time per plugin. `None` when there is no such plugin.
    pub(crate) async fn lock_plugin(&self, id: &str) -> Option<OwnedMutexGuard<()>> {
        let ops = Arc::clone(&self.registry().plugins.get(id)?.ops);
        Some(ops.lock_owned().await)
    }

    /// Starts plugin `id`'s supervisor (in state `Starting`), unless the host is shutting down.
    /// A supervisor that is still finishing (its plugin failed or was disabled) is waited for
    /// first. Call with the plugin's turn held.
    pub(crate) async fn start_runner(self: &Arc<Self>, id: &str) {
        let old = self.update(id, |e| e.runner.take()).flatten();
        if let Some(old) = old {
            old.stop().await;
        }
        let mut reg = self.registry();
        if reg.shutting_down {
            return;
        }
        let Some(entry) = reg.plugins.get_mut(id) else {
            return;
        };
        if entry.state != PluginState::Starting || !entry.loaded() {
            return;
        }
        entry.runner = Some(crate::supervisor::spawn(self, id, entry.found.clone()));
    }

    /// Stops plugin `id`'s supervisor, if it has one, and waits until its process is stopped
    /// and reaped. Call with the plugin's turn held.
    pub(crate) async fn stop_runner(self: &Arc<Self>, id: &str) {
        let Some((runner, state)) = self
            .update(id, |e| e.runner.take().map(|r| (r, e.state.clone())))
            .flatten()
        else {
            return;
        };
        // A supervisor whose plugin failed or was disabled is on its way out already.
        let live = !matches!(
            state,
            PluginState::Failed { .. } | PluginState::Disabled | PluginState::Missing
        );
        if live && !runner.finished() {
            self.transition(id, Change::Stop, |_| {}).await;
        }
        runner.stop().await;
    }
}

/// The reason recorded when an operator disables a plugin.
pub(crate) const OPERATOR: &str = "disabled by an operator";
