//! Supervision: one task per enabled plugin that starts it, watches it, and restarts it with
//! backoff when it crashes.
//!
//! ```text
//!             enable                 ready
//! Disabled ───────────▶ Starting ───────────▶ Running ◀──────┐ pong
//!    ▲                    ▲  │                 │  │          │
//!    │ 10 crashes         │  │ exit 78,        │  └──▶ Unhealthy ── 3 missed ──┐
//!    │ in a row           │  │ incompatible    │ exit, broken protocol         │
//!    │                    │  ▼                 ▼                               ▼
//!    └──────────── BackingOff ◀────────── (crashed) ◀─────────────────────────┘
//!                 1,2,4,8,16 s           Failed (no restart) ◀── exit 78
//! ```

mod policy;
mod start;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use toru_plugin_api::protocol::{EXIT_CONFIG, Message, Payload};
use tracing::Instrument;

pub use policy::{HealthPolicy, RestartPolicy};

use crate::connection::{CallFailure, CloseReason, Connection, Reply};
use crate::events::{EventKind, ExitStatus, PluginEvent};
use crate::process::{self, kill_group};
use crate::shared::Shared;
use crate::state::PluginState;
pub(crate) use start::HOST_VERSIONS;
use start::StartFailure;

/// How one run of a plugin process ended.
enum Outcome {
    /// The host asked it to stop.
    Stopped,
    /// It must not be restarted.
    Failed {
        reason: String,
        exit: Option<ExitStatus>,
        tail: Vec<String>,
    },
    /// It crashed and may be restarted.
    Crashed {
        reason: String,
        exit: Option<ExitStatus>,
        tail: Vec<String>,
        ran_for: Duration,
    },
}

/// Supervises plugin `id` until it is stopped, disabled or fails.
pub(crate) async fn run(shared: Arc<Shared>, id: String, file: PathBuf, stop: CancellationToken) {
    let span = tracing::info_span!("plugin", plugin.id = %id, pid = tracing::field::Empty);
    supervise(&shared, &id, &file, &stop).instrument(span).await;
}

async fn supervise(shared: &Arc<Shared>, id: &str, file: &Path, stop: &CancellationToken) {
    let policy = shared.settings.restart_policy;
    let mut after_crash = false;
    loop {
        shared.update(id, |e| e.state = PluginState::Starting);
        match run_once(shared, id, file, stop, after_crash).await {
            Outcome::Stopped => return,
            Outcome::Failed { reason, exit, tail } => {
                shared.update(id, |e| {
                    e.state = PluginState::Failed {
                        reason: reason.clone(),
                    };
                    e.last_exit = exit.or(e.last_exit);
                    e.last_error = Some(reason.clone());
                });
                let mut event = PluginEvent::new(id, EventKind::Failed).with_reason(reason);
                event.exit = exit;
                event.stderr_tail = tail;
                shared.emit(event).await;
                return;
            }
            Outcome::Crashed {
                reason,
                exit,
                tail,
                ran_for,
            } => {
                let count = shared
                    .update(id, |e| {
                        e.consecutive_crashes =
                            policy.count_after_crash(e.consecutive_crashes, ran_for);
                        e.last_exit = exit.or(e.last_exit);
                        e.last_error = Some(reason.clone());
                        e.consecutive_crashes
                    })
                    .unwrap_or(1);
                let mut event = PluginEvent::new(id, EventKind::Crashed).with_reason(reason);
                event.exit = exit;
                event.stderr_tail = tail;
                shared.emit(event).await;
                let Some(delay) = policy.delay(count) else {
                    disable_unstable(shared, id, count).await;
                    return;
                };
                let next = toru_plugin_api::protocol::now_millis() + delay.as_millis() as u64;
                shared.update(id, |e| {
                    e.state = PluginState::BackingOff {
                        next_attempt_ms: next,
                    };
                    e.restarts += 1;
                });
                let mut event = PluginEvent::new(id, EventKind::Restarting)
                    .with_reason(format!("crash {count} in a row"));
                event.delay_ms = Some(delay.as_millis() as u64);
                shared.emit(event).await;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
                after_crash = true;
            }
        }
    }
}

/// Disables a plugin that crashed too often: persisted, recorded, and logged as an error.
async fn disable_unstable(shared: &Arc<Shared>, id: &str, count: u32) {
    let reason = format!("crashed {count} times in a row; enable it again once it is fixed");
    if let Err(e) = shared.config().set_enabled(id, false) {
        tracing::error!(plugin.id = %id, error = %e, "cannot persist that the plugin is disabled");
    }
    shared.update(id, |e| {
        e.enabled = false;
        e.state = PluginState::Disabled;
        e.last_error = Some(reason.clone());
    });
    shared
        .emit(PluginEvent::new(id, EventKind::Disabled).with_reason(reason))
        .await;
}

/// Starts the process once and watches it until it ends.
async fn run_once(
    shared: &Arc<Shared>,
    id: &str,
    file: &Path,
    stop: &CancellationToken,
    after_crash: bool,
) -> Outcome {
    let socket = shared.socket_dir.join(format!("{id}.sock"));
    let spawned = match process::spawn(file, id, &socket) {
        Ok(s) => s,
        Err(e @ crate::error::SpawnError::SocketPathTooLong { .. }) => {
            return Outcome::Failed {
                reason: e.to_string(),
                exit: None,
                tail: Vec::new(),
            };
        }
        Err(e) => {
            return Outcome::Crashed {
                reason: e.to_string(),
                exit: None,
                tail: Vec::new(),
                ran_for: Duration::ZERO,
            };
        }
    };
    let process::Spawned {
        mut child,
        pid,
        stdout,
        stderr,
    } = spawned;
    tracing::Span::current().record("pid", pid);
    shared.reaper.add(pid);
    shared.update(id, |e| e.pid = Some(pid));
    let capture = shared.logs.capture(id, stdout, stderr);
    shared.logs.supervisor(
        toru_plugin_api::protocol::Level::Info,
        id,
        "spawn",
        &format!("started process {pid} from {}", file.display()),
    );

    let started = start::handshake(shared, id, &socket, &mut child, stop).await;
    let (conn, version) = match started {
        Ok(ok) => ok,
        Err(failure) => {
            let exit = match &failure {
                StartFailure::Exited(status) => {
                    kill_group(Some(pid), rustix::process::Signal::KILL);
                    *status
                }
                // A plugin that refused to start exits by itself; give it the chance.
                f if f.is_final() => {
                    let grace = shared.settings.stop_grace.min(Duration::from_secs(2));
                    process::stop(&mut child, pid, grace).await
                }
                _ => process::stop(&mut child, pid, Duration::ZERO).await,
            };
            let tail = finish_capture(capture).await;
            end_process(shared, id, pid, &socket);
            return match failure {
                StartFailure::Stopped => {
                    stopped_event(shared, id, exit).await;
                    Outcome::Stopped
                }
                failure => classify(
                    failure.to_string(),
                    failure.is_final(),
                    exit,
                    tail,
                    Duration::ZERO,
                ),
            };
        }
    };

    let ready_at = Instant::now();
    shared.update(id, |e| {
        e.state = PluginState::Running;
        e.conn = Some(conn.clone());
        e.started_at_ms = Some(toru_plugin_api::protocol::now_millis());
        e.protocol_version = Some(version);
    });
    shared.emit(PluginEvent::new(id, EventKind::Started)).await;
    if after_crash {
        shared
            .emit(PluginEvent::new(id, EventKind::Restarted))
            .await;
    }

    enum End {
        Stop,
        Exited(std::process::ExitStatus),
        Broken(CloseReason),
        Hung(String),
    }
    let end = tokio::select! {
        _ = stop.cancelled() => End::Stop,
        status = process::wait_reaped(&mut child) => End::Exited(status),
        reason = conn.closed() => End::Broken(reason),
        reason = watch_health(shared, id, &conn) => End::Hung(reason),
    };
    // No new request may reach this process from here on.
    shared.update(id, |e| {
        e.conn = None;
        e.started_at_ms = None;
        e.state = PluginState::Stopping;
    });
    let ran_for = ready_at.elapsed();
    let (reason, exit) = match end {
        End::Stop => {
            // Open WebSockets get 1001 ("going away"), streamed responses end.
            conn.end_streams();
            let _ = conn.send(&Message::new(None, Payload::Shutdown)).await;
            let exit = process::stop(&mut child, pid, shared.settings.stop_grace).await;
            conn.close(CloseReason::HostStopped);
            finish_capture(capture).await;
            end_process(shared, id, pid, &socket);
            shared.logs.supervisor(
                toru_plugin_api::protocol::Level::Info,
                id,
                "kill",
                &format!("stopped process {pid} ({exit})"),
            );
            stopped_event(shared, id, exit).await;
            return Outcome::Stopped;
        }
        End::Exited(status) => {
            conn.close(CloseReason::ProcessExited);
            kill_group(Some(pid), rustix::process::Signal::KILL);
            let exit = ExitStatus::from(status);
            (format!("plugin exited unexpectedly with {exit}"), exit)
        }
        End::Broken(reason) => {
            // The process may be on its way out by itself (killed, crashed, exited): then its
            // exit says more than a closed socket does.
            let grace = shared.settings.stop_grace.min(Duration::from_secs(2));
            match tokio::time::timeout(grace, process::wait_reaped(&mut child)).await {
                Ok(status) => {
                    kill_group(Some(pid), rustix::process::Signal::KILL);
                    let exit = ExitStatus::from(status);
                    let reason = match reason {
                        CloseReason::ClosedByPlugin => {
                            format!("plugin exited unexpectedly with {exit}")
                        }
                        other => other.to_string(),
                    };
                    (reason, exit)
                }
                Err(_) => (
                    reason.to_string(),
                    process::stop(&mut child, pid, Duration::ZERO).await,
                ),
            }
        }
        End::Hung(reason) => {
            conn.close(CloseReason::Unhealthy(reason.clone()));
            kill_group(Some(pid), rustix::process::Signal::KILL);
            let exit = ExitStatus::from(process::wait_reaped(&mut child).await);
            shared.logs.supervisor(
                toru_plugin_api::protocol::Level::Warn,
                id,
                "kill",
                &format!("killed process {pid}: {reason}"),
            );
            (reason, exit)
        }
    };
    let tail = finish_capture(capture).await;
    end_process(shared, id, pid, &socket);
    classify(reason, false, exit, tail, ran_for)
}

/// Turns a process's end into an outcome: exit code 78 and final start failures are not
/// restarted.
fn classify(
    reason: String,
    is_final: bool,
    exit: ExitStatus,
    tail: Vec<String>,
    ran_for: Duration,
) -> Outcome {
    if exit == ExitStatus::Code(EXIT_CONFIG) && !is_final {
        let last = tail.last().map(|l| format!(": {l}")).unwrap_or_default();
        return Outcome::Failed {
            reason: format!("plugin refused its configuration (exit code 78){last}"),
            exit: Some(exit),
            tail,
        };
    }
    if is_final {
        return Outcome::Failed {
            reason,
            exit: Some(exit),
            tail,
        };
    }
    Outcome::Crashed {
        reason,
        exit: Some(exit),
        tail,
        ran_for,
    }
}

async fn stopped_event(shared: &Arc<Shared>, id: &str, exit: ExitStatus) {
    shared.update(id, |e| {
        e.last_exit = Some(exit);
        e.pid = None;
        if !matches!(e.state, PluginState::Failed { .. }) {
            e.state = if e.enabled {
                PluginState::Stopping
            } else {
                PluginState::Disabled
            };
        }
    });
    let mut event = PluginEvent::new(id, EventKind::Stopped);
    event.exit = Some(exit);
    shared.emit(event).await;
}

/// Clears what a process left behind (its group already killed): its pid, its socket file,
/// and its entry with the reaper.
fn end_process(shared: &Arc<Shared>, id: &str, pid: u32, socket: &std::path::Path) {
    shared.reaper.remove(pid);
    shared.update(id, |e| e.pid = None);
    let _ = std::fs::remove_file(socket);
}

/// Waits for the log capture to drain (bounded: a grandchild could hold a pipe open).
async fn finish_capture(capture: crate::logs::Capture) -> Vec<String> {
    let tail = capture.tail();
    tokio::time::timeout(Duration::from_secs(2), capture.finished())
        .await
        .unwrap_or(tail)
}

/// Pings the plugin; returns once it has missed too many pings in a row.
async fn watch_health(shared: &Arc<Shared>, id: &str, conn: &Connection) -> String {
    let policy = shared.settings.health_policy;
    let mut missed = 0;
    loop {
        tokio::time::sleep(policy.interval).await;
        match conn.call(Payload::Ping, policy.timeout).await {
            Ok(Reply::Pong) => {
                if missed > 0 {
                    shared.update(id, |e| {
                        if e.state == PluginState::Unhealthy {
                            e.state = PluginState::Running;
                        }
                    });
                }
                missed = 0;
            }
            // The connection's own end is reported by `closed()`.
            Err(CallFailure::Closed) => std::future::pending::<()>().await,
            _ => {
                missed += 1;
                if missed == 1 {
                    shared.update(id, |e| e.state = PluginState::Unhealthy);
                    shared
                        .emit(
                            PluginEvent::new(id, EventKind::Unhealthy)
                                .with_reason("missed a health ping"),
                        )
                        .await;
                }
                if missed >= policy.max_missed {
                    return format!("plugin missed {missed} health pings in a row");
                }
            }
        }
    }
}
