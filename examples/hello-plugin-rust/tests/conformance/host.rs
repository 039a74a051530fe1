//! The suite's side of the connection: spawns a plugin, connects to its socket and plays the
//! host, answering the plugin's KV requests from an in-memory map.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt as _;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::codec::{Encoder as _, FramedRead};
use toru_plugin_api::FrameCodec;
use toru_plugin_api::protocol::{
    ENV_SOCKET_PATH, ErrorReply, HttpRequest, Init, KvRequest, KvResult, LogRecord, Message,
    Payload, RequestId, VersionRange,
};

/// Every wait in the suite ends after this long, with a panic saying what was expected.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`WAIT`]; panics with `what` when it takes longer.
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// One of the example plugins, and what it must say about itself.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) exe: PathBuf,
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    pub(crate) icon: &'static str,
    pub(crate) greeting: &'static str,
    /// The metadata's `version`.
    pub(crate) version: &'static str,
    /// The protocol versions the plugin says it speaks.
    pub(crate) protocol: VersionRange,
}

impl Target {
    pub(crate) fn route(&self) -> String {
        format!("/{}", self.id)
    }

    /// `route` followed by `rest` (`""`, `"/count"`).
    pub(crate) fn path(&self, rest: &str) -> String {
        format!("/{}{rest}", self.id)
    }

    pub(crate) fn command(&self) -> Command {
        assert!(
            self.exe.is_file(),
            "plugin executable {} does not exist",
            self.exe.display()
        );
        let mut cmd = Command::new(&self.exe);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

enum Out {
    Bytes(BytesMut),
    Close,
}

/// What the fake KV store does with requests.
#[derive(Debug, Default)]
pub(crate) struct KvState {
    pub(crate) map: BTreeMap<String, String>,
    /// The request ids of the plugin's KV requests, in arrival order.
    pub(crate) ids: Vec<RequestId>,
    /// When set, every KV request gets this `error` (code, message).
    pub(crate) fail_with: Option<(String, String)>,
}

/// A running plugin, connected, with the suite playing its host.
pub(crate) struct Plugin {
    pub(crate) child: Child,
    out: mpsc::UnboundedSender<Out>,
    inbox: mpsc::UnboundedReceiver<Result<Message<'static>, String>>,
    logs: mpsc::UnboundedReceiver<LogRecord<'static>>,
    stderr_lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Replies read while waiting for another request id.
    early: HashMap<Option<RequestId>, Message<'static>>,
    pub(crate) kv: Arc<Mutex<KvState>>,
    next_id: RequestId,
    _dir: TempDir,
}

impl Plugin {
    /// Spawns the plugin with a socket in a fresh temp dir and connects to it.
    pub(crate) async fn start(target: &Target) -> Plugin {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("p.sock");
        let mut child = target
            .command()
            .env(ENV_SOCKET_PATH, &socket)
            .spawn()
            .expect("spawn the plugin");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (line_tx, stderr_lines) = mpsc::unbounded_channel();
        tokio::spawn(collect_stderr(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
            line_tx,
        ));
        let stream = within("the plugin's socket to accept a connection", async {
            // Polls until the plugin listens, failing at once if it exits first.
            let mut poll = tokio::time::interval(Duration::from_millis(5));
            loop {
                if let Ok(stream) = UnixStream::connect(&socket).await {
                    return stream;
                }
                tokio::select! {
                    status = child.wait() => panic!(
                        "the plugin exited ({status:?}) before listening; stderr: {}",
                        stderr.lock().unwrap()
                    ),
                    _ = poll.tick() => {}
                }
            }
        })
        .await;
        let (read, write) = stream.into_split();
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write, out_rx));
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (log_tx, logs) = mpsc::unbounded_channel();
        let kv = Arc::new(Mutex::new(KvState::default()));
        tokio::spawn(read_loop(read, out.clone(), inbox_tx, log_tx, kv.clone()));
        Plugin {
            child,
            out,
            inbox,
            logs,
            stderr_lines,
            stderr,
            early: HashMap::new(),
            kv,
            next_id: 1,
            _dir: dir,
        }
    }

    /// Starts the plugin and completes `init`/`ready`.
    pub(crate) async fn ready(target: &Target) -> Plugin {
        let mut plugin = Plugin::start(target).await;
        let reply = plugin.init(VersionRange { min: 1, max: 1 }).await;
        assert!(
            matches!(reply.payload, Payload::Ready(r) if r.protocol_version == 1),
            "expected ready with protocol 1, got {reply:?}"
        );
        plugin
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub(crate) fn send(&self, msg: &Message<'_>) {
        let mut buf = BytesMut::new();
        FrameCodec::new().encode(msg, &mut buf).expect("encode");
        self.send_raw(&buf);
    }

    /// Sends bytes as they are: a whole frame, or a broken one.
    pub(crate) fn send_raw(&self, bytes: &[u8]) {
        let _ = self.out.send(Out::Bytes(BytesMut::from(bytes)));
    }

    /// Sends `json` in a frame with a correct length header.
    pub(crate) fn send_json(&self, json: &str) {
        let mut frame = (json.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(json.as_bytes());
        self.send_raw(&frame);
    }

    /// Closes the suite's side of the connection: the plugin reads EOF.
    pub(crate) fn close(&self) {
        let _ = self.out.send(Out::Close);
    }

    /// Sends a request with a fresh id and returns the id.
    pub(crate) fn request(&mut self, payload: Payload<'_>) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&Message::with_id(id, payload));
        id
    }

    pub(crate) async fn init(&mut self, protocol: VersionRange) -> Message<'static> {
        let id = self.request(Payload::Init(Init {
            protocol,
            instance_id: INSTANCE_ID.into(),
            plugin_id: "under-test".into(),
            socket_path: "/unused".into(),
            log_path: "/unused.log".into(),
            settings: BTreeMap::new(),
        }));
        self.reply(Some(id)).await
    }

    /// Sends an `http_request`; `body` travels as text.
    pub(crate) fn http(&mut self, method: &str, path: &str, query: &str) -> RequestId {
        self.http_full(method, path, query, &[], None, None)
    }

    pub(crate) fn http_full(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        body_base64: Option<&str>,
    ) -> RequestId {
        self.request(Payload::HttpRequest(HttpRequest {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            body: body.map(Into::into),
            body_base64: body_base64.map(Into::into),
            end_stream: None,
            upgrade: None,
        }))
    }

    /// The reply to request `id` (`None` for replies that carry a null id). Replies to other
    /// requests that arrive first are kept for later.
    pub(crate) async fn reply(&mut self, id: Option<RequestId>) -> Message<'static> {
        if let Some(msg) = self.early.remove(&id) {
            return msg;
        }
        let what = format!("the reply to request {id:?}");
        let inbox = &mut self.inbox;
        let early = &mut self.early;
        let stderr = &self.stderr;
        within(&what, async {
            loop {
                match inbox.recv().await {
                    Some(Ok(msg)) if msg.request_id == id => return msg,
                    Some(Ok(msg)) => {
                        early.insert(msg.request_id, msg);
                    }
                    Some(Err(e)) => panic!("{e}"),
                    None => panic!(
                        "the plugin closed the connection before answering request {id:?}; \
                         stderr: {}",
                        stderr.lock().unwrap()
                    ),
                }
            }
        })
        .await
    }

    /// Every message until the plugin closes the connection.
    pub(crate) async fn until_eof(&mut self) -> Vec<Message<'static>> {
        let mut seen: Vec<_> = self.early.drain().map(|(_, m)| m).collect();
        let inbox = &mut self.inbox;
        within("the plugin to close the connection", async {
            while let Some(msg) = inbox.recv().await {
                seen.push(msg.unwrap_or_else(|e| panic!("{e}")));
            }
        })
        .await;
        seen
    }

    pub(crate) async fn log(&mut self) -> LogRecord<'static> {
        within("a log message from the plugin", self.logs.recv())
            .await
            .expect("the plugin closed the connection before sending a log message")
    }

    /// Waits for a line on the plugin's stderr that contains `needle`.
    pub(crate) async fn stderr_line(&mut self, needle: &str) -> String {
        let lines = &mut self.stderr_lines;
        let what = format!("a line on stderr containing {needle:?}");
        within(&what, async {
            while let Some(line) = lines.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("stderr closed without a line containing {needle:?}")
        })
        .await
    }

    pub(crate) async fn exit_status(&mut self) -> ExitStatus {
        let status = within("the plugin to exit", self.child.wait()).await;
        status.expect("wait for the plugin")
    }
}

/// The instance id the suite sends in `init`.
pub(crate) const INSTANCE_ID: &str = "5b0c1d2e-0000-4000-8000-00000000c0de";

async fn collect_stderr(
    stderr: tokio::process::ChildStderr,
    all: Arc<Mutex<String>>,
    lines_tx: mpsc::UnboundedSender<String>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut all = all.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
        let _ = lines_tx.send(line);
    }
}

async fn write_loop(mut write: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Bytes(bytes) => {
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Out::Close => {
                let _ = write.shutdown().await;
                return;
            }
        }
    }
}

async fn read_loop(
    read: OwnedReadHalf,
    out: mpsc::UnboundedSender<Out>,
    inbox: mpsc::UnboundedSender<Result<Message<'static>, String>>,
    logs: mpsc::UnboundedSender<LogRecord<'static>>,
    kv: Arc<Mutex<KvState>>,
) {
    let mut frames = FramedRead::new(read, FrameCodec::new());
    while let Some(frame) = frames.next().await {
        let msg = match frame.map_err(|e| e.to_string()).and_then(|f| {
            let f = f
                .into_frame()
                .ok_or("the plugin sent a data frame on a protocol 1 connection")?;
            f.message()
                .map(Message::into_owned)
                .map_err(|e| format!("the plugin sent an invalid frame: {e}"))
        }) {
            Ok(msg) => msg,
            Err(e) => {
                let _ = inbox.send(Err(e));
                return;
            }
        };
        match msg.payload {
            Payload::Kv(req) => {
                let reply = answer_kv(&kv, msg.request_id, req);
                let mut buf = BytesMut::new();
                FrameCodec::new().encode(&reply, &mut buf).expect("encode");
                let _ = out.send(Out::Bytes(buf));
            }
            Payload::Log(record) => {
                let _ = logs.send(record);
            }
            _ => {
                let _ = inbox.send(Ok(msg));
            }
        }
    }
}

fn answer_kv(
    kv: &Mutex<KvState>,
    id: Option<RequestId>,
    req: KvRequest<'static>,
) -> Message<'static> {
    let mut kv = kv.lock().unwrap();
    kv.ids.extend(id);
    if let Some((code, message)) = kv.fail_with.clone() {
        let error = ErrorReply {
            code: code.into(),
            message: message.into(),
        };
        return Message::new(id, Payload::Error(error));
    }
    let mut result = KvResult::default();
    match req {
        KvRequest::Get { key } => result.value = kv.map.get(key.as_str()).cloned().map(Into::into),
        KvRequest::Set { key, value } => {
            kv.map.insert(key.into_string(), value.into_string());
        }
        KvRequest::Delete { key } => result.existed = Some(kv.map.remove(key.as_str()).is_some()),
        KvRequest::List { prefix, .. } => {
            let keys = kv.map.keys().filter(|k| k.starts_with(prefix.as_str()));
            result.keys = Some(keys.cloned().map(Into::into).collect());
        }
    }
    Message::new(id, Payload::KvResult(result))
}
