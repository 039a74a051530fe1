//! Containment and limits with real processes: `setsid` daemons started by a plugin (and by its
//! `--metadata` run) end with it under every mechanism, however the plugin or the host ends; a
//! plugin over its memory or process limit is stopped and the crash says which limit, while
//! the host and other plugins serve on.
//!
//! Each mechanism is asked for by name. A machine that cannot offer one makes the host fall back
//! to the next; the test says so and skips it (this project's machines offer all four).

use std::process::Stdio;

use tokio::io::AsyncBufReadExt;
use toru_host::EventKind;
use toru_host::{
    Bytes, Containment, Enforcer, Limit, LimitKind, LimitOverrides, PluginHost, PluginRequest,
};

use crate::util::*;

/// The pid a `daemon` test plugin wrote to `<file>` in the plugins folder.
fn daemon_pid(env: &Env, file: &str) -> u32 {
    let path = env.plugins().join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// A host on `env` contained by `m`, or `None` (said on stderr) when this machine cannot.
async fn host_with(env: &Env, m: Containment) -> Option<PluginHost> {
    let host = env
        .builder()
        .containment(m)
        .start()
        .await
        .expect("host starts");
    if host.containment() != m {
        eprintln!(
            "skipping {m}: this machine does not offer it (the host chose {})",
            host.containment()
        );
        host.shutdown().await;
        return None;
    }
    Some(host)
}

fn sigkill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

/// Disable, a crash, and shutdown each take the plugin's `setsid` daemon with them; the daemon
/// its `--metadata` run started is gone as soon as that run is over.
async fn daemons_end_with_their_plugin(m: Containment) {
    let env = Env::new();
    env.install_test_plugin("daemon", "demon");
    let Some(host) = host_with(&env, m).await else {
        return;
    };
    serving(&host, &["demon"]).await;
    let info = host.get("demon").unwrap();
    assert_eq!(info.containment, Some(m), "{info:?}");
    wait_gone(daemon_pid(&env, "demon.meta-daemon-pid")).await;

    let daemon = daemon_pid(&env, "demon.daemon-pid");
    assert!(alive(daemon), "the daemon runs beside its plugin");
    host.disable("demon").await.unwrap();
    wait_gone(daemon).await;

    let mut rx = host.subscribe();
    host.enable("demon").await.unwrap();
    wait_event(&mut rx, "demon", EventKind::Started).await;
    let daemon = daemon_pid(&env, "demon.daemon-pid");
    assert!(alive(daemon));
    sigkill(pid_of(&host, "demon"));
    let crash = wait_event(&mut rx, "demon", EventKind::Crashed).await;
    assert_eq!(crash.limit, None, "{crash:?}");
    wait_gone(daemon).await;

    wait_event(&mut rx, "demon", EventKind::Started).await;
    let daemon = daemon_pid(&env, "demon.daemon-pid");
    assert!(alive(daemon));
    host.shutdown().await;
    wait_gone(daemon).await;
}

#[tokio::test]
async fn daemons_end_with_their_plugin_in_a_cgroup_v2() {
    daemons_end_with_their_plugin(Containment::CgroupV2).await;
}

#[tokio::test]
async fn daemons_end_with_their_plugin_in_a_cgroup_v1() {
    daemons_end_with_their_plugin(Containment::CgroupV1).await;
}

#[tokio::test]
async fn daemons_end_with_their_plugin_in_a_pid_namespace() {
    daemons_end_with_their_plugin(Containment::PidNamespace).await;
}

#[tokio::test]
async fn daemons_end_with_their_plugin_under_a_subreaper() {
    daemons_end_with_their_plugin(Containment::Subreaper).await;
}

/// A host killed with SIGKILL leaves no plugin and no daemon behind.
async fn a_killed_host_leaves_no_daemon(m: Containment) {
    let env = Env::new();
    env.install_test_plugin("daemon", "demon");
    env.install_test_plugin("spawn-child", "parent");
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_toru-test-host"))
        .arg(env.dir.path())
        .arg(m.as_str())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the test host did not get its plugins running")
        .unwrap()
        .expect("the test host exited early");
    let mut words = line.strip_prefix("ready ").expect(&line).split(' ');
    let chosen = words.next().unwrap();
    if chosen != m.as_str() {
        eprintln!("skipping {m}: this machine does not offer it (the host chose {chosen})");
        return;
    }
    let mut pids: Vec<u32> = words.map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{line}");
    wait_gone(daemon_pid(&env, "demon.meta-daemon-pid")).await;
    pids.push(daemon_pid(&env, "demon.daemon-pid"));
    pids.push(grandchild_pid(&env, "parent"));
    for pid in &pids {
        assert!(alive(*pid), "{pid} runs before the host is killed");
    }
    host.start_kill().unwrap();
    host.wait().await.unwrap();
    for pid in pids {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn a_killed_host_leaves_no_daemon_from_a_cgroup_v2() {
    a_killed_host_leaves_no_daemon(Containment::CgroupV2).await;
}

#[tokio::test]
async fn a_killed_host_leaves_no_daemon_from_a_cgroup_v1() {
    a_killed_host_leaves_no_daemon(Containment::CgroupV1).await;
}

#[tokio::test]
async fn a_killed_host_leaves_no_daemon_from_a_pid_namespace() {
    a_killed_host_leaves_no_daemon(Containment::PidNamespace).await;
}

#[tokio::test]
async fn a_killed_host_leaves_no_daemon_under_a_subreaper() {
    a_killed_host_leaves_no_daemon(Containment::Subreaper).await;
}

fn write_config(env: &Env, json: &str) {
    let dir = env.plugins().join(".metadata");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), json).unwrap();
}

/// A plugin that allocates without bound is stopped at its memory limit, with a crash that says
/// so; the host and another plugin serve on, and it is restarted.
async fn a_memory_hog_is_stopped_at_its_limit(m: Containment) {
    let env = Env::new();
    env.install_test_plugin("echo", "hog");
    env.install_test_plugin("echo", "calm");
    write_config(
        &env,
        r#"{"plugins": {"hog": {"limits": {"memory": "64MiB"}}}}"#,
    );
    let Some(host) = host_with(&env, m).await else {
        return;
    };
    serving(&host, &["hog", "calm"]).await;
    let info = host.get("hog").unwrap();
    assert_eq!(info.limits.memory, Limit::At(Bytes(64 << 20)), "{info:?}");
    let enforced = info.limits_enforced_by.unwrap().memory;
    let expected = match m {
        Containment::CgroupV1 => Enforcer::Cgroup,
        // Without a memory controller (this machine's v2 has none), an rlimit.
        Containment::CgroupV2 if enforced == Enforcer::Cgroup => Enforcer::Cgroup,
        _ => Enforcer::Rlimit,
    };
    assert_eq!(enforced, expected, "{info:?}");
    assert_eq!(
        host.get("calm").unwrap().limits.memory,
        host.default_limits().memory
    );

    let mut rx = host.subscribe();
    let hog = tokio::spawn({
        let host = host.clone();
        async move { host.request_by_path(&PluginRequest::get("/hog/hog")).await }
    });
    let crash = wait_event(&mut rx, "hog", EventKind::Crashed).await;
    let reason = crash.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("exceeded its memory limit of 64 MiB"),
        "{crash:?}"
    );
    assert_eq!(crash.limit, Some(LimitKind::Memory), "{crash:?}");
    assert!(hog.await.unwrap().is_err(), "the hog's request fails");
    let calm = host
        .request_by_path(&PluginRequest::get("/calm/still-here"))
        .await
        .expect("the other plugin serves on");
    assert_eq!(calm.status, 200);
    let info = host.get("hog").unwrap();
    // Shown until it runs again (the restart may be quick).
    assert!(
        info.last_error.as_deref() == Some(reason.as_str()) || info.state.serves(),
        "{info:?}"
    );
    wait_event(&mut rx, "hog", EventKind::Started).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_limit_in_a_cgroup_v1() {
    a_memory_hog_is_stopped_at_its_limit(Containment::CgroupV1).await;
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_limit_in_a_cgroup_v2() {
    a_memory_hog_is_stopped_at_its_limit(Containment::CgroupV2).await;
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_rlimit_in_a_pid_namespace() {
    a_memory_hog_is_stopped_at_its_limit(Containment::PidNamespace).await;
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_rlimit_under_a_subreaper() {
    a_memory_hog_is_stopped_at_its_limit(Containment::Subreaper).await;
}

/// A fork bomb is stopped at its process limit, where a cgroup enforces one (a root host's
/// rlimits cannot: RLIMIT_NPROC does not bind root, so the test never lets a bomb loose there).
#[tokio::test]
async fn a_fork_bomb_is_stopped_at_its_process_limit() {
    let env = Env::new();
    env.install_test_plugin("echo", "bomb");
    env.install_test_plugin("echo", "calm");
    write_config(
        &env,
        r#"{"plugins": {"bomb": {"limits": {"processes": 32}}}}"#,
    );
    let host = started(&env, &["bomb", "calm"]).await;
    let info = host.get("bomb").unwrap();
    if info.limits_enforced_by.unwrap().processes != Enforcer::Cgroup {
        eprintln!(
            "skipping: no pids controller here ({:?}), and a bomb must not run unbounded",
            info.containment
        );
        host.shutdown().await;
        return;
    }
    let mut rx = host.subscribe();
    let _ = host
        .request_by_path(&PluginRequest::get("/bomb/fork-bomb"))
        .await;
    let crash = wait_event(&mut rx, "bomb", EventKind::Crashed).await;
    assert!(
        crash
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("exceeded its process limit of 32")),
        "{crash:?}"
    );
    assert_eq!(crash.limit, Some(LimitKind::Processes));
    let calm = host
        .request_by_path(&PluginRequest::get("/calm/still-here"))
        .await
        .expect("the other plugin serves on");
    assert_eq!(calm.status, 200);
    host.shutdown().await;
}

/// `/proc/<pid>/limits`' line for `name`: (soft, hard).
fn proc_limit(pid: u32, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    let mut f = line[name.len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

/// The open-files limit holds: the plugin can open as many files as its limit and no more.
#[tokio::test]
async fn the_open_files_limit_holds() {
    let env = Env::new();
    env.install_test_plugin("echo", "files");
    write_config(
        &env,
        r#"{"plugins": {"files": {"limits": {"open_files": 64}}}}"#,
    );
    let host = started(&env, &["files"]).await;
    let info = host.get("files").unwrap();
    assert_eq!(
        info.limits_enforced_by.unwrap().open_files,
        Enforcer::Rlimit
    );
    let r = host
        .request_by_path(&PluginRequest::get("/files/open-files"))
        .await
        .unwrap();
    let open: u32 = String::from_utf8_lossy(&r.body).parse().unwrap();
    assert_eq!(open, 64, "it had exactly as many files open as its limit");
    host.shutdown().await;
}

/// The memory cgroup (v1) a process is in, as a folder.
fn memory_cgroup(pid: u32) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))?;
    Some(std::path::Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')))
}

/// The builder's defaults apply to every plugin; `config.json` overrides them per plugin, and
/// `set_limits` changes them (restarting the plugin, which then runs under the new ones).
#[tokio::test]
async fn limits_from_config_override_the_defaults_and_set_limits_applies_at_once() {
    let env = Env::new();
    env.install_test_plugin("echo", "tight");
    env.install_test_plugin("echo", "loose");
    write_config(
        &env,
        r#"{"plugins": {"tight": {"limits": {"open_files": 100, "memory": "96MiB"}}}}"#,
    );
    let defaults = toru_host::Limits::default()
        .with_open_files(Limit::At(200))
        .with_memory(Limit::At(Bytes(200 << 20)));
    let host = env
        .builder()
        .default_limits(defaults)
        .start()
        .await
        .unwrap();
    serving(&host, &["tight", "loose"]).await;
    let (tight, loose) = (pid_of(&host, "tight"), pid_of(&host, "loose"));
    assert_eq!(proc_limit(tight, "Max open files").0, "100");
    assert_eq!(proc_limit(loose, "Max open files").0, "200");
    let info = host.get("tight").unwrap();
    assert_eq!(info.limit_overrides.open_files, Some(Limit::At(100)));
    assert_eq!(info.limits.processes, defaults.processes);
    if let Some(dir) = memory_cgroup(tight).filter(|_| host.containment() == Containment::CgroupV1)
    {
        let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (96u64 << 20).to_string(), "{}", dir.display());
    }

    let mut rx = host.subscribe();
    let overrides = LimitOverrides::default().with_open_files(Some(Limit::At(50)));
    let info = host.set_limits("loose", overrides).await.unwrap();
    assert_eq!(info.limits.open_files, Limit::At(50));
    wait_event(&mut rx, "loose", EventKind::Started).await;
    let again = pid_of(&host, "loose");
    assert_ne!(again, loose, "a new process");
    assert_eq!(
        proc_limit(again, "Max open files"),
        ("50".into(), "50".into())
    );
    let config = std::fs::read_to_string(env.plugins().join(".metadata/config.json")).unwrap();
    assert!(config.contains("\"open_files\": 50"), "{config}");
    host.shutdown().await;
}

/// A limit in `config.json` that cannot be read stops the host from starting, naming the file.
#[tokio::test]
async fn a_bad_limit_in_config_is_an_error_naming_the_file() {
    let env = Env::new();
    write_config(
        &env,
        r#"{"plugins": {"x": {"limits": {"memory": "lots"}}}}"#,
    );
    let err = env.builder().start().await.unwrap_err();
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("config.json"), "{text}");
    assert!(text.contains("memory: \"lots\" is not a size"), "{text}");
}

/// Gives the tree at `path` to `uid`.
fn chown_all(path: &std::path::Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path(), uid);
        }
    }
}

/// A host run by an unprivileged user, who can write no cgroup, falls back to a PID namespace
/// (in a user namespace of its own) or, where user namespaces are off, to the subreaper; its
/// plugin's daemons still end with it, and it leaves nothing behind when killed.
#[tokio::test]
async fn an_unprivileged_host_contains_its_plugins_too() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: only root can start a host as another user");
        return;
    }
    const NOBODY: u32 = 65534;
    let env = Env::new();
    env.install_test_plugin("daemon", "demon");
    chown_all(env.dir.path(), NOBODY);
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_toru-test-host"))
        .arg(env.dir.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .env("HOME", env.dir.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the unprivileged host did not get its plugin running")
        .unwrap()
        .expect("the unprivileged host exited early");
    let mut words = line.strip_prefix("ready ").expect(&line).split(' ');
    let chosen = words.next().unwrap();
    eprintln!("an unprivileged host chose {chosen}");
    assert!(
        chosen == "pid-namespace" || chosen == "subreaper",
        "no cgroup is writable for nobody: {line}"
    );
    let plugin: u32 = words.next().unwrap().parse().unwrap();
    wait_gone(daemon_pid(&env, "demon.meta-daemon-pid")).await;
    let daemon = daemon_pid(&env, "demon.daemon-pid");
    assert!(alive(daemon));
    host.start_kill().unwrap();
    host.wait().await.unwrap();
    wait_gone(plugin).await;
    wait_gone(daemon).await;
}
