//! Supervision: one task per enabled plugin that starts it, watches it, restarts it with
//! backoff when it crashes, retries a start that failed for lack of resources, and upgrades it
//! without downtime when its file is replaced. It never writes a plugin's state itself: every
//! change goes through [`Shared::transition`], which checks it against the state machine
//! (`state/machine.rs`, drawn in `docs/architecture.md`) and emits its events.
//!
//! Operators reach the task through its [`Runner`]: a stop token, and commands (an upgrade)
//! answered on oneshots.

mod health;
mod instance;
mod policy;
mod reason;
mod start;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use toru_plugin_api::protocol::{EXIT_CONFIG, now_millis};
use tracing::Instrument;

pub use policy::{HealthPolicy, RestartPolicy};

use crate::discovery::Found;
use crate::events::ExitStatus;
use crate::settings;
use crate::shared::Shared;
use crate::state::PluginState;
use crate::state::machine::{AfterCrash, Change, Ended};
use instance::{Instance, Next, StartEnd};
use reason::EndReason;
pub(crate) use start::HOST_VERSIONS;

/// A running supervisor task for one plugin.
pub(crate) struct Runner {
    pub(crate) stop: CancellationToken,
    pub(crate) commands: mpsc::Sender<Command>,
    done: watch::Receiver<bool>,
}

impl Runner {
    /// Whether the task has ended (it failed, was disabled after too many crashes, or stopped).
    pub(crate) fn finished(&self) -> bool {
        *self.done.borrow()
    }

    /// Stops the task and waits until it has ended (its process stopped and reaped).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        let _ = self.done.wait_for(|d| *d).await;
    }
}

/// What an operator (or the folder) asks of a running supervisor.
pub(crate) enum Command {
    /// The plugin's file was replaced by `found` (loaded, same id): run the new version.
    Upgrade {
        found: Box<Found>,
        reply: oneshot::Sender<Upgrade>,
    },
}

/// How an upgrade went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// The new version serves; the old one finishes its requests, then stops.
    Upgraded,
    /// The new version did not start; the old one serves on. The reason, in words.
    Failed(String),
    /// The plugin was not running (backing off, out of resources): it starts from the new file.
    Adopted,
    /// The old version ended while the new one was starting: the plugin restarts from the new
    /// file as after a crash.
    Interrupted,
}

/// Starts the supervisor task of plugin `id`, first starting it from `found`.
pub(crate) fn spawn(shared: &Arc<Shared>, id: &str, found: Found) -> Runner {
    let stop = CancellationToken::new();
    let (commands, rx) = mpsc::channel(8);
    let (done_tx, done) = watch::channel(false);
    let span = tracing::info_span!("plugin", plugin.id = %id);
    let task_shared = Arc::clone(shared);
    let task_stop = stop.clone();
    let id = id.to_owned();
    shared.tasks.spawn(
        async move {
            Supervisor {
                shared: task_shared,
                id,
                found,
                commands: rx,
                stop: task_stop,
                adopted: None,
            }
            .run()
            .await;
            let _ = done_tx.send(true);
        }
        .instrument(span),
    );
    Runner {
        stop,
        commands,
        done,
    }
}

struct Supervisor {
    shared: Arc<Shared>,
    id: String,
    /// The file (and metadata) the next start runs.
    found: Found,
    commands: mpsc::Receiver<Command>,
    stop: CancellationToken,
    /// A replaced file taken while its upgrade was cut short: shown with the end of the run.
    adopted: Option<Found>,
}

/// How a run of the process ended, when it was not asked to.
struct Run {
    reason: EndReason,
    exit: Option<ExitStatus>,
    tail: Vec<String>,
    ran_for: Duration,
}

impl Supervisor {
    async fn run(mut self) {
        let policy = self.shared.settings.restart_policy;
        let mut after_crash = false;
        let mut resource_failures = 0;
        loop {
            let found = self.found.clone();
            let run = match instance::start(&self.shared, &self.id, &found, &self.stop).await {
                Ok(instance) => {
                    resource_failures = 0;
                    match self.serve(instance, after_crash).await {
                        Some(run) => run,
                        None => return,
                    }
                }
                Err(StartEnd::Stopped(exit)) => {
                    if let Some(exit) = exit {
                        self.change(Change::Stopped { exit }).await;
                    }
                    return;
                }
                Err(StartEnd::NoResources(reason)) => {
                    resource_failures += 1;
                    let delay = policy.resource_delay(resource_failures);
                    let change = Change::OutOfResources {
                        reason,
                        delay,
                        next_attempt_ms: now_millis() + delay.as_millis() as u64,
                    };
                    if !matches!(
                        self.change(change).await,
                        Some(PluginState::OutOfResources { .. })
                    ) || !self.wait(delay).await
                        || self.change(Change::Retry).await != Some(PluginState::Starting)
                    {
                        return;
                    }
                    continue;
                }
                Err(StartEnd::Failed { reason, exit, tail }) => Run {
                    reason,
                    exit,
                    tail,
                    ran_for: Duration::ZERO,
                },
            };
            let Some(delay) = self.ended(run).await else {
                return;
            };
            if !self.wait(delay).await
                || self.change(Change::Retry).await != Some(PluginState::Starting)
            {
                return;
            }
            after_crash = true;
        }
    }

    /// Applies a change to the plugin's state; `None` when it was refused.
    async fn change(&self, change: Change) -> Option<PluginState> {
        self.shared.transition(&self.id, change, |_| {}).await
    }

    /// Serves from a started instance until it ends (`Some`) or is stopped (`None`).
    async fn serve(&mut self, mut current: Instance, after_crash: bool) -> Option<Run> {
        let ready = Change::Ready {
            restarted: after_crash,
        };
        let (conn, pid, version) = (current.conn.clone(), current.pid, current.version);
        let contained = current.contained();
        let state = self
            .shared
            .transition(&self.id, ready, |e| {
                e.conn = Some(conn);
                e.pid = Some(pid);
                e.protocol_version = Some(version);
                e.contained = Some(contained);
            })
            .await;
        if state != Some(PluginState::Running) {
            // A stop won the race with `ready`.
            let exit = current.stop(&self.shared, &self.id).await;
            self.change(Change::Stopped { exit }).await;
            return None;
        }
        self.resync_settings(&current).await;
        loop {
            let next = current
                .next(&self.shared, &self.id, &self.stop, Some(&mut self.commands))
                .await;
            match next {
                Next::Stop => {
                    let exit = current.stop(&self.shared, &self.id).await;
                    self.change(Change::Stopped { exit }).await;
                    return None;
                }
                Next::Ended { reason, exit } => {
                    let ran_for = current.ready_at.elapsed();
                    let (tail, hit) = current.finish(&self.shared, Some(exit)).await;
                    return Some(Run {
                        reason: reason.or_limit(hit),
                        exit: Some(exit),
                        tail,
                        ran_for,
                    });
                }
                Next::Command(Command::Upgrade { found, reply })
                    if found.hash == self.found.hash =>
                {
                    // Asked twice for the same file: it runs already.
                    let _ = reply.send(Upgrade::Upgraded);
                }
                Next::Command(Command::Upgrade { found, reply }) => {
                    match self.upgrade(&mut current, *found).await {
                        Ok(outcome) => {
                            let _ = reply.send(outcome);
                        }
                        Err(next) => {
                            let _ = reply.send(Upgrade::Interrupted);
                            // The old version ended, or a stop came, during the upgrade.
                            match next {
                                Next::Ended { reason, exit } => {
                                    let ran_for = current.ready_at.elapsed();
                                    let (tail, hit) =
                                        current.finish(&self.shared, Some(exit)).await;
                                    return Some(Run {
                                        reason: reason.or_limit(hit),
                                        exit: Some(exit),
                                        tail,
                                        ran_for,
                                    });
                                }
                                _ => {
                                    let exit = current.stop(&self.shared, &self.id).await;
                                    self.change(Change::Stopped { exit }).await;
                                    return None;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Starts `found` beside `current` and, once it is ready, moves the traffic to it and
    /// retires `current`. `Err` when `current` ended (or a stop came) meanwhile: then the new
    /// file is adopted for the restart that follows.
    async fn upgrade(&mut self, current: &mut Instance, found: Found) -> Result<Upgrade, Next> {
        let (from, to) = (self.found.version(), found.version());
        let begun = Change::UpgradeStarted {
            from: from.clone(),
            to: to.clone(),
        };
        if !matches!(
            self.change(begun).await,
            Some(PluginState::Upgrading { .. })
        ) {
            return Ok(Upgrade::Failed("the plugin is not running".into()));
        }
        let attempt = self.stop.child_token();
        let (shared, id, next) = (Arc::clone(&self.shared), self.id.clone(), found.clone());
        let start = instance::start(&shared, &id, &next, &attempt);
        tokio::pin!(start);
        let started = tokio::select! {
            biased;
            started = &mut start => started,
            next = current.next(&self.shared, &self.id, &self.stop, None) => {
                // The running version ended (or a stop came) first: give the new one up.
                attempt.cancel();
                if let Ok(new) = (&mut start).await {
                    new.stop(&shared, &id).await;
                }
                if matches!(next, Next::Ended { .. }) {
                    self.adopt(found);
                }
                return Err(next);
            }
        };
        match started {
            Ok(new) => {
                let (conn, pid, version) = (new.conn.clone(), new.pid, new.version);
                let adopted = found.clone();
                self.shared
                    .transition(&self.id, Change::Upgraded { from, to }, |e| {
                        e.conn = Some(conn);
                        e.pid = Some(pid);
                        e.protocol_version = Some(version);
                        e.started_at_ms = Some(now_millis());
                        e.found = adopted;
                        e.draining += 1;
                    })
                    .await;
                self.found = found;
                let old = std::mem::replace(current, new);
                let (shared, id) = (Arc::clone(&self.shared), self.id.clone());
                self.shared.tasks.spawn(old.retire(shared, id));
                self.resync_settings(current).await;
                Ok(Upgrade::Upgraded)
            }
            Err(StartEnd::Stopped(_)) => {
                let ended = Ended {
                    reason: "the plugin was stopped during the upgrade".into(),
                    ..Ended::default()
                };
                self.change(Change::UpgradeFailed { ended }).await;
                Ok(Upgrade::Failed("the plugin was stopped".into()))
            }
            Err(StartEnd::NoResources(why)) => {
                let ended = Ended {
                    reason: format!("the new version {to} could not be started: {why}"),
                    ..Ended::default()
                };
                let reason = ended.reason.clone();
                self.change(Change::UpgradeFailed { ended }).await;
                Ok(Upgrade::Failed(reason))
            }
            Err(StartEnd::Failed { reason, exit, tail }) => {
                let ended = Ended {
                    reason: format!("the new version {to} did not start: {reason}"),
                    exit,
                    tail,
                    limit: reason.limit(),
                };
                let text = ended.reason.clone();
                let hash = found.hash;
                // Held back by its settings (a new required one): an operator may set what the
                // new version declares, and the upgrade is tried again.
                let pending = matches!(reason, EndReason::Settings(_))
                    .then(|| found.result.as_ref().map(settings::declared).ok())
                    .flatten();
                self.shared
                    .transition(&self.id, Change::UpgradeFailed { ended }, |e| {
                        e.rejected = hash;
                        if let Some(pending) = pending {
                            e.pending_settings = pending;
                        }
                    })
                    .await;
                Ok(Upgrade::Failed(text))
            }
        }
    }

    /// Sends a process that just became ready the plugin's settings when they changed while
    /// it started (its `init` may have held older ones). Only a plugin with `live_settings`
    /// gets them so; any other is restarted by the change itself.
    async fn resync_settings(&self, instance: &Instance) {
        let generation = self
            .shared
            .registry()
            .plugins
            .get(&self.id)
            .map(|e| e.settings_gen);
        let live = self.found.result.as_ref().is_ok_and(|m| m.live_settings);
        if !live || generation.is_none_or(|g| g == instance.settings_gen) {
            return;
        }
        let Ok((values, _)) =
            start::start_settings(&self.shared, &self.id, self.found.result.as_ref().ok())
        else {
            return;
        };
        if !crate::host::send_settings(&instance.conn, values).await {
            tracing::warn!(plugin.id = %self.id, "cannot send the plugin its changed settings");
        }
    }

    /// Takes `found` as the file the next start runs; its metadata is shown from the change
    /// that records how the run ended.
    fn adopt(&mut self, found: Found) {
        self.adopted = Some(found.clone());
        self.found = found;
    }

    /// Applies a change that ends a run, showing a file adopted during it.
    async fn end_run(&mut self, change: Change) -> Option<PluginState> {
        let adopted = self.adopted.take();
        self.shared
            .transition(&self.id, change, |e| {
                if let Some(found) = adopted {
                    e.found = found;
                    e.upgrade_error = None;
                    e.rejected = None;
                }
            })
            .await
    }

    /// Records how a run ended. Returns the delay before the next start, or `None` when there
    /// is none (the plugin failed, was disabled, or is being stopped).
    async fn ended(&mut self, run: Run) -> Option<Duration> {
        let policy = self.shared.settings.restart_policy;
        let reason = match run.reason {
            _ if run.exit == Some(ExitStatus::Code(EXIT_CONFIG))
                && !run.reason.is_final()
                && run.reason.limit().is_none() =>
            {
                EndReason::RefusedConfig {
                    last_line: run.tail.last().cloned(),
                }
            }
            reason => reason,
        };
        let ended = Ended {
            reason: reason.to_string(),
            exit: run.exit,
            tail: run.tail,
            limit: reason.limit(),
        };
        if reason.is_final() {
            self.end_run(Change::Failed { ended }).await;
            return None;
        }
        let before = self
            .shared
            .registry()
            .plugins
            .get(&self.id)
            .map_or(0, |e| e.consecutive_crashes);
        let count = policy.count_after_crash(before, run.ran_for);
        let (then, delay) = match policy.delay(count) {
            Some(delay) => (
                AfterCrash::Restart {
                    delay,
                    next_attempt_ms: now_millis() + delay.as_millis() as u64,
                    count,
                },
                Some(delay),
            ),
            None => (AfterCrash::Disable { count }, None),
        };
        match self.end_run(Change::Crashed { ended, then }).await {
            Some(PluginState::BackingOff { .. }) => delay,
            Some(PluginState::Disabled) => {
                // Persisted, so that the plugin stays disabled across restarts.
                if let Err(e) = self.shared.config().set_enabled(&self.id, false) {
                    tracing::error!(plugin.id = %self.id, error = %crate::error::chain(&e), "cannot persist that the plugin is disabled");
                }
                None
            }
            _ => None,
        }
    }

    /// Waits `delay` before the next start. `false` when a stop came. A replaced file arriving
    /// meanwhile is adopted, and the start happens at once.
    async fn wait(&mut self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
            Some(command) = self.commands.recv() => match command {
                Command::Upgrade { found, reply } => {
                    let change = Change::Replaced { from: self.found.version(), to: found.version() };
                    let adopted = (*found).clone();
                    self.shared.transition(&self.id, change, |e| e.found = adopted).await;
                    self.found = *found;
                    let _ = reply.send(Upgrade::Adopted);
                    true
                }
            },
        }
    }
}
