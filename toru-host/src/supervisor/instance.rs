//! One plugin process: spawned on a socket of its own, brought to `ready`, watched, and in the
//! end stopped, or retired (after an upgrade: it finishes its requests in flight, then stops).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toru_plugin_api::protocol::{Level, Message, Payload};

use crate::connection::{CloseReason, Connection};
use crate::contain::limits::{Enforcement, LimitHit};
use crate::contain::{Container, Containment};
use crate::discovery::Found;
use crate::error::SpawnError;
use crate::events::ExitStatus;
use crate::logs::Capture;
use crate::process::{self, kill_group};
use crate::shared::Shared;

use super::Command;
use super::health::Health;
use super::reason::EndReason;
use super::start::{self, StartFailure};

/// A running plugin process that answered `ready`.
pub(super) struct Instance {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) conn: Connection,
    pub(super) version: u32,
    /// The generation of the plugin's settings it was started with.
    pub(super) settings_gen: u64,
    pub(super) ready_at: Instant,
    pub(super) health: Health,
    socket: PathBuf,
    capture: Capture,
    /// Everything the process starts, under its limits.
    container: Container,
}

/// Why a start did not give an [`Instance`].
pub(super) enum StartEnd {
    /// A stop was asked for meanwhile; the process, if there was one, is stopped.
    Stopped(Option<ExitStatus>),
    /// Spawning or connecting failed for lack of resources: not a crash, tried again later.
    NoResources(String),
    /// The start failed; the process is gone.
    Failed {
        reason: EndReason,
        exit: Option<ExitStatus>,
        tail: Vec<String>,
    },
}

/// What ended the watch of a running instance.
pub(super) enum Next {
    /// A stop was asked for.
    Stop,
    /// The process ended (it is reaped, its group killed).
    Ended { reason: EndReason, exit: ExitStatus },
    /// A command arrived.
    Command(Command),
}

/// Spawns plugin `id` from `found`'s file and brings it to `ready`, with its settings in
/// `init`; a plugin whose settings do not allow a start (a required one has no value) is not
/// spawned. At most the host's launch concurrency of starts run at once; waiting for a turn
/// does not count against the start timeout.
pub(super) async fn start(
    shared: &Arc<Shared>,
    id: &str,
    found: &Found,
    stop: &CancellationToken,
) -> Result<Instance, StartEnd> {
    let file = found.file.as_path();
    let (settings, settings_gen) =
        match start::start_settings(shared, id, found.result.as_ref().ok()) {
            Ok(settings) => settings,
            Err(why) => {
                return Err(StartEnd::Failed {
                    reason: EndReason::Settings(why),
                    exit: None,
                    tail: Vec::new(),
                });
            }
        };
    let _turn = tokio::select! {
        turn = shared.launch.acquire() => turn.expect("the launch semaphore is never closed"),
        _ = stop.cancelled() => return Err(StartEnd::Stopped(None)),
    };
    let n = shared.next_socket.fetch_add(1, Ordering::Relaxed);
    // Each process gets a socket of its own, so a new version can start beside a running one.
    let socket = shared.socket_dir.join(format!("{id}.{n}.sock"));
    let container = match shared.containers.create(id, &shared.limits_for(id)) {
        Ok(c) => c,
        Err(e) if crate::discovery::lack_of_resources(e.raw_os_error()) => {
            return Err(StartEnd::NoResources(format!(
                "cannot contain {}: {e}",
                file.display()
            )));
        }
        Err(e) => {
            return Err(StartEnd::Failed {
                reason: EndReason::Spawn(SpawnError::Exec {
                    file: file.to_owned(),
                    reason: format!("cannot contain the plugin: {e}"),
                    errno: e.raw_os_error(),
                }),
                exit: None,
                tail: Vec::new(),
            });
        }
    };
    let spawned = match injected_fault(shared, id, file) {
        Some(e) => Err(e),
        None => process::spawn(file, id, &socket, &container),
    };
    let spawned = match spawned {
        Ok(s) => s,
        Err(SpawnError::Exec {
            reason,
            errno: Some(errno),
            ..
        }) if crate::discovery::lack_of_resources(Some(errno)) => {
            container.dispose().await;
            return Err(StartEnd::NoResources(format!(
                "cannot start {}: {reason}",
                file.display()
            )));
        }
        Err(e) => {
            container.dispose().await;
            return Err(StartEnd::Failed {
                reason: EndReason::Spawn(e),
                exit: None,
                tail: Vec::new(),
            });
        }
    };
    let process::Spawned {
        mut child,
        pid,
        stdout,
        stderr,
    } = spawned;
    shared.reaper.add(pid);
    let capture = shared.logs.capture(id, stdout, stderr);
    shared.logs.supervisor(
        Level::Info,
        id,
        "spawn",
        &format!(
            "started process {pid} from {} (containment: {})",
            file.display(),
            container.describe()
        ),
    );

    match start::handshake(shared, id, &socket, &mut child, stop, settings).await {
        Ok((conn, version)) => Ok(Instance {
            health: Health::spawn(shared, id, &conn),
            child,
            pid,
            conn,
            version,
            settings_gen,
            ready_at: Instant::now(),
            socket,
            capture,
            container,
        }),
        Err(failure) => {
            let exit = match &failure {
                StartFailure::Exited(status) => {
                    kill_group(Some(pid), Signal::KILL);
                    *status
                }
                // A plugin that refused to start exits by itself; give it the chance.
                f if f.is_final() => {
                    let grace = shared.settings.stop_grace.min(Duration::from_secs(2));
                    process::stop(&mut child, pid, grace, &container).await
                }
                _ => process::stop(&mut child, pid, Duration::ZERO, &container).await,
            };
            // What it left behind goes first: it may hold the output pipes open.
            container.kill_all();
            let tail = finish_capture(capture).await;
            let hit = container.explain(Some(exit), &tail);
            container.dispose().await;
            end_process(shared, pid, &socket);
            Err(match failure {
                StartFailure::Stopped => StartEnd::Stopped(Some(exit)),
                StartFailure::NoResources(why) => StartEnd::NoResources(why),
                failure => StartEnd::Failed {
                    reason: EndReason::Start(failure).or_limit(hit),
                    exit: Some(exit),
                    tail,
                },
            })
        }
    }
}

/// The failure a test asked for through the builder's spawn hook, if any.
fn injected_fault(shared: &Shared, id: &str, file: &Path) -> Option<SpawnError> {
    let hook = shared.settings.spawn_fault.as_ref()?;
    let errno = (hook.0)(id)?;
    Some(SpawnError::Exec {
        file: file.to_owned(),
        reason: std::io::Error::from_raw_os_error(errno).to_string(),
        errno: Some(errno),
    })
}

impl Instance {
    /// How the process is contained, and what enforces its limits.
    pub(super) fn contained(&self) -> (Containment, Enforcement) {
        (self.container.kind(), self.container.enforcement())
    }

    /// Waits for whatever comes first: a stop, the process's end, a command (when `commands`
    /// is given).
    pub(super) async fn next(
        &mut self,
        shared: &Arc<Shared>,
        id: &str,
        stop: &CancellationToken,
        commands: Option<&mut mpsc::Receiver<Command>>,
    ) -> Next {
        let command = async {
            match commands {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        // Biased, in this order: a protocol break closes the connection before the plugin,
        // seeing its socket closed, exits; the break is the cause, not the exit.
        tokio::select! {
            biased;
            _ = stop.cancelled() => Next::Stop,
            reason = self.conn.closed() => self.after_close(reason).await,
            status = process::wait_reaped(&mut self.child) => {
                kill_group(Some(self.pid), Signal::KILL);
                let exit = ExitStatus::from(status);
                // What the plugin wrote before it exited is read to its end first: a protocol
                // break in it is the cause.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.closed()).await;
                let reason = match self.conn.close_reason() {
                    Some(r) if r.is_protocol_break() => EndReason::Connection(r),
                    _ => EndReason::Exited(exit),
                };
                self.conn.close(CloseReason::ProcessExited);
                Next::Ended { reason, exit }
            }
            missed = self.health.hung() => {
                let reason = EndReason::Hung { missed };
                self.conn.close(CloseReason::Unhealthy(reason.to_string()));
                kill_group(Some(self.pid), Signal::KILL);
                let exit = ExitStatus::from(process::wait_reaped(&mut self.child).await);
                shared.logs.supervisor(
                    Level::Warn,
                    id,
                    "kill",
                    &format!("killed process {}: {reason}", self.pid),
                );
                Next::Ended { reason, exit }
            }
            hit = self.container.limit_exceeded() => {
                let reason = EndReason::Limit(hit);
                self.conn.close(CloseReason::Host(reason.to_string()));
                self.container.kill_all();
                let exit = ExitStatus::from(process::wait_reaped(&mut self.child).await);
                shared.logs.supervisor(
                    Level::Warn,
                    id,
                    "kill",
                    &format!("killed process {}: {reason}", self.pid),
                );
                Next::Ended { reason, exit }
            }
            Some(command) = command => Next::Command(command),
        }
    }

    /// The connection closed: the process is likely on its way out (killed, crashed, exited),
    /// and then its exit says more than a closed socket does, unless it broke the protocol.
    async fn after_close(&mut self, reason: CloseReason) -> Next {
        let grace = Duration::from_secs(2);
        match tokio::time::timeout(grace, process::wait_reaped(&mut self.child)).await {
            Ok(status) => {
                kill_group(Some(self.pid), Signal::KILL);
                let exit = ExitStatus::from(status);
                let reason = match reason {
                    CloseReason::ClosedByPlugin => EndReason::Exited(exit),
                    other => EndReason::Connection(other),
                };
                Next::Ended { reason, exit }
            }
            Err(_) => {
                let exit =
                    process::stop(&mut self.child, self.pid, Duration::ZERO, &self.container).await;
                Next::Ended {
                    reason: EndReason::Connection(reason),
                    exit,
                }
            }
        }
    }

    /// Stops the process as asked: `shutdown`, then SIGTERM and SIGKILL to its group after
    /// the grace period; reaps it and cleans up after it.
    pub(super) async fn stop(mut self, shared: &Arc<Shared>, id: &str) -> ExitStatus {
        self.health.stop();
        // Open WebSockets get 1001 ("going away"), streamed responses end.
        self.conn.end_streams();
        let _ = self.conn.send(&Message::new(None, Payload::Shutdown)).await;
        let exit = process::stop(
            &mut self.child,
            self.pid,
            shared.settings.stop_grace,
            &self.container,
        )
        .await;
        self.conn.close(CloseReason::HostStopped);
        shared.logs.supervisor(
            Level::Info,
            id,
            "kill",
            &format!("stopped process {} ({exit})", self.pid),
        );
        self.finish(shared, Some(exit)).await;
        exit
    }

    /// Cleans up after a process that ended: everything it started killed, its log capture
    /// drained, its container, socket and entry with the reaper gone. Returns its last stderr
    /// lines, and the limit it exceeded when one explains how it ended (`exit`).
    pub(super) async fn finish(
        self,
        shared: &Arc<Shared>,
        exit: Option<ExitStatus>,
    ) -> (Vec<String>, Option<LimitHit>) {
        self.health.stop();
        // What it left behind goes first: it may hold the output pipes open.
        self.container.kill_all();
        let tail = finish_capture(self.capture).await;
        let hit = self.container.explain(exit, &tail);
        self.container.dispose().await;
        end_process(shared, self.pid, &self.socket);
        (tail, hit)
    }

    /// After an upgrade: no new request reaches this (old) process; it gets until the drain
    /// timeout to answer the requests it has, then it is stopped. Never blocks the host's
    /// shutdown: a shutdown stops it at once.
    pub(super) async fn retire(mut self, shared: Arc<Shared>, id: String) {
        self.health.stop();
        let drain = shared.settings.drain_timeout;
        let pid = self.pid;
        let in_flight = self.conn.in_flight();
        tokio::select! {
            _ = self.conn.drained() => {}
            _ = tokio::time::sleep(drain) => shared.logs.supervisor(
                Level::Warn,
                &id,
                "drain",
                &format!(
                    "old process {pid} still had {} requests in flight after {drain:?}; stopping it",
                    self.conn.in_flight()
                ),
            ),
            _ = shared.shutdown.cancelled() => {}
            _ = process::wait_reaped(&mut self.child) => {}
        }
        shared.logs.supervisor(
            Level::Info,
            &id,
            "drain",
            &format!(
                "old process {pid} finished its requests ({in_flight} in flight at the upgrade)"
            ),
        );
        // Done draining (counted before the process goes, so that once it is gone, so is it).
        shared.update(&id, |e| e.draining = e.draining.saturating_sub(1));
        self.stop(&shared, &id).await;
    }
}

/// Waits for the log capture to drain (bounded: a grandchild could hold a pipe open).
async fn finish_capture(capture: Capture) -> Vec<String> {
    let tail = capture.tail();
    tokio::time::timeout(Duration::from_secs(2), capture.finished())
        .await
        .unwrap_or(tail)
}

/// Clears what a process left behind (its group already killed): its socket file and its
/// entry with the reaper.
fn end_process(shared: &Shared, pid: u32, socket: &Path) {
    shared.reaper.remove(pid);
    let _ = std::fs::remove_file(socket);
}
