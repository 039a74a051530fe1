use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    Bundle, CowStr, Credit, ErrorReply, HttpRequest, HttpResponse, Init, KvRequest, KvResult,
    LogRecord, Ready, RequestId, SettingsUpdate, WsClose,
};

/// One protocol message: the envelope and its typed payload.
///
/// On the wire:
///
/// ```json
/// {"type": "ping", "timestamp": 1763767235123, "request_id": 7, "payload": {}}
/// ```
///
/// `timestamp` is the sender's clock in milliseconds since the Unix epoch, for logs only.
/// `request_id` is set on requests and on replies (the request's id), and `null` on `log`.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    /// When the sender made the message, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The request's id (see [`RequestId`]).
    pub request_id: Option<RequestId>,
    /// What the message says.
    pub payload: Payload<'a>,
}

/// A message's payload, one variant per `type`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload<'a> {
    /// `init`, host to plugin, answered by `ready` or `error`.
    Init(Init<'a>),
    /// `ready`, plugin to host.
    Ready(Ready),
    /// `http_request`, host to plugin, answered by `http_response` or `error`.
    HttpRequest(HttpRequest<'a>),
    /// `http_response`, plugin to host.
    HttpResponse(HttpResponse<'a>),
    /// `get_bundle`, host to plugin, answered by `bundle` or `error` (`not_found`).
    GetBundle,
    /// `bundle`, plugin to host.
    Bundle(Bundle<'a>),
    /// `ping`, host to plugin, answered by `pong`.
    Ping,
    /// `pong`, plugin to host.
    Pong,
    /// `cancel`, host to plugin, no reply: stop working on the request whose id this message
    /// carries; the host has stopped waiting for it.
    Cancel,
    /// `shutdown`, host to plugin, no reply: finish in-flight requests, close the socket, exit 0.
    Shutdown,
    /// `settings`, host to plugin, no reply: the plugin's settings changed (sent only to a plugin
    /// whose metadata says `live_settings`).
    Settings(SettingsUpdate),
    /// `kv`, plugin to host, answered by `kv_result` or `error`.
    Kv(KvRequest<'a>),
    /// `kv_result`, host to plugin.
    KvResult(KvResult<'a>),
    /// `log`, plugin to host, no reply.
    Log(LogRecord<'a>),
    /// `error`, either way: the reply to a request that failed. In protocol 2 a plugin may also
    /// send it after a response's head, to abort the stream.
    Error(ErrorReply<'a>),
    /// `credit`, either way, protocol 2, no reply: more room on stream `request_id`.
    Credit(Credit),
    /// `ws_close`, either way, protocol 2, no reply: the WebSocket on stream `request_id` is
    /// closed.
    WsClose(WsClose<'a>),
    /// A `type` this crate does not know; the receiver answers a request of this kind with an
    /// `error` of code `unknown_type`.
    Unknown(CowStr<'a>),
}

impl Payload<'_> {
    /// The `type` the payload travels under.
    pub fn type_name(&self) -> &str {
        match self {
            Payload::Init(_) => "init",
            Payload::Ready(_) => "ready",
            Payload::HttpRequest(_) => "http_request",
            Payload::HttpResponse(_) => "http_response",
            Payload::GetBundle => "get_bundle",
            Payload::Bundle(_) => "bundle",
            Payload::Ping => "ping",
            Payload::Pong => "pong",
            Payload::Cancel => "cancel",
            Payload::Shutdown => "shutdown",
            Payload::Settings(_) => "settings",
            Payload::Kv(_) => "kv",
            Payload::KvResult(_) => "kv_result",
            Payload::Log(_) => "log",
            Payload::Error(_) => "error",
            Payload::Credit(_) => "credit",
            Payload::WsClose(_) => "ws_close",
            Payload::Unknown(name) => name,
        }
    }

    /// Whether this payload answers a request (and so belongs to the receiver's own id space).
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            Payload::Ready(_)
                | Payload::HttpResponse(_)
                | Payload::Bundle(_)
                | Payload::Pong
                | Payload::KvResult(_)
                | Payload::Error(_)
        )
    }

    /// Detaches the payload from the buffer it borrows from.
    pub fn into_owned(self) -> Payload<'static> {
        fn own(s: CowStr<'_>) -> CowStr<'static> {
            s.into_owned()
        }
        fn own_opt(s: Option<CowStr<'_>>) -> Option<CowStr<'static>> {
            s.map(own)
        }
        fn own_headers(h: Vec<super::Header<'_>>) -> Vec<super::Header<'static>> {
            h.into_iter().map(|(n, v)| (own(n), own(v))).collect()
        }
        match self {
            Payload::Init(i) => Payload::Init(Init {
                protocol: i.protocol,
                instance_id: own(i.instance_id),
                plugin_id: own(i.plugin_id),
                socket_path: own(i.socket_path),
                log_path: own(i.log_path),
                settings: i.settings,
            }),
            Payload::Ready(r) => Payload::Ready(r),
            Payload::HttpRequest(r) => Payload::HttpRequest(HttpRequest {
                method: own(r.method),
                path: own(r.path),
                query: own(r.query),
                headers: own_headers(r.headers),
                body: own_opt(r.body),
                body_base64: own_opt(r.body_base64),
                end_stream: r.end_stream,
                upgrade: own_opt(r.upgrade),
            }),
            Payload::HttpResponse(r) => Payload::HttpResponse(HttpResponse {
                status: r.status,
                headers: own_headers(r.headers),
                body: own_opt(r.body),
                body_base64: own_opt(r.body_base64),
                end_stream: r.end_stream,
            }),
            Payload::GetBundle => Payload::GetBundle,
            Payload::Bundle(b) => Payload::Bundle(Bundle {
                script: own(b.script),
            }),
            Payload::Ping => Payload::Ping,
            Payload::Pong => Payload::Pong,
            Payload::Cancel => Payload::Cancel,
            Payload::Shutdown => Payload::Shutdown,
            Payload::Settings(s) => Payload::Settings(s),
            Payload::Kv(k) => Payload::Kv(match k {
                KvRequest::Get { key } => KvRequest::Get { key: own(key) },
                KvRequest::Set { key, value } => KvRequest::Set {
                    key: own(key),
                    value: own(value),
                },
                KvRequest::Delete { key } => KvRequest::Delete { key: own(key) },
                KvRequest::List {
                    prefix,
                    after,
                    limit,
                } => KvRequest::List {
                    prefix: own(prefix),
                    after: own_opt(after),
                    limit,
                },
            }),
            Payload::KvResult(r) => Payload::KvResult(KvResult {
                value: own_opt(r.value),
                existed: r.existed,
                keys: r.keys.map(|k| k.into_iter().map(own).collect()),
            }),
            Payload::Log(l) => Payload::Log(LogRecord {
                level: l.level,
                message: own(l.message),
                error: own_opt(l.error),
            }),
            Payload::Error(e) => Payload::Error(ErrorReply {
                code: own(e.code),
                message: own(e.message),
            }),
            Payload::Credit(c) => Payload::Credit(c),
            Payload::WsClose(c) => Payload::WsClose(WsClose {
                code: c.code,
                reason: own(c.reason),
            }),
            Payload::Unknown(t) => Payload::Unknown(own(t)),
        }
    }
}

/// Milliseconds since the Unix epoch, now: the clock every `timestamp` uses.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<'a> Message<'a> {
    /// A message stamped with the current time.
    pub fn new(request_id: Option<RequestId>, payload: Payload<'a>) -> Self {
        Message {
            timestamp: now_millis(),
            request_id,
            payload,
        }
    }

    /// A request (or reply) with the given id, stamped with the current time.
    pub fn with_id(request_id: RequestId, payload: Payload<'a>) -> Self {
        Self::new(Some(request_id), payload)
    }

    /// An `error` reply to request `request_id`.
    pub fn error(
        request_id: Option<RequestId>,
        code: &'a str,
        message: impl Into<CowStr<'a>>,
    ) -> Self {
        Self::new(
            request_id,
            Payload::Error(ErrorReply {
                code: CowStr::borrowed(code),
                message: message.into(),
            }),
        )
    }

    /// Detaches the message from the buffer it borrows from.
    pub fn into_owned(self) -> Message<'static> {
        Message {
            timestamp: self.timestamp,
            request_id: self.request_id,
            payload: self.payload.into_owned(),
        }
    }
}

/// A payload with no fields serialises as `{}`.
struct Empty;

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `type` goes first so that receivers can decode the payload in one pass.
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("type", self.payload.type_name())?;
        map.serialize_entry("timestamp", &self.timestamp)?;
        map.serialize_entry("request_id", &self.request_id)?;
        match &self.payload {
            Payload::Init(p) => map.serialize_entry("payload", p)?,
            Payload::Ready(p) => map.serialize_entry("payload", p)?,
            Payload::HttpRequest(p) => map.serialize_entry("payload", p)?,
            Payload::HttpResponse(p) => map.serialize_entry("payload", p)?,
            Payload::Bundle(p) => map.serialize_entry("payload", p)?,
            Payload::Kv(p) => map.serialize_entry("payload", p)?,
            Payload::KvResult(p) => map.serialize_entry("payload", p)?,
            Payload::Log(p) => map.serialize_entry("payload", p)?,
            Payload::Error(p) => map.serialize_entry("payload", p)?,
            Payload::Credit(p) => map.serialize_entry("payload", p)?,
            Payload::Settings(p) => map.serialize_entry("payload", p)?,
            Payload::WsClose(p) => map.serialize_entry("payload", p)?,
            Payload::GetBundle
            | Payload::Ping
            | Payload::Pong
            | Payload::Cancel
            | Payload::Shutdown
            | Payload::Unknown(_) => map.serialize_entry("payload", &Empty)?,
        }
        map.end()
    }
}

/// Decodes a payload once its `type` is known.
struct PayloadSeed<'t, 'de> {
    type_name: &'t CowStr<'de>,
}

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_, 'de> {
    type Value = Payload<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Payload<'de>, D::Error> {
        Ok(match self.type_name.as_str() {
            "init" => Payload::Init(Init::deserialize(d)?),
            "ready" => Payload::Ready(Ready::deserialize(d)?),
            "http_request" => Payload::HttpRequest(HttpRequest::deserialize(d)?),
            "http_response" => Payload::HttpResponse(HttpResponse::deserialize(d)?),
            "bundle" => Payload::Bundle(Bundle::deserialize(d)?),
            "kv" => Payload::Kv(KvRequest::deserialize(d)?),
            "kv_result" => Payload::KvResult(KvResult::deserialize(d)?),
            "log" => Payload::Log(LogRecord::deserialize(d)?),
            "error" => Payload::Error(ErrorReply::deserialize(d)?),
            "credit" => Payload::Credit(Credit::deserialize(d)?),
            "settings" => Payload::Settings(SettingsUpdate::deserialize(d)?),
            "ws_close" => Payload::WsClose(WsClose::deserialize(d)?),
            other => {
                IgnoredAny::deserialize(d)?;
                unit_payload(other).unwrap_or_else(|| Payload::Unknown(self.type_name.clone()))
            }
        })
    }
}

/// The payloads without fields, by type name.
fn unit_payload(type_name: &str) -> Option<Payload<'static>> {
    Some(match type_name {
        "get_bundle" => Payload::GetBundle,
        "ping" => Payload::Ping,
        "pong" => Payload::Pong,
        "cancel" => Payload::Cancel,
        "shutdown" => Payload::Shutdown,
        _ => return None,
    })
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Type,
    Timestamp,
    RequestId,
    Payload,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Message<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;

        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol message object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
                let mut type_name: Option<CowStr<'de>> = None;
                let mut timestamp = None;
                let mut request_id = None;
                let mut payload: Option<Payload<'de>> = None;
                // A payload that came before its type waits here, undecoded.
                let mut early: Option<&'de RawValue> = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Type => {
                            if type_name.is_some() {
                                return Err(de::Error::duplicate_field("type"));
                            }
                            type_name = Some(map.next_value()?);
                        }
                        Field::Timestamp => timestamp = Some(map.next_value::<u64>()?),
                        Field::RequestId => request_id = map.next_value::<Option<RequestId>>()?,
                        Field::Payload => {
                            if payload.is_some() || early.is_some() {
                                return Err(de::Error::duplicate_field("payload"));
                            }
                            match &type_name {
                                Some(t) => {
                                    payload =
                                        Some(map.next_value_seed(PayloadSeed { type_name: t })?)
                                }
                                None => early = Some(map.next_value()?),
                            }
                        }
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let type_name = type_name.ok_or_else(|| de::Error::missing_field("type"))?;
                let payload = match (payload, early) {
                    (Some(p), _) => p,
                    (None, Some(raw)) => {
                        let mut d = serde_json::Deserializer::from_str(raw.get());
                        PayloadSeed {
                            type_name: &type_name,
                        }
                        .deserialize(&mut d)
                        .map_err(de::Error::custom)?
                    }
                    // A payload without fields may be left out.
                    (None, None) => match unit_payload(&type_name) {
                        Some(p) => p,
                        None if is_known(&type_name) => {
                            return Err(de::Error::missing_field("payload"));
                        }
                        None => Payload::Unknown(type_name),
                    },
                };
                Ok(Message {
                    timestamp: timestamp.unwrap_or(0),
                    request_id,
                    payload,
                })
            }
        }

        deserializer.deserialize_map(MessageVisitor)
    }
}

fn is_known(type_name: &str) -> bool {
    matches!(
        type_name,
        "init"
            | "ready"
            | "http_request"
            | "http_response"
            | "bundle"
            | "kv"
            | "kv_result"
            | "log"
            | "error"
            | "credit"
            | "ws_close"
            | "settings"
    )
}

/// What can be read from a frame that is not a valid message: enough to send an `error` reply.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EnvelopeHead {
    #[serde(default, rename = "type")]
    pub(crate) type_name: Option<String>,
    #[serde(default)]
    pub(crate) request_id: Option<RequestId>,
}

#[cfg(test)]
mod tests;
