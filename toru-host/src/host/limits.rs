//! Containment and resource limits through the handle: what the host uses, and each plugin's
//! own limits.

use crate::config::Config;
use crate::contain::Containment;
use crate::contain::limits::{LimitOverrides, Limits};
use crate::error::ManageError;
use crate::state::PluginInfo;

use super::PluginHost;

impl PluginHost {
    /// How the host keeps each plugin's processes together (chosen at start).
    pub fn containment(&self) -> Containment {
        self.shared.containers.kind()
    }

    /// The limits of a plugin that has none of its own.
    pub fn default_limits(&self) -> Limits {
        self.shared.settings.default_limits
    }

    /// Sets plugin `id`'s own limits, each replacing the host's default (an empty
    /// [`LimitOverrides`] goes back to the defaults), persists them in `config.json`, and
    /// restarts the plugin if it runs, so that they apply at once.
    ///
    /// # Errors
    /// An unknown plugin, one that failed to load, or a config file that cannot be written.
    pub async fn set_limits(
        &self,
        id: &str,
        limits: LimitOverrides,
    ) -> Result<PluginInfo, ManageError> {
        self.loadable(id)?;
        self.shared.config().set_limits(id, limits)?;
        tracing::info!(plugin.id = %id, limits = ?limits, "plugin limits set");
        self.restart(id).await
    }

    /// Fills in `info`'s limits, and its containment where no process of it has run yet.
    pub(super) fn fill_limits(&self, config: &Config, info: &mut PluginInfo) {
        info.limit_overrides = config
            .plugin(&info.id)
            .map(|p| p.limits)
            .unwrap_or_default();
        info.limits = info
            .limit_overrides
            .apply(&self.shared.settings.default_limits);
        if info.load_error.is_none() && info.containment.is_none() {
            info.containment = Some(self.shared.containers.kind());
            info.limits_enforced_by = Some(self.shared.containers.enforcement(&info.limits));
        }
    }
}
