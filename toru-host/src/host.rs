//! [`PluginHost`]: the cloneable handle an application (or `toru-server`) uses.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toru_plugin_api::JsonCodec;
use toru_plugin_api::protocol::{Payload, error_code, now_millis};
use uuid::Uuid;

pub use crate::state::{PluginInfo, PluginState};

use crate::builder::{PluginHostBuilder, create_dir};
use crate::config::Config;
use crate::connection::{CallFailure, Connection, Reply};
use crate::discovery::{self, Found};
use crate::error::{CallError, ManageError, StartError};
use crate::events::{EventKind, EventQuery, PluginEvent};
use crate::logs::{LogError, LogPage, LogQuery, PluginLogs};
use crate::request::{PluginRequest, PluginResponse};
use crate::shared::{OPERATOR, Shared, stop_runner};
use crate::state::{Entry, Registry};
use crate::store::{PluginKv, Store, StoreError};

/// A running plugin host. Cheap to clone; every clone is the same host.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("instance_id", &self.shared.instance_id)
            .field("plugin_dir", &self.shared.settings.plugin_dir)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// A builder with every setting at its default.
    pub fn builder() -> PluginHostBuilder {
        PluginHostBuilder::default()
    }

    pub(crate) async fn start(mut settings: PluginHostBuilder) -> Result<PluginHost, StartError> {
        create_dir(&settings.plugin_dir)?;
        // Plugins run with their folder as working directory, so a relative path would no
        // longer name their file.
        settings.plugin_dir =
            settings
                .plugin_dir
                .canonicalize()
                .map_err(|source| StartError::Dir {
                    path: settings.plugin_dir.clone(),
                    source,
                })?;
        create_dir(&settings.data_dir)?;
        let config = Config::load(settings.config_path())?;
        let store = Store::open(&settings.db_path(), settings.kv_limits)?;
        let (log_dir, notice) =
            PluginLogs::resolve_log_dir(settings.log_dir.as_deref(), &settings.data_dir);
        if let Some(notice) = notice {
            tracing::warn!(log_dir = %log_dir.display(), "{notice}");
        }
        let logs = PluginLogs::open(&log_dir, settings.log_config)?;
        let socket_dir =
            crate::process::socket_dir(settings.socket_dir.as_deref()).map_err(|source| {
                StartError::Dir {
                    path: settings
                        .socket_dir
                        .clone()
                        .unwrap_or_else(std::env::temp_dir),
                    source,
                }
            })?;
        let shared = Arc::new(Shared {
            codec: JsonCodec::with_max_frame_len(settings.max_frame_len),
            instance_id: store.instance_id(),
            store,
            logs,
            log_dir,
            socket_dir,
            registry: Mutex::new(Registry::default()),
            config: Mutex::new(config),
            events: broadcast::channel(1024).0,
            manage: tokio::sync::Mutex::new(()),
            tasks: TaskTracker::new(),
            reaper: crate::process::Reaper::start(),
            shutdown: CancellationToken::new(),
            settings,
        });
        let host = PluginHost { shared };
        host.spawn_event_cleanup();
        tracing::info!(
            instance.id = %host.shared.instance_id,
            plugin_dir = %host.shared.settings.plugin_dir.display(),
            log_dir = %host.shared.log_dir.display(),
            "plugin host starting"
        );
        host.rescan().await.map_err(|e| match e {
            ManageError::Scan { dir, source } => StartError::Dir { path: dir, source },
            other => unreachable!("rescan at start fails only to scan: {other}"),
        })?;
        Ok(host)
    }

    /// Deletes events past the retention period now and then once a day.
    fn spawn_event_cleanup(&self) {
        let shared = Arc::clone(&self.shared);
        self.shared.tasks.spawn(async move {
            let retention = shared.settings.event_retention;
            loop {
                let cutoff = now_millis().saturating_sub(retention.as_millis() as u64);
                match shared.store.cleanup_events(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "old plugin events deleted"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot delete old plugin events"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
            }
        });
    }

    /// The host's instance id: a UUID made on first start and kept in the database.
    pub fn instance_id(&self) -> Uuid {
        self.shared.instance_id
    }

    /// The folder the host reads plugins from.
    pub fn plugin_dir(&self) -> &Path {
        &self.shared.settings.plugin_dir
    }

    /// The folder the host writes logs to (after any fallback).
    pub fn log_dir(&self) -> &Path {
        &self.shared.log_dir
    }

    /// Every plugin found, loaded or not, in id order.
    pub fn list(&self) -> Vec<PluginInfo> {
        let now = now_millis();
        let mut infos: Vec<PluginInfo> = self
            .shared
            .registry()
            .plugins
            .values()
            .map(|e| e.info(now))
            .collect();
        let config = self.shared.config();
        for info in &mut infos {
            info.license_key_set = has_license_key(&config, &info.id);
        }
        infos
    }

    /// One plugin.
    ///
    /// # Errors
    /// [`ManageError::UnknownPlugin`].
    pub fn get(&self, id: &str) -> Result<PluginInfo, ManageError> {
        let mut info = self
            .shared
            .registry()
            .plugins
            .get(id)
            .map(|e| e.info(now_millis()))
            .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))?;
        info.license_key_set = has_license_key(&self.shared.config(), id);
        Ok(info)
    }

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

    /// Forwards an HTTP request to plugin `id` and waits for its response, up to the request
    /// timeout (then the plugin is sent `cancel`, as it is when the caller stops waiting).
    ///
    /// # Errors
    /// [`CallError`] tells an unknown plugin from a disabled one, one that is not running, a
    /// timeout and the plugin's own error.
    pub async fn request(
        &self,
        id: &str,
        request: &PluginRequest,
    ) -> Result<PluginResponse, CallError> {
        let conn = self.connection(id)?;
        let payload = Payload::HttpRequest(request.to_protocol());
        match conn
            .call(payload, self.shared.settings.request_timeout)
            .await
        {
            Ok(Reply::Http(response)) => Ok(response),
            other => Err(self.call_error(id, other)),
        }
    }

    /// The id of the plugin whose route is the first segment of `path` (`/acme/certificate`
    /// belongs to the plugin with route `/acme`).
    pub fn route_owner(&self, path: &str) -> Option<String> {
        let segment = path.trim_start_matches('/').split('/').next()?;
        self.shared
            .registry()
            .by_route(segment)
            .and_then(|e| e.metadata().map(|m| m.id.clone()))
    }

    /// Forwards a request to the plugin that owns its path; the plugin receives the full path.
    ///
    /// # Errors
    /// [`CallError::UnknownPlugin`] when no plugin owns the path, else as [`request`](Self::request).
    pub async fn request_by_path(
        &self,
        request: &PluginRequest,
    ) -> Result<PluginResponse, CallError> {
        let id = self
            .route_owner(&request.path)
            .ok_or_else(|| CallError::UnknownPlugin(request.path.clone()))?;
        self.request(&id, request).await
    }

    /// The plugin's frontend bundle (a JavaScript module).
    ///
    /// # Errors
    /// As [`request`](Self::request); a plugin without a bundle answers
    /// [`CallError::Plugin`] with code `not_found`.
    pub async fn bundle(&self, id: &str) -> Result<String, CallError> {
        let conn = self.connection(id)?;
        let has_frontend = self
            .shared
            .registry()
            .plugins
            .get(id)
            .and_then(|e| e.metadata().map(|m| m.frontend))
            .unwrap_or(false);
        if !has_frontend {
            // Its metadata says there is none: no need to ask (and wait on) the plugin.
            return Err(CallError::Plugin {
                id: id.to_owned(),
                code: error_code::NOT_FOUND.into(),
                message: "the plugin has no frontend bundle".into(),
            });
        }
        match conn
            .call(Payload::GetBundle, self.shared.settings.request_timeout)
            .await
        {
            Ok(Reply::Bundle(script)) => Ok(script),
            other => Err(self.call_error(id, other)),
        }
    }

    /// The connection to a plugin that serves requests now.
    fn connection(&self, id: &str) -> Result<Connection, CallError> {
        let reg = self.shared.registry();
        if reg.shutting_down {
            return Err(CallError::ShuttingDown);
        }
        let entry = reg
            .plugins
            .get(id)
            .ok_or_else(|| CallError::UnknownPlugin(id.to_owned()))?;
        if entry.found.result.is_err() || !entry.enabled {
            return Err(CallError::Disabled(id.to_owned()));
        }
        match (&entry.conn, entry.state.serves()) {
            (Some(conn), true) => Ok(conn.clone()),
            _ => Err(CallError::NotRunning {
                id: id.to_owned(),
                retry_after: retry_after(&entry.state, &self.shared.settings),
                state: entry.state.clone(),
            }),
        }
    }

    fn call_error(&self, id: &str, result: Result<Reply, CallFailure>) -> CallError {
        let id = id.to_owned();
        match result {
            Ok(Reply::Error { code, message }) => CallError::Plugin { id, code, message },
            Ok(other) => CallError::Plugin {
                id,
                code: error_code::BAD_REQUEST.into(),
                message: format!("plugin answered with an unexpected reply: {other:?}"),
            },
            Err(CallFailure::Timeout) => CallError::Timeout {
                id,
                after: self.shared.settings.request_timeout,
            },
            Err(CallFailure::Closed) => CallError::ConnectionLost(id),
            Err(CallFailure::TooLarge { len, max }) => CallError::TooLarge { len, max },
        }
    }

    /// The host's database, for an application's own settings (for example `toru-server`'s
    /// admin secret hash). Plugin KV data is reached through [`kv`](Self::kv).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Plugin `plugin_id`'s KV namespace, for the embedding application.
    pub fn kv(&self, plugin_id: &str) -> PluginKv {
        self.shared.store.kv(plugin_id)
    }

    /// A stream of lifecycle events, from now on. A receiver that falls more than 1024 events
    /// behind skips the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.shared.events.subscribe()
    }

    /// Recorded lifecycle events, newest first.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<PluginEvent>, StoreError> {
        self.shared.store.events(query).await
    }

    /// A page of a plugin's log, newest first.
    ///
    /// # Errors
    /// When the log files cannot be read.
    pub async fn logs(&self, id: &str, query: &LogQuery) -> Result<LogPage, LogError> {
        self.shared.logs.query(id, query).await
    }

    /// Scans the plugins folder again: starts plugins that appeared, stops and forgets those
    /// whose file went away, and reloads those whose file changed.
    ///
    /// # Errors
    /// [`ManageError::Scan`] when the folder cannot be read.
    pub async fn rescan(&self) -> Result<(), ManageError> {
        let _manage = self.shared.manage.lock().await;
        let dir = &self.shared.settings.plugin_dir;
        let found = discovery::scan(dir, self.shared.settings.metadata_timeout)
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

    /// Stops every plugin (`shutdown`, then SIGTERM and SIGKILL after the grace period), waits
    /// for the host's tasks, and closes the database. Calls after the first return at once.
    pub async fn shutdown(&self) {
        let runners: Vec<_> = {
            let mut reg = self.shared.registry();
            if reg.shutting_down {
                Vec::new()
            } else {
                reg.shutting_down = true;
                reg.plugins
                    .values_mut()
                    .filter_map(|e| e.runner.take())
                    .collect()
            }
        };
        futures_util::future::join_all(runners.into_iter().map(stop_runner)).await;
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.reaper.close().await;
        self.shared.logs.flush().await;
        if let Err(e) = self.shared.store.close().await {
            tracing::error!(error = %e, "cannot close the database cleanly");
        }
        let _ = std::fs::remove_dir_all(&self.shared.socket_dir);
    }
}

/// The setting a plugin's license key is kept in.
pub(crate) const LICENSE_KEY: &str = "license_key";

fn has_license_key(config: &Config, id: &str) -> bool {
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

/// When a plugin that is not serving is worth trying again.
fn retry_after(state: &PluginState, settings: &PluginHostBuilder) -> Option<Duration> {
    match state {
        PluginState::BackingOff { next_attempt_ms } => Some(Duration::from_millis(
            next_attempt_ms.saturating_sub(now_millis()).max(1000),
        )),
        PluginState::Starting | PluginState::Stopping => {
            Some(settings.start_timeout.min(Duration::from_secs(5)))
        }
        _ => None,
    }
}
