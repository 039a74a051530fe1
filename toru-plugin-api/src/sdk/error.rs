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

/// What handlers return: a [`Response`](super::Response), or an [`HttpError`] answered as
/// JSON with its status.
pub type HttpResult<T = super::Response> = Result<T, HttpError>;

/// Why reading a request body, sending a response body or using a WebSocket failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The host ended the stream: the client went away, the request timed out, or the
    /// connection to the host closed. Nobody receives what the handler sends any more.
    #[error("the stream was cancelled: the client went away or the host ended the request")]
    Cancelled,
    /// The WebSocket is closed (by the client, by the plugin, or by shutdown), or the response
    /// has ended: nothing more can be sent.
    #[error("the stream is closed")]
    Closed,
    /// The plugin is shutting down: a server-sent events stream ends here (see
    /// [`Sse`](super::Sse)).
    #[error("the plugin is shutting down")]
    ShuttingDown,
    /// A body or WebSocket message is larger than the limit the handler set.
    #[error("the body is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Text (a body read as text, or a WebSocket text message) is not valid UTF-8.
    #[error("the text is not valid UTF-8")]
    InvalidUtf8,
    /// A WebSocket was asked of a request that is not an upgrade, or on a protocol 1
    /// connection.
    #[error("{0}")]
    NotWebSocket(&'static str),
}

/// An error a handler returns: an HTTP status and a message, answered as JSON
/// `{"error": message}` with that status.
///
/// Handlers return `Result<Response, HttpError>` (see [`HttpResult`](super::HttpResult)), so
/// `?` works on the SDK's errors, each mapped to a fitting status:
///
/// | error | status |
/// |---|---|
/// | [`KvError`] | 500, with the host's code and message |
/// | [`StreamError::TooLarge`] | 413 |
/// | [`StreamError::InvalidUtf8`], a [`serde_json::Error`] (a body that is not the JSON expected) | 400 |
/// | [`StreamError::NotWebSocket`] | 426 (501 on a protocol 1 connection) |
/// | any other [`StreamError`], a [`std::io::Error`] | 500 |
///
/// ```
/// use toru_plugin_api::{HttpError, Response};
/// let e = HttpError::new(409, "the name is taken");
/// let res: Response = e.into_response();
/// assert_eq!(res.status, 409);
/// assert_eq!(&res.body[..], br#"{"error":"the name is taken"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct HttpError {
    status: u16,
    message: String,
}

impl HttpError {
    /// An error with this status (100 to 999; anything else is answered 500) and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        let status = if (100..=999).contains(&status) {
            status
        } else {
            500
        };
        HttpError {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404 Not Found, `{"error": "not found"}`.
    pub fn not_found() -> Self {
        Self::new(404, "not found")
    }

    /// 500 Internal Server Error, with `error`'s text (its sources included).
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(500, error.to_string())
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON response `{"error": message}` with the status.
    pub fn into_response(self) -> super::Response {
        super::Response::error(self.status, &self.message)
    }
}

impl From<KvError> for HttpError {
    fn from(e: KvError) -> Self {
        Self::internal(e)
    }
}

impl From<StreamError> for HttpError {
    fn from(e: StreamError) -> Self {
        let status = match e {
            StreamError::TooLarge { .. } => 413,
            StreamError::InvalidUtf8 => 400,
            StreamError::NotWebSocket(super::request::NOT_ON_PROTOCOL_1) => 501,
            StreamError::NotWebSocket(_) => 426,
            _ => 500,
        };
        Self::new(status, e.to_string())
    }
}

impl From<serde_json::Error> for HttpError {
    fn from(e: serde_json::Error) -> Self {
        Self::bad_request(format!("the body is not the JSON expected: {e}"))
    }
}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> Self {
        Self::internal(e)
    }
}
