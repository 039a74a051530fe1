//! Lifecycle events: what happened to a plugin, on the event stream and in `plugin_events`.

use serde::{Deserialize, Serialize};

/// Declares [`EventKind`] and its names from one table, so the two cannot drift.
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// What kind of thing happened to a plugin.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The kind's name, as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    /// A plugin file was found (at start, by the folder watcher or a rescan), or the file of a
    /// `missing` plugin is back.
    Discovered = "discovered",
    /// A plugin file went away: a plugin that was loaded is now `missing` (its settings and data
    /// are kept); one that had failed to load is forgotten.
    Removed = "removed",
    /// A plugin could not be loaded (bad metadata, duplicate id, ...); `reason` says why.
    LoadFailed = "load_failed",
    /// An operator enabled the plugin.
    Enabled = "enabled",
    /// The plugin was disabled, by an operator or by the supervisor (`reason` says which).
    Disabled = "disabled",
    /// The plugin answered `ready` and serves requests.
    Started = "started",
    /// The plugin stopped because the host asked it to.
    Stopped = "stopped",
    /// The plugin exited or was killed without the host asking; `exit` and `stderr_tail` say how.
    Crashed = "crashed",
    /// The plugin missed its health pings.
    Unhealthy = "unhealthy",
    /// An unhealthy plugin answered its pings again.
    Recovered = "recovered",
    /// A restart is scheduled after `delay_ms`.
    Restarting = "restarting",
    /// The plugin is running again after a crash.
    Restarted = "restarted",
    /// The plugin failed and will not be restarted (exit code 78, an incompatible protocol, a
    /// start that cannot work); `reason` says why.
    Failed = "failed",
    /// The plugin could not be started for lack of resources (too many open files or
    /// processes, too little memory); another start follows after `delay_ms`. Not a crash.
    OutOfResources = "out_of_resources",
    /// The plugin's file was replaced while it runs: the new version is starting beside the
    /// running one (`reason` names both versions).
    Upgrading = "upgrading",
    /// The plugin's file was replaced and its metadata read afresh; a running plugin now serves
    /// from the new version, and the old one finishes its requests in flight, then stops.
    Upgraded = "upgraded",
    /// The plugin's file was replaced but the new version could not be loaded or started; the
    /// old one keeps serving. `reason`, `exit` and `stderr_tail` say why.
    UpgradeFailed = "upgrade_failed",
    /// An operator changed the plugin's settings; `reason` names them (never a value) and says
    /// how they apply: live, by a restart, or at the next start.
    SettingsChanged = "settings_changed",
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a plugin process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(-1),
        }
    }
}

/// One thing that happened to a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginEvent {
    /// The plugin's id (for a plugin that failed to load before its id was known: its file
    /// name).
    pub plugin_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Why, in words, when there is more to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How the process ended, for `crashed`, `stopped`, `failed` and `upgrade_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// The delay before the next start, for `restarting` and `out_of_resources`, in
    /// milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// The plugin's last stderr lines, for `crashed`, `failed` and `upgrade_failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stderr_tail: Vec<String>,
    /// The limit the plugin exceeded, for a `crashed` that a limit explains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<crate::contain::limits::LimitKind>,
}

impl PluginEvent {
    /// An event of `kind` for `plugin_id`, now, with nothing else said.
    pub fn new(plugin_id: impl Into<String>, kind: EventKind) -> Self {
        PluginEvent {
            plugin_id: plugin_id.into(),
            kind,
            time_ms: toru_plugin_api::protocol::now_millis(),
            reason: None,
            exit: None,
            delay_ms: None,
            stderr_tail: Vec::new(),
            limit: None,
        }
    }

    /// The same event with a reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Which events to read back, newest first.
///
/// ```
/// use toru_host::EventQuery;
/// let everything = EventQuery::all();
/// let second_page = EventQuery::plugin("hello-rust").with_page(1, 20);
/// assert_eq!(second_page.plugin_id.as_deref(), Some("hello-rust"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventQuery {
    /// Only this plugin's events; `None` for every plugin.
    pub plugin_id: Option<String>,
    /// Skip this many pages.
    pub page: u32,
    /// Events per page (default 50, at most 1000; 0 means the default).
    pub page_size: u32,
}

impl EventQuery {
    /// The first page of every plugin's events.
    pub fn all() -> EventQuery {
        EventQuery::default()
    }

    /// The first page of plugin `id`'s events.
    pub fn plugin(id: impl Into<String>) -> EventQuery {
        EventQuery {
            plugin_id: Some(id.into()),
            ..EventQuery::default()
        }
    }

    /// The same query for page `page` (from 0) of `page_size` events (0 for the default).
    pub fn with_page(mut self, page: u32, page_size: u32) -> EventQuery {
        self.page = page;
        self.page_size = page_size;
        self
    }
}

/// Logs an event with `tracing` (target `toru_host::events`, this module), at the level of its
/// line in the supervisor log.
pub(crate) fn log(level: toru_plugin_api::protocol::Level, event: &PluginEvent) {
    use toru_plugin_api::protocol::Level;
    match level {
        Level::Error => {
            tracing::error!(plugin.id = %event.plugin_id, event = %event.kind, reason = ?event.reason, "plugin event")
        }
        Level::Warn => {
            tracing::warn!(plugin.id = %event.plugin_id, event = %event.kind, reason = ?event.reason, exit = ?event.exit, "plugin event")
        }
        _ => tracing::info!(plugin.id = %event.plugin_id, event = %event.kind, "plugin event"),
    }
}
