//! [`PluginHost`]: the cloneable handle an application (or `toru-server`) uses.

mod calls;
mod changes;
mod forward;
mod limits;
mod manage;
mod ready;
mod rescan;
mod settings;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toru_plugin_api::FrameCodec;
use toru_plugin_api::protocol::now_millis;
use uuid::Uuid;

pub use crate::state::{PluginInfo, PluginState};
pub use calls::ForwardedTo;
pub(crate) use calls::client_response;
pub use ready::NotReady;
pub use rescan::ScanReport;
pub(crate) use rescan::ScanState;
pub(crate) use settings::{send as send_settings, stored as stored_settings};

use crate::builder::{PluginHostBuilder, create_dir};
use crate::config::Config;
use crate::error::{ManageError, StartError};
use crate::events::{EventQuery, PluginEvent};
use crate::logs::{LogError, LogPage, LogQuery, PluginLogs};
use crate::shared::Shared;
use crate::state::Registry;
use crate::store::{AppSettings, PluginKv, Store};

/// A running plugin host. Cheap to clone; every clone is the same host.
///
/// Call [`shutdown`](Self::shutdown) to stop it and wait until every plugin is stopped. When the
/// application drops its last handle without doing so, the host shuts down in the background on
/// the Tokio runtime the handle was dropped on: plugins are stopped as `shutdown` stops them,
/// but nothing waits for it, so an application about to exit should call `shutdown` itself. (A
/// handle dropped outside any runtime can only cancel the host's tasks; its plugins then die
/// with the process, by the parent-death signal.)
///
/// See the [crate docs](crate) for examples.
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<Shared>,
    /// Counts the application's handles: the last one dropped shuts the host down. `None` in
    /// the host's own tasks, which must not keep it alive.
    _owner: Option<Arc<Owner>>,
}

/// Shuts the host down when the application's last [`PluginHost`] goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let host = PluginHost {
            shared: Arc::clone(&self.0),
            _owner: None,
        };
        if host.shared.registry().shutting_down {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::info!("the last handle to the plugin host was dropped; shutting down");
                runtime.spawn(async move { host.shutdown().await });
            }
            Err(_) => host.shared.shutdown.cancel(),
        }
    }
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
        // The folder must be readable; its files are loaded in the background.
        crate::discovery::list(&settings.plugin_dir).map_err(|source| StartError::Dir {
            path: settings.plugin_dir.clone(),
            source,
        })?;
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
        let log_dir = PluginLogs::resolve_log_dir(settings.log_dir.as_deref(), &settings.data_dir)?;
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
        let reaper = crate::process::Reaper::start();
        let containers = crate::contain::Containers::start(
            settings.containment,
            settings.default_limits,
            &reaper,
        )
        .await;
        let shared = Arc::new(Shared {
            codec: FrameCodec::with_max_frame_len(settings.max_frame_len),
            instance_id: store.instance_id(),
            store,
            logs,
            log_dir,
            socket_dir,
            registry: Mutex::new(Registry::default()),
            config: Mutex::new(config),
            events: settings
                .events
                .clone()
                .unwrap_or_else(|| broadcast::channel(crate::builder::EVENT_BUFFER).0),
            stopped: tokio::sync::watch::channel(false).0,
            launch: tokio::sync::Semaphore::new(settings.launch_concurrency.max(1)),
            next_socket: std::sync::atomic::AtomicU64::new(1),
            scan: tokio::sync::Mutex::new(ScanState::default()),
            discovered: tokio::sync::watch::channel(false).0,
            tasks: TaskTracker::new(),
            reaper,
            containers,
            shutdown: CancellationToken::new(),
            settings,
        });
        let host = PluginHost {
            _owner: Some(Arc::new(Owner(Arc::clone(&shared)))),
            shared,
        };
        host.spawn_event_cleanup();
        tracing::info!(
            instance.id = %host.shared.instance_id,
            plugin_dir = %host.shared.settings.plugin_dir.display(),
            log_dir = %host.shared.log_dir.display(),
            "plugin host starting"
        );
        host.spawn_scanner();
        Ok(host)
    }

    /// A handle for the host's own tasks: it does not keep the host from shutting down when the
    /// application drops its last handle.
    pub(crate) fn detached(&self) -> PluginHost {
        PluginHost {
            shared: Arc::clone(&self.shared),
            _owner: None,
        }
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

    /// The largest WebSocket message either way, in bytes (the builder's
    /// [`max_ws_message_bytes`](crate::PluginHostBuilder::max_ws_message_bytes)), for a
    /// framework that reads the client's messages itself.
    pub fn max_ws_message_bytes(&self) -> usize {
        self.shared.settings.max_ws_message_bytes
    }

    /// The folder the host writes logs to (after any fallback).
    pub fn log_dir(&self) -> &Path {
        &self.shared.log_dir
    }

    /// Every plugin found, loaded or not, in id order (missing ones included). Right after
    /// start, only those found so far: see [`discovered`](Self::discovered).
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
            self.fill_settings(&config, info);
            self.fill_limits(&config, info);
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
        let config = self.shared.config();
        self.fill_settings(&config, &mut info);
        self.fill_limits(&config, &mut info);
        Ok(info)
    }

    /// The application's own settings in the host's database (see [`AppSettings`]): the one
    /// part of the database an application writes besides plugin KV.
    pub fn app_settings(&self) -> AppSettings {
        self.shared.store.app_settings()
    }

    /// Plugin `plugin_id`'s KV namespace, for the embedding application: the keys the plugin
    /// reads and writes through its own `kv` requests. Any plugin the host knows has one,
    /// disabled and `missing` ones included (their data is kept); right after start, only
    /// those found so far (see [`discovered`](Self::discovered)).
    ///
    /// # Errors
    /// [`ManageError::UnknownPlugin`] for an id the host does not know, and
    /// [`ManageError::NotLoadable`] for a file that failed to load (its id is only its file
    /// name): a mistyped id never writes into a namespace of its own.
    pub fn kv(&self, plugin_id: &str) -> Result<PluginKv, ManageError> {
        self.known(plugin_id)?;
        Ok(self.shared.store.kv(plugin_id))
    }

    /// A stream of lifecycle events, from now on (to see every event from the start, the first
    /// `discovered` included, subscribe on the builder:
    /// [`PluginHostBuilder::subscribe`]). A receiver that falls more than 1024 events behind
    /// skips the oldest (`RecvError::Lagged`). The host also writes each event to its
    /// supervisor log, and logs it with `tracing` unless
    /// [`log_events`](PluginHostBuilder::log_events) is off.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.shared.events.subscribe()
    }

    /// Recorded lifecycle events, newest first: one page of `query` (see [`EventQuery`]), for
    /// one plugin or for all.
    ///
    /// # Errors
    /// [`ManageError::UnknownPlugin`] when `query` names a plugin the host does not know;
    /// [`ManageError::Store`] when the database cannot be read.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<PluginEvent>, ManageError> {
        if let Some(id) = &query.plugin_id
            && !self.shared.registry().plugins.contains_key(id.as_str())
        {
            return Err(ManageError::UnknownPlugin(id.clone()));
        }
        Ok(self.shared.store.events(query).await?)
    }

    /// A page of a plugin's log, newest first, across its rotated files. A plugin that never
    /// logged (one whose file failed to load, say) has an empty page.
    ///
    /// # Errors
    /// [`ManageError::UnknownPlugin`] for a plugin the host does not know; [`ManageError::Logs`]
    /// when its log files cannot be read.
    pub async fn logs(&self, id: &str, query: &LogQuery) -> Result<LogPage, ManageError> {
        if !self.shared.registry().plugins.contains_key(id) {
            return Err(ManageError::UnknownPlugin(id.to_owned()));
        }
        match self.shared.logs.query(id, query).await {
            Ok(page) => Ok(page),
            // A file that failed to load is listed by its file name, which may not name a log
            // file; it never logged.
            Err(LogError::InvalidPluginId(_)) => Ok(LogPage::empty(query)),
            Err(e) => Err(ManageError::Logs(e)),
        }
    }

    /// Checks that plugin `id` is one the host knows and that loaded.
    fn known(&self, id: &str) -> Result<(), ManageError> {
        let reg = self.shared.registry();
        let entry = reg
            .plugins
            .get(id)
            .ok_or_else(|| ManageError::UnknownPlugin(id.to_owned()))?;
        match &entry.found.result {
            Ok(_) => Ok(()),
            Err(reason) => Err(ManageError::NotLoadable {
                id: id.to_owned(),
                reason: reason.to_string(),
            }),
        }
    }

    /// Ends every open stream (a WebSocket is closed with 1001 both ways; an HTTP response
    /// being streamed is cut off and its plugin gets `cancel`), stops every plugin
    /// (`shutdown`, then SIGTERM and SIGKILL after the grace period), waits for the host's
    /// tasks, and closes the database. Every call, from any clone, returns once that is done;
    /// a caller that stops waiting does not stop the shutdown.
    pub async fn shutdown(&self) {
        let running: Option<Vec<String>> = {
            let mut reg = self.shared.registry();
            if reg.shutting_down {
                None
            } else {
                reg.shutting_down = true;
                for conn in reg.plugins.values().filter_map(|e| e.conn.as_ref()) {
                    conn.end_streams();
                }
                Some(
                    reg.plugins
                        .iter()
                        .filter(|(_, e)| e.runner.is_some())
                        .map(|(id, _)| id.clone())
                        .collect(),
                )
            }
        };
        let mut stopped = self.shared.stopped.subscribe();
        if let Some(running) = running {
            // In a task of its own, so that it finishes whoever waits for it.
            let host = self.detached();
            tokio::spawn(async move {
                host.stop_everything(running).await;
                host.shared.stopped.send_replace(true);
            });
        }
        // The sender lives as long as `shared`: this ends when the shutdown is done.
        let _ = stopped.wait_for(|done| *done).await;
    }

    async fn stop_everything(&self, running: Vec<String>) {
        // The scanner and old versions still draining stop first; then every plugin.
        self.shared.shutdown.cancel();
        futures_util::future::join_all(running.iter().map(|id| self.shared.stop_runner(id))).await;
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.containers.close();
        self.shared.reaper.close().await;
        self.shared.logs.flush().await;
        if let Err(e) = self.shared.store.close().await {
            tracing::error!(error = %e, "cannot close the database cleanly");
        }
        let _ = std::fs::remove_dir_all(&self.shared.socket_dir);
        tracing::info!("plugin host stopped");
    }
}
