//! The one place that needs `unsafe`: what a plugin's process does between fork and exec.
//!
//! Everything here runs in the forked child of a multi-threaded process, where only
//! async-signal-safe work is allowed: system calls on data prepared before the fork, no
//! allocation, no locks. [`ChildSetup`] is that data.

use std::os::fd::OwnedFd;

use rustix::process::{Resource, Rlimit, Signal};

/// What a plugin's process sets up for itself before it runs the plugin.
#[derive(Debug, Default)]
pub(crate) struct ChildSetup {
    /// `cgroup.procs` files, opened by the host: writing `0` moves the process into the cgroup.
    pub(crate) join: Vec<OwnedFd>,
    /// Resource limits, soft and hard alike.
    pub(crate) rlimits: Vec<(Resource, u64)>,
    /// A scheduling priority (nice value).
    pub(crate) nice: Option<i32>,
    /// Become a child subreaper: the plugin's orphaned descendants stay its own.
    pub(crate) subreaper: bool,
    /// Run the plugin as process 1 of a new PID namespace.
    pub(crate) pid_namespace: Option<PidNamespace>,
}

/// A new PID namespace, and for a host that is not root, the user namespace that allows it.
#[derive(Debug, Default)]
pub(crate) struct PidNamespace {
    /// `uid_map` and `gid_map` contents mapping the host's own ids to themselves.
    pub(crate) user: Option<(Vec<u8>, Vec<u8>)>,
}

/// Sets `cmd` up to do what `setup` says in the child, after making it receive SIGKILL when
/// the host dies, however the host ends.
///
/// Linux sends the parent-death signal when the *thread* that forked the child exits, so a
/// command set up here is started with [`spawner::spawn`](super::spawner::spawn), from a thread
/// that lives as long as the process, never with `Command::spawn` on a runtime thread that may
/// end while the plugin runs.
///
/// With a PID namespace, the forked child stays outside it as a *relay*: it forks the plugin
/// as the namespace's process 1, waits for it, and exits as it did. The relay is what the host
/// sees as the plugin's process; when the plugin ends, the kernel ends every process of the
/// namespace, and when the relay dies (the host's SIGKILL, or the host's own death), the plugin
/// gets SIGKILL, its own parent-death signal.
#[allow(unsafe_code)]
pub(crate) fn configure(cmd: &mut tokio::process::Command, setup: ChildSetup) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // work is allowed. It makes system calls only (prctl, getppid, write, setrlimit,
    // setpriority, unshare, open, pipe, poll, fork, sigprocmask, waitpid, kill, close_range,
    // _exit), on data built before the fork (`setup`), and builds an io::Error only from a raw
    // errno (no allocation). It forks only when asked for a PID namespace; then the relay branch
    // never returns into std's child code: it closes every descriptor and ends with `_exit`.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent(Some(parent))?;
            for fd in &setup.join {
                rustix::io::write(fd, b"0")?;
            }
            for &(resource, limit) in &setup.rlimits {
                rustix::process::setrlimit(
                    resource,
                    Rlimit {
                        current: Some(limit),
                        maximum: Some(limit),
                    },
                )?;
            }
            if let Some(nice) = setup.nice {
                rustix::process::setpriority_process(None, nice)?;
            }
            if setup.subreaper {
                rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
            }
            if let Some(ns) = &setup.pid_namespace {
                enter_pid_namespace(ns)?;
            }
            // Descriptors the host inherited without close-on-exec (a leaked or
            // socket-activation descriptor) are not the plugin's: they close at exec. A kernel
            // without CLOSE_RANGE_CLOEXEC (before 5.11) leaves them as they were.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}

/// Asks for SIGKILL when the parent dies; fails if `parent` is already gone (then no signal
/// will ever come). `None`: the parent is outside this PID namespace and cannot be named.
fn die_with_parent(parent: Option<rustix::process::Pid>) -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    if let Some(parent) = parent
        && rustix::process::getppid() != Some(parent)
    {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Unshares the PID namespace (and the user namespace, when not root) and forks: the child
/// returns and becomes the plugin, process 1 of the namespace; this process becomes the relay
/// and never returns.
#[allow(unsafe_code)]
fn enter_pid_namespace(ns: &PidNamespace) -> std::io::Result<()> {
    let mut flags = libc::CLONE_NEWPID;
    if ns.user.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: plain system calls on stack data, in a child about to exec (see `configure`).
    unsafe {
        if libc::unshare(flags) != 0 {
            return Err(last_error());
        }
        if let Some((uid_map, gid_map)) = &ns.user {
            write_proc(c"/proc/self/setgroups", b"deny")?;
            write_proc(c"/proc/self/uid_map", uid_map)?;
            write_proc(c"/proc/self/gid_map", gid_map)?;
        }
        // The plugin learns that the relay died before it could ask for its parent-death
        // signal from this pipe: the relay holds the only write end.
        let mut pipe = [0; 2];
        if libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(last_error());
        }
        // An ignored SIGCHLD would reap the plugin before the relay could wait for it.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        match libc::fork() {
            -1 => Err(last_error()),
            0 => {
                libc::close(pipe[1]);
                die_with_parent(None)?;
                let mut poll = libc::pollfd {
                    fd: pipe[0],
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut poll, 1, 0) != 0 {
                    // Readable or hung up: the relay is gone.
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                // The read end closes at exec.
                Ok(())
            }
            plugin => relay(plugin, pipe[1]),
        }
    }
}

/// Writes all of `data` to a `/proc` file.
#[allow(unsafe_code)]
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: open/write/close on a static path and a borrowed buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(last_error());
        }
        let written = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = last_error();
        libc::close(fd);
        if written != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// The relay: holds nothing of the host's, ignores the signals meant for the plugin, waits for
/// the plugin and exits as it did.
#[allow(unsafe_code)]
fn relay(plugin: libc::pid_t, keep: libc::c_int) -> ! {
    // SAFETY: system calls only, on stack data; the function never returns.
    unsafe {
        // Every signal but SIGKILL and SIGSTOP waits: SIGTERM sent to the process group is the
        // plugin's to handle, not the relay's to die of.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        // Nothing of the host's stays open here: not its sockets, not std's exec-error pipe
        // (whose end would keep the host's spawn waiting), not the plugin's output pipes.
        close_from(0, keep);
        let mut status = 0;
        loop {
            let r = libc::waitpid(plugin, &mut status, 0);
            if r == plugin {
                break;
            }
            if r == -1 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let sig = libc::WTERMSIG(status);
        // Die of the same signal, without a core dump of the host's image.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig)
    }
}

/// Closes every descriptor from `first` up, except `keep` (a pipe's end, so at least 3).
#[allow(unsafe_code)]
fn close_from(first: libc::c_int, keep: libc::c_int) {
    // SAFETY: close_range, or close in a loop where the kernel lacks it (before 5.9).
    unsafe {
        let ranges = [(first as u32, keep as u32 - 1), (keep as u32 + 1, u32::MAX)];
        for (lo, hi) in ranges {
            if lo > hi {
                continue;
            }
            if libc::syscall(libc::SYS_close_range, lo, hi, 0) != 0 {
                for fd in lo..hi.min(65_536) {
                    libc::close(fd as libc::c_int);
                }
            }
        }
    }
}
