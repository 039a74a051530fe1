//! The reaper: a tiny `/bin/sh` watchdog that kills every plugin process if the host dies
//! without stopping them (SIGKILL, a crash, an abort).
//!
//! Each plugin already gets SIGKILL when the host dies (the parent-death signal), but anything
//! the plugin started itself would be orphaned. The reaper closes that gap: the host tells it
//! `add <pgid>` when it starts a plugin and `del <pgid>` once the group is gone, and at start,
//! where its plugins' processes are kept: `cg2 <dir>` or `cg1 <dir>` (`fz <dir>` for the v1
//! freezer) for the host's cgroup folders, whose every cgroup it empties and removes, or
//! `mark <NAME=prefix>` for the subreaper fallback, whose marked processes it kills. The host
//! holds the only write end of the reaper's stdin, so however the host ends, the kernel closes
//! it and the reaper reads end-of-file, kills what is listed, and exits. It runs in its own
//! process group, so a terminal's Ctrl-C does not reach it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

const SCRIPT: &str = r#"
groups=" "
cgs=""
mark=""
nl='
'
while read -r op arg; do
  case "$op" in
    add) groups="$groups$arg " ;;
    del) kept=" "; for g in $groups; do [ "$g" = "$arg" ] || kept="$kept$g "; done; groups="$kept" ;;
    cg2|cg1|fz) cgs="$cgs$op $arg$nl" ;;
    mark) mark="$arg" ;;
  esac
done
for g in $groups; do kill -9 "-$g" 2>/dev/null; done
each() {
  printf %s "$cgs" | while read -r kind dir; do
    for d in "$dir"/*/; do [ -d "$d" ] && "$@" "$kind" "$d"; done
  done 2>/dev/null
}
freeze() { [ "$2" = fz ] && echo "$1" > "$3freezer.state"; }
empty() {
  [ "$1" = cg2 ] && echo 1 > "$2cgroup.kill"
  for p in $(cat "$2cgroup.procs"); do kill -9 "$p"; done
}
each freeze FROZEN
each empty
each freeze THAWED
each empty
if [ -n "$mark" ]; then
  for round in 1 2 3; do
    for e in /proc/[0-9]*/environ; do
      if tr '\0' '\n' < "$e" 2>/dev/null | grep -q "^$mark"; then
        p=${e#/proc/}; kill -9 "${p%/environ}" 2>/dev/null
      fi
    done
  done
fi
remove() {
  n=0
  while [ -d "$2" ] && ! rmdir "$2" 2>/dev/null && [ $n -lt 100 ]; do
    n=$((n + 1)); empty "$1" "$2"; sleep 0.02
  done
}
each remove
printf %s "$cgs" | while read -r kind dir; do rmdir "$dir" 2>/dev/null; done
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

    /// Empties and removes every cgroup in `dir`, and `dir` itself, if the host dies: a v2 folder,
    /// or one of a v1 hierarchy (`freezer` for the v1 freezer's, which is frozen first).
    pub(crate) fn watch_cgroup(&self, v2: bool, freezer: bool, dir: &std::path::Path) {
        let op = match (v2, freezer) {
            (true, _) => "cg2",
            (false, true) => "fz",
            (false, false) => "cg1",
        };
        self.send(&format!("{op} {}\n", dir.display()));
    }

    /// Kills every process whose environment has an entry starting with `prefix`, if the host
    /// dies.
    pub(crate) fn watch_marker(&self, prefix: &str) {
        self.send(&format!("mark {prefix}\n"));
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
