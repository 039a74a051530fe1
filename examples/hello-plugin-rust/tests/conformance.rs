//! One conformance suite, written once and run against every example plugin as real processes:
//! the Rust one, the Python one on the Python SDK, and the protocol 1 Python one.
//!
//! The suite plays the host over a real Unix socket: it spawns the plugin with
//! `TORU_SOCKET_PATH` pointing into a temp dir, connects, and checks the behaviour that
//! `docs/protocol.md` asks of every plugin, plus the example plugins' routes. Each check is its
//! own test per plugin: `rust::metadata`, `python::metadata`, and so on.

mod conformance {
    pub(crate) mod checks;
    pub(crate) mod host;
}

use std::path::PathBuf;

use conformance::checks;
use conformance::host::Target;
use toru_plugin_api::protocol::VersionRange;

fn rust() -> Target {
    Target {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_hello-plugin-rust")),
        id: "hello-rust",
        name: "Hello (Rust)",
        icon: "🦀",
        greeting: "Hello from Rust!",
        version: "0.1.0",
        protocol: VersionRange { min: 1, max: 1 },
    }
}

/// The Python example, on the Python SDK (`toru_plugin.py` beside it).
fn python() -> Target {
    Target {
        exe: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hello-plugin-python/hello-plugin-python.binary"
        )),
        id: "hello-python",
        name: "Hello (Python)",
        icon: "🐍",
        greeting: "Hello from Python!",
        version: "0.2.0",
        protocol: VersionRange { min: 1, max: 2 },
    }
}

/// The protocol 1 plugin in Python's standard library only, kept as it was written.
fn python_v1() -> Target {
    Target {
        exe: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hello-plugin-python-v1/hello-python-v1.binary"
        )),
        id: "hello-python-v1",
        name: "Hello (Python, protocol 1)",
        icon: "🐍",
        greeting: "Hello from Python!",
        version: "0.1.0",
        protocol: VersionRange { min: 1, max: 1 },
    }
}

/// For each plugin, a module with one `#[tokio::test]` per check.
macro_rules! conformance_tests {
    ([$($plugin:ident),+ $(,)?], $checks:tt) => {
        $( conformance_tests!(@plugin $plugin, $checks); )+
    };
    (@plugin $plugin:ident, [$($check:ident),+ $(,)?]) => {
        mod $plugin {
            $(
                #[tokio::test]
                async fn $check() {
                    super::checks::$check(&super::$plugin()).await;
                }
            )+
        }
    };
}

conformance_tests!(
    [rust, python, python_v1],
    [
        metadata,
        started_by_hand,
        init_ready,
        request_before_init,
        version_mismatch,
        greeting,
        echo,
        slow,
        method_not_allowed,
        not_found,
        kv_counter,
        kv_error,
        concurrent_requests,
        bundle,
        ping_during_slow_request,
        cancel,
        unknown_type,
        garbage_frame,
        oversized_frame,
        shutdown,
        eof,
    ]
);
