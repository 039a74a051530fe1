//! One plugin run's container: what the supervisor and discovery call around a process.

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use rustix::process::{Pid, Resource, Signal};

use super::cgroup::Cgroup;
use super::limits::{Enforcement, Enforcer, LimitHit, LimitKind, Limits};
use super::{Containment, MARKER_VAR, tree};
use crate::events::ExitStatus;
use crate::process::child::{ChildSetup, PidNamespace};

/// How often a running plugin's cgroup counters are read.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a plugin's processes may take to go once killed.
const DISPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One plugin run's container.
#[derive(Debug)]
pub(crate) struct Container {
    pub(super) kind: Containment,
    pub(super) limits: Limits,
    pub(super) enforcement: Enforcement,
    pub(super) cgroup: Option<Cgroup>,
    pub(super) rlimits: Vec<(Resource, u64)>,
    pub(super) nice: Option<i32>,
    /// For a PID namespace: the user namespace's maps, if one is needed.
    pub(super) pid_namespace: Option<Option<(Vec<u8>, Vec<u8>)>>,
    /// For the subreaper: `<host token>/<run>`, in `TORU_CONTAINER` of every process it starts.
    pub(super) marker: Option<String>,
    pub(super) pid: Mutex<Option<i32>>,
    /// Processes killed by the subreaper fallback, to be reaped once they are the host's.
    pub(super) killed: Mutex<HashSet<i32>>,
    /// Whether [`Container::dispose`] ran; if not, dropping it still kills what is in it.
    pub(super) disposed: bool,
}

/// A backstop for a run whose task ended without disposing of it (cancelled, or panicked):
/// everything in it is killed at once, and its cgroup removed if it is already empty (else the
/// next start removes it).
impl Drop for Container {
    fn drop(&mut self) {
        if self.disposed {
            return;
        }
        self.kill_all();
        if let Some(cg) = &self.cgroup
            && !cg.remove()
        {
            tracing::warn!(cgroup = ?cg, "a plugin run ended without its container; its cgroup is removed at the next start");
        }
    }
}

impl Container {
    /// The mechanism keeping this run together.
    pub(crate) fn kind(&self) -> Containment {
        self.kind
    }

    /// The containment and each limit with what enforces it, for the log: `cgroup-v1; memory
    /// 512 MiB (cgroup), processes 512 (cgroup), open files 1024 (rlimit), cpu unlimited`.
    pub(crate) fn describe(&self) -> String {
        let by = |e: Enforcer| match e {
            Enforcer::Cgroup => " (cgroup)",
            Enforcer::Rlimit => " (rlimit)",
            Enforcer::Nice => " (nice)",
            _ => "",
        };
        let e = self.enforcement;
        format!(
            "{}; memory {}{}, processes {}{}, open files {}{}, cpu {}{}",
            self.kind,
            self.limits.memory,
            by(e.memory),
            self.limits.processes,
            by(e.processes),
            self.limits.open_files,
            by(e.open_files),
            self.limits.cpu,
            by(e.cpu),
        )
    }

    /// What enforces each limit of this run.
    pub(crate) fn enforcement(&self) -> Enforcement {
        self.enforcement
    }

    /// Sets `cmd` up so that the process joins the container and its limits before it runs.
    ///
    /// # Errors
    /// When the cgroup's files cannot be opened.
    pub(crate) fn prepare(&self, cmd: &mut tokio::process::Command) -> io::Result<()> {
        if let Some(marker) = &self.marker {
            cmd.env(MARKER_VAR, marker);
        }
        let join = match &self.cgroup {
            Some(cg) => cg.procs_files()?,
            None => Vec::new(),
        };
        crate::process::child::configure(
            cmd,
            ChildSetup {
                join,
                rlimits: self.rlimits.clone(),
                nice: self.nice,
                subreaper: self.kind == Containment::Subreaper,
                pid_namespace: self.pid_namespace.clone().map(|user| PidNamespace { user }),
            },
        );
        Ok(())
    }

    /// Records the process the host started (its process group's leader).
    pub(crate) fn started(&self, pid: u32) {
        *self.pid.lock().expect("container lock") = Some(pid as i32);
    }

    fn pid(&self) -> Option<i32> {
        *self.pid.lock().expect("container lock")
    }

    /// SIGKILLs every process of the run, the plugin's own included.
    pub(crate) fn kill_all(&self) {
        match &self.cgroup {
            Some(cg) => cg.kill_all(),
            None if self.kind == Containment::Subreaper => self.kill_tree(),
            None => {}
        }
        // The process group too: in a PID namespace, the relay leads it, and its end ends the
        // namespace.
        if let Some(pid) = self.pid().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }

    /// The subreaper's kill: the plugin's descendants while it lives, and the processes the host
    /// adopted that carry this run's marker, with theirs; all stopped first (a stopped process
    /// cannot fork), then killed.
    fn kill_tree(&self) {
        let Some(marker) = &self.marker else { return };
        let entry = format!("{MARKER_VAR}={marker}");
        let me = std::process::id() as i32;
        let plugin = self.pid();
        let mut stopped: HashSet<i32> = HashSet::new();
        for _ in 0..50 {
            let procs = tree::snapshot();
            let mut roots: Vec<i32> = plugin.into_iter().collect();
            roots.extend(
                procs
                    .iter()
                    .filter(|p| p.ppid == me && Some(p.pid) != plugin && !p.is_zombie())
                    .filter(|p| tree::has_env(p.pid, &entry))
                    .map(|p| p.pid),
            );
            let mut found = tree::descendants(&procs, &roots);
            found.extend(roots.iter().filter(|p| Some(**p) != plugin));
            let fresh: Vec<i32> = found
                .into_iter()
                .filter(|p| !stopped.contains(p))
                .filter(|p| procs.iter().any(|q| q.pid == *p && !q.is_zombie()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                if let Some(p) = Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, Signal::STOP);
                }
                stopped.insert(pid);
            }
        }
        for pid in &stopped {
            if let Some(p) = Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        self.killed.lock().expect("container lock").extend(stopped);
    }

    /// Resolves when the kernel reports that the run went over a limit (an OOM kill in its
    /// cgroup, a fork the pids controller refused); never without a cgroup.
    pub(crate) async fn limit_exceeded(&self) -> LimitHit {
        let Some(cg) = &self.cgroup else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(hit) = self.cgroup_hit(cg) {
                return hit;
            }
        }
    }

    fn cgroup_hit(&self, cg: &Cgroup) -> Option<LimitHit> {
        if self.enforcement.memory == Enforcer::Cgroup && cg.oom_kills() > 0 {
            return Some(self.hit(
                LimitKind::Memory,
                "the kernel's out-of-memory killer stopped it",
            ));
        }
        if self.enforcement.processes == Enforcer::Cgroup && cg.fork_refusals() > 0 {
            return Some(self.hit(
                LimitKind::Processes,
                "a fork was refused, and the host stopped it",
            ));
        }
        None
    }

    fn hit(&self, kind: LimitKind, how: &'static str) -> LimitHit {
        LimitHit {
            kind,
            limit: self.limits.describe(kind),
            how,
        }
    }

    /// Whether a limit explains how the run ended: the cgroup's counters, or with rlimits, the
    /// plugin's last words about a failed allocation.
    pub(crate) fn explain(&self, exit: Option<ExitStatus>, tail: &[String]) -> Option<LimitHit> {
        if let Some(cg) = &self.cgroup
            && let Some(hit) = self.cgroup_hit(cg)
        {
            return Some(hit);
        }
        let normal = matches!(exit, Some(ExitStatus::Code(0)) | None);
        if self.enforcement.memory == Enforcer::Rlimit && !normal {
            const OUT_OF_MEMORY: [&str; 4] = [
                "memory allocation of",
                "MemoryError",
                "Cannot allocate memory",
                "out of memory",
            ];
            let said = tail
                .iter()
                .rev()
                .take(10)
                .any(|l| OUT_OF_MEMORY.iter().any(|m| l.contains(m)));
            if said {
                return Some(self.hit(LimitKind::Memory, "an allocation failed at its data limit"));
            }
        }
        None
    }

    /// Ends the run: kills whatever is left, waits for it to go, reaps what the host adopted,
    /// and removes the cgroup.
    pub(crate) async fn dispose(mut self) {
        self.kill_all();
        if let Some(cg) = &self.cgroup {
            cg.dispose(DISPOSE_TIMEOUT).await;
        }
        if self.kind == Containment::Subreaper {
            self.reap_adopted().await;
        }
        self.disposed = true;
    }

    /// Reaps the processes the subreaper fallback killed that are now the host's children, and
    /// the zombies of the plugin's own process group that came to the host with them.
    async fn reap_adopted(&self) {
        let me = std::process::id() as i32;
        let plugin = self.pid();
        let mut pending: HashSet<i32> = self.killed.lock().expect("container lock").clone();
        let deadline = tokio::time::Instant::now() + DISPOSE_TIMEOUT;
        let mut delay = Duration::from_millis(1);
        loop {
            if let Some(group) = plugin {
                pending.extend(
                    tree::snapshot()
                        .iter()
                        .filter(|p| {
                            p.ppid == me && p.pgrp == group && p.pid != group && p.is_zombie()
                        })
                        .map(|p| p.pid),
                );
            }
            pending.retain(|&pid| {
                let Some(p) = Pid::from_raw(pid) else {
                    return false;
                };
                match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG) {
                    Ok(Some(_)) => false,
                    Ok(None) => true,
                    // Not the host's child (its parent reaps it).
                    Err(_) => false,
                }
            });
            if pending.is_empty() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }
}
