//! Runs the Python SDK's own tests (`sdk/python/tests`, stdlib `unittest`) from the workspace's
//! test command. They play the host in Python over a socket pair or a real socket, and cover what
//! the conformance suite does not check yet: protocol 2 streams, credit, server-sent events and
//! WebSockets, settings, and the examples `hello-plugin-python` and `protocol-python/minimal-v2`.

use std::path::Path;
use std::time::Duration;

/// Far more than the suite takes (about 20 s on a shared 2-core machine).
const LIMIT: Duration = Duration::from_secs(600);

#[tokio::test]
async fn python_sdk_unittests() {
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let run = tokio::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "sdk/python/tests"])
        .current_dir(repo)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("the Python SDK's tests took longer than {LIMIT:?}"))
        .expect("run python3 (Python 3.9 or newer must be on the PATH)");
    assert!(
        out.status.success(),
        "the Python SDK's tests failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
