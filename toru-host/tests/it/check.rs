//! The plugin checker on the examples and on broken plugins.

use toru_host::check_plugin;

use crate::util::*;

#[tokio::test]
async fn the_examples_pass_every_step() {
    let env = Env::new();
    for file in [env.install_rust_example(), env.install_python_example()] {
        let report = check_plugin(&file).await;
        assert!(report.passed(), "{report}");
        let names: Vec<_> = report.steps.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["file", "metadata", "start", "request", "bundle", "shutdown"]
        );
    }
}

#[tokio::test]
async fn broken_plugins_fail_at_the_right_step_with_the_reason() {
    let env = Env::new();
    for (mode, step, reason) in [
        ("bad-metadata", "metadata", "not valid"),
        ("exit-at-once", "start", "exit code 1"),
        ("exit78", "start", "license key refused"),
        (
            "garbage",
            "request",
            "went away before answering: plugin broke the protocol",
        ),
        ("bad-status", "request", "invalid HTTP status 1000"),
    ] {
        let file = env.install_test_plugin(mode, mode);
        let report = check_plugin(&file).await;
        assert!(!report.passed(), "{report}");
        let failed = report.failure().unwrap();
        assert_eq!(failed.name, step, "{mode}: {report}");
        assert!(failed.detail.contains(reason), "{mode}: {report}");
        assert!(report.to_string().contains("not a valid Toru plugin"));
    }
    let missing = check_plugin(&env.plugins().join("nope.binary")).await;
    assert_eq!(missing.failure().unwrap().name, "file");
}

/// The plugin runs where it is: in its own folder, under what is above it (a Node.js plugin's
/// `package.json`), whatever its file's name; nothing is written beside it.
#[tokio::test]
async fn the_plugin_runs_where_it_is() {
    let env = Env::new();
    let inner = env.plugins().join("vendor");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(env.plugins().join("above.txt"), "here").unwrap();
    let script = format!(
        "#!/bin/sh\n[ -f ../above.txt ] || {{ echo \"error: ../above.txt is not there; run from $(pwd)\" >&2; exit 1; }}\n{}",
        test_plugin_script("serve", "placed", &[]).trim_start_matches("#!/bin/sh\n")
    );
    let file = inner.join("placed.sh");
    std::fs::write(&file, script).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another plugin beside it is not run.
    env.install_test_plugin("exit-at-once", "neighbour");
    std::fs::rename(
        env.plugins().join("neighbour.binary"),
        inner.join("neighbour.binary"),
    )
    .unwrap();

    let report = check_plugin(&file).await;
    assert!(report.passed(), "{report}");
    assert!(
        report.steps[0]
            .detail
            .contains(&format!("in {}", inner.canonicalize().unwrap().display())),
        "{report}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&inner)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["neighbour.binary", "placed.sh"],
        "nothing written beside it"
    );
}
