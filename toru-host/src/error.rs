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

/// Why a plugin process could not be started at all. (Why a started one did not reach `ready`
/// is the supervisor's `StartFailure`; both end up as the reason of a `crashed` or `failed`
/// event.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SpawnError {
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
}

use crate::state::PluginState;

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
    /// The request's path is not under the plugin's route (or has `.` or `..` segments).
    #[error("path {path:?} is outside plugin {id:?}'s route")]
    OutsideRoute {
        /// The plugin.
        id: String,
        /// The path.
        path: String,
    },
    /// The request body is larger than the host accepts (see
    /// [`max_upload_bytes`](crate::PluginHostBuilder::max_upload_bytes) and
    /// [`max_body_bytes`](crate::PluginHostBuilder::max_body_bytes)).
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// A response read whole is larger than
    /// [`max_body_bytes`](crate::PluginHostBuilder::max_body_bytes).
    #[error("plugin {id:?} answered with a body larger than {limit} bytes")]
    ResponseTooLarge {
        /// The plugin.
        id: String,
        /// The limit.
        limit: u64,
    },
    /// The plugin's response cannot be passed on: over the limits on response heads, or a
    /// status that makes no sense for the request.
    #[error("plugin {id:?} sent a response the host cannot pass on: {reason}")]
    BadResponse {
        /// The plugin.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin has as many requests and streams open as the host allows
    /// ([`max_streams_per_plugin`](crate::PluginHostBuilder::max_streams_per_plugin)).
    #[error("plugin {id:?} already has {limit} requests and streams open")]
    TooManyStreams {
        /// The plugin.
        id: String,
        /// The limit.
        limit: usize,
    },
    /// The request cannot be forwarded as it is (a header that is not text, a path that is
    /// not a valid URI, a body that could not be read).
    #[error("the request cannot be forwarded: {0}")]
    BadRequest(String),
    /// The plugin has no frontend bundle (its metadata says so, or it answered `not_found`).
    #[error("plugin {0:?} has no frontend bundle")]
    NoBundle(String),
}

/// Managing a plugin (`get`, `enable`, `disable`, settings, limits, its `kv` namespace) or
/// reading its records (`logs`, `events`) failed.
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
    /// The database could not be read (events).
    #[error("cannot read the plugin events")]
    Store(#[from] crate::store::StoreError),
    /// The plugin's log files could not be read.
    #[error("cannot read the plugin log")]
    Logs(#[from] crate::logs::LogError),
}

/// An error code a client can get from the host, with its HTTP meaning: the table behind
/// [`CallError::status`] and [`ManageError::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpError {
    /// The code in the answer's `{"error": {"code": ...}}`.
    pub code: &'static str,
    /// The HTTP status.
    pub status: http::StatusCode,
    /// Whether the answer carries `Retry-After`.
    pub retry_after: bool,
    /// When a client gets it.
    pub meaning: &'static str,
}

macro_rules! http_errors {
    ($($code:literal $status:literal $retry:literal $meaning:literal;)*) => {
        /// Every error code of [`CallError`] and [`ManageError`] with its status, in one table
        /// (`docs/operations-server.md` lists the same, checked by a test).
        pub const HTTP_ERRORS: &[HttpError] = &[$(HttpError {
            code: $code,
            status: match http::StatusCode::from_u16($status) {
                Ok(s) => s,
                Err(_) => panic!("not an HTTP status"),
            },
            retry_after: $retry,
            meaning: $meaning,
        }),*];
    };
}

http_errors! {
    "unknown_plugin" 404 false "no plugin has this id or route";
    "no_bundle" 404 false "the plugin has no frontend bundle";
    "plugin_disabled" 404 false "the plugin is installed but disabled";
    "outside_route" 404 false "the path is not under the plugin's route";
    "not_loadable" 409 false "the plugin failed to load; its details say why";
    "bad_settings" 400 false "settings a plugin's declarations refuse, or that it does not take (a message per field)";
    "bad_request" 400 false "the request cannot be forwarded (a header that is not text, an invalid path)";
    "payload_too_large" 413 false "the request body is larger than the host accepts";
    "plugin_unavailable" 503 true "the plugin is starting, backing off after a crash, or has failed";
    "too_many_streams" 503 true "the plugin has as many requests and streams open as the host allows";
    "shutting_down" 503 true "the host is shutting down";
    "plugin_timeout" 504 false "the plugin did not answer within the request timeout (it was sent cancel)";
    "plugin_error" 502 false "the plugin answered the request with an error";
    "plugin_connection_lost" 502 false "the plugin went away before answering";
    "plugin_bad_response" 502 false "the plugin's response is over the limits on response heads, or makes no sense";
    "response_too_large" 502 false "a response read whole is larger than the host holds in memory";
    "config_not_saved" 500 false "a change to a plugin could not be written to config.json (the message gives the OS's reason; nothing was changed)";
    "internal" 500 false "the host failed (its log says why)";
}

pub(crate) fn lookup(code: &str) -> &'static HttpError {
    HTTP_ERRORS
        .iter()
        .find(|e| e.code == code)
        .expect("every code is in HTTP_ERRORS")
}

/// Whole seconds, rounded up, at least one.
fn retry_secs(after: Duration) -> u64 {
    (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)
}

/// The JSON error answer `{"error": {"code", "message"}}` with its status and, when given,
/// `Retry-After` in whole seconds (rounded up, at least 1).
pub fn error_response(
    status: http::StatusCode,
    code: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> http::Response<crate::PluginBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut response = http::Response::new(crate::PluginBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(after) = retry_after {
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(retry_secs(after)),
        );
    }
    response
}

impl CallError {
    /// The error code clients get (a row of [`HTTP_ERRORS`]).
    pub fn code(&self) -> &'static str {
        match self {
            CallError::UnknownPlugin(_) => "unknown_plugin",
            CallError::Disabled(_) => "plugin_disabled",
            CallError::OutsideRoute { .. } => "outside_route",
            CallError::NotRunning { .. } => "plugin_unavailable",
            CallError::Timeout { .. } => "plugin_timeout",
            CallError::Plugin { .. } => "plugin_error",
            CallError::TooLarge { .. } | CallError::BodyTooLarge { .. } => "payload_too_large",
            CallError::ConnectionLost(_) => "plugin_connection_lost",
            CallError::ShuttingDown => "shutting_down",
            CallError::ResponseTooLarge { .. } => "response_too_large",
            CallError::BadResponse { .. } => "plugin_bad_response",
            CallError::TooManyStreams { .. } => "too_many_streams",
            CallError::BadRequest(_) => "bad_request",
            CallError::NoBundle(_) => "no_bundle",
        }
    }

    /// The HTTP status for this error (404, 413, 502, 503, 504, ...; see [`HTTP_ERRORS`]).
    pub fn status(&self) -> http::StatusCode {
        lookup(self.code()).status
    }

    /// When the client may try again (`Retry-After`), for the errors that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::NotRunning { retry_after, .. } => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            CallError::TooManyStreams { .. } | CallError::ShuttingDown => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// A sentence for the client: what happened, without the host's internals (those are in
    /// [`Display`](std::fmt::Display), for logs). A plugin's own `error` reply is passed on: its
    /// message is what the plugin chose to say, cut to [`PLUGIN_MESSAGE_MAX`] characters, with
    /// control characters replaced by spaces.
    pub fn public_message(&self) -> String {
        match self {
            CallError::UnknownPlugin(_) => "there is no such plugin".into(),
            CallError::Disabled(id) => format!("plugin {id:?} is disabled"),
            CallError::OutsideRoute { id, .. } => {
                format!("the path is not under plugin {id:?}'s route")
            }
            CallError::NotRunning { id, state, .. } => {
                format!("plugin {id:?} is not running now ({})", state.name())
            }
            CallError::Timeout { id, .. } => format!("plugin {id:?} did not answer in time"),
            CallError::Plugin { id, message, .. } => format!(
                "plugin {id:?} could not handle the request: {}",
                plugin_words(message)
            ),
            CallError::TooLarge { .. } => "the request is too large to forward".into(),
            CallError::BodyTooLarge { limit } => {
                format!("the request body is larger than {limit} bytes")
            }
            CallError::ConnectionLost(id) => format!("plugin {id:?} went away before answering"),
            CallError::ShuttingDown => "the server is shutting down".into(),
            CallError::ResponseTooLarge { id, .. } => {
                format!("plugin {id:?} answered with a body too large to pass on")
            }
            CallError::BadResponse { id, .. } => {
                format!("plugin {id:?} sent a response that cannot be passed on")
            }
            CallError::TooManyStreams { id, .. } => {
                format!("plugin {id:?} is busy; try again")
            }
            CallError::BadRequest(why) => why.clone(),
            CallError::NoBundle(id) => format!("plugin {id:?} has no frontend"),
        }
    }

    /// The JSON error answer for this error (see [`error_response`]).
    pub fn to_response(&self) -> http::Response<crate::PluginBody> {
        error_response(
            self.status(),
            self.code(),
            &self.public_message(),
            self.retry_after(),
        )
    }

    /// The plugin the call was for, when the error names one.
    pub fn plugin_id(&self) -> Option<&str> {
        match self {
            CallError::UnknownPlugin(_)
            | CallError::ShuttingDown
            | CallError::TooLarge { .. }
            | CallError::BodyTooLarge { .. }
            | CallError::BadRequest(_) => None,
            CallError::Disabled(id)
            | CallError::ConnectionLost(id)
            | CallError::NoBundle(id)
            | CallError::NotRunning { id, .. }
            | CallError::Timeout { id, .. }
            | CallError::Plugin { id, .. }
            | CallError::OutsideRoute { id, .. }
            | CallError::ResponseTooLarge { id, .. }
            | CallError::BadResponse { id, .. }
            | CallError::TooManyStreams { id, .. } => Some(id),
        }
    }
}

impl ManageError {
    /// The error code clients get (a row of [`HTTP_ERRORS`]).
    pub fn code(&self) -> &'static str {
        match self {
            ManageError::UnknownPlugin(_) => "unknown_plugin",
            ManageError::NotLoadable { .. } => "not_loadable",
            ManageError::InvalidSettings(_) => "bad_settings",
            ManageError::Config(_) => "config_not_saved",
            ManageError::Scan { .. } | ManageError::Store(_) | ManageError::Logs(_) => "internal",
            ManageError::ShuttingDown => "shutting_down",
        }
    }

    /// The HTTP status for this error (see [`HTTP_ERRORS`]).
    pub fn status(&self) -> http::StatusCode {
        lookup(self.code()).status
    }

    /// When the client may try again (`Retry-After`), for the errors that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ManageError::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// A sentence for the client, without internals.
    pub fn public_message(&self) -> String {
        match self {
            ManageError::UnknownPlugin(id) => format!("there is no plugin {id:?}"),
            ManageError::NotLoadable { id, .. } => {
                format!("plugin {id:?} failed to load; its details say why")
            }
            // The operator asked for the change and must know it did not happen, and why (a
            // full disk, a read-only folder); the OS error names no secret, the path is left out.
            ManageError::Config(config) => {
                let why = std::error::Error::source(config)
                    .map_or_else(|| config.to_string(), ToString::to_string);
                format!("the change could not be saved in config.json ({why}); nothing was changed")
            }
            ManageError::Scan { .. } | ManageError::Store(_) | ManageError::Logs(_) => {
                "the server could not do that; its log says why".into()
            }
            ManageError::InvalidSettings(errors) => format!("the settings are not valid: {errors}"),
            ManageError::ShuttingDown => "the server is shutting down".into(),
        }
    }

    /// The JSON error answer for this error (see [`error_response`]).
    pub fn to_response(&self) -> http::Response<crate::PluginBody> {
        error_response(
            self.status(),
            self.code(),
            &self.public_message(),
            self.retry_after(),
        )
    }
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

/// The most characters of a plugin's `error` message passed on to the client (see
/// [`CallError::public_message`]); the rest is replaced by `…`. The whole message is logged.
pub const PLUGIN_MESSAGE_MAX: usize = 300;

/// A plugin's message as the client sees it: bounded, on one line.
fn plugin_words(message: &str) -> String {
    let mut out: String = message
        .chars()
        .take(PLUGIN_MESSAGE_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if message.chars().nth(PLUGIN_MESSAGE_MAX).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_call_error() -> Vec<CallError> {
        let id = || "a".to_owned();
        vec![
            CallError::UnknownPlugin(id()),
            CallError::Disabled(id()),
            CallError::NotRunning {
                id: id(),
                state: PluginState::Starting,
                retry_after: Some(Duration::from_millis(1500)),
            },
            CallError::Timeout {
                id: id(),
                after: Duration::from_secs(1),
            },
            CallError::Plugin {
                id: id(),
                code: "x".into(),
                message: "no such item".into(),
            },
            CallError::TooLarge { len: 2, max: 1 },
            CallError::ConnectionLost(id()),
            CallError::ShuttingDown,
            CallError::OutsideRoute {
                id: id(),
                path: "/b".into(),
            },
            CallError::BodyTooLarge { limit: 1 },
            CallError::ResponseTooLarge { id: id(), limit: 1 },
            CallError::BadResponse {
                id: id(),
                reason: "secret internals".into(),
            },
            CallError::TooManyStreams { id: id(), limit: 1 },
            CallError::BadRequest("header x is not text".into()),
            CallError::NoBundle(id()),
        ]
    }

    #[test]
    fn call_errors_have_statuses_from_the_table_and_no_internals() {
        for (e, status) in every_call_error().into_iter().zip([
            404, 404, 503, 504, 502, 413, 502, 503, 404, 413, 502, 502, 503, 400, 404,
        ]) {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert!(!e.public_message().contains("internals"), "{e:?}");
            assert_eq!(
                e.retry_after().is_some(),
                lookup(e.code()).retry_after,
                "{e:?}"
            );
        }
    }

    #[test]
    fn a_plugins_error_message_reaches_the_client_bounded_and_on_one_line() {
        let plugin = |message: String| CallError::Plugin {
            id: "a".into(),
            code: "not_found".into(),
            message,
        };
        let e = plugin("no item 7\r\nX-Injected: 1".into());
        assert_eq!(
            e.public_message(),
            "plugin \"a\" could not handle the request: no item 7  X-Injected: 1"
        );
        let long = "é".repeat(10 * PLUGIN_MESSAGE_MAX);
        let shown = plugin(long.clone()).public_message();
        assert!(shown.ends_with('…'), "{shown}");
        assert_eq!(
            shown.chars().filter(|c| *c == 'é').count(),
            PLUGIN_MESSAGE_MAX
        );
        // The log line keeps all of it.
        assert!(plugin(long.clone()).to_string().contains(&long));
    }

    #[test]
    fn error_answers_are_json_with_retry_after_in_whole_seconds() {
        let e = &every_call_error()[2];
        let r = e.to_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(r.body().as_full().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "plugin_unavailable");
        let r = error_response(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "x",
            "y",
            Some(Duration::ZERO),
        );
        assert_eq!(r.headers()["retry-after"], "1");
    }

    #[test]
    fn manage_errors_have_statuses_from_the_table() {
        let cases = [
            (ManageError::UnknownPlugin("a".into()), 404),
            (
                ManageError::NotLoadable {
                    id: "a".into(),
                    reason: "r".into(),
                },
                409,
            ),
            (ManageError::ShuttingDown, 503),
        ];
        for (e, status) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
        }
    }

    /// `docs/operations-server.md` lists every code of the table, with the same status.
    #[test]
    fn the_docs_list_every_error_code_with_its_status() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/operations-server.md"
        ))
        .unwrap();
        let rows: Vec<(u16, String)> = doc
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let status = cells.get(1)?.parse::<u16>().ok()?;
                let code = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((status, code.to_owned()))
            })
            .collect();
        for e in HTTP_ERRORS {
            assert!(
                rows.contains(&(e.status.as_u16(), e.code.to_owned())),
                "docs/operations-server.md has no row | {} | `{}` |",
                e.status.as_u16(),
                e.code
            );
        }
        for (status, code) in &rows {
            if let Some(e) = HTTP_ERRORS.iter().find(|e| e.code == code) {
                assert_eq!(e.status.as_u16(), *status, "{code}");
            }
        }
    }
}
