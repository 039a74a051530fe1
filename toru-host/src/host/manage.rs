//! Managing plugins: enable, disable, restart (settings are in `settings.rs`). Each takes the
//! plugin's turn, so operations on one plugin never interleave, while other plugins are managed
//! meanwhile.

use crate::error::ManageError;
use crate::shared::OPERATOR;
use crate::state::PluginInfo;
use crate::state::PluginState;
use crate::state::machine::Change;

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
        self.restart_in_turn(id).await;
        self.get(id)
    }

    /// [`restart`](Self::restart), with the plugin's turn held by the caller.
    pub(super) async fn restart_in_turn(&self, id: &str) {
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
    }

    /// Waits for plugin `id`'s turn to be managed.
    pub(super) async fn turn(
        &self,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, ManageError> {
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
