//! Configuring and starting a [`PluginHost`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use toru_plugin_api::protocol::DEFAULT_MAX_FRAME_LEN;

use crate::error::StartError;
use crate::host::PluginHost;
use crate::logs::LogConfig;
use crate::store::KvLimits;
use crate::supervisor::{HealthPolicy, RestartPolicy};

/// Configures a [`PluginHost`]. Every setting has a default; see each setter.
#[derive(Debug, Clone)]
pub struct PluginHostBuilder {
    pub(crate) plugin_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) log_dir: Option<PathBuf>,
    pub(crate) socket_dir: Option<PathBuf>,
    pub(crate) metadata_timeout: Duration,
    pub(crate) start_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) max_frame_len: usize,
    pub(crate) kv_limits: KvLimits,
    pub(crate) restart_policy: RestartPolicy,
    pub(crate) health_policy: HealthPolicy,
    pub(crate) log_config: LogConfig,
    pub(crate) enable_new_plugins: bool,
    pub(crate) event_retention: Duration,
}

impl Default for PluginHostBuilder {
    fn default() -> Self {
        PluginHostBuilder {
            plugin_dir: PathBuf::from("./plugins"),
            data_dir: PathBuf::from("."),
            log_dir: None,
            socket_dir: None,
            metadata_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            kv_limits: KvLimits::default(),
            restart_policy: RestartPolicy::default(),
            health_policy: HealthPolicy::default(),
            log_config: LogConfig::default(),
            enable_new_plugins: true,
            event_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl PluginHostBuilder {
    /// The folder holding `*.binary` plugin files and `.metadata/config.json` (default
    /// `./plugins`; created when missing).
    pub fn plugin_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.plugin_dir = dir.into();
        self
    }

    /// The folder for `toru.redb` (default `.`; created when missing).
    pub fn data_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.data_dir = dir.into();
        self
    }

    /// The folder for `plugins/<id>.log` and `plugin-supervisor.log` (default `/var/log/toru`,
    /// falling back to `<data dir>/logs` when that is not writable). A folder set here must be
    /// writable: [`start`](Self::start) fails otherwise.
    pub fn log_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Where the host makes its 0700 socket folder (default `$XDG_RUNTIME_DIR`, else the temp
    /// dir). Socket paths must stay under about 100 bytes.
    pub fn socket_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.socket_dir = Some(dir.into());
        self
    }

    /// How long `plugin --metadata` may take (default 5 s).
    pub fn metadata_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.metadata_timeout = timeout;
        self
    }

    /// How long a plugin may take from spawn to `ready` (default 10 s); longer is a crash.
    pub fn start_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.start_timeout = timeout;
        self
    }

    /// How long a forwarded request may take before it is cancelled (default 30 s).
    pub fn request_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a plugin gets to exit after `shutdown`, and again after SIGTERM, before SIGKILL
    /// (default 5 s).
    pub fn stop_grace(&mut self, grace: Duration) -> &mut Self {
        self.stop_grace = grace;
        self
    }

    /// The largest frame either side may send (default 16 MiB).
    ///
    /// # Panics
    /// [`start`](Self::start) panics when the limit does not fit in 32 bits.
    pub fn max_frame_len(&mut self, len: usize) -> &mut Self {
        self.max_frame_len = len;
        self
    }

    /// Key, value and per-plugin size limits of the KV store (see [`KvLimits`] for defaults).
    pub fn kv_limits(&mut self, limits: KvLimits) -> &mut Self {
        self.kv_limits = limits;
        self
    }

    /// When to restart crashed plugins (default: 1, 2, 4, 8, 16 s, disabled after 10 crashes).
    pub fn restart_policy(&mut self, policy: RestartPolicy) -> &mut Self {
        self.restart_policy = policy;
        self
    }

    /// How running plugins are pinged (default: every 10 s, 5 s timeout, killed after 3 missed).
    pub fn health_policy(&mut self, policy: HealthPolicy) -> &mut Self {
        self.health_policy = policy;
        self
    }

    /// Plugin log rotation and capture limits (see [`LogConfig`] for defaults).
    pub fn log_config(&mut self, config: LogConfig) -> &mut Self {
        self.log_config = config;
        self
    }

    /// Whether a plugin that `config.json` does not mention starts enabled (default `true`).
    pub fn enable_new_plugins(&mut self, enable: bool) -> &mut Self {
        self.enable_new_plugins = enable;
        self
    }

    /// How long lifecycle events are kept in the database (default 7 days).
    pub fn event_retention(&mut self, retention: Duration) -> &mut Self {
        self.event_retention = retention;
        self
    }

    /// Opens the database, scans the plugins folder and starts every enabled plugin. Returns
    /// once every plugin has been found and its start begun; it does not wait for `ready`.
    ///
    /// # Errors
    /// A folder that cannot be created, a corrupt `config.json` or database, a log folder set
    /// with [`log_dir`](Self::log_dir) that cannot be written.
    pub async fn start(&self) -> Result<PluginHost, StartError> {
        PluginHost::start(self.clone()).await
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.plugin_dir.join(".metadata").join("config.json")
    }

    /// The database file the host opens: `<data dir>/toru.redb`. An application that needs the
    /// store while no host runs (a command that resets a setting, say) opens this path.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("toru.redb")
    }
}

pub(crate) fn create_dir(path: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(path).map_err(|source| StartError::Dir {
        path: path.to_owned(),
        source,
    })
}
