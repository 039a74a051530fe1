//! One conformance suite, written once and run against every example plugin as real processes:
//! the Rust one, the Python one on the Python SDK, and the protocol 1 Python one.
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
    [rust, python, python_v1, node],
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

/// The smallest complete Python plugin, as `docs/plugin-guide.md` shows it: extracted from the
/// page, installed with the SDK module beside it in a temp plugins folder, and run for real with
/// the suite playing its host.
mod python_guide_plugin {
    use std::path::Path;

    use serde_json::{Value, json};
    use toru_plugin_api::protocol::{Payload, VersionRange};

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
        let reply = plugin.reply(Some(id)).await;
        let Payload::HttpResponse(res) = &reply.payload else {
            panic!("expected http_response, got {reply:?}");
        };
        let body = res.body.as_deref().expect("a JSON body");
        (res.status, serde_json::from_str(body).expect("JSON"))
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
