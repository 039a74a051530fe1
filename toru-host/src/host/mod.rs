//! [`PluginHost`]: the cloneable handle an application (or `toru-server`) uses.

mod calls;
mod changes;
mod forward;
mod limits;
mod manage;
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
        let (log_dir, notice) =
            PluginLogs::resolve_log_dir(settings.log_dir.as_deref(), &settings.data_dir)?;
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
            events: broadcast::channel(1024).0,
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
        let host = PluginHost { shared };
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

    /// Ends every open stream (a WebSocket is closed with 1001 both ways; an HTTP response
    /// being streamed is cut off and its plugin gets `cancel`), stops every plugin
    /// (`shutdown`, then SIGTERM and SIGKILL after the grace period), waits for the host's
    /// tasks, and closes the database. Calls after the first return at once.
    pub async fn shutdown(&self) {
        let running: Vec<String> = {
            let mut reg = self.shared.registry();
            if reg.shutting_down {
                Vec::new()
            } else {
                reg.shutting_down = true;
                for conn in reg.plugins.values().filter_map(|e| e.conn.as_ref()) {
                    conn.end_streams();
                }
                reg.plugins
                    .iter()
                    .filter(|(_, e)| e.runner.is_some())
                    .map(|(id, _)| id.clone())
                    .collect()
            }
        };
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
    }
}
