//! The files on disk: the database and logs are private, an empty database is refused, a log
//! folder given explicitly must be writable, a config change that cannot be saved says why, and
//! config.json says the version the docs show.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde_json::Value;

use crate::util::{Env, SECRET, Server, server_bin, wait_file_contains};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `toru-server serve` with `args`, expecting it to refuse to start; its stderr.
async fn refused_start(args: &[String]) -> String {
    let out = tokio::time::timeout(
        crate::util::WAIT,
        tokio::process::Command::new(server_bin())
            .arg("serve")
            .args(args)
            .env("TORU_ADMIN_SECRET", SECRET)
            .output(),
    )
    .await
    .expect("toru-server exits")
    .unwrap();
    assert!(!out.status.success(), "toru-server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_database_and_logs_are_private_and_loose_ones_are_tightened() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    let r = server.post("/api/plugins/hello-rust/disable").await;
    assert_eq!(r.status(), 200);
    let db = env.data().join("toru.redb");
    let supervisor_log = env.logs().join("plugin-supervisor.log");
    let plugin_log = env.logs().join("plugins/hello-rust.log");
    let config = env.plugins().join(".metadata/config.json");
    wait_file_contains(&plugin_log, "hello").await;
    assert_eq!(mode(&db), 0o600, "toru.redb");
    assert_eq!(mode(&config), 0o600, "config.json");
    for log in [&supervisor_log, &plugin_log] {
        assert_eq!(
            mode(log) & !0o640,
            0,
            "{} is {:o}",
            log.display(),
            mode(log)
        );
    }
    let written: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        written["version"], 1,
        "the version docs/operations.md shows"
    );
    server.stop().await;

    // Files an older version (or an operator) left readable by everyone.
    for path in [&db, &supervisor_log, &plugin_log] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = Server::start(&env, &[]).await;
    server.plugin("hello-rust").await;
    let r = server.post("/api/plugins/hello-rust/enable").await;
    assert_eq!(r.status(), 200);
    server.wait_running(&["hello-rust"]).await;
    assert_eq!(mode(&db), 0o600);
    let log = wait_file_contains(
        &env.dir.path().join("server.log"),
        "the log file was readable by others; tightened its permissions",
    )
    .await;
    assert!(
        log.contains("the database was readable by others; tightened its permissions"),
        "{log}"
    );
    for log in [&supervisor_log, &plugin_log] {
        assert_eq!(mode(log), 0o640, "{}", log.display());
    }
    server.stop().await;
}

#[tokio::test]
async fn an_empty_database_is_refused_as_damaged_and_left_alone() {
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    let db = env.data().join("toru.redb");
    std::fs::write(&db, b"").unwrap();
    let stderr = refused_start(&env.args()).await;
    assert!(
        stderr.contains(&db.display().to_string()) && stderr.contains("the file is empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "the file was left alone"
    );
}

#[tokio::test]
async fn a_log_folder_given_explicitly_must_be_writable() {
    let env = Env::new();
    // Below a regular file: no folder can be made there, whoever runs the test.
    let file = env.dir.path().join("not-a-folder");
    std::fs::write(&file, b"").unwrap();
    let wanted = file.join("logs");
    let mut args = env.args();
    let at = args.iter().position(|a| a == "--log-dir").unwrap();
    args[at + 1] = wanted.to_string_lossy().into_owned();
    let stderr = refused_start(&args).await;
    assert!(
        stderr.contains(&wanted.display().to_string()) && stderr.contains("Not a directory"),
        "{stderr}"
    );
    assert!(!env.data().join("logs").exists(), "no fallback folder");
}

#[tokio::test]
async fn a_config_change_that_cannot_be_saved_says_why_and_changes_nothing() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    // A folder where config.json goes: the rename fails, even for root.
    let config = env.plugins().join(".metadata/config.json");
    let _ = std::fs::remove_file(&config);
    std::fs::create_dir_all(&config).unwrap();
    let r = server.post("/api/plugins/hello-rust/disable").await;
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "config_not_saved", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Is a directory"), "{message}");
    let info = server.plugin("hello-rust").await;
    assert_eq!(info["enabled"], true, "nothing changed: {info}");
    assert_eq!(info["state"], "running", "{info}");
    let log = wait_file_contains(
        &env.dir.path().join("server.log"),
        "cannot save a plugin change",
    )
    .await;
    assert!(
        log.contains("Is a directory"),
        "the log has the OS error: {log}"
    );
    server.stop().await;
}
