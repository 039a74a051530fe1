//! Cgroups: finding the host's own cgroup (v2, or v1 per controller), making one cgroup per
//! plugin run under it, writing limits, reading what the kernel counted, killing everything in
//! one, and removing it.
//!
//! The layout is the same in both versions, under the host's own cgroup:
//! `<own>/toru/h<host pid>-<host start time>-<n>/<plugin id>.<run>`. The `h...` folder names the host
//! that made it, so that the next host removes what a host killed with SIGKILL left behind, and
//! never touches a live host's.

mod group;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use group::Cgroup;

use super::limits::{LimitKind, Limits};

/// Which cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// The controllers the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Pids,
    Cpu,
    /// v1 only: freezing a cgroup before killing it, so that nothing forks meanwhile.
    Freezer,
}

impl Controller {
    const ALL: [Controller; 4] = [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::Freezer,
    ];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Freezer => "freezer",
        }
    }
}

/// A folder of the host's under one hierarchy: v2 has one (`controller` is `None`), v1 one per
/// controller.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    pub(crate) controller: Option<Controller>,
    /// `<own>/toru/h<pid>-<start>`.
    pub(crate) dir: PathBuf,
}

/// Where this host makes its plugins' cgroups.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) version: Version,
    pub(crate) roots: Vec<Root>,
    /// The controllers with which limits can be set.
    pub(crate) controllers: Vec<Controller>,
}

/// A fresh name for one host's folder: the process's pid and start time (which together name
/// one process), and a count of the hosts this process started.
pub(crate) fn host_dir_name() -> String {
    static HOSTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let pid = std::process::id();
    let n = HOSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("h{pid}-{}-{n}", start_time(pid).unwrap_or(0))
}

/// A process's start time (clock ticks since boot), from `/proc/<pid>/stat`.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the fields after the parenthesised name start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// One mount of a cgroup file system.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The folder of the mount's root within the hierarchy.
    root: String,
    point: PathBuf,
    /// `None` for cgroup2; the controllers (and `name=`) for v1.
    options: Option<Vec<String>>,
}

/// The cgroup mounts in `/proc/self/mountinfo`.
fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let superopts = right.next().unwrap_or("");
            let root = unescape(left.get(3)?);
            let point = PathBuf::from(unescape(left.get(4)?));
            match fstype {
                "cgroup2" => Some(Mount {
                    root,
                    point,
                    options: None,
                }),
                "cgroup" => Some(Mount {
                    root,
                    point,
                    options: Some(superopts.split(',').map(str::to_owned).collect()),
                }),
                _ => None,
            }
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The process's cgroup in the v2 hierarchy, and per v1 controller, from `/proc/self/cgroup`.
fn own_paths(cgroup: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctls.is_empty() {
            v2 = Some(path.to_owned());
        } else {
            for c in ctls.split(',') {
                v1.push((c.to_owned(), path.to_owned()));
            }
        }
    }
    (v2, v1)
}

/// `path` (a cgroup path) as a folder under `mount`, when the mount shows it.
fn under(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())?
    };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|p| p == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rel)
    })
}

/// The host's own v2 cgroup folder, if cgroup2 is mounted.
fn own_v2(mountinfo: &str, cgroup: &str) -> Option<PathBuf> {
    let (path, _) = own_paths(cgroup);
    let path = path?;
    mounts(mountinfo)
        .iter()
        .filter(|m| m.options.is_none())
        .find_map(|m| under(m, &path))
}

/// The host's own v1 cgroup folder of each controller that is mounted.
fn own_v1(mountinfo: &str, cgroup: &str) -> Vec<(Controller, PathBuf)> {
    let (_, paths) = own_paths(cgroup);
    let mounts = mounts(mountinfo);
    Controller::ALL
        .iter()
        .filter_map(|&c| {
            let path = &paths.iter().find(|(name, _)| name == c.name())?.1;
            let dir = mounts.iter().find_map(|m| {
                m.options
                    .as_ref()
                    .filter(|o| o.iter().any(|o| o == c.name()))
                    .and_then(|_| under(m, path))
            })?;
            Some((c, dir))
        })
        .collect()
}

fn read_proc(name: &str) -> String {
    std::fs::read_to_string(name).unwrap_or_default()
}

/// Makes `dir` and its parents; a folder that exists is fine.
fn make_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    // cgroup files take one write of the whole value.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(value.as_bytes())
}

impl Tree {
    /// The v2 tree under the host's own cgroup, if the host can make cgroups there. Enables the
    /// memory, pids and cpu controllers for it where the host's cgroup offers them, moving the
    /// host into a leaf `host` cgroup first when that is what stands in the way (a systemd
    /// service with `Delegate=yes`, whose cgroup holds only the host).
    pub(crate) fn v2(name: &str) -> Option<Tree> {
        let own = own_v2(
            &read_proc("/proc/self/mountinfo"),
            &read_proc("/proc/self/cgroup"),
        )?;
        let base = own.join("toru");
        if let Err(e) = make_dir(&base) {
            tracing::debug!(dir = %base.display(), error = %e, "cannot make a v2 cgroup");
            return None;
        }
        let dir = base.join(name);
        if let Err(e) = make_dir(&dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot make a v2 cgroup");
            return None;
        }
        let wanted = [Controller::Memory, Controller::Pids, Controller::Cpu];
        let mut controllers = Vec::new();
        for c in wanted {
            if enable_v2(&own, c) && enable_v2(&base, c) && enable_v2(&dir, c) {
                controllers.push(c);
            }
        }
        Some(Tree {
            version: Version::V2,
            roots: vec![Root {
                controller: None,
                dir,
            }],
            controllers,
        })
    }

    /// The v1 tree: a folder under the host's own cgroup of each controller it can write.
    pub(crate) fn v1(name: &str) -> Option<Tree> {
        let own = own_v1(
            &read_proc("/proc/self/mountinfo"),
            &read_proc("/proc/self/cgroup"),
        );
        let mut roots = Vec::new();
        for (c, own_dir) in own {
            let dir = own_dir.join("toru").join(name);
            match make_dir(&dir) {
                Ok(()) => roots.push(Root {
                    controller: Some(c),
                    dir,
                }),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot make a v1 cgroup")
                }
            }
        }
        // Something must track the processes: any one hierarchy does.
        if roots.is_empty() {
            return None;
        }
        let controllers = roots.iter().filter_map(|r| r.controller).collect();
        Some(Tree {
            version: Version::V1,
            roots,
            controllers,
        })
    }

    /// Whether limits of `kind` can be set with a cgroup.
    pub(crate) fn limits(&self, kind: LimitKind) -> bool {
        let needed = match kind {
            LimitKind::Memory => Controller::Memory,
            LimitKind::Processes => Controller::Pids,
            LimitKind::Cpu => Controller::Cpu,
            _ => return false,
        };
        self.controllers.contains(&needed)
    }

    /// Kills and removes what dead hosts left under the same `toru` folders (a host killed with
    /// SIGKILL whose watchdog could not finish). A live host's folder is never touched.
    pub(crate) fn remove_stale(&self) {
        for root in &self.roots {
            let Some(base) = root.dir.parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !entry.path().is_dir() || !is_dead_host(&name) {
                    continue;
                }
                let host = entry.path();
                let cgroups: Vec<PathBuf> = std::fs::read_dir(&host)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect();
                for dir in &cgroups {
                    let cg = Cgroup {
                        version: self.version,
                        dirs: vec![(root.controller, dir.clone())],
                    };
                    cg.kill_all();
                    // A process just killed takes a moment to leave: try again briefly.
                    for _ in 0..50 {
                        match std::fs::remove_dir(dir) {
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            _ => break,
                        }
                    }
                }
                match std::fs::remove_dir(&host) {
                    Ok(()) => {
                        tracing::info!(cgroup = %host.display(), "removed the cgroup a stopped host left behind")
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %host.display(), error = %e, "cannot remove the cgroup a stopped host left behind")
                    }
                }
            }
        }
    }

    /// Makes the cgroup for one plugin run and sets its limits. Returns it, and the limits it
    /// could not set (to be enforced another way).
    pub(crate) fn create(
        &self,
        name: &str,
        limits: &Limits,
    ) -> io::Result<(Cgroup, Vec<LimitKind>)> {
        let mut dirs = Vec::new();
        for root in &self.roots {
            let dir = root.dir.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    let made = Cgroup {
                        version: self.version,
                        dirs,
                    };
                    made.remove();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot make cgroup {}: {e}", dir.display()),
                    ));
                }
            }
            dirs.push((root.controller, dir));
        }
        let cgroup = Cgroup {
            version: self.version,
            dirs,
        };
        let mut unset = Vec::new();
        for kind in LimitKind::ALL {
            if kind == LimitKind::OpenFiles || !self.limits(kind) {
                continue;
            }
            if let Err(e) = cgroup.set_limit(kind, limits) {
                tracing::warn!(cgroup = %name, limit = %kind, error = %e, "cannot set a cgroup limit; using an rlimit instead");
                unset.push(kind);
            }
        }
        Ok((cgroup, unset))
    }

    /// Removes this host's folders (each plugin's cgroup is gone by then), and the `toru`
    /// folder above them once no other host uses it.
    pub(crate) fn remove(&self) {
        for root in &self.roots {
            if let Err(e) = std::fs::remove_dir(&root.dir) {
                tracing::debug!(cgroup = %root.dir.display(), error = %e, "cannot remove the host's cgroup");
            }
            if let Some(base) = root.dir.parent() {
                let _ = std::fs::remove_dir(base);
            }
        }
    }
}

/// Enables `c` for the children of `dir` (v2). A host whose own cgroup holds only itself moves
/// into a leaf first, since a v2 cgroup with processes cannot give its children controllers.
fn enable_v2(dir: &Path, c: Controller) -> bool {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    if !available.split_whitespace().any(|n| n == c.name()) {
        return false;
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    if enabled.split_whitespace().any(|n| n == c.name()) {
        return true;
    }
    let control = dir.join("cgroup.subtree_control");
    match write_file(&control, &format!("+{}", c.name())) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let me = std::process::id().to_string();
            if procs.split_whitespace().all(|p| p == me) {
                let leaf = dir.join("host");
                let moved =
                    make_dir(&leaf).and_then(|()| write_file(&leaf.join("cgroup.procs"), &me));
                match moved {
                    Ok(()) => {
                        tracing::info!(cgroup = %leaf.display(), "moved the host into a leaf cgroup, so that its plugins' cgroups can have controllers");
                        write_file(&control, &format!("+{}", c.name())).is_ok()
                    }
                    Err(_) => false,
                }
            } else {
                false
            }
        }
        Err(_) => false,
    }
}

/// Whether a host folder's name (`h<pid>-<start>`) names a process that is gone.
fn is_dead_host(name: &str) -> bool {
    let mut parts = name.strip_prefix('h').unwrap_or("").split('-');
    let (Some(pid), Some(start), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) != Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
26 24 0:24 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
27 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
28 24 0:26 /docker/abc /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
29 30 0:27 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
";

    const CGROUP: &str = "\
6:pids:/docker/abc/inner
4:memory:/process_api/x
3:cpu,cpuacct:/
0::/user.slice/toru.service
";

    #[test]
    fn own_cgroups_are_found_through_their_mounts() {
        assert_eq!(
            own_v2(MOUNTINFO, CGROUP),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/user.slice/toru.service"
            ))
        );
        let v1 = own_v1(MOUNTINFO, CGROUP);
        assert_eq!(
            v1,
            vec![
                (
                    Controller::Memory,
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/x")
                ),
                (Controller::Pids, PathBuf::from("/sys/fs/cgroup/pids/inner")),
                (Controller::Cpu, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
            ]
        );
        assert_eq!(unescape("a\\040b"), "a b");
    }

    #[test]
    fn a_path_outside_the_mount_root_is_not_shown() {
        let m = Mount {
            root: "/docker/abc".into(),
            point: "/sys/fs/cgroup/pids".into(),
            options: Some(vec!["pids".into()]),
        };
        assert_eq!(under(&m, "/elsewhere"), None);
        assert_eq!(under(&m, "/docker/abc/../x"), None);
    }

    #[test]
    fn only_dead_hosts_folders_are_stale() {
        let me = std::process::id();
        assert!(!is_dead_host(&host_dir_name()));
        assert!(
            is_dead_host(&format!("h{me}-1-0")),
            "same pid, another start time"
        );
        assert!(is_dead_host("h4194304-5-0"));
        assert!(!is_dead_host("h4194304-5"));
        assert!(!is_dead_host("not-a-host"));
    }

    /// What a host killed with SIGKILL left (its watchdog killed too): a cgroup with a process
    /// in it, under a host folder whose process is gone. The next host empties and removes it,
    /// and leaves a live host's alone.
    #[tokio::test]
    async fn a_dead_hosts_cgroups_are_emptied_and_removed_by_the_next_host() {
        let dead = "h4194304-1-0";
        let Some((stale, live)) = Tree::v1(dead)
            .map(|t| (t, Tree::v1(&host_dir_name())))
            .or_else(|| Tree::v2(dead).map(|t| (t, Tree::v2(&host_dir_name()))))
        else {
            eprintln!("skipping: this machine offers no writable cgroup");
            return;
        };
        let live = live.expect("a second tree where the first was made");
        let (cg, _) = stale.create("left.0", &Limits::default()).unwrap();
        let (mine, _) = live.create("mine.0", &Limits::default()).unwrap();
        let mut victim = tokio::process::Command::new("sleep")
            .arg("1000")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = victim.id().unwrap().to_string();
        for (_, dir) in &cg.dirs {
            write_file(&dir.join("cgroup.procs"), &pid).unwrap();
        }
        live.remove_stale();
        let status = tokio::time::timeout(Duration::from_secs(10), victim.wait())
            .await
            .expect("the process left in the stale cgroup was killed")
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        for root in &stale.roots {
            assert!(!root.dir.exists(), "{} is removed", root.dir.display());
        }
        for (_, dir) in &mine.dirs {
            assert!(
                dir.exists(),
                "a live host's cgroup {} is kept",
                dir.display()
            );
        }
        assert!(mine.remove());
        live.remove();
    }
}
