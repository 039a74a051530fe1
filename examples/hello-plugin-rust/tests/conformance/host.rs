//! The suite's side of the connection: spawns a plugin, connects to its socket and plays the
//! host, answering the plugin's KV requests from an in-memory map. It speaks protocol 1 and 2:
//! bodies both ways as data frames, flow control (it checks that the plugin never sends past
//! the window it was given), and WebSocket messages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tempfile::TempDir;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Encoder as _;
use toru_plugin_api::protocol::{
    Credit, ENV_SOCKET_PATH, HttpRequest, HttpResponse, Init, LogRecord, Message, Payload,
    RequestId, STREAM_WINDOW, VersionRange,
};
use toru_plugin_api::{DataFlags, DataFrame, FrameCodec};

use super::io::{Reader, collect_stderr, write_loop};

/// Every wait in the suite ends after this long, with a panic saying what was expected.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The window the suite gives the plugin on every stream, and expects from it.
pub(crate) const WINDOW: usize = STREAM_WINDOW as usize;

/// Awaits `fut` for at most [`WAIT`]; panics with `what` when it takes longer.
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// A plugin under test, and what it must say about itself.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) exe: PathBuf,
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    pub(crate) icon: &'static str,
    /// The `message` of `GET /<id>/` with default settings.
    pub(crate) greeting: &'static str,
    /// The metadata's `version`.
    pub(crate) version: &'static str,
    /// The protocol versions its metadata states; the suite offers 1..=2 and expects the
    /// highest both speak.
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

pub(crate) enum Out {
    Bytes(BytesMut),
    Close,
}

/// A frame from the plugin, other than the KV requests, logs and credit the reader handles.
#[derive(Debug)]
pub(crate) enum Inbound {
    Message(Message<'static>),
    Data(DataFrame),
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

/// The flow control of every stream, both ways, shared with the reader task.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    /// What the plugin may still send, per stream (absent: a full window).
    pub(crate) theirs: HashMap<RequestId, i64>,
    /// What the suite may still send, per stream (absent: a full window).
    pub(crate) ours: HashMap<RequestId, i64>,
    /// The credit the plugin has sent, per stream.
    pub(crate) credited: HashMap<RequestId, u64>,
}

/// A response read whole: the head, and the body from `body`/`body_base64` (protocol 1) or the
/// data frames (protocol 2).
#[derive(Debug)]
pub(crate) struct Res {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Res {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running plugin, connected, with the suite playing its host.
pub(crate) struct Plugin {
    pub(crate) child: Child,
    /// The version agreed in `init` (1 until then).
    pub(crate) version: u32,
    out: mpsc::UnboundedSender<Out>,
    inbox: mpsc::UnboundedReceiver<Result<Inbound, String>>,
    logs: mpsc::UnboundedReceiver<LogRecord<'static>>,
    stderr_lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Messages read while waiting for something else, by request id.
    early: HashMap<Option<RequestId>, VecDeque<Message<'static>>>,
    /// Data frames read while waiting for something else, by stream.
    early_data: HashMap<RequestId, VecDeque<DataFrame>>,
    pub(crate) kv: Arc<Mutex<KvState>>,
    pub(crate) windows: Arc<Mutex<Windows>>,
    credit_came: Arc<Notify>,
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
        let windows = Arc::new(Mutex::new(Windows::default()));
        let credit_came = Arc::new(Notify::new());
        let reader = Reader {
            out: out.clone(),
            inbox: inbox_tx,
            logs: log_tx,
            kv: kv.clone(),
            windows: windows.clone(),
            credit_came: credit_came.clone(),
        };
        tokio::spawn(reader.run(read));
        Plugin {
            child,
            version: 1,
            out,
            inbox,
            logs,
            stderr_lines,
            stderr,
            early: HashMap::new(),
            early_data: HashMap::new(),
            kv,
            windows,
            credit_came,
            next_id: 1,
            _dir: dir,
        }
    }

    /// Starts the plugin and completes `init`/`ready`, offering 1..=2.
    pub(crate) async fn ready(target: &Target) -> Plugin {
        Self::ready_offering(target, VersionRange { min: 1, max: 2 }).await
    }

    /// Starts the plugin and completes `init`/`ready`, offering `range`.
    pub(crate) async fn ready_offering(target: &Target, range: VersionRange) -> Plugin {
        let mut plugin = Plugin::start(target).await;
        let expected = target.protocol.negotiate(&range).expect("a common version");
        let reply = plugin.init(range).await;
        assert!(
            matches!(reply.payload, Payload::Ready(r) if r.protocol_version == expected),
            "expected ready with protocol {expected}, got {reply:?}"
        );
        plugin
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// All of stderr, once the plugin has closed it (it has exited).
    pub(crate) async fn stderr_to_end(&mut self) -> String {
        let lines = &mut self.stderr_lines;
        within("the plugin's stderr to close", async {
            while lines.recv().await.is_some() {}
        })
        .await;
        self.stderr()
    }

    pub(crate) fn send(&self, msg: &Message<'_>) {
        let mut buf = BytesMut::new();
        FrameCodec::new().encode(msg, &mut buf).expect("encode");
        self.send_raw(&buf);
    }

    /// Sends one data frame, without looking at the window (see [`send_body`](Self::send_body)).
    pub(crate) fn send_data(&self, stream: RequestId, flags: DataFlags, data: &[u8]) {
        let mut buf = BytesMut::new();
        let frame = DataFrame::new(stream, flags, Bytes::copy_from_slice(data));
        FrameCodec::new().encode(frame, &mut buf).expect("encode");
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
        self.init_with(protocol, BTreeMap::new()).await
    }

    pub(crate) async fn init_with(
        &mut self,
        protocol: VersionRange,
        settings: BTreeMap<String, serde_json::Value>,
    ) -> Message<'static> {
        let id = self.request(Payload::Init(Init {
            protocol,
            instance_id: INSTANCE_ID.into(),
            plugin_id: "under-test".into(),
            socket_path: "/unused".into(),
            log_path: "/unused.log".into(),
            settings,
        }));
        let reply = self.reply(Some(id)).await;
        if let Payload::Ready(r) = &reply.payload {
            self.version = r.protocol_version;
        }
        reply
    }

    /// Sends an `http_request` without a body.
    pub(crate) fn http(&mut self, method: &str, path: &str, query: &str) -> RequestId {
        self.http_head(method, path, query, &[], false, None)
    }

    /// Sends an `http_request` head: in protocol 2, `has_body` says that data frames follow.
    pub(crate) fn http_head(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        has_body: bool,
        upgrade: Option<&str>,
    ) -> RequestId {
        let v2 = self.version >= 2;
        self.request(Payload::HttpRequest(HttpRequest {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            body: None,
            body_base64: None,
            end_stream: v2.then_some(!has_body),
            upgrade: upgrade.map(Into::into),
        }))
    }

    /// Sends an `http_request` with a body: inline as text or base64 in protocol 1, as data
    /// frames of at most `chunk` bytes within the plugin's window in protocol 2.
    pub(crate) async fn http_with_body(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        chunk: usize,
    ) -> RequestId {
        if self.version >= 2 {
            let id = self.http_head(method, path, query, headers, true, None);
            self.send_body(id, body, chunk).await;
            return id;
        }
        let (text, b64) = match std::str::from_utf8(body) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(body);
                (None, Some(b64))
            }
        };
        self.request(Payload::HttpRequest(HttpRequest {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            body: text.map(Into::into),
            body_base64: b64.map(Into::into),
            end_stream: None,
            upgrade: None,
        }))
    }

    /// Sends `body` on stream `id` in data frames of at most `chunk` bytes, the last with
    /// `END`, waiting for the plugin's credit whenever its window is used up.
    pub(crate) async fn send_body(&mut self, id: RequestId, body: &[u8], chunk: usize) {
        let mut rest = body;
        while !rest.is_empty() {
            let n = self.take_window(id, rest.len().min(chunk)).await;
            let (part, tail) = rest.split_at(n);
            rest = tail;
            let flags = if rest.is_empty() {
                DataFlags::END
            } else {
                DataFlags::NONE
            };
            self.send_data(id, flags, part);
        }
        if body.is_empty() {
            self.send_data(id, DataFlags::END, &[]);
        }
    }

    /// Waits until the suite may send on stream `id`, and takes up to `want` bytes of the
    /// window.
    pub(crate) async fn take_window(&mut self, id: RequestId, want: usize) -> usize {
        let windows = self.windows.clone();
        let credit_came = self.credit_came.clone();
        let what = format!("credit from the plugin on stream {id}");
        within(&what, async {
            loop {
                let notified = credit_came.notified();
                {
                    let mut w = windows.lock().unwrap();
                    let window = w.ours.entry(id).or_insert(WINDOW as i64);
                    if *window > 0 {
                        let n = (*window as usize).min(want);
                        *window -= n as i64;
                        return n;
                    }
                }
                notified.await;
            }
        })
        .await
    }

    /// Gives the plugin `bytes` more room on stream `id`.
    pub(crate) fn credit(&self, id: RequestId, bytes: usize) {
        *self
            .windows
            .lock()
            .unwrap()
            .theirs
            .entry(id)
            .or_insert(WINDOW as i64) += bytes as i64;
        let credit = Credit {
            bytes: bytes as u32,
        };
        self.send(&Message::with_id(id, Payload::Credit(credit)));
    }

    /// The next frame from the plugin; panics when it breaks the protocol or closes.
    async fn next_inbound(&mut self, what: &str) -> Inbound {
        let inbox = &mut self.inbox;
        let stderr = &self.stderr;
        within(what, async {
            match inbox.recv().await {
                Some(Ok(inbound)) => inbound,
                Some(Err(e)) => panic!("{e}"),
                None => panic!(
                    "the plugin closed the connection while the suite waited for {what}; \
                     stderr: {}",
                    stderr.lock().unwrap()
                ),
            }
        })
        .await
    }

    /// The next message with request id `id` (`None` for messages that carry a null id).
    /// Messages and data frames for others that arrive first are kept for later.
    pub(crate) async fn reply(&mut self, id: Option<RequestId>) -> Message<'static> {
        if let Some(msg) = self.early.get_mut(&id).and_then(VecDeque::pop_front) {
            return msg;
        }
        let what = format!("a message for request {id:?}");
        loop {
            match self.next_inbound(&what).await {
                Inbound::Message(msg) if msg.request_id == id => return msg,
                Inbound::Message(msg) => {
                    self.early.entry(msg.request_id).or_default().push_back(msg);
                }
                Inbound::Data(frame) => {
                    self.early_data
                        .entry(frame.stream)
                        .or_default()
                        .push_back(frame);
                }
            }
        }
    }

    /// The next data frame of stream `id`; messages and other streams' frames are kept.
    pub(crate) async fn data(&mut self, id: RequestId) -> DataFrame {
        if let Some(frame) = self.early_data.get_mut(&id).and_then(VecDeque::pop_front) {
            return frame;
        }
        let what = format!("a data frame on stream {id}");
        loop {
            match self.next_inbound(&what).await {
                Inbound::Data(frame) if frame.stream == id => return frame,
                Inbound::Data(frame) => {
                    self.early_data
                        .entry(frame.stream)
                        .or_default()
                        .push_back(frame);
                }
                Inbound::Message(msg) => {
                    self.early.entry(msg.request_id).or_default().push_back(msg);
                }
            }
        }
    }

    /// The next message or data frame about stream `id`, whichever comes first.
    pub(crate) async fn next_on(&mut self, id: RequestId) -> Inbound {
        if let Some(msg) = self.early.get_mut(&Some(id)).and_then(VecDeque::pop_front) {
            return Inbound::Message(msg);
        }
        if let Some(frame) = self.early_data.get_mut(&id).and_then(VecDeque::pop_front) {
            return Inbound::Data(frame);
        }
        let what = format!("a frame about stream {id}");
        loop {
            match self.next_inbound(&what).await {
                Inbound::Data(frame) if frame.stream == id => return Inbound::Data(frame),
                Inbound::Message(msg) if msg.request_id == Some(id) => {
                    return Inbound::Message(msg);
                }
                Inbound::Data(frame) => {
                    self.early_data
                        .entry(frame.stream)
                        .or_default()
                        .push_back(frame);
                }
                Inbound::Message(msg) => {
                    self.early.entry(msg.request_id).or_default().push_back(msg);
                }
            }
        }
    }

    /// The response head for request `id`; panics on anything else (an `error`, say).
    pub(crate) async fn head(&mut self, id: RequestId) -> HttpResponse<'static> {
        let msg = self.reply(Some(id)).await;
        match msg.payload {
            Payload::HttpResponse(res) => res,
            _ => panic!("expected an http_response for request {id}, got {msg:?}"),
        }
    }

    /// The response to request `id`, read whole, giving the plugin credit as its body comes.
    pub(crate) async fn response(&mut self, id: RequestId) -> Res {
        let head = self.head(id).await;
        let headers = head
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let body = if self.version >= 2 {
            assert!(
                head.body.is_none() && head.body_base64.is_none(),
                "a protocol 2 response carries its body in data frames: {head:?}"
            );
            match head.end_stream {
                Some(true) => Vec::new(),
                Some(false) => self.body(id).await,
                None => panic!("a protocol 2 response head needs end_stream: {head:?}"),
            }
        } else {
            assert!(
                head.end_stream.is_none(),
                "end_stream in protocol 1: {head:?}"
            );
            match (head.body, head.body_base64) {
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(b64)) => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .expect("valid base64")
                }
                (None, None) => Vec::new(),
                (Some(_), Some(_)) => panic!("a response with both body fields"),
            }
        };
        Res {
            status: head.status,
            headers,
            body,
        }
    }

    /// Stream `id`'s body up to its `END`, giving credit for each frame as it comes.
    pub(crate) async fn body(&mut self, id: RequestId) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            match self.next_on(id).await {
                Inbound::Data(frame) => {
                    body.extend_from_slice(&frame.data);
                    if frame.flags.contains(DataFlags::END) {
                        return body;
                    }
                    if !frame.data.is_empty() {
                        self.credit(id, frame.data.len());
                    }
                }
                Inbound::Message(msg) => {
                    panic!("expected the body of stream {id}, got {msg:?}")
                }
            }
        }
    }

    /// Sends a ping and returns every frame that comes before its pong.
    pub(crate) async fn until_pong(&mut self) -> Vec<Inbound> {
        let ping = self.request(Payload::Ping);
        let mut before: Vec<Inbound> = self
            .early
            .drain()
            .flat_map(|(_, q)| q)
            .map(Inbound::Message)
            .collect();
        before.extend(
            self.early_data
                .drain()
                .flat_map(|(_, q)| q)
                .map(Inbound::Data),
        );
        loop {
            match self.next_inbound("a pong").await {
                Inbound::Message(msg)
                    if msg.request_id == Some(ping) && matches!(msg.payload, Payload::Pong) =>
                {
                    return before;
                }
                other => before.push(other),
            }
        }
    }

    /// Every message and data frame until the plugin closes the connection.
    pub(crate) async fn until_eof(&mut self) -> Vec<Inbound> {
        let mut seen: Vec<Inbound> = self
            .early
            .drain()
            .flat_map(|(_, q)| q)
            .map(Inbound::Message)
            .collect();
        seen.extend(
            self.early_data
                .drain()
                .flat_map(|(_, q)| q)
                .map(Inbound::Data),
        );
        let inbox = &mut self.inbox;
        within("the plugin to close the connection", async {
            while let Some(inbound) = inbox.recv().await {
                seen.push(inbound.unwrap_or_else(|e| panic!("{e}")));
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
