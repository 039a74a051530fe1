//! A real `toru-server` process on 127.0.0.1:0 in a temp folder with real plugins, and ways to
//! wait for what it does without sleeping.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The admin secret the tests give the server (through `TORU_ADMIN_SECRET`).
pub(crate) const SECRET: &str = "test-admin-secret-7d2e";
/// The longest any awaited thing may take.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The `toru-server` binary under test.
pub(crate) fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_toru-server")
}

/// A binary of another workspace package, next to this test's own binary; built when missing
/// (see [`toru_test_support::workspace_binary`]).
pub(crate) fn workspace_binary(package: &str, name: &str) -> PathBuf {
    toru_test_support::workspace_binary(package, name)
}

/// A temp folder with `plugins/`, `data/` and `logs/`.
pub(crate) struct Env {
    pub(crate) dir: TempDir,
}

impl Env {
    pub(crate) fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ts")
            .tempdir()
            .expect("temp dir");
        Env { dir }
    }

    pub(crate) fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub(crate) fn install_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        std::fs::create_dir_all(self.plugins()).unwrap();
        let path = self.plugins().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Both example plugins, as `hello-rust.binary` and `hello-python.binary`.
    pub(crate) fn install_examples(&self) {
        self.install_rust_example();
        self.install_python_example();
    }

    pub(crate) fn install_rust_example(&self) -> PathBuf {
        let bin = workspace_binary("hello-plugin-rust", "hello-plugin-rust");
        self.install_file("hello-rust.binary", &std::fs::read(bin).unwrap())
    }

    /// The Python example as `hello-python.binary`, with the Python SDK (`toru_plugin.py`) it
    /// imports beside it.
    pub(crate) fn install_python_example(&self) -> PathBuf {
        let sdk = python_example().with_file_name("toru_plugin.py");
        self.install_file("toru_plugin.py", &std::fs::read(sdk).unwrap());
        self.install_file(
            "hello-python.binary",
            &std::fs::read(python_example()).unwrap(),
        )
    }

    /// `toru-test-plugin <mode> <id>` as `<id>.binary` (route `/<id>`).
    pub(crate) fn install_test_plugin(&self, mode: &str, id: &str) -> PathBuf {
        let bin = workspace_binary("toru-host", "toru-test-plugin");
        let script = format!(
            "#!/bin/sh\nTORU_TEST_DIR='{}' exec '{}' {mode} {id} \"$@\"\n",
            self.plugins().display(),
            bin.display()
        );
        self.install_file(&format!("{id}.binary"), script.as_bytes())
    }

    /// `toru-test-plugin <mode> <id>` as `<id>.binary`, telling `notices` about every `cancel`
    /// and `ws_close` it gets.
    pub(crate) fn install_notifying_plugin(&self, mode: &str, id: &str, notices: &Notices) {
        let bin = workspace_binary("toru-host", "toru-test-plugin");
        let script = format!(
            "#!/bin/sh\nexec '{}' {mode} {id} --notify='{}' \"$@\"\n",
            bin.display(),
            notices.path.display()
        );
        self.install_file(&format!("{id}.binary"), script.as_bytes());
    }

    /// The arguments that point a server at this folder.
    pub(crate) fn args(&self) -> Vec<String> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--plugins-dir".into(),
            path(self.plugins()),
            "--data-dir".into(),
            path(self.data()),
            "--log-dir".into(),
            path(self.logs()),
        ]
    }
}

pub(crate) fn python_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/hello-plugin-python/hello-plugin-python.binary")
}

/// A running `toru-server`.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
    /// What it printed on stdout up to and including the "open ..." line.
    pub(crate) banner: Vec<String>,
    pub(crate) client: reqwest::Client,
}

impl Server {
    /// Starts `toru-server serve` with the test secret and `extra` flags.
    pub(crate) async fn start(env: &Env, extra: &[&str]) -> Server {
        Server::start_with(env, extra, Some(SECRET)).await
    }

    /// Starts `toru-server serve`; `secret` is `TORU_ADMIN_SECRET` (none: the stored one).
    pub(crate) async fn start_with(env: &Env, extra: &[&str], secret: Option<&str>) -> Server {
        Server::launch(env, extra, secret, None).await
    }

    /// Starts `toru-server serve` with the test secret under an open-file limit of `nofile`
    /// (soft and hard, as a service manager sets it).
    pub(crate) async fn start_limited(env: &Env, extra: &[&str], nofile: u64) -> Server {
        Server::launch(env, extra, Some(SECRET), Some(nofile)).await
    }

    async fn launch(
        env: &Env,
        extra: &[&str],
        secret: Option<&str>,
        nofile: Option<u64>,
    ) -> Server {
        let mut cmd = match nofile {
            None => Command::new(server_bin()),
            Some(n) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(server_bin());
                sh
            }
        };
        cmd.arg("serve")
            .args(env.args())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(server_log(env))
            .kill_on_drop(true);
        match secret {
            Some(s) => cmd.env("TORU_ADMIN_SECRET", s),
            None => cmd.env_remove("TORU_ADMIN_SECRET"),
        };
        let mut child = cmd.spawn().expect("spawn toru-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let read = async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                let done = line.starts_with("open http://");
                banner.push(line);
                if done {
                    return;
                }
            }
            panic!("toru-server ended before it was listening; stdout: {banner:?}");
        };
        if tokio::time::timeout(WAIT, read).await.is_err() {
            panic!("toru-server did not say it was listening; stdout: {banner:?}");
        }
        // Keep draining stdout, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = banner
            .iter()
            .find_map(|l| l.strip_prefix("toru-server listening on "))
            .expect("a listening line")
            .to_owned();
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        Server {
            child,
            url,
            banner,
            client,
        }
    }

    /// A request with the admin secret as a bearer token.
    pub(crate) fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.anon(method, path).bearer_auth(SECRET)
    }

    /// A request with no credentials.
    pub(crate) fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    pub(crate) async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("GET")
    }

    pub(crate) async fn post(&self, path: &str) -> Response {
        self.req(Method::POST, path).send().await.expect("POST")
    }

    /// `GET path` that must answer 200 with JSON.
    pub(crate) async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("JSON")
    }

    /// One plugin's info; waits until the server has found the plugin (it lists plugins as it
    /// finds them, after it started listening).
    pub(crate) async fn plugin(&self, id: &str) -> Value {
        let path = format!("/api/plugins/{id}");
        if self.get(&path).await.status() == 404 {
            // Subscribe, then look again: a discovery between the two is not missed.
            let mut events = self.events().await;
            if self.get(&path).await.status() == 404 {
                events
                    .wait_for(&format!("{id} to be found"), |kind, e| {
                        kind == "plugin" && e["plugin_id"] == id
                    })
                    .await;
            }
        }
        self.json(&path).await
    }

    /// `/api/plugins` once it lists at least `n` plugins (the folder is scanned after the server
    /// starts listening).
    pub(crate) async fn listed(&self, n: usize) -> Value {
        let count = |list: &Value| list["plugins"].as_array().map_or(0, Vec::len);
        let list = self.json("/api/plugins").await;
        if count(&list) >= n {
            return list;
        }
        // Subscribe, then look again: a discovery between the two is not missed.
        let mut events = self.events().await;
        loop {
            let list = self.json("/api/plugins").await;
            if count(&list) >= n {
                return list;
            }
            events
                .wait_for(&format!("{n} plugins to be listed"), |kind, _| {
                    kind == "plugin"
                })
                .await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// Live events from `/api/events`.
    pub(crate) async fn events(&self) -> Events {
        let response = self.get("/api/events").await;
        assert_eq!(response.status(), 200, "GET /api/events");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// Waits until every plugin in `ids` is running (the server lists plugins as it finds
    /// them, after it started listening).
    pub(crate) async fn wait_running(&self, ids: &[&str]) {
        let mut events = self.events().await;
        for id in ids {
            let r = self.get(&format!("/api/plugins/{id}")).await;
            let state = match r.status().as_u16() {
                200 => r.json::<Value>().await.expect("JSON")["state"].clone(),
                _ => Value::Null,
            };
            if state != "running" {
                events
                    .wait_for(&format!("{id} to start"), |kind, e| {
                        kind == "plugin" && e["plugin_id"] == *id && e["kind"] == "started"
                    })
                    .await;
            }
            assert_eq!(self.plugin(id).await["state"], "running", "{id}");
        }
    }

    /// Sends SIGTERM and waits for the server to exit.
    pub(crate) async fn stop(mut self) -> ExitStatus {
        signal(self.pid(), rustix::process::Signal::TERM);
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("toru-server did not exit after SIGTERM")
            .expect("wait for toru-server")
    }
}

/// The server's stderr goes to `server.log` in the temp folder.
fn server_log(env: &Env) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.dir.path().join("server.log"))
        .expect("server log")
}

pub(crate) fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// Server-sent events from `/api/events`.
pub(crate) struct Events {
    response: Response,
    buffer: String,
}

impl Events {
    /// The next event: its name and its data as JSON.
    pub(crate) async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                return Some((
                    name,
                    serde_json::from_str(&data).expect("event data is JSON"),
                ));
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits for the first event that matches.
    pub(crate) async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&str, &Value) -> bool,
    ) -> Value {
        let wait = async {
            loop {
                match self.next().await {
                    Some((name, data)) if pred(&name, &data) => return data,
                    Some(_) => {}
                    None => panic!("the event stream ended before {what}"),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Waits for event `kind` of plugin `id`.
    pub(crate) async fn wait_plugin(&mut self, id: &str, kind: &str) -> Value {
        self.wait_for(&format!("{kind} of {id}"), |name, e| {
            name == "plugin" && e["plugin_id"] == id && e["kind"] == kind
        })
        .await
    }
}

pub(crate) use toru_test_support::{Notices, alive, wait_gone};

/// Waits until `file` contains `needle`, woken by inotify on its folder (the host writes logs
/// from a thread, a little after the event that causes them).
pub(crate) async fn wait_file_contains(file: &Path, needle: &str) -> String {
    let (file, needle) = (file.to_owned(), needle.to_owned());
    tokio::task::spawn_blocking(move || wait_file_blocking(&file, &needle))
        .await
        .expect("the waiting thread")
}

fn wait_file_blocking(file: &Path, needle: &str) -> String {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::fs::inotify;
    let dir = file.parent().expect("file in a folder");
    std::fs::create_dir_all(dir).unwrap();
    let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
        .expect("inotify");
    inotify::add_watch(
        &fd,
        dir,
        inotify::WatchFlags::MODIFY | inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
    )
    .expect("watch");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "{} never contained {needle:?}: {text}",
            file.display()
        );
        let timeout = Timespec::try_from(left).expect("timeout");
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&timeout));
        let mut buf = [0u8; 4096];
        while rustix::io::read(&fd, &mut buf).is_ok() {}
    }
}

/// A pid a test plugin wrote to `file` in the plugins folder.
pub(crate) fn pid_file(env: &Env, file: &str) -> u64 {
    let path = env.plugins().join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a pid")
}

/// The resident set of process `pid`, in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("a VmRSS line")
        * 1024
}
