//! Fixtures: a temp dir per test, plugin files installed in it, and waiting on host events.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use toru_host::{EventKind, EventQuery, PluginEvent};
use toru_host::{HealthPolicy, PluginHost, PluginHostBuilder, RestartPolicy};

pub const WAIT: Duration = Duration::from_secs(20);

/// One test's folders: plugins, data, logs and sockets all inside one temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        // Short paths: socket paths must stay under ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("th")
            .tempdir_in("/tmp")
            .expect("temp dir");
        Env { dir }
    }

    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// A builder on this env's folders with fast restarts and no pings during a test.
    pub fn builder(&self) -> PluginHostBuilder {
        let mut b = PluginHost::builder();
        b.plugin_dir(self.plugins())
            .data_dir(self.data())
            .log_dir(self.logs())
            .socket_dir(self.dir.path())
            .start_timeout(Duration::from_secs(10))
            .stop_grace(Duration::from_secs(2))
            .restart_policy(fast_restarts())
            .health_policy(HealthPolicy::default().with_interval(Duration::from_secs(3600)));
        b
    }

    /// Starts a host on this env and waits for its first scan of the plugins folder.
    pub async fn start(&self) -> PluginHost {
        start_with(&self.builder()).await
    }

    pub fn install_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        std::fs::create_dir_all(self.plugins()).unwrap();
        let path = self.plugins().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Installs `toru-test-plugin <mode> <id>` as `<id>.binary`.
    pub fn install_test_plugin(&self, mode: &str, id: &str) -> PathBuf {
        self.install_test_plugin_with(mode, id, &[])
    }

    /// Installs `toru-test-plugin <mode> <id>` as `<id>.binary`, run with `env` set and with
    /// `TORU_TEST_DIR` naming the plugins folder (where the test plugin writes its files).
    pub fn install_test_plugin_with(&self, mode: &str, id: &str, env: &[(&str, &str)]) -> PathBuf {
        let dir = self.plugins().display().to_string();
        let mut env = env.to_vec();
        env.push(("TORU_TEST_DIR", &dir));
        self.install_file(
            &format!("{id}.binary"),
            test_plugin_script(mode, id, &env).as_bytes(),
        )
    }

    /// Replaces plugin file `name` as a package manager would: the new contents are written
    /// beside it under another name, then renamed over it.
    pub fn replace_atomically(&self, name: &str, contents: &[u8]) {
        let tmp = self.plugins().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.plugins().join(name)).unwrap();
    }

    /// Overwrites plugin file `name` in place, as `cp new old` does.
    pub fn overwrite(&self, name: &str, contents: &[u8]) {
        std::fs::write(self.plugins().join(name), contents).unwrap();
    }

    /// Installs `toru-test-plugin <mode> <id>` as `<id>.binary`, telling `notify` about every
    /// `cancel` and `ws_close` it gets.
    pub fn install_notifying_plugin(&self, mode: &str, id: &str, notify: &Notices) -> PathBuf {
        let bin = env!("CARGO_BIN_EXE_toru-test-plugin");
        let script = format!(
            "#!/bin/sh\nexec '{bin}' {mode} {id} --notify='{}' \"$@\"\n",
            notify.path.display()
        );
        self.install_file(&format!("{id}.binary"), script.as_bytes())
    }

    /// Installs the Rust example plugin as `hello-rust.binary`.
    pub fn install_rust_example(&self) -> PathBuf {
        let bin = example_binary("hello-plugin-rust");
        self.install_file("hello-rust.binary", &std::fs::read(bin).unwrap())
    }

    /// Installs the protocol 1 Python plugin (standard library only) as
    /// `hello-python-v1.binary`.
    pub fn install_python_v1_example(&self) -> PathBuf {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/hello-plugin-python-v1/hello-python-v1.binary");
        self.install_file("hello-python-v1.binary", &std::fs::read(file).unwrap())
    }

    /// Installs the Python example plugin as `hello-python.binary`, with the Python SDK
    /// (`toru_plugin.py`) it imports beside it.
    pub fn install_python_example(&self) -> PathBuf {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-plugin-python");
        let sdk = std::fs::read(example.join("toru_plugin.py")).unwrap();
        self.install_file("toru_plugin.py", &sdk);
        let script = std::fs::read(example.join("hello-plugin-python.binary")).unwrap();
        self.install_file("hello-python.binary", &script)
    }
}

/// A shell script that runs `toru-test-plugin <mode> <id>` with `env` set.
pub fn test_plugin_script(mode: &str, id: &str, env: &[(&str, &str)]) -> String {
    let bin = env!("CARGO_BIN_EXE_toru-test-plugin");
    let mut script = String::from("#!/bin/sh\n");
    for (k, v) in env {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!("exec '{bin}' {mode} {id} \"$@\"\n"));
    script
}

/// A binary of another workspace package; built when missing (see
/// [`toru_test_support::workspace_binary`]).
pub fn example_binary(name: &str) -> PathBuf {
    toru_test_support::workspace_binary(name, name)
}

/// Starts a host from `builder` and waits for its first scan of the plugins folder.
pub async fn start_with(builder: &PluginHostBuilder) -> PluginHost {
    let host = builder.start().await.expect("host starts");
    host.discovered().await;
    host
}

pub fn fast_restarts() -> RestartPolicy {
    RestartPolicy::default()
        .with_initial_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(40))
        .with_max_consecutive_crashes(10)
        .with_reset_after(Duration::from_secs(60))
}

/// Waits for the first event that matches, skipping others.
pub async fn wait_for(
    rx: &mut broadcast::Receiver<PluginEvent>,
    what: &str,
    mut pred: impl FnMut(&PluginEvent) -> bool,
) -> PluginEvent {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("event stream closed before {what}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits for `kind` on plugin `id`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<PluginEvent>,
    id: &str,
    kind: EventKind,
) -> PluginEvent {
    wait_for(rx, &format!("{kind} of {id}"), |e| {
        e.plugin_id == id && e.kind == kind
    })
    .await
}

/// Collects `id`'s events until one of `last` arrives, returning their kinds in order.
pub async fn kinds_until(
    rx: &mut broadcast::Receiver<PluginEvent>,
    id: &str,
    last: EventKind,
) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    wait_for(rx, &format!("{last} of {id}"), |e| {
        if e.plugin_id == id {
            kinds.push(e.kind);
        }
        e.plugin_id == id && e.kind == last
    })
    .await;
    kinds
}

pub use toru_test_support::{Notices, alive, wait_gone};

/// The running pid of plugin `id`.
pub fn pid_of(host: &PluginHost, id: &str) -> u32 {
    host.get(id)
        .unwrap_or_else(|e| panic!("{e}"))
        .pid
        .unwrap_or_else(|| panic!("{id} has no pid"))
}

/// The pid of the `sleep` a `spawn-child` test plugin started (it writes it next to itself
/// once it has the host's connection).
pub fn grandchild_pid(env: &Env, id: &str) -> u32 {
    let path = env.plugins().join(format!("{id}.child-pid"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `kind` of plugin `id` is in the database (it may have happened before the
/// caller could subscribe), and returns the plugin's recorded events, oldest first.
pub async fn wait_recorded(host: &PluginHost, id: &str, kind: EventKind) -> Vec<PluginEvent> {
    let mut rx = host.subscribe();
    let query = EventQuery::plugin(id).with_page(0, 1000);
    loop {
        let mut events = host.events(&query).await.expect("events");
        if events.iter().any(|e| e.kind == kind) {
            events.reverse();
            return events;
        }
        wait_for(&mut rx, &format!("{kind} of {id}"), |e| e.plugin_id == id).await;
    }
}

/// Waits until every plugin in `ids` serves requests.
pub async fn serving(host: &PluginHost, ids: &[&str]) {
    // Subscribe first, then look: a start between the two is not missed.
    let mut rx = host.subscribe();
    host.discovered().await;
    for id in ids {
        if !host.get(id).unwrap().state.serves() {
            wait_event(&mut rx, id, EventKind::Started).await;
        }
    }
}

/// Starts a host on `env` and waits until every plugin in `ids` serves requests.
pub async fn started(env: &Env, ids: &[&str]) -> PluginHost {
    let host = env.start().await;
    serving(&host, ids).await;
    host
}
