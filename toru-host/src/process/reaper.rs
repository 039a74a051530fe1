//! The reaper: a tiny `/bin/sh` watchdog that kills every plugin process group if the host
//! dies without stopping them (SIGKILL, a crash, an abort).
//!
//! Each plugin already gets SIGKILL when the host dies (the parent-death signal), but anything
//! the plugin started itself would be orphaned. The reaper closes that gap: the host tells it
//! `add <pgid>` when it starts a plugin and `del <pgid>` once the group is gone. The host holds
//! the only write end of the reaper's stdin, so however the host ends, the kernel closes it and
//! the reaper reads end-of-file, SIGKILLs the groups still listed, and exits. It runs in its own
//! process group, so a terminal's Ctrl-C does not reach it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

const SCRIPT: &str = r#"
groups=" "
while read -r op pgid; do
  case "$op" in
    add) groups="$groups$pgid " ;;
    del) kept=" "; for g in $groups; do [ "$g" = "$pgid" ] || kept="$kept$g "; done; groups="$kept" ;;
  esac
done
for g in $groups; do kill -9 "-$g" 2>/dev/null; done
"#;

pub(crate) struct Reaper {
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Option<Child>>,
}

impl Reaper {
    /// Starts the watchdog. Without `/bin/sh` the host still runs, with the parent-death signal
    /// as its only guard; that is logged.
    pub(crate) fn start() -> Reaper {
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("toru-reaper")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut child) => Reaper {
                stdin: Mutex::new(child.stdin.take()),
                child: Mutex::new(Some(child)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the reaper; children of plugins may outlive a crashed host");
                Reaper {
                    stdin: Mutex::new(None),
                    child: Mutex::new(None),
                }
            }
        }
    }

    fn send(&self, line: &str) {
        let mut stdin = self.stdin.lock().expect("reaper lock");
        if let Some(pipe) = stdin.as_mut()
            && let Err(e) = pipe.write_all(line.as_bytes())
        {
            tracing::warn!(error = %e, "the reaper went away");
            *stdin = None;
        }
    }

    /// Registers a plugin's process group.
    pub(crate) fn add(&self, pgid: u32) {
        self.send(&format!("add {pgid}\n"));
    }

    /// Forgets a process group that is gone.
    pub(crate) fn remove(&self, pgid: u32) {
        self.send(&format!("del {pgid}\n"));
    }

    /// Ends the reaper after a clean shutdown (every group removed) and reaps it.
    pub(crate) async fn close(&self) {
        self.stdin.lock().expect("reaper lock").take();
        let child = self.child.lock().expect("reaper lock").take();
        if let Some(mut child) = child {
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kills_listed_groups_when_its_input_closes_and_spares_removed_ones() {
        let spawn_group = || {
            Command::new("sleep")
                .arg("1000")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let (mut doomed, mut spared) = (spawn_group(), spawn_group());
        let reaper = Reaper::start();
        reaper.add(doomed.id());
        reaper.add(spared.id());
        reaper.remove(spared.id());
        reaper.close().await;
        let status = tokio::task::spawn_blocking(move || doomed.wait().unwrap())
            .await
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(
            spared.try_wait().unwrap().is_none(),
            "a removed group was killed"
        );
        spared.kill().unwrap();
        spared.wait().unwrap();
    }
}
