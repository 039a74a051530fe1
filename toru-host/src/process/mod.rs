//! Plugin processes: a clean environment, their own process group, their container, death
//! with the host, and a stop that escalates from `shutdown` to SIGTERM to SIGKILL.

pub(crate) mod child;
mod reaper;

pub(crate) use reaper::Reaper;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::{Child, ChildStderr, ChildStdout};
use toru_plugin_api::protocol::{ENV_PLUGIN_ID, ENV_SOCKET_PATH};

use crate::contain::Container;
use crate::error::SpawnError;
use crate::events::ExitStatus;

/// The host's environment variables a plugin inherits; everything else is left out.
const ENV_ALLOW_LIST: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// The longest socket path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// The environment every plugin process gets, before the plugin's own variables.
pub(crate) fn clean_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ENV_ALLOW_LIST
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    // Python block-buffers a piped stdout; plugins' log lines should arrive as written.
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    env
}

/// Refuses a socket path the OS could not bind.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), SpawnError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SpawnError::SocketPathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

/// Sends `signal` to the process group led by `pid`. A group that is gone already is fine.
pub(crate) fn kill_group(pid: Option<u32>, signal: Signal) {
    let Some(pid) = pid.and_then(|p| Pid::from_raw(p as i32)) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pid, signal)
        && e != rustix::io::Errno::SRCH
    {
        tracing::warn!(pid = pid.as_raw_nonzero().get(), error = %e, "cannot signal plugin process group");
    }
}

/// A started plugin process, its pipes taken for log capture.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// Starts `file` as plugin `plugin_id`, listening on `socket_path`, in `container`.
pub(crate) fn spawn(
    file: &Path,
    plugin_id: &str,
    socket_path: &Path,
    container: &Container,
) -> Result<Spawned, SpawnError> {
    check_socket_path(socket_path)?;
    // A stale socket file from an earlier run would make the plugin's bind fail.
    let _ = std::fs::remove_file(socket_path);
    let mut cmd = tokio::process::Command::new(file);
    cmd.env_clear()
        .envs(clean_env())
        .env(ENV_SOCKET_PATH, socket_path)
        .env(ENV_PLUGIN_ID, plugin_id)
        .current_dir(file.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A backstop only: stop() reaps every child it starts.
        .kill_on_drop(true);
    let exec_error = |e: std::io::Error| SpawnError::Exec {
        file: file.to_owned(),
        reason: match crate::discovery::explain::script_problem(file, e.raw_os_error()) {
            Some(problem) => format!("{problem} ({e})"),
            None => e.to_string(),
        },
        errno: e.raw_os_error(),
    };
    container.prepare(&mut cmd).map_err(exec_error)?;
    let mut child = cmd.spawn().map_err(exec_error)?;
    let pid = child.id().expect("a child that was just spawned has a pid");
    container.started(pid);
    Ok(Spawned {
        stdout: child.stdout.take().expect("piped stdout"),
        stderr: child.stderr.take().expect("piped stderr"),
        child,
        pid,
    })
}

/// Waits up to `grace` for the process to exit, then SIGTERMs its group, waits up to `grace`
/// again, then SIGKILLs everything in its container; always reaps. Returns how the process
/// ended.
pub(crate) async fn stop(
    child: &mut Child,
    pid: u32,
    grace: Duration,
    container: &Container,
) -> ExitStatus {
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            kill_group(Some(pid), Signal::TERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(status)) => status,
                _ => {
                    container.kill_all();
                    wait_reaped(child).await
                }
            }
        }
    };
    // Whatever the plugin started in its group goes with it.
    kill_group(Some(pid), Signal::KILL);
    status.into()
}

/// Waits for a child that was sent SIGKILL.
pub(crate) async fn wait_reaped(child: &mut Child) -> std::process::ExitStatus {
    loop {
        match child.wait().await {
            Ok(status) => return status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot reap plugin process");
                // Cannot happen for a child we own; report it as killed.
                use std::os::unix::process::ExitStatusExt;
                return std::process::ExitStatus::from_raw(9);
            }
        }
    }
}

/// The folder for this host's sockets: `$XDG_RUNTIME_DIR` or the temp dir, in a fresh 0700
/// folder of its own.
pub(crate) fn socket_dir(preferred: Option<&Path>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = match preferred {
        Some(p) => p.to_owned(),
        None => std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir),
    };
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::Builder::new()
        .prefix("toru-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)?
        .keep();
    // Builder permissions are applied at creation; make sure, in case the umask interfered.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

use std::os::unix::fs::PermissionsExt;
