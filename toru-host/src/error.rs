//! Error types, one per operation family.

use std::path::PathBuf;
use std::time::Duration;

/// `config.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not valid JSON of the expected shape. It was left as it is.
    #[error("plugin config file {path} is corrupt; fix or remove it (it was not changed)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// Reading or writing the file failed.
    #[error("cannot read or write plugin config file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// [`PluginHostBuilder::start`](crate::PluginHostBuilder::start) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A folder the host needs could not be created.
    #[error("cannot create folder {path}")]
    Dir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The log folder could not be prepared.
    #[error(transparent)]
    Logs(#[from] crate::logs::LogError),
}

/// Why a plugin process could not be brought to `ready`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The socket path would not fit a Unix socket address.
    #[error("socket path {path} is {len} bytes long; Unix sockets allow at most {max}")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The executable could not be started.
    #[error("cannot start {file}: {reason}")]
    Exec {
        /// The plugin file.
        file: PathBuf,
        /// The OS error, in words.
        reason: String,
        /// The OS error number, when there was one.
        errno: Option<i32>,
    },
    /// The process exited before it was ready.
    #[error("plugin exited during start-up with {0}")]
    ExitedEarly(crate::events::ExitStatus),
    /// The plugin did not answer `ready` in time.
    #[error("plugin was not ready within {0:?}")]
    StartTimeout(Duration),
    /// The plugin speaks no protocol version the host speaks.
    #[error("plugin is incompatible: {0}")]
    Incompatible(String),
    /// The plugin refused to start (for example, a rejected license).
    #[error("plugin refused to start: {0}")]
    Refused(String),
    /// The plugin broke the protocol during start-up.
    #[error("plugin broke the protocol during start-up: {0}")]
    Protocol(String),
}

/// A plugin's state, as [`CallError::NotRunning`] reports it.
pub use crate::host::PluginState;

/// A call to a plugin (`request`, `bundle`) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No plugin has this id (or route).
    #[error("no plugin {0:?}")]
    UnknownPlugin(String),
    /// The plugin is installed but disabled.
    #[error("plugin {0:?} is disabled")]
    Disabled(String),
    /// The plugin is enabled but not serving now (starting, backing off, failed).
    #[error("plugin {id:?} is not running ({state})")]
    NotRunning {
        /// The plugin.
        id: String,
        /// Its state.
        state: PluginState,
        /// When it is worth trying again, if known.
        retry_after: Option<Duration>,
    },
    /// The plugin did not answer in time; it was sent `cancel`.
    #[error("plugin {id:?} did not answer within {after:?}")]
    Timeout {
        /// The plugin.
        id: String,
        /// The timeout.
        after: Duration,
    },
    /// The plugin answered with an `error`.
    #[error("plugin {id:?} answered with error {code}: {message}")]
    Plugin {
        /// The plugin.
        id: String,
        /// The error code.
        code: String,
        /// The plugin's message.
        message: String,
    },
    /// The request is larger than a frame may be.
    #[error("request of {len} bytes exceeds the {max}-byte frame limit")]
    TooLarge {
        /// The encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection ended before the plugin answered.
    #[error("plugin {0:?} went away before answering")]
    ConnectionLost(String),
    /// The host is shutting down.
    #[error("the plugin host is shutting down")]
    ShuttingDown,
}

/// Managing a plugin (`get`, `enable`, `disable`, settings) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// No plugin has this id.
    #[error("no plugin {0:?}")]
    UnknownPlugin(String),
    /// The plugin failed to load and cannot run until its file is fixed.
    #[error("plugin {id:?} cannot run: {reason}")]
    NotLoadable {
        /// The plugin (its file name when its metadata could not be read).
        id: String,
        /// Why it failed to load.
        reason: String,
    },
    /// The change could not be persisted; nothing was changed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Settings were refused: each field with its message. Nothing was changed.
    #[error("the settings are not valid: {0}")]
    InvalidSettings(crate::settings::SettingErrors),
    /// The plugins folder could not be read.
    #[error("cannot read plugins folder {dir}")]
    Scan {
        /// The folder.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The host is shutting down.
    #[error("the plugin host is shutting down")]
    ShuttingDown,
}

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Starting the host failed.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A call to a plugin failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// Managing a plugin failed.
    #[error(transparent)]
    Manage(#[from] ManageError),
    /// A KV operation failed.
    #[error(transparent)]
    Kv(#[from] crate::store::KvError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Reading logs failed.
    #[error(transparent)]
    Logs(#[from] crate::logs::LogError),
}

/// An error and its causes, `: `-separated, for a log line (the messages leave causes to
/// `source()`).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
