//! Managing plugins: enable, disable, restart, settings, rescan.

use crate::config::Config;
use crate::discovery::{self, Found};
use crate::error::ManageError;
use crate::events::{EventKind, PluginEvent};
use crate::shared::{OPERATOR, stop_runner};
use crate::state::{Entry, PluginInfo, PluginState, Registry};

use toru_plugin_api::license::LICENSE_KEY_SETTING as LICENSE_KEY;

use super::PluginHost;

impl PluginHost {
    /// Enables a plugin: persists it and starts it. Enabling a plugin that is enabled but
    /// failed starts it again; enabling a running one changes nothing. Resets the crash count.
    ///
    /// # Errors
    /// An unknown plugin, one that failed to load, or a config file that cannot be written.
    pub async fn enable(&self, id: &str) -> Result<PluginInfo, ManageError> {
        let _manage = self.shared.manage.lock().await;
        {
            let mut reg = self.shared.registry();
            let entry = loadable(&mut reg, id)?;
            self.shared.config().set_enabled(id, true)?;
            entry.enabled = true;
            entry.consecutive_crashes = 0;
        }
        self.shared
            .emit(PluginEvent::new(id, EventKind::Enabled))
            .await;
        if let Some(entry) = self.shared.registry().plugins.get_mut(id) {
            let finished = entry.runner.as_ref().is_none_or(|r| *r.done.borrow());
            if finished {
                self.shared.start_runner(entry);
            }
        }
        self.get(id)
    }

    /// Disables a plugin: persists it, sends `shutdown`, and escalates to SIGTERM and SIGKILL
    /// of its process group after the grace period. Returns once the process is reaped.
    ///
    /// # Errors
    /// An unknown plugin, one that failed to load, or a config file that cannot be written.
    pub async fn disable(&self, id: &str) -> Result<PluginInfo, ManageError> {
        let _manage = self.shared.manage.lock().await;
        let runner = {
            let mut reg = self.shared.registry();
            let entry = loadable(&mut reg, id)?;
            self.shared.config().set_enabled(id, false)?;
            entry.enabled = false;
            entry.runner.take()
        };
        if let Some(runner) = runner {
            stop_runner(runner).await;
        }
        self.shared.update(id, |e| {
            e.state = PluginState::Disabled;
            e.pid = None;
        });
        self.shared
            .emit(PluginEvent::new(id, EventKind::Disabled).with_reason(OPERATOR))
            .await;
        self.get(id)
    }

    /// Stops a running plugin and starts it again (for example after a settings change).
    /// A disabled plugin stays disabled.
    ///
    /// # Errors
    /// An unknown plugin or one that failed to load.
    pub async fn restart(&self, id: &str) -> Result<PluginInfo, ManageError> {
        let _manage = self.shared.manage.lock().await;
        let runner = {
            let mut reg = self.shared.registry();
            loadable(&mut reg, id)?.runner.take()
        };
        if let Some(runner) = runner {
            stop_runner(runner).await;
        }
        if let Some(entry) = self.shared.registry().plugins.get_mut(id)
            && entry.enabled
        {
            entry.consecutive_crashes = 0;
            self.shared.start_runner(entry);
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
    /// An unknown plugin, one that failed to load, or a config file that cannot be written.
    pub async fn set_license_key(
        &self,
        id: &str,
        key: Option<&str>,
    ) -> Result<PluginInfo, ManageError> {
        self.set_setting(id, LICENSE_KEY, key.map(|k| k.trim().into()))?;
        self.restart(id).await
    }

    /// Scans the plugins folder again: starts plugins that appeared, stops and forgets those
    /// whose file went away, and reloads those whose file changed.
    ///
    /// # Errors
    /// [`ManageError::Scan`] when the folder cannot be read.
    pub async fn rescan(&self) -> Result<(), ManageError> {
        let _manage = self.shared.manage.lock().await;
        let dir = &self.shared.settings.plugin_dir;
        let found = discovery::scan(
            dir,
            self.shared.settings.metadata_timeout,
            &self.shared.containers,
        )
        .await
        .map_err(|source| ManageError::Scan {
            dir: dir.clone(),
            source,
        })?;
        let mut events = Vec::new();
        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        {
            let mut reg = self.shared.registry();
            let keys: Vec<String> = found.iter().map(Found::key).collect();
            let gone: Vec<String> = reg
                .plugins
                .iter()
                .filter(|(k, e)| !found.iter().any(|f| f.key() == **k && f.same_as(&e.found)))
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                if let Some(mut entry) = reg.plugins.remove(&key) {
                    if let Some(runner) = entry.runner.take() {
                        to_stop.push(runner);
                    }
                    if !keys.contains(&key) {
                        events.push(PluginEvent::new(&key, EventKind::Removed));
                    }
                }
            }
            for f in found {
                let key = f.key();
                if reg.plugins.contains_key(&key) {
                    continue;
                }
                events.push(match &f.result {
                    Ok(_) => PluginEvent::new(&key, EventKind::Discovered),
                    Err(reason) => {
                        tracing::warn!(plugin.file = %f.file.display(), %reason, "plugin cannot be loaded");
                        PluginEvent::new(&key, EventKind::LoadFailed).with_reason(reason)
                    }
                });
                let enabled = f.result.is_ok()
                    && self
                        .shared
                        .config()
                        .plugin(&key)
                        .and_then(|p| p.enabled)
                        .unwrap_or(self.shared.settings.enable_new_plugins);
                if enabled {
                    to_start.push(key.clone());
                }
                reg.plugins.insert(key, Entry::new(f, enabled));
            }
        }
        for runner in to_stop {
            stop_runner(runner).await;
        }
        // Events first, so that a plugin's `discovered` comes before its `started`.
        for event in events {
            self.shared.emit(event).await;
        }
        let mut reg = self.shared.registry();
        for key in to_start {
            if let Some(entry) = reg.plugins.get_mut(&key) {
                self.shared.start_runner(entry);
            }
        }
        Ok(())
    }
}

pub(super) fn has_license_key(config: &Config, id: &str) -> bool {
    config
        .plugin(id)
        .is_some_and(|p| p.settings.get(LICENSE_KEY).is_some_and(|v| !v.is_null()))
}

fn loadable<'r>(reg: &'r mut Registry, id: &str) -> Result<&'r mut Entry, ManageError> {
    if reg.shutting_down {
        return Err(ManageError::ShuttingDown);
    }
    let entry = reg
        .plugins
        .get_mut(id)
        .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))?;
    if let Err(reason) = &entry.found.result {
        return Err(ManageError::NotLoadable {
            id: id.to_owned(),
            reason: reason.clone(),
        });
    }
    Ok(entry)
}
