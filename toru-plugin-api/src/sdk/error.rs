//! The SDK's errors, one per operation family.

use crate::codec::CodecError;
use crate::protocol::{EXIT_CONFIG, VersionRange};

/// Why a KV call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The host answered with an `error` (for example `kv_too_large`). Displays as
    /// `code: message`.
    #[error("{code}: {message}")]
    Host {
        /// The error code (see [`error_code`](crate::protocol::error_code)).
        code: String,
        /// The host's sentence.
        message: String,
    },
    /// The connection to the host closed before the reply came.
    #[error("the connection to the host closed before it answered the kv request")]
    Disconnected,
}

/// Why a plugin refused to start (see [`ToruPlugin::init`](super::ToruPlugin::init)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The plugin's own reason, for example "license key expired on 2025-01-31".
    #[error("{0}")]
    Refused(String),
    /// A KV call made during init failed.
    #[error("a kv call during init failed")]
    Kv(#[from] KvError),
}

impl InitError {
    /// A refusal with the given reason.
    pub fn refused(reason: impl Into<String>) -> Self {
        InitError::Refused(reason.into())
    }
}

/// How a connection ended badly. [`exit_code`](Self::exit_code) is what [`run`](crate::run)
/// exits with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The host's protocol versions and the plugin's do not overlap. The host got an `error`
    /// with code `unsupported_protocol_version`.
    #[error(
        "the host offers protocol {host} and this plugin speaks {plugin}: no version in common"
    )]
    UnsupportedVersion {
        /// What the host offered in `init`.
        host: VersionRange,
        /// What the plugin speaks.
        plugin: VersionRange,
    },
    /// [`ToruPlugin::init`](super::ToruPlugin::init) refused to start. The host got an `error` with code
    /// `init_refused`.
    #[error("the plugin refused to start")]
    InitRefused(#[source] InitError),
    /// The connection broke: a frame over the size limit, the stream ending inside a frame, or
    /// an i/o error.
    #[error("the connection to the host failed")]
    Connection(#[from] CodecError),
}

impl ServeError {
    /// The process exit code for this error: [`EXIT_CONFIG`] (78, "do not restart") for a
    /// version mismatch or a refused init, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::UnsupportedVersion { .. } | ServeError::InitRefused(_) => EXIT_CONFIG,
            ServeError::Connection(_) => 1,
        }
    }
}
