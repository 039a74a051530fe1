//! Runs the Node.js SDK's own tests (`sdk/node/test/*.test.mjs`, with `node --test`) from the
//! workspace test command, and fails with their output.
//!
//! Those tests play the host over a temp Unix socket and cover what the conformance suite does not
//! reach yet: protocol 2 (streamed bodies with credit both ways, server-sent events, WebSockets),
//! settings, KV paging, shutdown, hostile input, and the `examples/hello-plugin-node` plugin
//! installed under a `package.json`. When `node` is not on the `PATH`, Debian's `nodejs` is
//! installed with apt-get (the tests run as root in CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The oldest Node.js the SDK supports.
const NODE_MAJOR_MIN: u32 = 18;
/// Every SDK test file together finishes well within this on the 2-core machine.
const DEADLINE: Duration = Duration::from_secs(600);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `node --version`'s major number, or `None` when `node` does not run.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout);
    version
        .trim()
        .strip_prefix('v')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Makes sure a Node.js of at least [`NODE_MAJOR_MIN`] is on the `PATH`, installing Debian's
/// `nodejs` when there is none.
fn ensure_node() -> u32 {
    if let Some(major) = node_major() {
        return major;
    }
    eprintln!("node SDK tests: `node` is not on the PATH; installing Debian's nodejs");
    for args in [&["update"][..], &["install", "-y", "nodejs"][..]] {
        eprintln!("node SDK tests: apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!(
                "the Node SDK tests need Node.js {NODE_MAJOR_MIN} or later on the PATH, and \
                 `apt-get {}` could not install it ({other:?}); install Node.js and run again",
                args.join(" ")
            ),
        }
    }
    node_major().expect("apt-get installed nodejs, yet `node --version` does not run")
}

/// Runs `cmd` to its end, or kills it after `deadline`.
fn output_within(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait for node"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("node --test did not finish within {deadline:?}");
        }
    }
}

#[test]
fn node_sdk_tests_pass() {
    let major = ensure_node();
    assert!(
        major >= NODE_MAJOR_MIN,
        "the Node SDK needs Node.js {NODE_MAJOR_MIN} or later; `node` on the PATH is version {major}"
    );
    let root = workspace_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("sdk/node/test"))
        .expect("read sdk/node/test")
        .map(|entry| entry.expect("list sdk/node/test").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.mjs files in sdk/node/test");

    let mut cmd = Command::new("node");
    cmd.arg("--test");
    if major >= 20 {
        // TAP, whose summary lines read the same on every version (Node 18 prints only TAP).
        cmd.arg("--test-reporter=tap");
    }
    cmd.args(&files).current_dir(&root);
    let out = output_within(cmd, DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok());
    assert!(
        passed.is_some_and(|n| n > 0),
        "node --test ran no test:\n{stdout}"
    );
}
