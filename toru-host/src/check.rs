//! The plugin checker: runs one plugin file through a private host, step by step, and explains
//! the first step that fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use toru_plugin_api::PluginMetadata;

use crate::events::{EventKind, ExitStatus, PluginEvent};
use crate::{PluginHost, PluginRequest, RestartPolicy};

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
            writeln!(f, "  {mark} {:<9} {}", step.name, step.detail)?;
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
/// The plugin runs in a private host with its own temporary folders; nothing of the caller's
/// is touched. The file is copied there with the other files beside it that are not plugins
/// (a Python or Node plugin on Toru's SDK imports the SDK module from its own folder): at most
/// 64 files and 64 MiB.
pub async fn check_plugin(file: &Path) -> CheckReport {
    let mut report = CheckReport {
        file: file.to_owned(),
        metadata: None,
        steps: Vec::new(),
    };
    let work = match tempfile::Builder::new().prefix("toru-check").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            report.step("file", Err(format!("cannot make a temporary folder: {e}")));
            return report;
        }
    };
    let plugins = work.path().join("plugins");
    let copy = plugins.join("plugin.binary");
    let copied = std::fs::create_dir_all(&plugins)
        .and_then(|_| std::fs::copy(file, &copy))
        .map(|bytes| match copy_companions(file, &plugins) {
            0 => format!("{bytes} bytes"),
            n => format!("{bytes} bytes, with {n} files beside it"),
        })
        .map_err(|e| format!("cannot read {}: {e}", file.display()));
    if !report.step("file", copied) {
        return report;
    }
    let host = PluginHost::builder()
        .plugin_dir(&plugins)
        .data_dir(work.path().join("data"))
        .log_dir(work.path().join("logs"))
        .socket_dir(work.path())
        .restart_policy(RestartPolicy {
            max_consecutive_crashes: 1,
            ..RestartPolicy::default()
        })
        .stop_grace(Duration::from_secs(5))
        .start()
        .await;
    let host = match host {
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

/// The most files, and bytes in all, copied from beside the checked file.
const COMPANION_FILES: usize = 64;
const COMPANION_BYTES: u64 = 64 * 1024 * 1024;

/// Copies the regular files beside `file` that are neither plugins (`*.binary`) nor hidden into
/// `into`, as they sit in the plugins folder where the plugin really runs; stops at
/// [`COMPANION_FILES`] files or [`COMPANION_BYTES`] bytes. Returns how many were copied.
fn copy_companions(file: &Path, into: &Path) -> usize {
    let Some(Ok(entries)) = file.parent().map(std::fs::read_dir) else {
        return 0;
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        // Follows links: an example's SDK module is a link to the SDK's file.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if text.starts_with('.') || text.ends_with(".binary") || !meta.is_file() {
            continue;
        }
        if files == COMPANION_FILES || bytes + meta.len() > COMPANION_BYTES {
            break;
        }
        if std::fs::copy(entry.path(), into.join(&name)).is_ok() {
            files += 1;
            bytes += meta.len();
        }
    }
    files
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
    let answered = host
        .request(&meta.id, &PluginRequest::get(&path))
        .await
        .map(|r| format!("GET {path} answered {}", r.status))
        .map_err(|e| format!("GET {path} failed: {e}"));
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
