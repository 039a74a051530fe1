//! Managing plugins: enable, disable, restart, settings. Each takes the plugin's turn, so
//! operations on one plugin never interleave, while other plugins are managed meanwhile.

use crate::config::Config;
use crate::error::ManageError;
use crate::shared::OPERATOR;
use crate::state::PluginInfo;
use crate::state::PluginState;
use crate::state::machine::Change;

use toru_plugin_api::protocol::LICENSE_KEY_SETTING as LICENSE_KEY;

use super::PluginHost;

impl PluginHost {
    /// Enables a plugin: persists it and starts it. Enabling a plugin that is enabled but
    /// failed starts it again; enabling a running one changes nothing. Resets the crash count.
    /// A `missing` plugin is marked enabled and starts when its file is back.
    ///
    /// # Errors
    /// An unknown plugin, one that failed to load, or a config file that cannot be written.
    pub async fn enable(&self, id: &str) -> Result<PluginInfo, ManageError> {
        let _turn = self.turn(id).await?;
        self.loadable(id)?;
        self.shared.config().set_enabled(id, true)?;
        let state = self.shared.transition(id, Change::Enable, |_| {}).await;
        if state == Some(PluginState::Starting) {
            self.shared.start_runner(id).await;
        }
        self.get(id)
    }

    /// Disables a plugin: persists it, sends `shutdown`, and escalates to SIGTERM and SIGKILL
    /// of its process group after the grace period. Returns once the process is reaped.
    ///
    /// # Errors
    /// An unknown plugin, one that failed to load, or a config file that cannot be written.
    pub async fn disable(&self, id: &str) -> Result<PluginInfo, ManageError> {
        let _turn = self.turn(id).await?;
        self.loadable(id)?;
        self.shared.config().set_enabled(id, false)?;
        self.shared.update(id, |e| e.enabled = false);
        self.shared.stop_runner(id).await;
        let disable = Change::Disable {
            reason: OPERATOR.into(),
        };
        self.shared.transition(id, disable, |_| {}).await;
        self.get(id)
    }

    /// Stops a running plugin and starts it again (for example after a settings change).
    /// A disabled or missing plugin stays as it is.
    ///
    /// # Errors
    /// An unknown plugin or one that failed to load.
    pub async fn restart(&self, id: &str) -> Result<PluginInfo, ManageError> {
        let _turn = self.turn(id).await?;
        self.loadable(id)?;
        self.shared.stop_runner(id).await;
        let relaunch = self.shared.registry().plugins.get(id).is_some_and(|e| {
            e.enabled && matches!(e.state, PluginState::Stopping | PluginState::Failed { .. })
        });
        if relaunch {
            let state = self
                .shared
                .transition(id, Change::Relaunch, |e| e.consecutive_crashes = 0)
                .await;
            if state == Some(PluginState::Starting) {
                self.shared.start_runner(id).await;
            }
        }
        self.get(id)
    }

    /// Sets (or with `None` removes) one of a plugin's settings, sent in its next `init`.
    ///
    /// # Errors
    /// An unknown plugin or a config file that cannot be written.
    pub fn set_setting(
        &self,
        id: &str,
        key: &str,
        value: Option<serde_json::Value>,
    ) -> Result<(), ManageError> {
        if !self.shared.registry().plugins.contains_key(id) {
            return Err(ManageError::UnknownPlugin(id.to_owned()));
        }
        self.shared.config().set_setting(id, key, value)?;
        Ok(())
    }

    /// Stores a license key for plugin `id` (its `license_key` setting, sent in `init`) and
    /// restarts the plugin if it is enabled, so that it checks the key at once. `None` removes
    /// the key.
    ///
    /// # Errors
    /// An unknown plugin, one that failed to load (nothing is stored then), or a config file
    /// that cannot be written.
    pub async fn set_license_key(
        &self,
        id: &str,
        key: Option<&str>,
    ) -> Result<PluginInfo, ManageError> {
        // Checked first, so that a plugin that cannot run does not get a key stored for nothing.
        self.loadable(id)?;
        self.set_setting(id, LICENSE_KEY, key.map(|k| k.trim().into()))?;
        self.restart(id).await
    }

    /// Waits for plugin `id`'s turn to be managed.
    async fn turn(&self, id: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, ManageError> {
        if self.shared.registry().shutting_down {
            return Err(ManageError::ShuttingDown);
        }
        self.shared
            .lock_plugin(id)
            .await
            .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))
    }

    /// Checks that plugin `id` can be managed: it exists, it loaded, and the host runs.
    pub(super) fn loadable(&self, id: &str) -> Result<(), ManageError> {
        let reg = self.shared.registry();
        if reg.shutting_down {
            return Err(ManageError::ShuttingDown);
        }
        let entry = reg
            .plugins
            .get(id)
            .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))?;
        if let Err(reason) = &entry.found.result {
            return Err(ManageError::NotLoadable {
                id: id.to_owned(),
                reason: reason.to_string(),
            });
        }
        Ok(())
    }
}

pub(super) fn has_license_key(config: &Config, id: &str) -> bool {
    config
        .plugin(id)
        .is_some_and(|p| p.settings.get(LICENSE_KEY).is_some_and(|v| !v.is_null()))
}
