//! The one place that needs `unsafe`: code that runs in the forked child before `exec`.

/// Makes the child receive SIGKILL when the host dies, however the host ends.
///
/// Linux sends the signal when the *thread* that forked the child exits, so plugins must be
/// spawned from the async runtime's worker threads (which live as long as the runtime), never
/// from a `spawn_blocking` thread that may be retired while the plugin runs.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // work is allowed. It makes two system calls (prctl, getppid) through rustix, which neither
    // allocates nor takes locks, and builds an io::Error only from a raw errno (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The host may have died between fork and prctl; then no signal will ever come.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc_esrch()));
            }
            Ok(())
        });
    }
}

const fn libc_esrch() -> i32 {
    3 // ESRCH on Linux
}
