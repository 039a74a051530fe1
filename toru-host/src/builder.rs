//! Configuring and starting a [`PluginHost`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use toru_plugin_api::protocol::DEFAULT_MAX_FRAME_LEN;

use crate::contain::Containment;
use crate::contain::limits::Limits;
use crate::error::StartError;
use crate::events::PluginEvent;
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
    pub(crate) containment: Option<Containment>,
    pub(crate) default_limits: Limits,
    pub(crate) watch_plugins: bool,
    pub(crate) watch_debounce: Duration,
    pub(crate) rescan_interval: Duration,
    pub(crate) launch_concurrency: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) spawn_fault: Option<SpawnFault>,
    // The data path (streams, bodies, WebSockets, response heads, cookies).
    pub(crate) stream_idle_timeout: Duration,
    pub(crate) max_streams_per_plugin: usize,
    pub(crate) max_ws_message_bytes: usize,
    pub(crate) max_upload_bytes: u64,
    pub(crate) max_body_bytes: u64,
    pub(crate) max_response_headers: usize,
    pub(crate) max_response_head_bytes: usize,
    pub(crate) protected_cookies: Vec<String>,
    /// For the plugin checker: the one file the host loads, whatever else is in its folder
    /// (and whatever its name).
    pub(crate) only_file: Option<PathBuf>,
    /// For the plugin checker: `config.json` somewhere else than the plugins folder.
    pub(crate) config_file: Option<PathBuf>,
    /// The event channel, when someone subscribed before start.
    pub(crate) events: Option<broadcast::Sender<PluginEvent>>,
    pub(crate) log_events: bool,
}

/// How many events a subscriber may fall behind before it skips the oldest.
pub(crate) const EVENT_BUFFER: usize = 1024;

/// A test hook that makes chosen plugin spawns fail (see
/// [`PluginHostBuilder::spawn_fault`]).
#[derive(Clone)]
pub(crate) struct SpawnFault(pub(crate) Arc<FaultFn>);

/// Given a plugin id, the OS error number its spawn fails with, if any.
type FaultFn = dyn Fn(&str) -> Option<i32> + Send + Sync;

impl std::fmt::Debug for SpawnFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawnFault(..)")
    }
}

/// The default launch concurrency: the number of CPUs, at least 2.
fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .max(2)
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
            containment: None,
            default_limits: Limits::default(),
            watch_plugins: true,
            watch_debounce: Duration::from_millis(300),
            rescan_interval: Duration::from_secs(30),
            launch_concurrency: cpus(),
            drain_timeout: Duration::from_secs(30),
            spawn_fault: None,
            stream_idle_timeout: Duration::from_secs(300),
            max_streams_per_plugin: 2048,
            max_ws_message_bytes: 1024 * 1024,
            max_upload_bytes: 1024 * 1024 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_response_headers: 128,
            max_response_head_bytes: 64 * 1024,
            protected_cookies: Vec::new(),
            only_file: None,
            config_file: None,
            events: None,
            log_events: true,
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

    /// The folder for `plugins/<id>.log` and `plugin-supervisor.log` (default `<data dir>/logs`).
    /// A folder set here must be writable: [`start`](Self::start) fails otherwise. (`toru-server`
    /// sets `/var/log/toru` when it can write there.)
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

    /// How long `plugin --metadata` may take (default 5 s). A run that takes longer is tried
    /// again on later scans, after 1, 2, 4 ... s, at most a minute apart.
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

    /// Whether a plugin that `config.json` does not mention starts enabled (default `true`): a
    /// file dropped in the plugins folder starts at once.
    pub fn enable_new_plugins(&mut self, enable: bool) -> &mut Self {
        self.enable_new_plugins = enable;
        self
    }

    /// How long lifecycle events are kept in the database (default 7 days).
    pub fn event_retention(&mut self, retention: Duration) -> &mut Self {
        self.event_retention = retention;
        self
    }

    /// The first containment to try (default: the best this machine offers). The host falls
    /// back down the list from there: cgroup v2, cgroup v1, PID namespace, subreaper. Asking
    /// for [`Containment::CgroupV2`] takes a v2 cgroup even without controllers, where the
    /// default prefers v1's limits.
    pub fn containment(&mut self, first: Containment) -> &mut Self {
        self.containment = Some(first);
        self
    }

    /// The limits of a plugin that has none of its own (default: 512 MiB of memory, 512
    /// processes, 1024 open files, no CPU quota; see [`Limits`]).
    pub fn default_limits(&mut self, limits: Limits) -> &mut Self {
        self.default_limits = limits;
        self
    }

    /// Whether the plugins folder is watched (inotify): files that appear, change or go away
    /// are noticed within [`watch_debounce`](Self::watch_debounce) of the last change
    /// (default `true`). Without it, the folder is scanned every
    /// [`rescan_interval`](Self::rescan_interval) and on [`PluginHost::rescan`].
    pub fn watch_plugins(&mut self, watch: bool) -> &mut Self {
        self.watch_plugins = watch;
        self
    }

    /// How long the plugins folder must be quiet before a change is acted on, and how long a
    /// file must go unmodified before it is loaded (a file being copied is left alone until
    /// then) (default 300 ms).
    pub fn watch_debounce(&mut self, debounce: Duration) -> &mut Self {
        self.watch_debounce = debounce;
        self
    }

    /// How often the plugins folder is scanned even when the watch reports nothing, as a
    /// safety net (default 30 s).
    pub fn rescan_interval(&mut self, interval: Duration) -> &mut Self {
        self.rescan_interval = interval;
        self
    }

    /// How many `--metadata` runs and plugin starts (spawn to `ready`) may run at once
    /// (default: the number of CPUs, at least 2). A start waiting for its turn is not timed.
    pub fn launch_concurrency(&mut self, n: usize) -> &mut Self {
        self.launch_concurrency = n.max(1);
        self
    }

    /// After an upgrade, how long the old version may take to finish the requests it has
    /// before it is stopped (default 30 s).
    pub fn drain_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.drain_timeout = timeout;
        self
    }

    /// For tests: `fault(plugin_id)` runs before each plugin process is spawned, and when it
    /// returns an OS error number, the spawn fails with that error instead.
    #[doc(hidden)]
    pub fn spawn_fault(
        &mut self,
        fault: impl Fn(&str) -> Option<i32> + Send + Sync + 'static,
    ) -> &mut Self {
        self.spawn_fault = Some(SpawnFault(Arc::new(fault)));
        self
    }

    /// How long a stream may go with nothing moving either way once the request timeout no
    /// longer applies (default 300 s): after the response head, and while the request body is
    /// being sent. Then the plugin gets `cancel` and the client's response is cut off (a
    /// WebSocket is closed with 1001).
    pub fn stream_idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// How many requests and streams one plugin may have open at once (default 2048). More get
    /// [`CallError::TooManyStreams`](crate::CallError::TooManyStreams) (HTTP 503) and never
    /// reach the plugin.
    pub fn max_streams_per_plugin(&mut self, max: usize) -> &mut Self {
        self.max_streams_per_plugin = max;
        self
    }

    /// The largest WebSocket message either way, in bytes (default 1 MiB). A client's larger
    /// message closes its WebSocket with 1009; a plugin's closes it with 1011 (the plugin gets
    /// `ws_close` 1009 either way).
    pub fn max_ws_message_bytes(&mut self, max: usize) -> &mut Self {
        self.max_ws_message_bytes = max;
        self
    }

    /// The largest request body streamed to a protocol 2 plugin, in bytes (default 1 GiB). It
    /// is never held in memory. A larger body gets
    /// [`CallError::BodyTooLarge`](crate::CallError::BodyTooLarge) (HTTP 413) and the plugin
    /// `cancel`.
    pub fn max_upload_bytes(&mut self, max: u64) -> &mut Self {
        self.max_upload_bytes = max;
        self
    }

    /// The largest body the host holds in memory, in bytes (default 10 MiB): a request body for
    /// a protocol 1 plugin, and a whole response read by [`PluginHost::request`]. Larger:
    /// [`CallError::BodyTooLarge`](crate::CallError::BodyTooLarge) (413) for a request,
    /// [`CallError::ResponseTooLarge`](crate::CallError::ResponseTooLarge) (502) for a response.
    pub fn max_body_bytes(&mut self, max: u64) -> &mut Self {
        self.max_body_bytes = max;
        self
    }

    /// The most headers a plugin's response may have (default 128). More: HTTP 502
    /// ([`CallError::BadResponse`](crate::CallError::BadResponse)); the plugin carries on.
    pub fn max_response_headers(&mut self, max: usize) -> &mut Self {
        self.max_response_headers = max;
        self
    }

    /// The most bytes of header names and values in a plugin's response (default 64 KiB).
    /// More: HTTP 502 ([`CallError::BadResponse`](crate::CallError::BadResponse)).
    pub fn max_response_head_bytes(&mut self, max: usize) -> &mut Self {
        self.max_response_head_bytes = max;
        self
    }

    /// Cookie names a plugin may never set (default none; `toru-server` protects its
    /// `toru_session`). A plugin's `Set-Cookie` naming one of them, in any case and with any
    /// `__Host-` or `__Secure-` prefix, is dropped from its response.
    pub fn protected_cookies<I, S>(&mut self, names: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.protected_cookies = names.into_iter().map(Into::into).collect();
        self
    }

    /// A stream of the lifecycle events of the host this builder starts, from its very first
    /// (each plugin's `discovered`, then `enabled`... `started`), which a subscription made
    /// after [`start`](Self::start) may miss. A receiver that falls more than 1024 events behind
    /// skips the oldest (`RecvError::Lagged`). Receivers made here get the events of every host
    /// started from this builder (or its clones).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), toru_host::StartError> {
    /// let mut builder = toru_host::PluginHost::builder();
    /// let mut events = builder.subscribe();
    /// let host = builder.plugin_dir("./plugins").start().await?;
    /// while let Ok(event) = events.recv().await {
    ///     println!("{} {}", event.plugin_id, event.kind);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&mut self) -> broadcast::Receiver<PluginEvent> {
        self.events
            .get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    /// Whether the host logs each lifecycle event with `tracing` (default `true`): `error` for a
    /// plugin that failed or was disabled after crashing, `warn` for a crash, `info` for the
    /// rest, with target `toru_host::events` and the fields `plugin.id`, `event` (and `reason`
    /// and `exit` when there are). An application that logs the events it gets from
    /// [`subscribe`](Self::subscribe) turns this off, so that each is not logged twice. Either
    /// way every event is recorded in the database ([`PluginHost::events`]) and written to the
    /// supervisor log file.
    pub fn log_events(&mut self, log: bool) -> &mut Self {
        self.log_events = log;
        self
    }

    /// Opens the database and returns: the plugins folder is scanned in the background, and
    /// each plugin, as its metadata is read, is listed, announced (`discovered`) and, when
    /// enabled, started. [`PluginHost::discovered`] waits for the first scan.
    ///
    /// # Errors
    /// A folder that cannot be created, a corrupt `config.json` or database, a log folder set
    /// with [`log_dir`](Self::log_dir) that cannot be written.
    pub async fn start(&self) -> Result<PluginHost, StartError> {
        PluginHost::start(self.clone()).await
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        match &self.config_file {
            Some(file) => file.clone(),
            None => self.plugin_dir.join(".metadata").join("config.json"),
        }
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
