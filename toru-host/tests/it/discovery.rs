//! Finding plugins, and the ones that cannot be loaded (T1-T4).

use std::time::Duration;

use toru_host::EventKind;
use toru_host::{ManageError, PluginState, StartError};

use crate::util::*;

#[tokio::test]
async fn missing_plugins_folder_is_created_and_host_runs_empty() {
    let env = Env::new();
    assert!(!env.plugins().exists());
    let host = env.start().await;
    assert!(env.plugins().is_dir());
    assert!(host.list().is_empty());
    host.shutdown().await;
}

#[tokio::test]
async fn broken_files_are_listed_with_reasons_and_do_not_stop_the_others() {
    let env = Env::new();
    env.install_test_plugin("no-metadata", "silent");
    env.install_test_plugin("bad-metadata", "bad");
    env.install_test_plugin("metadata-fails", "failing");
    env.install_test_plugin("metadata-hangs", "hanging");
    env.install_test_plugin("serve", "good");
    // Same id as `good`, from another file.
    let dup = env.plugins().join("zz-dup.binary");
    std::fs::copy(env.plugins().join("good.binary"), &dup).unwrap();
    // Not executable.
    let plain = env.plugins().join("plain.binary");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    // A link that leaves the folder.
    std::os::unix::fs::symlink("/bin/true", env.plugins().join("outside.binary")).unwrap();
    // Not a .binary at all: ignored.
    std::fs::write(env.plugins().join("notes.txt"), "hi").unwrap();

    let mut b = env.builder();
    b.metadata_timeout(Duration::from_millis(500));
    let host = start_with(&b).await;
    let mut rx = host.subscribe();
    let reason = |id: &str| host.get(id).unwrap().load_error.unwrap_or_default();
    assert!(
        reason("silent.binary").contains("metadata"),
        "{}",
        reason("silent.binary")
    );
    assert!(
        reason("bad.binary").contains("not valid"),
        "{}",
        reason("bad.binary")
    );
    assert!(
        reason("failing.binary").contains("metadata is broken today"),
        "{}",
        reason("failing.binary")
    );
    assert!(
        reason("hanging.binary").contains("did not finish"),
        "{}",
        reason("hanging.binary")
    );
    assert!(
        reason("zz-dup.binary").contains("already used by good.binary"),
        "{}",
        reason("zz-dup.binary")
    );
    assert!(
        reason("plain.binary").contains("not executable"),
        "{}",
        reason("plain.binary")
    );
    assert!(
        reason("outside.binary").contains("outside the plugins folder"),
        "{}",
        reason("outside.binary")
    );
    assert!(host.get("notes.txt").is_err());
    for info in host.list() {
        if info.id != "good" {
            assert!(matches!(info.state, PluginState::Failed { .. }), "{info:?}");
        }
    }
    // The good one runs despite its neighbours.
    if host.get("good").unwrap().state != PluginState::Running {
        wait_event(&mut rx, "good", EventKind::Started).await;
    }
    let err = host.enable("bad.binary").await.unwrap_err();
    assert!(matches!(err, ManageError::NotLoadable { .. }), "{err}");
    host.shutdown().await;
}

#[tokio::test]
async fn corrupt_config_is_an_error_naming_the_file_and_is_not_overwritten() {
    let env = Env::new();
    let config = env.plugins().join(".metadata/config.json");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, b"{\"plugins\": [oops").unwrap();
    let err = env.builder().start().await.unwrap_err();
    assert!(matches!(err, StartError::Config(_)), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
    assert_eq!(std::fs::read(&config).unwrap(), b"{\"plugins\": [oops");
}

#[tokio::test]
async fn instance_id_is_a_uuid_v4_made_once_and_kept() {
    let env = Env::new();
    let host = env.start().await;
    let first = host.instance_id();
    assert_eq!(first.get_version_num(), 4);
    host.shutdown().await;
    let host = env.start().await;
    assert_eq!(host.instance_id(), first);
    host.shutdown().await;
}

#[tokio::test]
async fn rescan_picks_up_new_replaced_and_removed_files() {
    let env = Env::new();
    let mut b = env.builder();
    // Only the explicit rescans act here.
    b.watch_plugins(false)
        .rescan_interval(Duration::from_secs(3600));
    let host = start_with(&b).await;
    let mut rx = host.subscribe();
    let file = env.install_test_plugin("serve", "late");
    let report = host.rescan().await.unwrap();
    assert_eq!(report.discovered, ["late"], "{report:?}");
    wait_event(&mut rx, "late", EventKind::Started).await;
    let pid = pid_of(&host, "late");
    // An unchanged folder changes nothing.
    let report = host.rescan().await.unwrap();
    assert_eq!(report, toru_host::ScanReport::default());
    assert_eq!(pid_of(&host, "late"), pid);
    // A replaced file is an upgrade: the new version serves, the old process goes.
    env.install_test_plugin("serve-again", "late");
    let report = host.rescan().await.unwrap();
    assert_eq!(report.upgraded, ["late"], "{report:?}");
    wait_gone(pid).await;
    let info = host.get("late").unwrap();
    assert_eq!(info.metadata.unwrap().name, "Test serve-again");
    assert_eq!(info.state, PluginState::Running);
    let pid = info.pid.unwrap();
    // A removed file stops the plugin; it stays listed as missing.
    std::fs::remove_file(file).unwrap();
    let report = host.rescan().await.unwrap();
    assert_eq!(report.removed, ["late"], "{report:?}");
    wait_gone(pid).await;
    assert_eq!(host.get("late").unwrap().state, PluginState::Missing);
    host.shutdown().await;
}

#[tokio::test]
async fn a_relative_plugins_folder_works() {
    let env = Env::new();
    env.install_test_plugin("serve", "rel");
    // The same folder, named relative to the current directory.
    let cwd = std::env::current_dir().unwrap();
    let mut relative = std::path::PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.push(env.plugins().strip_prefix("/").unwrap());
    let mut b = env.builder();
    b.plugin_dir(&relative);
    let host = start_with(&b).await;
    serving(&host, &["rel"]).await;
    host.shutdown().await;
}

/// Files that cannot run, each with a reason that names the cause rather than what the system
/// says ("Exec format error", "No such file or directory" of a file that is there), and a
/// `--metadata` failure whose cause is not on its last line of stderr.
#[tokio::test]
async fn load_errors_name_the_cause() {
    let env = Env::new();
    env.install_file("no-shebang.binary", b"print('hello')\n");
    env.install_file("crlf-direct.binary", b"#!/bin/sh\r\necho '{}'\r\n");
    env.install_file("crlf-env.binary", b"#!/usr/bin/env sh\r\necho '{}'\r\n");
    env.install_file(
        "no-interpreter.binary",
        b"#!/usr/local/bin/no-such-python3 -u\nprint('hello')\n",
    );
    let mut noisy = String::from(
        "#!/bin/sh\necho 'loading plugin' >&2\necho 'Error: cannot find module ./toru-plugin.mjs' >&2\n",
    );
    for i in 0..20 {
        noisy.push_str(&format!("echo '    at frame {i}' >&2\n"));
    }
    noisy.push_str("echo 'Runtime v20.11.0' >&2\nexit 1\n");
    env.install_file("noisy.binary", noisy.as_bytes());

    let host = env.start().await;
    let reason = |id: &str| host.get(id).unwrap().load_error.unwrap_or_default();
    let cases = [
        ("no-shebang.binary", "a shebang line is missing"),
        ("crlf-direct.binary", "Windows (CRLF) line endings"),
        ("crlf-env.binary", "Windows (CRLF) line endings"),
        (
            "no-interpreter.binary",
            "names the interpreter /usr/local/bin/no-such-python3, which is not installed",
        ),
        (
            "noisy.binary",
            "Error: cannot find module ./toru-plugin.mjs",
        ),
        ("noisy.binary", "Runtime v20.11.0"),
    ];
    for (file, says) in cases {
        assert!(reason(file).contains(says), "{file}: {}", reason(file));
    }
    assert!(
        !reason("noisy.binary").contains("frame 3"),
        "{}",
        reason("noisy.binary")
    );
    host.shutdown().await;
}
