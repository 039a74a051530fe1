//! Why a run of a plugin process ended, as a type. It becomes words only in the events and the
//! API (`Display`), so no decision depends on how a message is phrased.

use crate::connection::CloseReason;
use crate::contain::limits::LimitHit;
use crate::error::SpawnError;
use crate::events::ExitStatus;

use super::start::StartFailure;

/// Why a plugin process ended (or never got going) without the host asking.
#[derive(Debug, Clone)]
pub(crate) enum EndReason {
    /// It exited or was killed.
    Exited(ExitStatus),
    /// Its connection ended first: a broken protocol, a failed write.
    Connection(CloseReason),
    /// It missed this many health pings in a row and was killed.
    Hung { missed: u32 },
    /// It did not reach `ready`.
    Start(StartFailure),
    /// It could not be started at all.
    Spawn(SpawnError),
    /// It exited with code 78 (`EX_CONFIG`): it refused its configuration.
    RefusedConfig { last_line: Option<String> },
    /// It exceeded one of its resource limits and was stopped for it.
    Limit(LimitHit),
    /// It was not started: its settings do not allow it (a required one has no value). The
    /// text names them, never a value.
    Settings(String),
}

impl EndReason {
    /// Whether a restart cannot help.
    pub(crate) fn is_final(&self) -> bool {
        match self {
            EndReason::Start(failure) => failure.is_final(),
            EndReason::Spawn(SpawnError::SocketPathTooLong { .. })
            | EndReason::RefusedConfig { .. }
            | EndReason::Settings(_) => true,
            _ => false,
        }
    }
}

impl EndReason {
    /// This reason, or the limit the process exceeded when that explains its end better.
    pub(crate) fn or_limit(self, hit: Option<LimitHit>) -> EndReason {
        match (self, hit) {
            (reason @ EndReason::Limit(_), _) => reason,
            (_, Some(hit)) => EndReason::Limit(hit),
            (reason, None) => reason,
        }
    }

    /// The limit the process exceeded, when that is why it ended.
    pub(crate) fn limit(&self) -> Option<crate::contain::limits::LimitKind> {
        match self {
            EndReason::Limit(hit) => Some(hit.kind),
            _ => None,
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::Exited(exit) => write!(f, "plugin exited unexpectedly with {exit}"),
            EndReason::Connection(reason) => reason.fmt(f),
            EndReason::Hung { missed } => {
                write!(f, "plugin missed {missed} health pings in a row")
            }
            EndReason::Start(failure) => failure.fmt(f),
            EndReason::Spawn(e) => e.fmt(f),
            EndReason::Limit(hit) => hit.fmt(f),
            EndReason::Settings(why) => f.write_str(why),
            EndReason::RefusedConfig { last_line } => {
                f.write_str("plugin refused its configuration (exit code 78)")?;
                match last_line {
                    Some(line) => write!(f, ": {line}"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_before_and_tell_final_from_not() {
        let exited = EndReason::Exited(ExitStatus::Code(1));
        assert_eq!(
            exited.to_string(),
            "plugin exited unexpectedly with exit code 1"
        );
        assert!(!exited.is_final());
        let broke = EndReason::Connection(CloseReason::Protocol(
            crate::connection::Violation::Message("frame is not valid".into()),
        ));
        assert_eq!(
            broke.to_string(),
            "plugin broke the protocol: frame is not valid"
        );
        let refused = EndReason::RefusedConfig {
            last_line: Some("ERROR license key refused".into()),
        };
        assert!(refused.is_final());
        assert!(refused.to_string().contains("exit code 78): ERROR license"));
        assert!(EndReason::Start(StartFailure::Refused("no key".into())).is_final());
        assert!(!EndReason::Hung { missed: 3 }.is_final());
    }
}
