//! What the host knows about each plugin: the registry behind one lock.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use toru_plugin_api::PluginMetadata;

use crate::connection::Connection;
use crate::contain::Containment;
use crate::contain::limits::{Enforcement, LimitOverrides, Limits};
use crate::discovery::Found;
use crate::events::ExitStatus;

/// Where a plugin is in its life.
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
    /// Crashed; the next start is at `next_attempt_ms` (milliseconds since the Unix epoch).
    BackingOff {
        /// When the next start is due.
        next_attempt_ms: u64,
    },
    /// Will not run until something changes; `reason` says what went wrong.
    Failed {
        /// Why.
        reason: String,
    },
    /// Being stopped.
    Stopping,
}

impl PluginState {
    /// The state's name (`running`, `backing_off`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            PluginState::Disabled => "disabled",
            PluginState::Starting => "starting",
            PluginState::Running => "running",
            PluginState::Unhealthy => "unhealthy",
            PluginState::BackingOff { .. } => "backing_off",
            PluginState::Failed { .. } => "failed",
            PluginState::Stopping => "stopping",
        }
    }

    /// Whether requests are forwarded in this state.
    pub fn serves(&self) -> bool {
        matches!(self, PluginState::Running | PluginState::Unhealthy)
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginState::Failed { reason } => write!(f, "failed: {reason}"),
            other => f.write_str(other.name()),
        }
    }
}

/// A plugin as the host sees it: its file, metadata, whether it is enabled, and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginInfo {
    /// The plugin's id (for a plugin that failed to load: its file name).
    pub id: String,
    /// The plugin file.
    pub file: PathBuf,
    /// The metadata, when it could be read.
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
    /// The last error: a crash, a failure or a protocol violation, in words.
    pub last_error: Option<String>,
    /// The protocol version agreed with the running process.
    pub protocol_version: Option<u32>,
    /// Whether a `license_key` setting is stored for the plugin.
    pub license_key_set: bool,
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
    pub(crate) protocol_version: Option<u32>,
    pub(crate) conn: Option<Connection>,
    pub(crate) runner: Option<Runner>,
    /// The containment and enforcement of the running (or last) process.
    pub(crate) contained: Option<(Containment, Enforcement)>,
}

/// A running supervisor task for one plugin.
pub(crate) struct Runner {
    pub(crate) stop: CancellationToken,
    pub(crate) done: tokio::sync::watch::Receiver<bool>,
}

impl Entry {
    pub(crate) fn new(found: Found, enabled: bool) -> Entry {
        let state = match &found.result {
            Err(reason) => PluginState::Failed {
                reason: reason.clone(),
            },
            Ok(_) if enabled => PluginState::Starting,
            Ok(_) => PluginState::Disabled,
        };
        Entry {
            found,
            enabled,
            state,
            pid: None,
            restarts: 0,
            consecutive_crashes: 0,
            started_at_ms: None,
            last_exit: None,
            last_error: None,
            protocol_version: None,
            conn: None,
            runner: None,
            contained: None,
        }
    }

    pub(crate) fn metadata(&self) -> Option<&PluginMetadata> {
        self.found.result.as_ref().ok()
    }

    pub(crate) fn info(&self, now_ms: u64) -> PluginInfo {
        PluginInfo {
            id: self.found.key(),
            file: self.found.file.clone(),
            metadata: self.metadata().cloned(),
            load_error: self.found.result.as_ref().err().cloned(),
            enabled: self.enabled,
            state: self.state.clone(),
            pid: self.pid,
            restarts: self.restarts,
            consecutive_crashes: self.consecutive_crashes,
            started_at_ms: self.started_at_ms,
            uptime_ms: self.started_at_ms.map(|t| now_ms.saturating_sub(t)),
            last_exit: self.last_exit,
            last_error: self.last_error.clone(),
            protocol_version: self.protocol_version,
            license_key_set: false,
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
    /// The plugin whose route is `/segment`.
    pub(crate) fn by_route(&self, segment: &str) -> Option<&Entry> {
        self.plugins.values().find(|e| {
            e.metadata()
                .is_some_and(|m| m.route.strip_prefix('/') == Some(segment))
        })
    }
}
