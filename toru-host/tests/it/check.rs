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
        ("garbage", "request", "went away"),
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
