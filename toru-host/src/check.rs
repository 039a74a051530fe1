//! The plugin checker: runs one plugin file through a private host, step by step, and explains
//! the first step that fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use toru_plugin_api::PluginMetadata;

use crate::events::{EventKind, ExitStatus, PluginEvent};
use crate::{CallError, PluginHost, PluginRequest, RestartPolicy};

/// One step of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckStep {
    /// What was checked: `file`, `metadata`, `start`, `request`, `bundle`, `shutdown`.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen, or why it failed.
    pub detail: String,
}

/// What [`check_plugin`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The file checked.
    pub file: PathBuf,
    /// The plugin's metadata, when it could be read.
    pub metadata: Option<PluginMetadata>,
    /// The steps taken, in order; checking stops at the first failure.
    pub steps: Vec<CheckStep>,
}

impl CheckReport {
    /// Whether every step passed.
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.passed)
    }

    /// The first failed step.
    pub fn failure(&self) -> Option<&CheckStep> {
        self.steps.iter().find(|s| !s.passed)
    }

    fn step(&mut self, name: &'static str, result: Result<String, String>) -> bool {
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        self.steps.push(CheckStep {
            name,
            passed,
            detail,
        });
        passed
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "checking {}", self.file.display())?;
        for step in &self.steps {
            let mark = if step.passed { "ok  " } else { "FAIL" };
            // Lines after the first (a stderr excerpt) line up under it.
            let detail = step.detail.replace('\n', &format!("\n{:17}", ""));
            writeln!(f, "  {mark} {:<9} {detail}", step.name)?;
        }
        match self.failure() {
            None => write!(f, "it is a valid Toru plugin"),
            Some(step) => write!(f, "not a valid Toru plugin: the {} step failed", step.name),
        }
    }
}

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks that `file` is a valid Toru plugin: it prints valid metadata, starts and answers
/// `ready`, answers a `GET` of its route (and `get_bundle` when it says it has a frontend),
/// and exits with code 0 after `shutdown`.
///
/// The plugin runs where it is, as it will in the plugins folder: in its own folder, with the
/// files beside it (a Python or Node.js plugin on Toru's SDK imports the SDK's module from
/// there; a `package.json` above it applies to a Node.js plugin). Nothing else in that folder
/// is run or written: the private host that runs it keeps its database, logs, sockets and
/// `config.json` in a temporary folder of its own, and loads this one file, whatever its name.
pub async fn check_plugin(file: &Path) -> CheckReport {
    let mut report = CheckReport {
        file: file.to_owned(),
        metadata: None,
        steps: Vec::new(),
    };
    let real = match file.canonicalize().and_then(|real| {
        let meta = std::fs::metadata(&real)?;
        Ok((real, meta))
    }) {
        Ok((real, meta)) if meta.is_file() => real,
        Ok(_) => {
            report.step("file", Err(format!("{} is not a file", file.display())));
            return report;
        }
        Err(e) => {
            report.step("file", Err(format!("cannot read {}: {e}", file.display())));
            return report;
        }
    };
    let dir = real.parent().unwrap_or(Path::new("/")).to_owned();
    let size = std::fs::metadata(&real)
        .map(|m| m.len())
        .unwrap_or_default();
    report.step(
        "file",
        Ok(format!(
            "{size} bytes, run where it is, in {}",
            dir.display()
        )),
    );
    let work = match tempfile::Builder::new().prefix("toru-check").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            report.step(
                "metadata",
                Err(format!("cannot make a temporary folder: {e}")),
            );
            return report;
        }
    };
    let mut builder = PluginHost::builder();
    builder
        .plugin_dir(&dir)
        .data_dir(work.path().join("data"))
        .log_dir(work.path().join("logs"))
        .socket_dir(work.path())
        .watch_plugins(false)
        .rescan_interval(Duration::from_secs(24 * 3600))
        .restart_policy(RestartPolicy {
            max_consecutive_crashes: 1,
            ..RestartPolicy::default()
        })
        .stop_grace(Duration::from_secs(5));
    builder.only_file = Some(real);
    builder.config_file = Some(work.path().join("config.json"));
    let host = match builder.start().await {
        Ok(host) => host,
        Err(e) => {
            report.step(
                "metadata",
                Err(format!("cannot start a host to check it in: {e}")),
            );
            return report;
        }
    };
    let mut events = host.subscribe();
    host.discovered().await;
    run_steps(&host, &mut report, &mut events).await;
    host.shutdown().await;
    report
}

async fn run_steps(
    host: &PluginHost,
    report: &mut CheckReport,
    events: &mut tokio::sync::broadcast::Receiver<PluginEvent>,
) {
    let Some(info) = host.list().into_iter().next() else {
        report.step("metadata", Err("the host did not find the file".into()));
        return;
    };
    let meta = match (info.metadata, info.load_error) {
        (Some(meta), _) => meta,
        (None, reason) => {
            report.step("metadata", Err(reason.unwrap_or_default()));
            return;
        }
    };
    report.metadata = Some(meta.clone());
    report.step(
        "metadata",
        Ok(format!(
            "{} {} ({}), route {}",
            meta.id, meta.version, meta.name, meta.route
        )),
    );

    // `events` was subscribed before this look, so nothing after it is missed.
    let now = host.get(&meta.id).ok();
    let started = match now.as_ref().map(|i| (&i.state, &i.last_error)) {
        Some((state, _)) if state.serves() => Ok(()),
        Some((crate::PluginState::Failed { reason }, _)) => Err(reason.clone()),
        Some((crate::PluginState::Disabled, Some(error))) => Err(error.clone()),
        _ => next_outcome(events, &meta.id).await,
    };
    let version = host.get(&meta.id).ok().and_then(|i| i.protocol_version);
    if !report.step(
        "start",
        started.map(|()| format!("ready, protocol {}", version.unwrap_or_default())),
    ) {
        return;
    }

    let path = format!("{}/", meta.route);
    let answered = match host.request(&meta.id, &PluginRequest::get(&path)).await {
        Ok(r) => Ok(format!("GET {path} answered {}", r.status)),
        // Why it went away is in the event that records its end (a broken protocol, a crash).
        Err(e @ CallError::ConnectionLost(_)) => Err(match ended(events, &meta.id).await {
            Some(why) => format!("GET {path} failed: the plugin went away before answering: {why}"),
            None => format!("GET {path} failed: {e}"),
        }),
        Err(e) => Err(format!("GET {path} failed: {e}")),
    };
    if !report.step("request", answered) {
        return;
    }

    if meta.frontend {
        let bundle = host
            .bundle(&meta.id)
            .await
            .map_err(|e| format!("get_bundle failed: {e}"))
            .and_then(|script| {
                if script.contains("mount") {
                    Ok(format!("{} bytes of JavaScript", script.len()))
                } else {
                    Err("the bundle does not mention `mount`".into())
                }
            });
        if !report.step("bundle", bundle) {
            return;
        }
    }

    let stopped = async {
        host.disable(&meta.id)
            .await
            .map_err(|e| format!("cannot stop it: {e}"))?;
        match host.get(&meta.id).ok().and_then(|i| i.last_exit) {
            Some(ExitStatus::Code(0)) => Ok("exited with code 0 after shutdown".to_owned()),
            Some(other) => Err(format!(
                "after shutdown it ended with {other}; a plugin should exit 0"
            )),
            None => Err("its exit status is unknown".to_owned()),
        }
    };
    report.step("shutdown", stopped.await);
}

/// Why plugin `id`'s process ended, from the event that records it (waited for a little, as
/// the host records it after the caller learnt of it), with its last line of output.
async fn ended(
    events: &mut tokio::sync::broadcast::Receiver<PluginEvent>,
    id: &str,
) -> Option<String> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e)
                    if e.plugin_id == id
                        && matches!(e.kind, EventKind::Crashed | EventKind::Failed) =>
                {
                    return e.reason.map(|mut why| {
                        if let Some(last) = e.stderr_tail.last() {
                            why.push_str(&format!(" (last output: {last})"));
                        }
                        why
                    });
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .ok()
        .flatten()
}

/// Waits for plugin `id` to start, or for what stopped it from starting.
async fn next_outcome(
    events: &mut tokio::sync::broadcast::Receiver<PluginEvent>,
    id: &str,
) -> Result<(), String> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) if e.plugin_id == id => match e.kind {
                    EventKind::Started => return Ok(()),
                    EventKind::Crashed | EventKind::Failed => {
                        let mut why = e.reason.unwrap_or_default();
                        if let Some(last) = e.stderr_tail.last() {
                            why.push_str(&format!(" (last output: {last})"));
                        }
                        return Err(why);
                    }
                    _ => {}
                },
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err("the host stopped".into()),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| Err(format!("it did not start within {STEP_TIMEOUT:?}")))
}
