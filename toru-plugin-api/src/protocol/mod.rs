//! The wire protocol between a Toru host and its plugins: plain serde types, no I/O.
//!
//! Every message is one [`Message`]: an envelope with `type`, `timestamp`, `request_id` and
//! `payload`. The types borrow from the frame they were decoded from where they can
//! ([`CowStr`]), so decoding an `http_request` allocates little; [`Message::into_owned`] detaches a
//! message from its frame when it must outlive it.
//!
//! `docs/protocol.md` is the contract for plugin authors in other languages; every JSON example in
//! it is parsed by this crate's tests.

mod envelope;
mod metadata;
mod settings;
mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) use envelope::EnvelopeHead;
pub use envelope::{Message, Payload, now_millis};
pub use metadata::{MetadataError, PluginMetadata, SANDBOX_TOKENS};
pub use settings::{MAX_SETTINGS, MAX_TEXT_SETTING, SettingError, SettingKind, SettingSpec};
pub use text::CowStr;

/// The newest protocol version this crate speaks: 2, which adds streams (data frames, `credit`,
/// `ws_close`) to version 1.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest protocol version this crate still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The default limit on one frame's JSON, in bytes (16 MiB), on both sides of a connection.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Protocol 2: the bytes of data a side may send on a new stream, in each direction, before the
/// receiver grants more with `credit` (256 KiB). The receiver never holds more than this much
/// unread data per stream.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// The protocol version that brought streams; a connection that agreed on a lower version
/// carries no data frames, `credit` or `ws_close`.
pub const STREAMS_VERSION: u32 = 2;

/// The environment variable that carries the socket path the plugin must listen on.
pub const ENV_SOCKET_PATH: &str = "TORU_SOCKET_PATH";

/// The environment variable that carries the plugin id the host knows the plugin by.
pub const ENV_PLUGIN_ID: &str = "TORU_PLUGIN_ID";

/// The setting that holds a plugin's license key, sent in `init` like any other setting.
pub const LICENSE_KEY_SETTING: &str = "license_key";

/// The exit code (EX_CONFIG) a plugin uses to say "my configuration is wrong, do not restart me",
/// for example after refusing a license key.
pub const EXIT_CONFIG: i32 = 78;

/// A request's id. Each side numbers its own requests; a reply carries the id of the request it
/// answers and always travels to the side that sent that request, so the two sides' numbers
/// never collide.
pub type RequestId = u64;

/// A range of protocol versions, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// The oldest version.
    pub min: u32,
    /// The newest version.
    pub max: u32,
}

impl VersionRange {
    /// The versions this crate speaks.
    pub const SUPPORTED: VersionRange = VersionRange {
        min: MIN_PROTOCOL_VERSION,
        max: PROTOCOL_VERSION,
    };

    /// The newest version both ranges contain, if any.
    ///
    /// ```
    /// use toru_plugin_api::protocol::VersionRange;
    /// let host = VersionRange { min: 1, max: 3 };
    /// assert_eq!(host.negotiate(&VersionRange { min: 2, max: 5 }), Some(3));
    /// assert_eq!(host.negotiate(&VersionRange { min: 4, max: 5 }), None);
    /// ```
    pub fn negotiate(&self, other: &VersionRange) -> Option<u32> {
        let low = self.min.max(other.min);
        let high = self.max.min(other.max);
        (low <= high).then_some(high)
    }

    /// Whether `version` lies in the range.
    pub fn contains(&self, version: u32) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// `init` (host to plugin): the first message on a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Init<'a> {
    /// The protocol versions the host speaks.
    pub protocol: VersionRange,
    /// The host's instance id (a UUID).
    #[serde(borrow)]
    pub instance_id: CowStr<'a>,
    /// The id the host knows this plugin by.
    #[serde(borrow)]
    pub plugin_id: CowStr<'a>,
    /// The socket the plugin is listening on.
    #[serde(borrow)]
    pub socket_path: CowStr<'a>,
    /// The file the host writes this plugin's logs to.
    #[serde(borrow)]
    pub log_path: CowStr<'a>,
    /// Per-plugin settings from the host's configuration (for example `license_key`).
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// `settings` (host to plugin, no reply): the plugin's settings changed. Sent only to a plugin
/// whose metadata says `live_settings`; the others are restarted instead. The map is the whole
/// of the plugin's settings, as in `init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsUpdate {
    /// The settings, every one of them, by name.
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// `ready` (plugin to host): the reply to `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The protocol version the plugin chose from the host's range.
    pub protocol_version: u32,
}

/// One HTTP header: name and value. Names may repeat.
pub type Header<'a> = (CowStr<'a>, CowStr<'a>);

/// `http_request` (host to plugin): an HTTP request for one of the plugin's routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest<'a> {
    /// The method, upper case (`GET`).
    #[serde(borrow)]
    pub method: CowStr<'a>,
    /// The full path, starting with the plugin's route (`/acme/certificate`).
    #[serde(borrow)]
    pub path: CowStr<'a>,
    /// The raw query string without the `?`, empty when there is none.
    #[serde(borrow, default)]
    pub query: CowStr<'a>,
    /// The headers, in order, names in lower case.
    #[serde(borrow, default, deserialize_with = "text::headers")]
    pub headers: Vec<Header<'a>>,
    /// The body when it is valid UTF-8.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub body: Option<CowStr<'a>>,
    /// The body, base64 (standard alphabet, padded), when it is not valid UTF-8.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<CowStr<'a>>,
    /// Protocol 2: `true` when the request has no body; `false` when the body follows in data
    /// frames on this request's id, the last one flagged `END`. Absent in protocol 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_stream: Option<bool>,
    /// Protocol 2: `"websocket"` when the client asks to upgrade the connection to a WebSocket.
    /// The plugin accepts with status 101 or refuses with any other response.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<CowStr<'a>>,
}

/// `http_response` (plugin to host): the reply to `http_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpResponse<'a> {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    #[serde(borrow, default, deserialize_with = "text::headers")]
    pub headers: Vec<Header<'a>>,
    /// The body when it is valid UTF-8.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub body: Option<CowStr<'a>>,
    /// The body, base64 (standard alphabet, padded), when it is not valid UTF-8.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<CowStr<'a>>,
    /// Protocol 2: `true` when the response has no body; `false` when the body follows in data
    /// frames on the request's id, the last one flagged `END` (for status 101, WebSocket
    /// messages follow instead). Absent in protocol 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_stream: Option<bool>,
}

/// `credit` (either way, protocol 2, no reply): the sender has consumed `bytes` more bytes of a
/// stream's data, so the other side may send that many more. `request_id` is the stream's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// How many more data bytes the receiver of this message may send on the stream.
    pub bytes: u32,
}

/// `ws_close` (either way, protocol 2, no reply): the WebSocket on stream `request_id` is
/// closed; neither side sends more messages on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsClose<'a> {
    /// The close code (RFC 6455 section 7.4: 1000 normal, 1001 going away, 1009 too big,
    /// 1011 internal error, ...).
    pub code: u16,
    /// A short reason for people, at most 123 bytes of UTF-8; may be empty.
    #[serde(borrow, default)]
    pub reason: CowStr<'a>,
}

/// `bundle` (plugin to host): the reply to `get_bundle`, the plugin's frontend script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle<'a> {
    /// The JavaScript module: it exports `mount(container, api)` and `unmount(container)`.
    #[serde(borrow)]
    pub script: CowStr<'a>,
}

/// `kv` (plugin to host): an operation on the plugin's own key-value namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvRequest<'a> {
    /// Read one key. The reply's `value` is absent when the key is not set.
    Get {
        /// The key.
        #[serde(borrow)]
        key: CowStr<'a>,
    },
    /// Write one key. The reply comes once the write is durable.
    Set {
        /// The key.
        #[serde(borrow)]
        key: CowStr<'a>,
        /// The value.
        #[serde(borrow)]
        value: CowStr<'a>,
    },
    /// Remove one key. The reply's `existed` says whether it was set.
    Delete {
        /// The key.
        #[serde(borrow)]
        key: CowStr<'a>,
    },
    /// List keys that start with `prefix`, in byte order. The reply's `keys` holds at most
    /// `limit` of them (default and maximum 1000); `after` continues a listing past a key.
    List {
        /// The prefix; empty lists every key.
        #[serde(borrow, default)]
        prefix: CowStr<'a>,
        /// Only keys after this one.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        after: Option<CowStr<'a>>,
        /// The most keys to return.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
}

/// The most keys one `list` returns: 1000. A `limit` above it (or none) is taken as 1000; to read
/// more, page with `after`.
pub const KV_LIST_MAX: u32 = 1000;

/// `kv_result` (host to plugin): the reply to a `kv` request. Which fields are present depends
/// on the operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvResult<'a> {
    /// `get`: the value, absent when the key is not set.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub value: Option<CowStr<'a>>,
    /// `delete`: whether the key was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existed: Option<bool>,
    /// `list`: the keys, in byte order.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<CowStr<'a>>>,
}

/// A log level, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// The level's name in lower case, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(Level::Trace),
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" | "err" => Ok(Level::Error),
            other => Err(format!("unknown log level {other:?}")),
        }
    }
}

/// `log` (plugin to host, no reply): one line for the plugin's log file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord<'a> {
    /// The level.
    pub level: Level,
    /// The message.
    #[serde(borrow)]
    pub message: CowStr<'a>,
    /// An error's text, when the line reports one.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CowStr<'a>>,
}

/// `error` (either way): the reply to a request that could not be answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply<'a> {
    /// A machine-readable code, one of [`error_code`]'s constants or a plugin's own.
    #[serde(borrow)]
    pub code: CowStr<'a>,
    /// A sentence for people.
    #[serde(borrow)]
    pub message: CowStr<'a>,
}

/// The error codes the protocol defines. Receivers treat codes they do not know as `internal`.
pub mod error_code {
    /// The message's `type` is not one the receiver knows.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// The message's payload does not match its type, or the frame is not JSON.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The receiver does not speak any version in the offered range.
    pub const UNSUPPORTED_PROTOCOL_VERSION: &str = "unsupported_protocol_version";
    /// The plugin refused to start with the settings it was given (for example its license).
    pub const INIT_REFUSED: &str = "init_refused";
    /// The thing asked for does not exist (for example a bundle, for a plugin without one).
    pub const NOT_FOUND: &str = "not_found";
    /// The plugin's handler failed.
    pub const PLUGIN_ERROR: &str = "plugin_error";
    /// A KV key or value is larger than the host allows.
    pub const KV_TOO_LARGE: &str = "kv_too_large";
    /// The plugin's KV namespace is full.
    pub const KV_QUOTA_EXCEEDED: &str = "kv_quota_exceeded";
    /// The receiver is shutting down and takes no new requests.
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// Anything else that went wrong on the receiver's side.
    pub const INTERNAL: &str = "internal";
}
