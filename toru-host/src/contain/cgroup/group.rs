//! One plugin run's cgroup: its limits, what the kernel counted in it, killing everything in
//! it, and removing it.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Controller, Version, write_file};
use crate::contain::limits::{Limit, LimitKind, Limits};

/// One plugin run's cgroup (one folder in v2, one per controller in v1).
#[derive(Debug)]
pub(crate) struct Cgroup {
    pub(super) version: Version,
    pub(super) dirs: Vec<(Option<Controller>, PathBuf)>,
}

/// A counter in a flat keyed file (`oom_kill 3`).
fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

impl Cgroup {
    /// The folder of controller `c` (v2: the one folder).
    fn dir(&self, c: Controller) -> Option<&Path> {
        match self.version {
            Version::V2 => self.dirs.first().map(|(_, d)| d.as_path()),
            Version::V1 => self
                .dirs
                .iter()
                .find(|(ctl, _)| *ctl == Some(c))
                .map(|(_, d)| d.as_path()),
        }
    }

    /// The folder whose `cgroup.procs` lists the processes (any one does).
    fn any_dir(&self) -> Option<&Path> {
        self.dir(Controller::Freezer)
            .or_else(|| self.dir(Controller::Pids))
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()))
    }

    pub(super) fn set_limit(&self, kind: LimitKind, limits: &Limits) -> io::Result<()> {
        let missing = || io::Error::from(io::ErrorKind::NotFound);
        match (kind, self.version) {
            (LimitKind::Memory, Version::V2) => {
                let dir = self.dir(Controller::Memory).ok_or_else(missing)?;
                let max = limits
                    .memory
                    .value()
                    .map_or("max".into(), |b| b.0.to_string());
                write_file(&dir.join("memory.max"), &max)?;
                // The limit is memory, not memory plus swap; and going over it ends the whole
                // plugin rather than one process of it.
                let _ = write_file(&dir.join("memory.swap.max"), "0");
                let _ = write_file(&dir.join("memory.oom.group"), "1");
                Ok(())
            }
            (LimitKind::Memory, Version::V1) => {
                let dir = self.dir(Controller::Memory).ok_or_else(missing)?;
                let max = limits
                    .memory
                    .value()
                    .map_or("-1".into(), |b| b.0.to_string());
                write_file(&dir.join("memory.limit_in_bytes"), &max)?;
                let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), &max);
                Ok(())
            }
            (LimitKind::Processes, _) => {
                let dir = self.dir(Controller::Pids).ok_or_else(missing)?;
                let max = limits
                    .processes
                    .value()
                    .map_or("max".into(), |n| n.to_string());
                write_file(&dir.join("pids.max"), &max)
            }
            (LimitKind::Cpu, Version::V2) => {
                let dir = self.dir(Controller::Cpu).ok_or_else(missing)?;
                let max = match limits.cpu {
                    Limit::Unlimited => "max 100000".to_owned(),
                    Limit::At(c) => format!("{} 100000", u64::from(c.millicores()) * 100),
                };
                write_file(&dir.join("cpu.max"), &max)
            }
            (LimitKind::Cpu, Version::V1) => {
                let dir = self.dir(Controller::Cpu).ok_or_else(missing)?;
                write_file(&dir.join("cpu.cfs_period_us"), "100000")?;
                let quota = match limits.cpu {
                    Limit::Unlimited => "-1".to_owned(),
                    Limit::At(c) => (u64::from(c.millicores()) * 100).to_string(),
                };
                write_file(&dir.join("cpu.cfs_quota_us"), &quota)
            }
            (LimitKind::OpenFiles, _) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }

    /// The `cgroup.procs` files a new process writes `0` to, to join this cgroup before it
    /// runs the plugin, opened now (the child cannot allocate a path).
    pub(crate) fn procs_files(&self) -> io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .map(|(_, d)| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .map(OwnedFd::from)
            })
            .collect()
    }

    /// How many processes the kernel's OOM killer ended in this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        match (self.version, self.dir(Controller::Memory)) {
            (Version::V2, Some(d)) => counter(&d.join("memory.events"), "oom_kill"),
            (Version::V1, Some(d)) => counter(&d.join("memory.oom_control"), "oom_kill"),
            _ => 0,
        }
    }

    /// How many forks the pids controller refused.
    pub(crate) fn fork_refusals(&self) -> u64 {
        self.dir(Controller::Pids)
            .map_or(0, |d| counter(&d.join("pids.events"), "max"))
    }

    /// The processes in the cgroup.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.any_dir()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the cgroup: v2 with `cgroup.kill`; otherwise frozen first where
    /// a freezer is available, so that nothing forks between reading the list and the kill
    /// (a frozen process dies of its SIGKILL as it is thawed). Rounds go on while processes
    /// not yet signalled turn up.
    pub(crate) fn kill_all(&self) {
        if self.version == Version::V2
            && let Some(dir) = self.dirs.first().map(|(_, d)| d)
            && write_file(&dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        let freezer = match self.version {
            Version::V1 => self
                .dir(Controller::Freezer)
                .map(|d| (d.join("freezer.state"), "FROZEN", "THAWED")),
            Version::V2 => self
                .dirs
                .first()
                .map(|(_, d)| (d.join("cgroup.freeze"), "1", "0")),
        };
        let mut signalled = std::collections::HashSet::new();
        for _ in 0..100 {
            if let Some((file, frozen, _)) = &freezer {
                let _ = write_file(file, frozen);
            }
            let mut fresh = false;
            for pid in self.pids() {
                fresh |= signalled.insert(pid);
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            if let Some((file, _, thawed)) = &freezer {
                let _ = write_file(file, thawed);
            }
            if !fresh {
                break;
            }
        }
    }

    /// Removes the cgroup's folders; one that still has a process is left (and logged).
    pub(crate) fn remove(&self) -> bool {
        let mut all = true;
        for (_, dir) in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => all = false,
            }
        }
        all
    }

    /// Kills everything in the cgroup, waits until it is empty (up to `timeout`), and removes it.
    pub(crate) async fn dispose(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(1);
        loop {
            self.kill_all();
            if self.remove() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(cgroup = ?self.dirs, pids = ?self.pids(), "a plugin's cgroup still has processes; it is left in place and removed at the next start");
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_flat_keyed_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), 1);
        assert_eq!(counter(&file, "max"), 7);
        assert_eq!(counter(&file, "missing"), 0);
        let cg = Cgroup {
            version: Version::V2,
            dirs: vec![(None, dir.path().to_owned())],
        };
        assert_eq!(cg.oom_kills(), 1);
    }

    #[test]
    fn v2_limits_are_written_in_the_kernel_formats() {
        // A folder standing in for a v2 cgroup: the files exist, as the kernel's do.
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "memory.max",
            "memory.swap.max",
            "memory.oom.group",
            "pids.max",
            "cpu.max",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let cg = Cgroup {
            version: Version::V2,
            dirs: vec![(None, dir.path().to_owned())],
        };
        let limits = Limits {
            memory: Limits::parse_memory("128MiB").unwrap(),
            processes: Limit::At(16),
            open_files: Limit::At(64),
            cpu: Limits::parse_cpu("50%").unwrap(),
        };
        for kind in [LimitKind::Memory, LimitKind::Processes, LimitKind::Cpu] {
            cg.set_limit(kind, &limits).unwrap();
        }
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "134217728");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("pids.max"), "16");
        assert_eq!(read("cpu.max"), "50000 100000");
        let unlimited = Limits {
            memory: Limit::Unlimited,
            processes: Limit::Unlimited,
            open_files: Limit::Unlimited,
            cpu: Limit::Unlimited,
        };
        for kind in [LimitKind::Memory, LimitKind::Processes, LimitKind::Cpu] {
            cg.set_limit(kind, &unlimited).unwrap();
        }
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("pids.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
    }
}
