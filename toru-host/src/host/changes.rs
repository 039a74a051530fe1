//! What a scan found, done to one plugin at a time (with its turn held): a new plugin
//! announced and started, an upgrade, a rejected file, a removal, a return.

use std::time::Duration;

use tokio::sync::oneshot;
use toru_plugin_api::protocol::Level;

use crate::discovery::{Found, file_name};
use crate::events::{EventKind, PluginEvent};
use crate::state::machine::Change;
use crate::state::{Entry, PluginState};
use crate::supervisor::{Command, Upgrade};

use super::PluginHost;

/// What one file, or the end of a scan, asks of a plugin.
pub(super) enum Op {
    /// A new entry: announce it, and start it when it is enabled.
    Discovered(String),
    /// An entry for a file that did not load: announce why.
    LoadFailed(String, PluginEvent),
    /// An installed plugin's file was replaced (or renamed).
    Upgrade(String, Found),
    /// A missing plugin's file is back.
    Return(String, Found),
    /// An installed plugin's file was replaced by one that does not load.
    Reject(String, Found, String),
    /// An installed plugin's file went away.
    Remove(String),
}

/// What an operation did, for the report.
pub(super) enum Did {
    Nothing,
    Upgraded(String),
    UpgradeFailed(String),
    LoadFailed(String),
}

impl PluginHost {
    pub(super) fn spawn_op(&self, op: Op, forced: bool) -> tokio::task::JoinHandle<Did> {
        let host = self.detached();
        self.shared
            .tasks
            .spawn(async move { host.run_op(op, forced).await })
    }

    async fn run_op(&self, op: Op, forced: bool) -> Did {
        let shared = &self.shared;
        match op {
            Op::Discovered(id) => {
                shared
                    .announce(&id, vec![PluginEvent::new(&id, EventKind::Discovered)])
                    .await;
                if let Some(_turn) = shared.lock_plugin(&id).await {
                    shared.start_runner(&id).await;
                }
                Did::Nothing
            }
            Op::LoadFailed(key, event) => {
                shared.announce(&key, vec![event]).await;
                Did::Nothing
            }
            Op::Remove(id) => {
                let Some(_turn) = shared.lock_plugin(&id).await else {
                    return Did::Nothing;
                };
                shared.stop_runner(&id).await;
                shared.transition(&id, Change::Removed, |_| {}).await;
                Did::Nothing
            }
            Op::Reject(id, found, reason) => {
                let Some(_turn) = shared.lock_plugin(&id).await else {
                    return Did::Nothing;
                };
                if !forced && self.rejected(&id, &found) {
                    return Did::Nothing;
                }
                let hash = found.hash;
                let change = Change::Rejected { reason };
                match shared.transition(&id, change, |e| e.rejected = hash).await {
                    Some(_) => Did::UpgradeFailed(id),
                    None => Did::Nothing,
                }
            }
            Op::Return(id, found) => {
                let Some(_turn) = shared.lock_plugin(&id).await else {
                    return Did::Nothing;
                };
                if let Some(reason) = self.route_taken(&id, &found) {
                    return self.refuse_file(found, reason).await;
                }
                let state = shared
                    .transition(&id, Change::Returned, |e| {
                        e.found = found;
                        e.upgrade_error = None;
                        e.rejected = None;
                    })
                    .await;
                if state == Some(PluginState::Starting) {
                    shared.start_runner(&id).await;
                }
                Did::Nothing
            }
            Op::Upgrade(id, found) => {
                let Some(_turn) = shared.lock_plugin(&id).await else {
                    return Did::Nothing;
                };
                self.upgrade(&id, found, forced).await
            }
        }
    }

    /// Whether `found` is contents whose upgrade failed already.
    fn rejected(&self, id: &str, found: &Found) -> bool {
        self.shared
            .registry()
            .plugins
            .get(id)
            .is_some_and(|e| e.rejected.is_some() && e.rejected == found.hash)
    }

    /// Why plugin `id` cannot take `found`'s route, when another installed plugin has it.
    fn route_taken(&self, id: &str, found: &Found) -> Option<String> {
        let route = &found.result.as_ref().ok()?.route;
        let reg = self.shared.registry();
        let (_, holder) = reg.plugins.iter().find(|(other, e)| {
            other.as_str() != id && e.installed() && e.metadata().is_some_and(|m| &m.route == route)
        })?;
        Some(format!(
            "route {route:?} is already used by {}",
            file_name(&holder.found.file)
        ))
    }

    /// Lists `found` as a file that failed to load, for `reason`.
    async fn refuse_file(&self, found: Found, reason: String) -> Did {
        let name = file_name(&found.file);
        tracing::warn!(plugin.file = %found.file.display(), %reason, "plugin cannot be loaded");
        self.shared.registry().plugins.insert(
            name.clone(),
            Entry::new(found.refused(reason.clone()), false),
        );
        let event = PluginEvent::new(&name, EventKind::LoadFailed).with_reason(reason);
        self.shared.announce(&name, vec![event]).await;
        Did::LoadFailed(name)
    }

    /// Plugin `id`'s file was replaced by `found` (same id). With the plugin's turn held.
    async fn upgrade(&self, id: &str, found: Found, forced: bool) -> Did {
        let shared = &self.shared;
        let current = shared.update(id, |e| {
            (
                e.found.hash,
                e.state.clone(),
                e.enabled,
                e.runner
                    .as_ref()
                    .filter(|r| !r.finished())
                    .map(|r| r.commands.clone()),
            )
        });
        let Some((hash, state, enabled, commands)) = current else {
            return Did::Nothing;
        };
        if hash == found.hash {
            // Renamed, not changed: the plugin runs on as it is.
            shared.update(id, |e| {
                e.found.file = found.file;
                e.found.stamp = found.stamp;
            });
            return Did::Nothing;
        }
        if !forced && self.rejected(id, &found) {
            return Did::Nothing;
        }
        if let Some(reason) = self.route_taken(id, &found) {
            let hash = found.hash;
            shared
                .transition(id, Change::Rejected { reason }, |e| e.rejected = hash)
                .await;
            return Did::UpgradeFailed(id.to_owned());
        }
        if state == PluginState::Missing {
            return Did::Nothing;
        }
        if let Some(commands) = commands {
            let (reply, answer) = oneshot::channel();
            let command = Command::Upgrade {
                found: Box::new(found.clone()),
                reply,
            };
            let sent = match commands.try_send(command) {
                Ok(()) => true,
                // Earlier upgrades it has not taken yet: this one is tried on the next scan.
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => return Did::Nothing,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
            };
            if sent {
                let settings = &shared.settings;
                let patience =
                    settings.start_timeout * 2 + settings.stop_grace + Duration::from_secs(5);
                match tokio::time::timeout(patience, answer).await {
                    Ok(Ok(Upgrade::Failed(_))) => return Did::UpgradeFailed(id.to_owned()),
                    Ok(Ok(_)) => return Did::Upgraded(id.to_owned()),
                    Err(_) => {
                        shared.logs.supervisor(
                            Level::Warn,
                            id,
                            "upgrade",
                            &format!("no answer to the upgrade within {patience:?}; it goes on"),
                        );
                        return Did::Nothing;
                    }
                    // The supervisor ended before it got to it: the plugin does not run.
                    Ok(Err(_)) => {}
                }
            }
        }
        // Not running: take the new metadata, and start it when it was waiting for a change.
        let from = shared
            .registry()
            .plugins
            .get(id)
            .map(|e| e.found.version())
            .unwrap_or_default();
        let change = Change::Replaced {
            from,
            to: found.version(),
        };
        let after = shared.transition(id, change, |e| e.found = found).await;
        if enabled && matches!(after, Some(PluginState::Failed { .. })) {
            let relaunched = shared
                .transition(id, Change::Relaunch, |e| e.consecutive_crashes = 0)
                .await;
            if relaunched == Some(PluginState::Starting) {
                shared.start_runner(id).await;
            }
        }
        Did::Upgraded(id.to_owned())
    }
}
