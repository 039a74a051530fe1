//! Runs the example as a user would, against both example plugins.

use std::path::{Path, PathBuf};

fn target_bin(name: &str) -> PathBuf {
    toru_test_support::workspace_binary(name, name)
}

#[test]
fn embeds_both_examples_forwards_reads_kv_and_shuts_down() {
    let dir = tempfile::Builder::new()
        .prefix("eh")
        .tempdir_in("/tmp")
        .unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        target_bin("hello-plugin-rust"),
        plugins.join("hello-rust.binary"),
    )
    .unwrap();
    // The Python example is its script plus the SDK module beside it.
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hello-plugin-python");
    std::fs::copy(
        python.join("hello-plugin-python.binary"),
        plugins.join("hello-python.binary"),
    )
    .unwrap();
    std::fs::copy(
        python.join("toru_plugin.py"),
        plugins.join("toru_plugin.py"),
    )
    .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_embed-host"))
        .arg(&plugins)
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["hello-rust", "hello-python"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains("-> 200"), "{line}");
        assert!(line.contains("kv counter = 1"), "{line}");
    }
    assert!(stdout.trim_end().ends_with("shut down"), "{stdout}");
}
