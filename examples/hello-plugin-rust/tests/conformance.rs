//! One conformance suite, written once and run against every example plugin as a real process:
//! the Rust one, the Python one on the Python SDK, the Node.js one on the Node.js SDK, and the
//! protocol 1 Python one written with the standard library only.
//!
//! The suite plays the host over a real Unix socket (`conformance/host.rs`, with its socket and
//! stderr tasks in `conformance/io.rs`): it spawns the
//! plugin with `TORU_SOCKET_PATH` pointing into a temp dir, connects, offers protocol 1..=2 in
//! `init`, and checks what `docs/protocol.md` asks of every plugin, plus the example plugins'
//! routes. In protocol 2 it sends request bodies as data frames within the plugin's credit,
//! gives credit for what it reads, and fails a check when the plugin sends past the window it
//! was given.
//!
//! The checks come in groups, one module each:
//!
//! | group | checks | routes it needs |
//! |---|---|---|
//! | `common` | start-up, versions (a version 1 host included), requests, KV, cancel, bad input, shutdown | `/`, `/count`, `/echo`, `/slow`, the bundle |
//! | `ticks` | server-sent events: the first event before the end, cancel, shutdown | `GET /ticks` |
//! | `ws` | WebSocket echo, fragments, flow control both ways, close both ways, shutdown (1001) | `GET /ws` |
//! | `bytes` | a streamed download: exact bytes, waiting for credit, cancel stops the producer | `GET /bytes?n=N` |
//! | `sha256` | a streamed upload, credited as the plugin reads it | `POST /sha256` |
//! | `settings` | a `greeting` setting from `init`, and applied live from a `settings` message | `GET /` greets with it |
//!
//! Each plugin runs `common` and the groups it implements; every check becomes its own test,
//! named `plugin::group::check` (`cargo test -p hello-plugin-rust --test conformance python::`).
//!
//! # Adding a plugin
//!
//! 1. Write a function returning its [`Target`]: the executable (a path in the repository, or
//!    `env!("CARGO_BIN_EXE_...")` for a binary of this package), the id, name, icon and greeting
//!    its metadata and `GET /` must show, and the protocol range its metadata states.
//! 2. Add a line `name: [common, group, ...]` to `conformance_tests!` below, with the groups it
//!    implements.
//!
//! A new group is a module under `conformance/` with `pub(crate) async fn check(t: &Target)`
//! functions, and an arm in the macro listing them.

mod conformance {
    pub(crate) mod bytes;
    pub(crate) mod common;
    pub(crate) mod host;
    pub(crate) mod io;
    pub(crate) mod settings;
    pub(crate) mod sha256;
    pub(crate) mod ticks;
    pub(crate) mod ws;
}

use std::path::PathBuf;

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
        protocol: VersionRange { min: 1, max: 2 },
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
        version: "0.1.0",
        protocol: VersionRange { min: 1, max: 2 },
    }
}

/// For each plugin, a module per group with one `#[tokio::test]` per check.
macro_rules! conformance_tests {
    ($($plugin:ident: [$($group:ident),+ $(,)?]),+ $(,)?) => {
        $(
            mod $plugin {
                $( conformance_tests!(@group $plugin $group); )+
            }
        )+
    };
    (@group $plugin:ident common) => {
        conformance_tests!(@checks $plugin common [
            metadata,
            started_by_hand,
            init_ready,
            protocol_1_host,
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
        ]);
    };
    (@group $plugin:ident ticks) => {
        conformance_tests!(@checks $plugin ticks [
            ticks_count_from_one,
            ticks_cancel,
            ticks_end_at_shutdown,
        ]);
    };
    (@group $plugin:ident ws) => {
        conformance_tests!(@checks $plugin ws [
            ws_echo,
            ws_fragments,
            ws_larger_than_the_window,
            ws_client_closes,
            ws_cancel,
            ws_closed_at_shutdown,
            ws_needs_an_upgrade,
        ]);
    };
    (@group $plugin:ident bytes) => {
        conformance_tests!(@checks $plugin bytes [
            bytes_exact,
            bytes_wait_for_credit,
            bytes_cancel_stops_the_producer,
            bytes_on_protocol_1,
        ]);
    };
    (@group $plugin:ident sha256) => {
        conformance_tests!(@checks $plugin sha256 [
            sha256_of_uploads,
            sha256_credits_as_it_reads,
            sha256_on_protocol_1,
        ]);
    };
    (@group $plugin:ident settings) => {
        conformance_tests!(@checks $plugin settings [
            settings_declared,
            settings_from_init,
            settings_applied_live,
        ]);
    };
    (@checks $plugin:ident $group:ident [$($check:ident),+ $(,)?]) => {
        mod $group {
            $(
                #[tokio::test]
                async fn $check() {
                    crate::conformance::$group::$check(&crate::$plugin()).await;
                }
            )+
        }
    };
}

conformance_tests! {
    rust: [common, ticks, ws, bytes, sha256, settings],
    python: [common, ticks, ws, bytes, sha256, settings],
    node: [common, ticks, ws, bytes, sha256, settings],
    python_v1: [common],
}

/// The smallest complete Python plugin, as `docs/plugin-guide.md` shows it: extracted from the
/// page, installed with the SDK module beside it in a temp plugins folder, and run for real with
/// the suite playing its host.
mod python_guide_plugin {
    use std::path::Path;

    use serde_json::{Value, json};
    use toru_plugin_api::protocol::VersionRange;

    use super::conformance::host::{Plugin, Target};

    const MARKER: &str = "<!-- the smallest plugin: extracted and run by \
                          examples/hello-plugin-rust/tests/conformance.rs -->";
    const MOST_LINES: usize = 20;

    fn repo() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
    }

    /// The ```` ```python ```` block right after the marker.
    fn guide_plugin() -> String {
        let guide = std::fs::read_to_string(repo().join("docs/plugin-guide.md"))
            .expect("read docs/plugin-guide.md");
        let after = guide
            .split_once(MARKER)
            .expect("the plugin guide marks its smallest Python plugin")
            .1;
        let block = after
            .trim_start()
            .strip_prefix("```python\n")
            .expect("a ```python block right after the marker");
        block[..block.find("\n```").expect("the end of the block") + 1].to_owned()
    }

    async fn call(plugin: &mut Plugin, method: &str, path: &str) -> (u16, Value) {
        let id = plugin.http(method, path, "");
        let res = plugin.response(id).await;
        (res.status, serde_json::from_slice(&res.body).expect("JSON"))
    }

    #[tokio::test]
    async fn runs_and_counts() {
        use std::os::unix::fs::PermissionsExt as _;
        let source = guide_plugin();
        let lines = source.lines().count();
        assert!(
            lines <= MOST_LINES,
            "the guide's smallest plugin has {lines} lines; the promise is {MOST_LINES}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let exe = plugins.join("counter.binary");
        std::fs::write(&exe, &source).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(
            repo().join("sdk/python/toru_plugin.py"),
            plugins.join("toru_plugin.py"),
        )
        .unwrap();

        let target = Target {
            exe,
            id: "counter",
            name: "Counter",
            icon: "",
            greeting: "",
            version: "0.1.0",
            protocol: VersionRange { min: 1, max: 2 },
        };
        let out = target.command().arg("--metadata").output().await.unwrap();
        let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
        assert_eq!(
            (&meta["id"], &meta["route"], &meta["protocol"]),
            (
                &json!("counter"),
                &json!("/counter"),
                &json!({"min": 1, "max": 2})
            )
        );

        let mut plugin = Plugin::ready(&target).await;
        assert_eq!(
            call(&mut plugin, "GET", "/counter/").await,
            (200, json!({"count": 0}))
        );
        for n in 1..=3 {
            assert_eq!(
                call(&mut plugin, "POST", "/counter/count").await,
                (200, json!({"count": n}))
            );
            assert_eq!(
                plugin.log().await.message.as_str(),
                format!("count is now {n}")
            );
        }
        assert_eq!(
            call(&mut plugin, "GET", "/counter").await,
            (200, json!({"count": 3}))
        );
        assert_eq!(
            plugin
                .kv
                .lock()
                .unwrap()
                .map
                .get("count")
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(call(&mut plugin, "GET", "/counter/count").await.0, 405);
    }
}
