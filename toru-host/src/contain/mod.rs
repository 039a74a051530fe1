//! Containment: everything a plugin starts is stopped with it, and runs under its limits.
//!
//! The host picks one mechanism at start, the first of these it can use:
//!
//! 1. **cgroup v2**: a cgroup per plugin run under the host's own (delegated) cgroup. Every
//!    process of the plugin is in it, however it forks or detaches; `cgroup.kill` ends them
//!    all at once; memory, pids and cpu limits are the cgroup's.
//! 2. **cgroup v1**: the same, with one cgroup per controller the host can write (memory, pids,
//!    cpu), and the freezer to stop everything before killing it.
//! 3. **PID namespace**: the plugin runs as process 1 of a namespace of its own; when it ends,
//!    the kernel ends every process in the namespace. Limits are rlimits.
//! 4. **subreaper**: the host (and the plugin) become child subreapers, so the plugin's orphans
//!    stay in reach; what is left when the plugin ends is found through the process tree and a
//!    marker in its environment, and killed. Limits are rlimits.
//!
//! Without a v2 cgroup that offers controllers (a v1 or hybrid machine), v1 comes first: its
//! limits are worth more than v2's `cgroup.kill`.
//!
//! [`Containers`] is the host's side; it makes one [`Container`] per plugin run (and per
//! `--metadata` run), which the supervisor and discovery call: `prepare` the command, `started`,
//! `limit_exceeded` while it runs, `explain` an exit, and `dispose` when it is over.

mod cgroup;
mod container;
pub(crate) mod limits;
mod tree;

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::process::Resource;
use serde::Serialize;

use crate::process::Reaper;
use crate::process::child::{ChildSetup, PidNamespace};
use cgroup::{Tree, Version};
pub(crate) use container::Container;
use limits::{Enforcement, Enforcer, Limit, LimitKind, Limits};

/// How the host keeps a plugin's processes together (see the module docs for the order the host
/// tries them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Containment {
    /// A cgroup v2 per plugin.
    CgroupV2,
    /// A cgroup v1 per plugin and controller.
    CgroupV1,
    /// A PID namespace per plugin.
    PidNamespace,
    /// The host as child subreaper, finding what a plugin left behind.
    Subreaper,
}

impl Containment {
    /// The name used in the API, the logs and the server's flag (`cgroup-v1`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Containment::CgroupV2 => "cgroup-v2",
            Containment::CgroupV1 => "cgroup-v1",
            Containment::PidNamespace => "pid-namespace",
            Containment::Subreaper => "subreaper",
        }
    }
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Containment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Containment::CgroupV2,
            Containment::CgroupV1,
            Containment::PidNamespace,
            Containment::Subreaper,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a containment; use cgroup-v2, cgroup-v1, pid-namespace or subreaper"
            )
        })
    }
}

/// The environment variable that marks a subreaper-contained plugin's processes.
pub(super) const MARKER_VAR: &str = "TORU_CONTAINER";

/// The host's containment: the mechanism chosen at start, and what it needs.
#[derive(Debug)]
pub(crate) struct Containers {
    kind: Containment,
    cgroups: Option<Tree>,
    /// For [`Containment::PidNamespace`]: the user namespace maps, when one is needed.
    user_maps: Option<(Vec<u8>, Vec<u8>)>,
    /// This host's name in cgroup folders and markers.
    token: String,
    root: bool,
    runs: AtomicU64,
    defaults: Limits,
}

impl Containers {
    /// Chooses the first mechanism the host can use, starting at `prefer` (or at the best one),
    /// removes what a dead host left in the same cgroups, and tells the reaper what to empty if
    /// this host dies.
    pub(crate) async fn start(
        prefer: Option<Containment>,
        defaults: Limits,
        reaper: &Reaper,
    ) -> Containers {
        let token = cgroup::host_dir_name();
        let root = rustix::process::geteuid().is_root();
        let mut me = Containers {
            kind: Containment::Subreaper,
            cgroups: None,
            user_maps: None,
            token,
            root,
            runs: AtomicU64::new(0),
            defaults,
        };
        let from = prefer.unwrap_or(Containment::CgroupV2);
        let mut spare_v2 = None;
        if from <= Containment::CgroupV2 {
            match Tree::v2(&me.token) {
                // A v2 tree without controllers only beats v1 when asked for by name.
                Some(t) if !t.controllers.is_empty() || prefer == Some(Containment::CgroupV2) => {
                    me.kind = Containment::CgroupV2;
                    me.cgroups = Some(t);
                }
                other => spare_v2 = other,
            }
        }
        if me.cgroups.is_none()
            && from <= Containment::CgroupV1
            && let Some(t) = Tree::v1(&me.token)
        {
            me.kind = Containment::CgroupV1;
            me.cgroups = Some(t);
        }
        match (&me.cgroups, spare_v2) {
            (None, Some(t)) => {
                me.kind = Containment::CgroupV2;
                me.cgroups = Some(t);
            }
            (Some(_), Some(t)) => t.remove(),
            _ => {}
        }
        if me.cgroups.is_none()
            && from <= Containment::PidNamespace
            && let Some(maps) = probe_pid_namespace().await
        {
            me.kind = Containment::PidNamespace;
            me.user_maps = maps;
        }
        match (&me.cgroups, me.kind) {
            (Some(tree), _) => {
                tree.remove_stale();
                for root in &tree.roots {
                    reaper.watch_cgroup(
                        tree.version == Version::V2,
                        root.controller
                            .is_some_and(|c| c == cgroup::Controller::Freezer),
                        &root.dir,
                    );
                }
            }
            (None, Containment::Subreaper) => {
                if let Err(e) =
                    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                {
                    tracing::warn!(error = %e, "cannot become a child subreaper; a plugin's orphans can escape");
                }
                reaper.watch_marker(&format!("{MARKER_VAR}={}/", me.token));
            }
            _ => {}
        }
        let controllers: Vec<&str> = me
            .cgroups
            .iter()
            .flat_map(|t| LimitKind::ALL.into_iter().filter(|k| t.limits(*k)))
            .map(LimitKind::as_str)
            .collect();
        tracing::info!(containment = %me.kind, cgroup_limits = ?controllers, "plugin containment chosen");
        me
    }

    /// The mechanism in use.
    pub(crate) fn kind(&self) -> Containment {
        self.kind
    }

    /// The host's default limits (for runs of no plugin in particular, like `--metadata`).
    pub(crate) fn default_limits(&self) -> Limits {
        self.defaults
    }

    /// What would enforce each of `limits`.
    pub(crate) fn enforcement(&self, limits: &Limits) -> Enforcement {
        self.plan(limits, &[]).0
    }

    /// Decides how each limit is enforced: the cgroup where it can (minus `unset`, the limits
    /// it could not set), rlimits (and a nice value) otherwise.
    fn plan(
        &self,
        limits: &Limits,
        unset: &[LimitKind],
    ) -> (Enforcement, Vec<(Resource, u64)>, Option<i32>) {
        let by_cgroup = |k: LimitKind| {
            self.cgroups.as_ref().is_some_and(|t| t.limits(k)) && !unset.contains(&k)
        };
        let mut rlimits = Vec::new();
        let mut nice = None;
        let memory = match limits.memory {
            Limit::Unlimited => Enforcer::None,
            _ if by_cgroup(LimitKind::Memory) => Enforcer::Cgroup,
            Limit::At(bytes) => {
                // The data segment and private writable mappings: memory a process can use,
                // not address space it merely reserves (as RLIMIT_AS would count).
                rlimits.push((Resource::Data, bytes.0));
                Enforcer::Rlimit
            }
        };
        let processes = match limits.processes {
            Limit::Unlimited => Enforcer::None,
            _ if by_cgroup(LimitKind::Processes) => Enforcer::Cgroup,
            // RLIMIT_NPROC binds no root process, and counts every process of the user: it
            // is given as what the user runs now plus the plugin's share.
            Limit::At(_) if self.root => Enforcer::None,
            Limit::At(n) => {
                rlimits.push((Resource::Nproc, user_tasks().saturating_add(n)));
                Enforcer::Rlimit
            }
        };
        let open_files = match limits.open_files {
            Limit::Unlimited => Enforcer::None,
            Limit::At(n) => {
                let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
                let n = if self.root {
                    n
                } else {
                    hard.map_or(n, |h| n.min(h))
                };
                rlimits.push((Resource::Nofile, n));
                Enforcer::Rlimit
            }
        };
        let cpu = match limits.cpu {
            Limit::Unlimited => Enforcer::None,
            _ if by_cgroup(LimitKind::Cpu) => Enforcer::Cgroup,
            Limit::At(c) => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if c.cores() < cores as f64 {
                    nice = Some(10);
                    Enforcer::Nice
                } else {
                    Enforcer::None
                }
            }
        };
        (
            Enforcement {
                memory,
                processes,
                open_files,
                cpu,
            },
            rlimits,
            nice,
        )
    }

    /// Makes the container for one run of `name` (a plugin id, or `metadata`).
    ///
    /// # Errors
    /// When its cgroup cannot be made.
    pub(crate) fn create(&self, name: &str, limits: &Limits) -> io::Result<Container> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let label = format!("{name}.{run}");
        let (cgroup, unset) = match &self.cgroups {
            Some(tree) => {
                let (cg, unset) = tree.create(&label, limits)?;
                (Some(cg), unset)
            }
            None => (None, Vec::new()),
        };
        let (enforcement, rlimits, nice) = self.plan(limits, &unset);
        Ok(Container {
            kind: self.kind,
            limits: *limits,
            enforcement,
            cgroup,
            rlimits,
            nice,
            pid_namespace: (self.kind == Containment::PidNamespace).then(|| self.user_maps.clone()),
            marker: (self.kind == Containment::Subreaper)
                .then(|| format!("{}/{label}", self.token)),
            pid: Mutex::new(None),
            killed: Mutex::new(HashSet::new()),
            disposed: false,
        })
    }

    /// Removes the host's own cgroup folders (every plugin's is gone by then).
    pub(crate) fn close(&self) {
        if let Some(tree) = &self.cgroups {
            tree.remove();
        }
    }
}

/// Whether a PID namespace can be made: first as is (root), then with a user namespace. Returns
/// the user namespace's maps when one is needed.
async fn probe_pid_namespace() -> Option<Option<(Vec<u8>, Vec<u8>)>> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let maps = (
        format!("{uid} {uid} 1\n").into_bytes(),
        format!("{gid} {gid} 1\n").into_bytes(),
    );
    for user in [None, Some(maps)] {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "exit 0"])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        crate::process::child::configure(
            &mut cmd,
            ChildSetup {
                pid_namespace: Some(PidNamespace { user: user.clone() }),
                ..ChildSetup::default()
            },
        );
        let ran = match crate::process::spawner::spawn(cmd) {
            Ok(mut child) => tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_ok_and(|s| s.is_ok_and(|s| s.success())),
            Err(e) => {
                tracing::debug!(error = %e, user_namespace = user.is_some(), "cannot make a PID namespace");
                false
            }
        };
        if ran {
            return Some(user);
        }
    }
    None
}

/// How many tasks (processes and threads) the host's real user runs now.
fn user_tasks() -> u64 {
    let uid = rustix::process::getuid().as_raw().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                == Some(uid.as_str())
        })
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}
