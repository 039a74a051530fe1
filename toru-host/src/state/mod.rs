//! What the host knows about each plugin: the registry behind one lock, and the state machine
//! every change of a plugin's state goes through ([`machine`]).

pub(crate) mod machine;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use toru_plugin_api::PluginMetadata;

use crate::connection::Connection;
use crate::contain::Containment;
use crate::contain::limits::{Enforcement, LimitOverrides, Limits};
use crate::discovery::Found;
use crate::events::ExitStatus;
use crate::supervisor::Runner;

/// Declares [`PluginState`]'s names from one table, so that lists of them cannot drift.
macro_rules! state_names {
    ($($variant:ident $({ $($field:ident),* })? = $name:literal,)*) => {
        impl PluginState {
            /// Every state's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name,)*];

            /// The state's name (`running`, `backing_off`, ...).
            pub fn name(&self) -> &'static str {
                match self {
                    $(PluginState::$variant $({ $($field: _),* })? => $name,)*
                }
            }
        }
    };
}

/// Where a plugin is in its life. `docs/architecture.md` draws the state machine, and every
/// change of state is checked against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginState {
    /// Not running, because it is disabled.
    Disabled,
    /// Being started.
    Starting,
    /// Running and answering.
    Running,
    /// Running, but it missed at least one health ping.
    Unhealthy,
    /// Running, while a new version (its file was replaced) starts beside it; requests still go
    /// to the running version.
    Upgrading {
        /// The version being started.
        to_version: String,
    },
    /// Crashed; the next start is at `next_attempt_ms` (milliseconds since the Unix epoch).
    BackingOff {
        /// When the next start is due.
        next_attempt_ms: u64,
    },
    /// A start failed for lack of resources (open files, processes, memory); not a crash. The
    /// next start is at `next_attempt_ms`.
    OutOfResources {
        /// When the next start is due.
        next_attempt_ms: u64,
        /// What ran out.
        reason: String,
    },
    /// Will not run until something changes; `reason` says what went wrong.
    Failed {
        /// Why.
        reason: String,
    },
    /// Being stopped.
    Stopping,
    /// Its file was removed: it does not run, and its settings and data are kept. Putting a file
    /// with its id back brings it back.
    Missing,
}

state_names! {
    Disabled = "disabled",
    Starting = "starting",
    Running = "running",
    Unhealthy = "unhealthy",
    Upgrading { to_version } = "upgrading",
    BackingOff { next_attempt_ms } = "backing_off",
    OutOfResources { next_attempt_ms, reason } = "out_of_resources",
    Failed { reason } = "failed",
    Stopping = "stopping",
    Missing = "missing",
}

impl PluginState {
    /// Whether requests are forwarded in this state.
    pub fn serves(&self) -> bool {
        matches!(
            self,
            PluginState::Running | PluginState::Unhealthy | PluginState::Upgrading { .. }
        )
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginState::Failed { reason } => write!(f, "failed: {reason}"),
            PluginState::OutOfResources { reason, .. } => {
                write!(f, "out of resources: {reason}")
            }
            PluginState::Upgrading { to_version } => write!(f, "upgrading to {to_version}"),
            other => f.write_str(other.name()),
        }
    }
}

/// A plugin as the host sees it: its file, metadata, whether it is enabled, and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PluginInfo {
    /// The plugin's id (for a plugin that failed to load: its file name).
    pub id: String,
    /// The plugin file.
    pub file: PathBuf,
    /// The SHA-256 of the file's contents when it was loaded, in hex.
    pub file_sha256: Option<String>,
    /// The metadata, when it could be read (of the version that runs, or that will run).
    pub metadata: Option<PluginMetadata>,
    /// Why the plugin could not be loaded, if it could not.
    pub load_error: Option<String>,
    /// Whether the plugin is enabled.
    pub enabled: bool,
    /// Its state.
    #[serde(flatten)]
    pub state: PluginState,
    /// The running process's id.
    pub pid: Option<u32>,
    /// Restarts after crashes since the host started.
    pub restarts: u32,
    /// Crashes in a row (reset by a long healthy run or by enabling).
    pub consecutive_crashes: u32,
    /// When the running process became ready, in milliseconds since the Unix epoch.
    pub started_at_ms: Option<u64>,
    /// How long the running process has been ready, in milliseconds.
    pub uptime_ms: Option<u64>,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// The last error while it is not running again: a crash, a failure or a protocol
    /// violation, in words. Cleared when the plugin is ready again (its events keep the
    /// history).
    pub last_error: Option<String>,
    /// Why the last replacement of the plugin's file did not take (the old version kept
    /// serving); cleared by a successful upgrade.
    pub upgrade_error: Option<String>,
    /// Old versions still finishing their requests after an upgrade.
    pub draining: u32,
    /// The protocol version agreed with the running process.
    pub protocol_version: Option<u32>,
    /// Whether a `license_key` setting is stored for the plugin.
    pub license_key_set: bool,
    /// The settings it takes (its metadata's, and `license_key` when it needs a license), each
    /// with the value in effect; a secret only as set or not set.
    pub settings: Vec<crate::settings::SettingView>,
    /// What a new version held back for want of settings declares (shown with `settings`).
    #[serde(skip)]
    pub(crate) pending_settings: Vec<toru_plugin_api::protocol::SettingSpec>,
    /// How the plugin's processes are kept together: its running (or last) process's
    /// containment, else the host's. `None` only for a plugin that cannot be loaded.
    pub containment: Option<Containment>,
    /// The limits it runs under: the host's defaults with its own overrides.
    pub limits: Limits,
    /// Its own limits, replacing the host's defaults.
    pub limit_overrides: LimitOverrides,
    /// What enforces each limit (like `containment`).
    pub limits_enforced_by: Option<Enforcement>,
}

/// The registry's entry for one plugin.
pub(crate) struct Entry {
    pub(crate) found: Found,
    pub(crate) enabled: bool,
    pub(crate) state: PluginState,
    pub(crate) pid: Option<u32>,
    pub(crate) restarts: u32,
    pub(crate) consecutive_crashes: u32,
    pub(crate) started_at_ms: Option<u64>,
    pub(crate) last_exit: Option<ExitStatus>,
    pub(crate) last_error: Option<String>,
    pub(crate) upgrade_error: Option<String>,
    /// The file contents (SHA-256) whose upgrade failed: not tried again until the file changes
    /// or an operator rescans.
    pub(crate) rejected: Option<[u8; 32]>,
    pub(crate) draining: u32,
    pub(crate) protocol_version: Option<u32>,
    /// Counts changes of its settings, so that a process started with older ones is sent the
    /// new ones once it is ready.
    pub(crate) settings_gen: u64,
    /// The settings a new version of its file declares, when that version could not start for
    /// want of them (a new required setting): they may be set before it runs.
    pub(crate) pending_settings: Vec<toru_plugin_api::protocol::SettingSpec>,
    pub(crate) conn: Option<Connection>,
    pub(crate) runner: Option<Runner>,
    /// The containment and enforcement of the running (or last) process.
    pub(crate) contained: Option<(Containment, Enforcement)>,
    /// Serialises enable, disable, restart, upgrade and removal of this plugin.
    pub(crate) ops: Arc<tokio::sync::Mutex<()>>,
    /// Keeps this plugin's events in the order of its state changes.
    pub(crate) order: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    /// A new entry: `Failed` for a file that did not load, else `Starting` when it is enabled
    /// (its runner is started next) or `Disabled`.
    pub(crate) fn new(found: Found, enabled: bool) -> Entry {
        let state = match &found.result {
            Err(reason) => PluginState::Failed {
                reason: reason.to_string(),
            },
            Ok(_) if enabled => PluginState::Starting,
            Ok(_) => PluginState::Disabled,
        };
        Entry {
            enabled: enabled && found.result.is_ok(),
            found,
            state,
            pid: None,
            restarts: 0,
            consecutive_crashes: 0,
            started_at_ms: None,
            last_exit: None,
            last_error: None,
            upgrade_error: None,
            rejected: None,
            draining: 0,
            protocol_version: None,
            settings_gen: 0,
            pending_settings: Vec::new(),
            conn: None,
            runner: None,
            contained: None,
            ops: Arc::default(),
            order: Arc::default(),
        }
    }

    pub(crate) fn metadata(&self) -> Option<&PluginMetadata> {
        self.found.result.as_ref().ok()
    }

    /// Whether the plugin's metadata was read (it is a plugin, not a file that failed to load).
    pub(crate) fn loaded(&self) -> bool {
        self.found.result.is_ok()
    }

    /// Whether the plugin is installed: loaded, and its file is there.
    pub(crate) fn installed(&self) -> bool {
        self.loaded() && self.state != PluginState::Missing
    }

    pub(crate) fn info(&self, now_ms: u64) -> PluginInfo {
        PluginInfo {
            id: self.found.key(),
            file: self.found.file.clone(),
            file_sha256: self.found.hash.map(|h| crate::discovery::hex(&h)),
            metadata: self.metadata().cloned(),
            load_error: self.found.result.as_ref().err().map(ToString::to_string),
            enabled: self.enabled,
            state: self.state.clone(),
            pid: self.pid,
            restarts: self.restarts,
            consecutive_crashes: self.consecutive_crashes,
            started_at_ms: self.started_at_ms,
            uptime_ms: self.started_at_ms.map(|t| now_ms.saturating_sub(t)),
            last_exit: self.last_exit,
            last_error: self.last_error.clone(),
            upgrade_error: self.upgrade_error.clone(),
            draining: self.draining,
            protocol_version: self.protocol_version,
            license_key_set: false,
            settings: Vec::new(),
            pending_settings: self.pending_settings.clone(),
            containment: self.contained.map(|c| c.0),
            limits: Limits::default(),
            limit_overrides: LimitOverrides::default(),
            limits_enforced_by: self.contained.map(|c| c.1),
        }
    }
}

/// Every plugin, by id.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) plugins: BTreeMap<String, Entry>,
    pub(crate) shutting_down: bool,
}

impl Registry {
    /// The installed plugin whose route is `/segment`.
    pub(crate) fn by_route(&self, segment: &str) -> Option<&Entry> {
        self.plugins.values().find(|e| {
            e.installed()
                && e.metadata()
                    .is_some_and(|m| m.route.strip_prefix('/') == Some(segment))
        })
    }
}
