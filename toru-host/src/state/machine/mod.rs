//! The plugin state machine: which change is allowed in which state, where it leads, and which
//! events it emits. [`Shared::transition`](crate::shared::Shared::transition) is the one place
//! that changes a plugin's state; it asks [`next`] first, so a change the machine does not
//! allow is refused (and logged as the bug it is), never written over the state.
//!
//! Changes an operator or the folder makes (`Enable`, `Disable`, `Stop`, `Relaunch`, `Replaced`,
//! `Rejected`, `Removed`, `Returned`) and changes the plugin's supervisor makes (the rest) can
//! race: an operator's `Stop` can land between a supervisor's decision and its change. The
//! table answers those races itself: in `Stopping`, a supervisor's change keeps `Stopping` and
//! records only what happened to the process (`crashed`, `failed`), so the operator's change
//! that follows decides where the plugin goes.

use std::time::Duration;

use crate::events::{EventKind, ExitStatus, PluginEvent};

use super::{Entry, PluginState};

/// How a process ended, in words, for the events that report it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Ended {
    pub(crate) reason: String,
    pub(crate) exit: Option<ExitStatus>,
    pub(crate) tail: Vec<String>,
    /// The resource limit the process exceeded, when that is why it ended.
    pub(crate) limit: Option<crate::contain::limits::LimitKind>,
}

/// What follows a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterCrash {
    /// Restart after `delay`; this was crash `count` in a row.
    Restart {
        delay: Duration,
        next_attempt_ms: u64,
        count: u32,
    },
    /// Crash `count` in a row: the plugin is disabled.
    Disable { count: u32 },
}

/// A change of a plugin's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// An operator enabled the plugin.
    Enable,
    /// The plugin is disabled, its process gone (`reason`: who disabled it).
    Disable { reason: String },
    /// A stop was asked for (disable, restart, removal, replacement, shutdown).
    Stop,
    /// The process stopped as asked.
    Stopped { exit: ExitStatus },
    /// An operator restarts a stopped or failed plugin.
    Relaunch,
    /// The supervisor starts again after a crash or a lack of resources.
    Retry,
    /// The process answered `ready`.
    Ready { restarted: bool },
    /// A health ping went unanswered.
    MissedPing,
    /// A health ping was answered.
    Pong,
    /// The process ended without being asked to.
    Crashed { ended: Ended, then: AfterCrash },
    /// The process cannot run until something changes.
    Failed { ended: Ended },
    /// Starting failed for lack of resources; not a crash.
    OutOfResources {
        reason: String,
        delay: Duration,
        next_attempt_ms: u64,
    },
    /// The file was replaced: the new version starts beside the running one.
    UpgradeStarted { from: String, to: String },
    /// The new version serves.
    Upgraded { from: String, to: String },
    /// The new version did not start; the old one serves on.
    UpgradeFailed { ended: Ended },
    /// The file was replaced while the plugin was not running: the new metadata is adopted.
    Replaced { from: String, to: String },
    /// The file was replaced by one that cannot be loaded; nothing else changes.
    Rejected { reason: String },
    /// The file went away.
    Removed,
    /// The file of a missing plugin is back.
    Returned,
}

impl Change {
    /// The change's name, for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Change::Enable => "enable",
            Change::Disable { .. } => "disable",
            Change::Stop => "stop",
            Change::Stopped { .. } => "stopped",
            Change::Relaunch => "relaunch",
            Change::Retry => "retry",
            Change::Ready { .. } => "ready",
            Change::MissedPing => "missed_ping",
            Change::Pong => "pong",
            Change::Crashed { .. } => "crashed",
            Change::Failed { .. } => "failed",
            Change::OutOfResources { .. } => "out_of_resources",
            Change::UpgradeStarted { .. } => "upgrade_started",
            Change::Upgraded { .. } => "upgraded",
            Change::UpgradeFailed { .. } => "upgrade_failed",
            Change::Replaced { .. } => "replaced",
            Change::Rejected { .. } => "rejected",
            Change::Removed => "removed",
            Change::Returned => "returned",
        }
    }
}

/// A change the state machine does not allow in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {change} in state {from}")]
pub(crate) struct Illegal {
    pub(crate) from: &'static str,
    pub(crate) change: &'static str,
}

/// Where `change` leads from `from`, and the kinds of the events it emits, in order. `enabled`
/// decides where a returning plugin goes.
///
/// # Errors
/// [`Illegal`] when the machine does not allow the change in this state.
pub(crate) fn next(
    from: &PluginState,
    change: &Change,
    enabled: bool,
) -> Result<(PluginState, &'static [EventKind]), Illegal> {
    use EventKind as E;
    use PluginState as S;
    let same = from.clone();
    let step: (PluginState, &'static [EventKind]) = match (from, change) {
        // An operator enables: a stopped or failed plugin starts; anything else stays as it is.
        (S::Disabled | S::Failed { .. }, Change::Enable) => (S::Starting, &[E::Enabled]),
        (
            S::Starting
            | S::Running
            | S::Unhealthy
            | S::Upgrading { .. }
            | S::BackingOff { .. }
            | S::OutOfResources { .. }
            | S::Stopping
            | S::Missing,
            Change::Enable,
        ) => (same, &[E::Enabled]),

        // Disabled once no process is left.
        (S::Disabled | S::Failed { .. } | S::Stopping, Change::Disable { .. }) => {
            (S::Disabled, &[E::Disabled])
        }
        (S::Missing, Change::Disable { .. }) => (S::Missing, &[E::Disabled]),

        // A stop is asked for; what comes after depends on who asked.
        (S::Missing, Change::Stop) => return Err(illegal(from, change)),
        (_, Change::Stop) => (S::Stopping, &[]),
        (S::Stopping, Change::Stopped { .. }) => (S::Stopping, &[E::Stopped]),

        // Starting again.
        (S::Stopping | S::Failed { .. }, Change::Relaunch) => (S::Starting, &[]),
        (S::BackingOff { .. } | S::OutOfResources { .. }, Change::Retry) => (S::Starting, &[]),
        (S::Stopping, Change::Retry) => (S::Stopping, &[]),

        // Running, healthy or not.
        (S::Starting, Change::Ready { restarted: false }) => (S::Running, &[E::Started]),
        (S::Starting, Change::Ready { restarted: true }) => {
            (S::Running, &[E::Started, E::Restarted])
        }
        (S::Stopping, Change::Ready { .. }) => (S::Stopping, &[]),
        (S::Running, Change::MissedPing) => (S::Unhealthy, &[E::Unhealthy]),
        (S::Unhealthy | S::Upgrading { .. } | S::Stopping, Change::MissedPing) => (same, &[]),
        (S::Unhealthy, Change::Pong) => (S::Running, &[E::Recovered]),
        (S::Running | S::Upgrading { .. } | S::Stopping, Change::Pong) => (same, &[]),

        // The process ended on its own.
        (
            S::Starting | S::Running | S::Unhealthy | S::Upgrading { .. },
            Change::Crashed { then, .. },
        ) => match then {
            AfterCrash::Restart {
                next_attempt_ms, ..
            } => (
                S::BackingOff {
                    next_attempt_ms: *next_attempt_ms,
                },
                &[E::Crashed, E::Restarting],
            ),
            AfterCrash::Disable { .. } => (S::Disabled, &[E::Crashed, E::Disabled]),
        },
        (S::Stopping, Change::Crashed { .. }) => (S::Stopping, &[E::Crashed]),
        (
            S::Starting | S::Running | S::Unhealthy | S::Upgrading { .. },
            Change::Failed { ended },
        ) => (
            S::Failed {
                reason: ended.reason.clone(),
            },
            &[E::Failed],
        ),
        (S::Stopping, Change::Failed { .. }) => (S::Stopping, &[E::Failed]),
        (
            S::Starting,
            Change::OutOfResources {
                reason,
                next_attempt_ms,
                ..
            },
        ) => (
            S::OutOfResources {
                next_attempt_ms: *next_attempt_ms,
                reason: reason.clone(),
            },
            &[E::OutOfResources],
        ),
        (S::Stopping, Change::OutOfResources { .. }) => (S::Stopping, &[]),

        // A replaced file.
        (S::Running | S::Unhealthy, Change::UpgradeStarted { to, .. }) => (
            S::Upgrading {
                to_version: to.clone(),
            },
            &[E::Upgrading],
        ),
        (S::Upgrading { .. }, Change::Upgraded { .. }) => (S::Running, &[E::Upgraded]),
        (S::Upgrading { .. }, Change::UpgradeFailed { .. }) => (S::Running, &[E::UpgradeFailed]),
        (
            S::Stopping,
            Change::UpgradeStarted { .. } | Change::Upgraded { .. } | Change::UpgradeFailed { .. },
        ) => (S::Stopping, &[]),
        (
            S::Disabled
            | S::Failed { .. }
            | S::BackingOff { .. }
            | S::OutOfResources { .. }
            | S::Stopping,
            Change::Replaced { .. },
        ) => (same, &[E::Upgraded]),
        (S::Missing, Change::Rejected { .. }) => return Err(illegal(from, change)),
        (_, Change::Rejected { .. }) => (same, &[E::UpgradeFailed]),

        // A removed file, and its return.
        (S::Disabled | S::Failed { .. } | S::Stopping, Change::Removed) => {
            (S::Missing, &[E::Removed])
        }
        (S::Missing, Change::Returned) if enabled => (S::Starting, &[E::Discovered]),
        (S::Missing, Change::Returned) => (S::Disabled, &[E::Discovered]),

        _ => return Err(illegal(from, change)),
    };
    Ok(step)
}

fn illegal(from: &PluginState, change: &Change) -> Illegal {
    Illegal {
        from: from.name(),
        change: change.name(),
    }
}

/// The events a change emits, with what each says.
pub(crate) fn events(id: &str, change: &Change, kinds: &[EventKind]) -> Vec<PluginEvent> {
    kinds
        .iter()
        .map(|&kind| {
            let mut event = PluginEvent::new(id, kind);
            let ended = |event: &mut PluginEvent, ended: &Ended| {
                event.reason = Some(ended.reason.clone());
                event.exit = ended.exit;
                event.stderr_tail = ended.tail.clone();
                event.limit = ended.limit;
            };
            match (kind, change) {
                (EventKind::Crashed, Change::Crashed { ended: e, .. })
                | (EventKind::Failed, Change::Failed { ended: e })
                | (EventKind::UpgradeFailed, Change::UpgradeFailed { ended: e }) => {
                    ended(&mut event, e)
                }
                (
                    EventKind::Restarting,
                    Change::Crashed {
                        then: AfterCrash::Restart { delay, count, .. },
                        ..
                    },
                ) => {
                    event.reason = Some(format!("crash {count} in a row"));
                    event.delay_ms = Some(delay.as_millis() as u64);
                }
                (
                    EventKind::Disabled,
                    Change::Crashed {
                        then: AfterCrash::Disable { count },
                        ..
                    },
                ) => event.reason = Some(unstable_reason(*count)),
                (EventKind::Disabled, Change::Disable { reason }) => {
                    event.reason = Some(reason.clone())
                }
                (EventKind::Stopped, Change::Stopped { exit }) => event.exit = Some(*exit),
                (EventKind::Unhealthy, _) => event.reason = Some("missed a health ping".into()),
                (EventKind::OutOfResources, Change::OutOfResources { reason, delay, .. }) => {
                    event.reason = Some(reason.clone());
                    event.delay_ms = Some(delay.as_millis() as u64);
                }
                (EventKind::Upgrading, Change::UpgradeStarted { from, to })
                | (EventKind::Upgraded, Change::Upgraded { from, to })
                | (EventKind::Upgraded, Change::Replaced { from, to }) => {
                    event.reason = Some(format!("version {from} to {to}"))
                }
                (EventKind::UpgradeFailed, Change::Rejected { reason }) => {
                    event.reason = Some(reason.clone())
                }
                (EventKind::Discovered, Change::Returned) => {
                    event.reason = Some("its file is back".into())
                }
                _ => {}
            }
            event
        })
        .collect()
}

/// Why a plugin that crashed too often was disabled.
pub(crate) fn unstable_reason(count: u32) -> String {
    format!("crashed {count} times in a row; enable it again once it is fixed")
}

impl Entry {
    /// What a change does to the entry besides its state.
    pub(crate) fn apply(&mut self, change: &Change) {
        let now = toru_plugin_api::protocol::now_millis();
        let gone = |e: &mut Entry| {
            e.conn = None;
            e.pid = None;
            e.started_at_ms = None;
        };
        match change {
            Change::Enable => {
                self.enabled = true;
                self.consecutive_crashes = 0;
            }
            Change::Disable { .. } => {
                self.enabled = false;
                gone(self);
            }
            // No new request may reach the process from here on.
            Change::Stop => {
                self.conn = None;
                self.started_at_ms = None;
            }
            Change::Stopped { exit } => {
                self.last_exit = Some(*exit);
                gone(self);
            }
            Change::Ready { .. } => {
                self.started_at_ms = Some(now);
                // It runs again: an earlier crash or failure is history (the events keep it).
                self.last_error = None;
            }
            Change::Crashed { ended, then } => {
                self.last_exit = ended.exit.or(self.last_exit);
                self.last_error = Some(ended.reason.clone());
                gone(self);
                match then {
                    AfterCrash::Restart { count, .. } => {
                        self.consecutive_crashes = *count;
                        self.restarts += 1;
                    }
                    AfterCrash::Disable { count } => {
                        self.consecutive_crashes = *count;
                        if self.state == PluginState::Disabled {
                            self.enabled = false;
                            self.last_error = Some(unstable_reason(*count));
                        }
                    }
                }
            }
            Change::Failed { ended } => {
                self.last_exit = ended.exit.or(self.last_exit);
                self.last_error = Some(ended.reason.clone());
                gone(self);
            }
            Change::OutOfResources { reason, .. } => {
                self.last_error = Some(reason.clone());
                gone(self);
            }
            Change::Upgraded { .. } | Change::Replaced { .. } => {
                self.upgrade_error = None;
                self.rejected = None;
                self.pending_settings.clear();
            }
            Change::UpgradeFailed { ended } => self.upgrade_error = Some(ended.reason.clone()),
            Change::Rejected { reason } => self.upgrade_error = Some(reason.clone()),
            Change::Removed => gone(self),
            Change::Relaunch
            | Change::Retry
            | Change::MissedPing
            | Change::Pong
            | Change::UpgradeStarted { .. }
            | Change::Returned => {}
        }
    }
}

#[cfg(test)]
mod tests;
