//! The server under test: a real `toru-server` in a temp dir with the example plugins.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

/// The admin secret the server is started with.
pub(crate) const SECRET: &str = "browser-test-secret-4f1c9a";
/// The longest any one thing may take (a page element, a line of output).
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A `toru-server` in a temp dir with both example plugins installed and enabled.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    _dir: TempDir,
}

impl Server {
    pub(crate) fn start() -> Server {
        Server::start_with(&[])
    }

    /// Also installs, for each `(id, bundle)`, a copy of the Python example with that id and
    /// that frontend bundle.
    pub(crate) fn start_with(variants: &[(&str, &str)]) -> Server {
        Server::start_args(variants, &[])
    }

    /// As [`start_with`](Self::start_with), with more flags for the server.
    pub(crate) fn start_args(variants: &[(&str, &str)], flags: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("a temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(plugins.join(".metadata")).unwrap();
        install(&rust_plugin(), &plugins.join("hello-plugin-rust.binary"));
        let python = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/hello-plugin-python/hello-plugin-python.binary");
        install(&python, &plugins.join("hello-plugin-python.binary"));
        // The example imports the Python SDK from its own folder (the variants below too).
        std::fs::copy(
            python.with_file_name("toru_plugin.py"),
            plugins.join("toru_plugin.py"),
        )
        .unwrap();
        let mut enabled = serde_json::Map::new();
        for id in ["hello-rust", "hello-python"] {
            enabled.insert(id.into(), json!({"enabled": true}));
        }
        for (id, bundle) in variants {
            let file = plugins.join(format!("{id}.binary"));
            std::fs::write(&file, python_variant(&python, id, bundle)).unwrap();
            install(&file, &file);
            enabled.insert((*id).into(), json!({"enabled": true}));
        }
        let config = json!({"version": 1, "plugins": enabled});
        std::fs::write(plugins.join(".metadata/config.json"), config.to_string()).unwrap();

        let mut child = Command::new(env!("CARGO_BIN_EXE_toru-server"))
            .arg("--bind=127.0.0.1:0")
            .arg("--plugins-dir")
            .arg(&plugins)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .args(flags)
            .env("TORU_ADMIN_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("toru-server starts");
        forward("server", child.stderr.take().unwrap());
        let lines = lines("server", child.stdout.take().unwrap());
        let url = wait_line(&lines, "toru-server to print its address", |line| {
            let addr = line.strip_prefix("toru-server listening on ")?;
            Some(addr.trim().trim_end_matches('/').to_owned())
        });
        Server {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Server {
    /// Drops a copy of the Python example with id `id` into the plugins folder.
    pub(crate) fn drop_plugin(&self, id: &str) {
        let python = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/hello-plugin-python/hello-plugin-python.binary");
        let file = self
            ._dir
            .path()
            .join("plugins")
            .join(format!("{id}.binary"));
        std::fs::write(&file, python_variant(&python, id, "")).unwrap();
        install(&file, &file);
    }

    /// Drops a copy of the Python example with id `id` whose `SETTINGS` list is `settings` (a
    /// Python literal) into the plugins folder.
    pub(crate) fn drop_plugin_with_settings(&self, id: &str, settings: &str) {
        let python = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/hello-plugin-python/hello-plugin-python.binary");
        let source = python_variant(&python, id, "");
        let start = source.find("SETTINGS = [").expect("the example's SETTINGS");
        let end = start + source[start..].find("\n]\n").expect("the end of SETTINGS") + 3;
        let source = format!(
            "{}SETTINGS = {settings}\n{}",
            &source[..start],
            &source[end..]
        );
        let file = self
            ._dir
            .path()
            .join("plugins")
            .join(format!("{id}.binary"));
        std::fs::write(&file, source).unwrap();
        install(&file, &file);
    }

    /// Removes plugin file `<id>.binary` from the plugins folder.
    pub(crate) fn remove_plugin(&self, id: &str) {
        let file = self
            ._dir
            .path()
            .join("plugins")
            .join(format!("{id}.binary"));
        std::fs::remove_file(file).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the server stops every plugin before it exits.
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

/// The Rust example plugin, next to `toru-server` (e.g. `target/debug/`); built there first
/// when it is missing (`cargo test -p toru-server` alone does not build it).
fn rust_plugin() -> PathBuf {
    toru_test_support::workspace_binary("hello-plugin-rust", "hello-plugin-rust")
}

/// The Python example's source with another id, route, name and frontend bundle.
fn python_variant(example: &Path, id: &str, bundle: &str) -> String {
    let source = std::fs::read_to_string(example).unwrap();
    let (head, rest) = source
        .split_once("BUNDLE = r\"\"\"")
        .expect("the example's BUNDLE");
    let (_, tail) = rest.split_once("\"\"\"").expect("the end of BUNDLE");
    let head = head
        .replace(
            r#"PLUGIN_ID = "hello-python""#,
            &format!("PLUGIN_ID = {id:?}"),
        )
        .replace(r#"ROUTE = "/hello-python""#, &format!("ROUTE = \"/{id}\""))
        .replace(
            r#""name": "Hello (Python)""#,
            &format!(r#""name": "Test {id}""#),
        );
    assert!(
        head.contains(&format!("PLUGIN_ID = {id:?}")),
        "the example's PLUGIN_ID line moved"
    );
    format!("{head}BUNDLE = r\"\"\"{bundle}\"\"\"{tail}")
}

fn install(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if from != to {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Sends each line of `stream` to the returned channel, echoing it to the test's output.
pub(crate) fn lines(
    name: &'static str,
    stream: impl Read + Send + 'static,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

pub(crate) fn forward(name: &'static str, stream: impl Read + Send + 'static) {
    let rx = lines(name, stream);
    std::thread::spawn(move || while rx.recv().is_ok() {});
}

pub(crate) fn wait_line<T>(
    rx: &mpsc::Receiver<String>,
    what: &str,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(found) = pick(&line) {
                    return found;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("output ended before {what}"),
        }
    }
}
