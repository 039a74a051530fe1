//! `toru-server check-plugin <file>`: passes the examples, fails a broken plugin with its reason.

use std::path::Path;

use crate::util::{Env, python_example, server_bin, workspace_binary};

async fn check(file: &Path) -> (bool, String) {
    let out = tokio::process::Command::new(server_bin())
        .arg("check-plugin")
        .arg(file)
        .output()
        .await
        .expect("run check-plugin");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

#[tokio::test]
async fn check_plugin_passes_both_examples() {
    let rust = workspace_binary("hello-plugin-rust", "hello-plugin-rust");
    for file in [rust, python_example()] {
        let (ok, out) = check(&file).await;
        assert!(ok, "{} should pass:\n{out}", file.display());
        assert!(out.contains("it is a valid Toru plugin"), "{out}");
        for step in ["metadata", "start", "request", "bundle", "shutdown"] {
            assert!(
                out.lines()
                    .any(|l| l.trim_start().starts_with("ok") && l.contains(step)),
                "step {step} passed:\n{out}"
            );
        }
    }
}

#[tokio::test]
async fn check_plugin_fails_broken_plugins_with_the_reason() {
    let env = Env::new();
    let crashes = env.install_test_plugin("exit-at-once", "crashy");
    let (ok, out) = check(&crashes).await;
    assert!(!ok, "a plugin that exits at start fails:\n{out}");
    assert!(out.contains("FAIL") && out.contains("start"), "{out}");
    assert!(out.contains("exit code 1"), "the reason: {out}");

    let bad = env.install_test_plugin("bad-metadata", "bad");
    let (ok, out) = check(&bad).await;
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL") && out.contains("metadata"), "{out}");
    assert!(out.contains("not a valid Toru plugin"), "{out}");

    let (ok, out) = check(&env.dir.path().join("missing.binary")).await;
    assert!(!ok, "{out}");
    assert!(out.contains("cannot read"), "{out}");
}

#[tokio::test]
async fn check_plugin_names_the_cause() {
    let env = Env::new();
    let cases = [
        (
            env.install_file("no-shebang.binary", b"print('hello')\n"),
            "a shebang line is missing",
        ),
        (
            env.install_file("crlf.binary", b"#!/usr/bin/env python3\r\nprint('{}')\r\n"),
            "Windows (CRLF) line endings",
        ),
        (
            env.install_test_plugin("bad-status", "status"),
            "went away before answering: plugin broke the protocol: plugin sent an invalid HTTP status 1000",
        ),
    ];
    for (file, says) in cases {
        let (ok, out) = check(&file).await;
        assert!(!ok, "{out}");
        assert!(out.contains(says), "{}: {out}", file.display());
    }
}

#[tokio::test]
async fn check_plugin_help_lists_only_its_own_flags() {
    let out = tokio::process::Command::new(server_bin())
        .args(["check-plugin", "--help"])
        .output()
        .await
        .expect("run check-plugin --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("<FILE>"), "{help}");
    assert!(
        !help.contains("--bind") && !help.contains("--plugins-dir"),
        "{help}"
    );
}
