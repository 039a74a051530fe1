//! Why a connection to a plugin ended, as a type: the supervisor decides what to do by matching
//! on it, and it becomes text only in events and logs.

use std::sync::Arc;

use toru_plugin_api::CodecError;
use toru_plugin_api::protocol::RequestId;

/// Why a connection to a plugin was closed. The first reason given is kept.
#[derive(Debug, Clone)]
pub(crate) enum CloseReason {
    /// The plugin closed its end of the socket.
    ClosedByPlugin,
    /// The plugin broke the protocol.
    Protocol(Violation),
    /// Reading or writing the socket failed.
    Io(Arc<std::io::Error>),
    /// The plugin left the host's messages unread until the control queue was full.
    NotReading,
    /// The host stopped the plugin.
    HostStopped,
    /// The plugin's process exited.
    ProcessExited,
    /// The plugin stopped answering health pings (the supervisor's words).
    Unhealthy(String),
    /// The plugin never got ready (the supervisor's words).
    StartFailed(String),
    /// The host closed it for another reason (the supervisor's words: a limit it exceeded).
    Host(String),
}

impl CloseReason {
    /// Whether the plugin broke the protocol: then that, not how its process ended, is the cause.
    pub(crate) fn is_protocol_break(&self) -> bool {
        matches!(self, CloseReason::Protocol(_))
    }
}

/// How a plugin broke the protocol.
#[derive(Debug, Clone)]
pub(crate) enum Violation {
    /// A frame that could not be decoded: oversized, cut short, or a short data frame.
    Codec(Arc<CodecError>),
    /// A frame that is not a valid message, or a message with invalid content.
    Message(String),
    /// A data frame on a connection that agreed on protocol 1.
    DataOnVersion1 { stream: RequestId },
    /// A data frame for a stream whose response head has not arrived.
    DataBeforeHead { stream: RequestId },
    /// More data on a stream than the host had granted.
    OverCredit {
        stream: RequestId,
        len: usize,
        window: u64,
    },
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClosedByPlugin => f.write_str("the plugin closed its connection"),
            CloseReason::Protocol(v) => write!(f, "plugin broke the protocol: {v}"),
            CloseReason::Io(e) => write!(f, "the plugin's socket failed: {e}"),
            CloseReason::NotReading => f.write_str(
                "the plugin stopped reading its socket while the host had messages for it",
            ),
            CloseReason::HostStopped => f.write_str("the host stopped the plugin"),
            CloseReason::ProcessExited => f.write_str("the plugin process exited"),
            CloseReason::Unhealthy(why)
            | CloseReason::StartFailed(why)
            | CloseReason::Host(why) => f.write_str(why),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Codec(e) => match std::error::Error::source(e.as_ref()) {
                Some(source) => write!(f, "{e}: {source}"),
                None => write!(f, "{e}"),
            },
            Violation::Message(why) => f.write_str(why),
            Violation::DataOnVersion1 { stream } => write!(
                f,
                "a data frame (stream {stream}) on a connection that agreed on protocol 1"
            ),
            Violation::DataBeforeHead { stream } => {
                write!(f, "data on stream {stream} before its response head")
            }
            Violation::OverCredit {
                stream,
                len,
                window,
            } => write!(
                f,
                "{len} bytes of data on stream {stream} with only {window} bytes of credit"
            ),
        }
    }
}
