//! Plugin settings through the handle: a change checked against the declarations, stored in
//! `config.json`, and applied (live, by a restart, or at the next start).

use std::time::Duration;

use serde_json::{Map, Value};
use toru_plugin_api::protocol::LICENSE_KEY_SETTING as LICENSE_KEY;
use toru_plugin_api::protocol::{Message, Payload, SettingsUpdate};

use crate::config::Config;
use crate::connection::Connection;
use crate::error::ManageError;
use crate::events::{EventKind, PluginEvent};
use crate::settings::{self, Values};
use crate::state::{PluginInfo, PluginState};

use super::PluginHost;

/// How long a `settings` message may wait for room in the plugin's outgoing queue; a plugin
/// that does not read that long is restarted instead.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How a change of settings reached the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Sent in a `settings` message (or, to a process still starting, once it is ready).
    Live,
    /// The plugin was restarted with them.
    Restarted,
    /// It is not running; it gets them when it next starts.
    NextStart,
}

impl Applied {
    fn as_str(self) -> &'static str {
        match self {
            Applied::Live => "applied while it runs",
            Applied::Restarted => "restarted to apply them",
            Applied::NextStart => "they apply when it next starts",
        }
    }
}

impl PluginHost {
    /// Changes plugin `id`'s settings. `changes` maps a setting's name to its new value; `null`
    /// removes the stored value (its default applies again), and a setting left out keeps its
    /// value. A blank secret removes it too.
    ///
    /// Every value is checked against its declaration ([`SettingSpec::check`]) and names the
    /// plugin does not take are refused: one bad field refuses the whole change, and nothing is
    /// stored. Otherwise the values are written to `config.json` (atomically; the only place a
    /// secret is kept) and applied:
    ///
    /// - a running plugin whose metadata says `live_settings` is sent a `settings` message with
    ///   all of its settings (a process still starting gets it once it is ready);
    /// - any other running plugin is restarted with them, and so is every plugin when
    ///   `license_key` changes (a plugin checks its license when it starts);
    /// - a failed plugin (one missing a required setting, say) is started again;
    /// - a disabled, crashed or missing plugin gets them when it next starts.
    ///
    /// A `settings_changed` event names the settings that changed, never their values.
    ///
    /// [`SettingSpec::check`]: toru_plugin_api::protocol::SettingSpec::check
    ///
    /// # Errors
    /// [`ManageError::InvalidSettings`] with a message per refused field; an unknown plugin,
    /// one that failed to load, or a config file that cannot be written.
    pub async fn set_settings(
        &self,
        id: &str,
        changes: &Map<String, Value>,
    ) -> Result<PluginInfo, ManageError> {
        let _turn = self.turn(id).await?;
        self.loadable(id)?;
        let (specs, live, upgrade_waits) = {
            let reg = self.shared.registry();
            let entry = reg
                .plugins
                .get(id)
                .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))?;
            let meta = entry
                .metadata()
                .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))?;
            let mut specs = settings::declared(meta);
            // What a new version, held back for want of them, declares may be set too.
            for spec in &entry.pending_settings {
                if !specs.iter().any(|s| s.name == spec.name) {
                    specs.push(spec.clone());
                }
            }
            (
                specs,
                meta.live_settings,
                !entry.pending_settings.is_empty(),
            )
        };
        let (changed, values) = {
            let mut config = self.shared.config();
            let stored = stored(&config, id);
            let next =
                settings::apply(&specs, &stored, changes).map_err(ManageError::InvalidSettings)?;
            let changed = settings::changed(&stored, &next);
            if changed.is_empty() {
                drop(config);
                return self.get(id);
            }
            config.set_settings(id, next.clone())?;
            (changed, settings::effective(&specs, &next))
        };
        let (state, conn) = self
            .shared
            .update(id, |e| {
                e.settings_gen += 1;
                (e.state.clone(), e.conn.clone())
            })
            .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))?;
        let restart = !live || changed.iter().any(|n| n == LICENSE_KEY);
        let applied = match state {
            PluginState::Failed { .. } => {
                self.restart_in_turn(id).await;
                Applied::Restarted
            }
            PluginState::Starting
            | PluginState::Running
            | PluginState::Unhealthy
            | PluginState::Upgrading { .. } => {
                let live = match (restart, values, conn) {
                    (false, Ok(values), Some(conn)) => send(&conn, values).await,
                    // Still starting: the supervisor sends them once it is ready.
                    (false, Ok(_), None) => true,
                    _ => false,
                };
                if live {
                    Applied::Live
                } else {
                    self.restart_in_turn(id).await;
                    Applied::Restarted
                }
            }
            _ => Applied::NextStart,
        };
        tracing::info!(plugin.id = %id, settings = ?changed, applied = applied.as_str(), "plugin settings changed");
        let event = PluginEvent::new(id, EventKind::SettingsChanged).with_reason(format!(
            "{} changed; {}",
            changed.join(", "),
            applied.as_str()
        ));
        self.shared.announce(id, vec![event]).await;
        if upgrade_waits {
            // Its new version may start now: try the upgrade again, in the background (it takes
            // this plugin's turn, which this call holds).
            self.shared.update(id, |e| e.rejected = None);
            let host = self.clone();
            self.shared.tasks.spawn(async move {
                if let Err(e) = host.rescan().await {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot rescan the plugins folder");
                }
            });
        }
        self.get(id)
    }

    /// Stores a license key for plugin `id` (its `license_key` setting) and restarts the plugin
    /// if it is enabled, so that it checks the key at once. `None`, or a blank key, removes the
    /// key. The same as [`set_settings`](Self::set_settings) with `license_key` alone.
    ///
    /// # Errors
    /// As [`set_settings`](Self::set_settings): a plugin that takes no license key (its metadata
    /// neither says `license_required` nor declares `license_key`) refuses it.
    pub async fn set_license_key(
        &self,
        id: &str,
        key: Option<&str>,
    ) -> Result<PluginInfo, ManageError> {
        let mut changes = Map::new();
        changes.insert(LICENSE_KEY.into(), key.map_or(Value::Null, Value::from));
        self.set_settings(id, &changes).await
    }

    /// Fills in `info`'s settings from its metadata and `config`.
    pub(super) fn fill_settings(&self, config: &Config, info: &mut PluginInfo) {
        info.license_key_set = stored(config, &info.id)
            .get(LICENSE_KEY)
            .is_some_and(|v| !v.is_null());
        info.settings = match &info.metadata {
            Some(meta) => {
                let mut specs = settings::declared(meta);
                for spec in &info.pending_settings {
                    if !specs.iter().any(|s| s.name == spec.name) {
                        specs.push(spec.clone());
                    }
                }
                settings::views(&specs, &stored(config, &info.id))
            }
            None => Vec::new(),
        };
    }
}

/// Plugin `id`'s stored settings.
pub(crate) fn stored(config: &Config, id: &str) -> Values {
    config
        .plugin(id)
        .map(|p| p.settings.clone())
        .unwrap_or_default()
}

/// Sends `values` in a `settings` message; `false` when the connection is closed or the plugin
/// does not read its socket.
pub(crate) async fn send(conn: &Connection, values: Values) -> bool {
    let message = Message::new(None, Payload::Settings(SettingsUpdate { settings: values }));
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, conn.send(&message)).await,
        Ok(Ok(()))
    )
}
