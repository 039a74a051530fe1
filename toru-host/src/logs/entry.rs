//! The JSON line format of the log files.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use toru_plugin_api::protocol::Level;

/// One line of `<log dir>/plugins/<id>.log`.
///
/// On disk each entry is one JSON object on its own line, keys in this order:
///
/// ```text
/// {"timestamp":"2026-11-21T23:20:35.123Z","level":"info","plugin":"hello-rust","source":"stderr","message":"listening","error":"..."}
/// ```
///
/// `error` is left out when there is none. `timestamp` is RFC 3339 in UTC with milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogEntry {
    /// When the host read the line, RFC 3339 in UTC with milliseconds.
    pub timestamp: String,
    /// The level: the plugin's own for JSON lines, prefixed lines and `log` messages.
    pub level: Level,
    /// The plugin's id.
    pub plugin: String,
    /// Where the line came from.
    pub source: LogSource,
    /// The text.
    pub message: String,
    /// An error's text, when the line reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a [`LogEntry`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogSource {
    /// A line the plugin wrote to its standard output.
    Stdout,
    /// A line the plugin wrote to its standard error.
    Stderr,
    /// A `log` message the plugin sent over its socket.
    Protocol,
    /// A line the host wrote about the plugin.
    Host,
}

impl LogSource {
    /// The name used in the log files: `stdout`, `stderr`, `protocol` or `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Protocol => "protocol",
            LogSource::Host => "host",
        }
    }
}

/// One line of `<log dir>/plugin-supervisor.log`: something the supervisor did to a plugin.
///
/// ```text
/// {"timestamp":"2026-11-21T23:20:35.123Z","level":"warn","plugin":"hello-rust","action":"restart","message":"restarting in 2s"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SupervisorEntry {
    /// When it happened, RFC 3339 in UTC with milliseconds.
    pub timestamp: String,
    /// `error` when an operator must act (a plugin disabled), `warn` for crashes and restarts.
    pub level: Level,
    /// The plugin's id.
    pub plugin: String,
    /// What the supervisor did: `spawn`, `kill`, `restart`, `disable`, ...
    pub action: String,
    /// A sentence for people.
    pub message: String,
}

/// [`LogEntry`] borrowing its text, so that a line is written without copying it.
#[derive(Serialize)]
pub(super) struct EntryRef<'a> {
    pub(super) timestamp: &'a str,
    pub(super) level: Level,
    pub(super) plugin: &'a str,
    pub(super) source: LogSource,
    pub(super) message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<&'a str>,
}

/// [`SupervisorEntry`] borrowing its text.
#[derive(Serialize)]
pub(super) struct SupervisorRef<'a> {
    pub(super) timestamp: &'a str,
    pub(super) level: Level,
    pub(super) plugin: &'a str,
    pub(super) action: &'a str,
    pub(super) message: &'a str,
}

/// The current time as the log files write it: `2026-11-21T23:20:35.123Z`.
pub(super) fn now_timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Appends `value` and a newline to `out`.
pub(super) fn push_json_line(out: &mut Vec<u8>, value: &impl Serialize) {
    let start = out.len();
    // Serialising strings and enums into a Vec does not fail; never leave half a line if it did.
    match serde_json::to_writer(&mut *out, value) {
        Ok(()) => out.push(b'\n'),
        Err(_) => out.truncate(start),
    }
}
