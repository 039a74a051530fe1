//! One conformance suite, written once and run against every example plugin as a real process.
//!
//! The suite plays the host over a real Unix socket: it spawns the plugin with
//! `TORU_SOCKET_PATH` pointing into a temp dir, connects, and checks the behaviour that
//! `docs/protocol.md` asks of every plugin, plus the example plugins' routes. Each check is its
//! own test per plugin: `rust::metadata`, `python::metadata`, `node::metadata`, and so on. The
//! suite's host offers only protocol 1, so it also proves that plugins speaking 1..=2 serve a
//! version 1 host.

mod conformance {
    pub(crate) mod checks;
    pub(crate) mod host;
}

use std::path::PathBuf;

use conformance::checks;
use conformance::host::Target;

fn rust() -> Target {
    Target {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_hello-plugin-rust")),
        id: "hello-rust",
        name: "Hello (Rust)",
        icon: "🦀",
        greeting: "Hello from Rust!",
    }
}

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
    }
}

/// Runs as the plugins folder holds it: the `.binary` with `toru-plugin.mjs` beside it.
fn node() -> Target {
    Target {
        exe: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hello-plugin-node/hello-plugin-node.binary"
        )),
        id: "hello-node",
        name: "Hello (Node)",
        icon: "🟢",
        greeting: "Hello from Node!",
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
    [rust, python, node],
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
