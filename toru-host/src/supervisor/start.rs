//! Bringing a spawned plugin to `ready`: connect to its socket, `init`, negotiate the version.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use toru_plugin_api::PluginMetadata;
use toru_plugin_api::protocol::{CowStr, Init, Payload, VersionRange, error_code};

use crate::connection::{CallFailure, CloseReason, Connection, Reply, Services, StreamLimits};
use crate::events::ExitStatus;
use crate::settings::{self, Values};
use crate::shared::Shared;

/// The protocol versions the host offers: 1, and 2 with streams.
pub(crate) const HOST_VERSIONS: VersionRange = VersionRange::SUPPORTED;

/// Why a start did not reach `ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartFailure {
    /// The host asked the plugin to stop meanwhile.
    Stopped,
    Exited(ExitStatus),
    Timeout(Duration),
    Incompatible(String),
    Refused(String),
    Protocol(String),
    /// Connecting to the plugin's socket failed for lack of resources (open files, memory).
    NoResources(String),
}

impl StartFailure {
    /// Whether a restart cannot help.
    pub(crate) fn is_final(&self) -> bool {
        matches!(
            self,
            StartFailure::Incompatible(_) | StartFailure::Refused(_)
        )
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Stopped => f.write_str("stopped during start-up"),
            StartFailure::Exited(status) => {
                write!(f, "plugin exited during start-up with {status}")
            }
            StartFailure::Timeout(t) => write!(f, "plugin was not ready within {t:?}"),
            StartFailure::Incompatible(why) => write!(f, "plugin is incompatible: {why}"),
            StartFailure::Refused(why) => write!(f, "plugin refused to start: {why}"),
            StartFailure::Protocol(why) => {
                write!(f, "plugin broke the protocol during start-up: {why}")
            }
            StartFailure::NoResources(why) => {
                write!(f, "cannot connect to the plugin's socket: {why}")
            }
        }
    }
}

/// The settings plugin `id` starts with (from `meta`'s declarations and `config.json`), and the
/// generation of its settings they are: read before the values, so that a change made meanwhile
/// is sent again once the process is ready, never missed.
///
/// # Errors
/// What keeps it from starting (a required setting with no value), in words.
pub(super) fn start_settings(
    shared: &Shared,
    id: &str,
    meta: Option<&PluginMetadata>,
) -> Result<(Values, u64), String> {
    let generation = shared
        .registry()
        .plugins
        .get(id)
        .map_or(0, |e| e.settings_gen);
    let stored = crate::host::stored_settings(&shared.config(), id);
    let specs = meta.map(settings::declared).unwrap_or_default();
    settings::effective(&specs, &stored)
        .map(|values| (values, generation))
        .map_err(|unmet| unmet.to_string())
}

/// Connects to the plugin and completes `init`/`ready` within the start timeout; the plugin
/// gets `settings` in `init`.
pub(super) async fn handshake(
    shared: &Arc<Shared>,
    id: &str,
    socket: &Path,
    child: &mut Child,
    stop: &CancellationToken,
    settings: Values,
) -> Result<(Connection, u32), StartFailure> {
    let timeout = shared.settings.start_timeout;
    let deadline = Instant::now() + timeout;
    let attempt = async {
        let stream = match connect(socket).await {
            Ok(stream) => stream,
            Err(e) => return Err(StartFailure::NoResources(e.to_string())),
        };
        let services = Services {
            kv: shared.store.kv(id),
            logs: shared.logs.clone(),
        };
        let limits = StreamLimits::from_settings(&shared.settings);
        let conn = Connection::start(id, stream, shared.codec, services, limits);
        let instance_id = shared.instance_id.to_string();
        let socket_path = socket.to_string_lossy();
        let log_path = shared.logs.path_for(id);
        let log_path = log_path.to_string_lossy();
        let init = Payload::Init(Init {
            protocol: HOST_VERSIONS,
            instance_id: CowStr::borrowed(&instance_id),
            plugin_id: CowStr::borrowed(id),
            socket_path: CowStr::borrowed(&socket_path),
            log_path: CowStr::borrowed(&log_path),
            settings,
        });
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reply = conn.call(init, remaining).await;
        Ok((conn, reply))
    };
    let (conn, reply) = tokio::select! {
        _ = stop.cancelled() => return Err(StartFailure::Stopped),
        status = crate::process::wait_reaped(child) => return Err(StartFailure::Exited(status.into())),
        _ = tokio::time::sleep_until(deadline) => return Err(StartFailure::Timeout(timeout)),
        done = attempt => done?,
    };
    let failure = match reply {
        Ok(Reply::Ready(ready)) if HOST_VERSIONS.contains(ready.protocol_version) => {
            return Ok((conn, ready.protocol_version));
        }
        Ok(Reply::Ready(ready)) => StartFailure::Incompatible(format!(
            "it chose protocol {}, outside the offered {}",
            ready.protocol_version, HOST_VERSIONS
        )),
        Ok(Reply::Error { code, message }) if code == error_code::UNSUPPORTED_PROTOCOL_VERSION => {
            StartFailure::Incompatible(message)
        }
        Ok(Reply::Error { code, message }) if code == error_code::INIT_REFUSED => {
            StartFailure::Refused(message)
        }
        Ok(Reply::Error { code, message }) => {
            StartFailure::Protocol(format!("it answered init with error {code}: {message}"))
        }
        Ok(other) => StartFailure::Protocol(format!("it answered init with {other:?}")),
        Err(CallFailure::Timeout) => StartFailure::Timeout(timeout),
        Err(CallFailure::TooLarge { len, max }) => {
            StartFailure::Protocol(format!("init of {len} bytes exceeds the {max}-byte limit"))
        }
        // `init` does not count against the limit on streams.
        Err(CallFailure::TooManyStreams { limit }) => {
            StartFailure::Protocol(format!("init found {limit} requests open"))
        }
        Err(CallFailure::Closed) => {
            // Closed because the plugin broke the protocol (the cause, however its process
            // then ends) or because it exited (say how).
            match conn.close_reason() {
                Some(CloseReason::Protocol(why)) => StartFailure::Protocol(why.to_string()),
                reason => {
                    let grace = Duration::from_secs(1);
                    match tokio::time::timeout(grace, crate::process::wait_reaped(child)).await {
                        Ok(status) => StartFailure::Exited(status.into()),
                        Err(_) => StartFailure::Protocol(
                            reason.map(|r| r.to_string()).unwrap_or_default(),
                        ),
                    }
                }
            }
        }
    };
    conn.close(CloseReason::StartFailed(failure.to_string()));
    Err(failure)
}

/// Connects to the socket once the plugin listens on it. Runs until it succeeds, or fails for
/// lack of resources (which waiting for the plugin cannot fix); the caller bounds it with the
/// start timeout and the process's exit.
async fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let mut delay = Duration::from_millis(1);
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) if crate::discovery::lack_of_resources(e.raw_os_error()) => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(25));
            }
        }
    }
}
