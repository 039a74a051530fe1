//! Protocol 2 modes, spoken on the wire by hand (data frames, credit, WebSockets), so the host's
//! streams are tested without the SDK. Routes under the plugin's route:
//!
//! | route | does |
//! |---|---|
//! | `GET bytes?n=N[&length=M]` | N bytes, byte i being `i % 251`, with `Content-Length: M` (default N) |
//! | `POST sha256` | the request body's SHA-256, lowercase hex |
//! | `GET ticks?every=MS[&count=C]` | `text/event-stream`: `data: k` every MS ms, k from 1 (C of them, else until cancelled) |
//! | `GET ws` | WebSocket echo: text upper-cased, binary as it is; text `close` closes with 4000, `crash` exits, `big:N` answers N bytes |
//! | `GET crash-mid?n=N` | a head and N bytes, then the process exits |
//! | `GET echo` | the request as JSON (method, path, query, headers, body length) |
//! | `GET headers?n=N&size=S` | N headers `x-h-i` of S bytes each |
//! | `GET cookies` | cookies that try to replace the host's session, and one that may pass |
//! | `GET html` | a small HTML page |
//! | `GET error-after-head` | a head, 10 bytes, then `error` |
//! | `GET idle` | a head, then nothing |
//! | `GET status?code=C` | an empty answer with that status |
//! | `GET sleep` | never answers |
//! | `GET error` | `error` before any head |
//!
//! Modes: `v2` behaves; `v2-no-credit` streams `bytes` ignoring credit; `v2-deaf` stops reading
//! its socket after `ready`. With `--notify=<socket>`, every `cancel` and `ws_close` the plugin
//! gets is written to that Unix socket as a line (`cancel <id>`, `ws_close <id> <code>`), so
//! tests can wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Encoder;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use toru_plugin_api::protocol::{
    CowStr, Credit, HttpRequest, HttpResponse, Payload, Ready, RequestId, STREAM_WINDOW, WsClose,
    error_code,
};
use toru_plugin_api::{DataFlags, DataFrame, FrameCodec, Incoming, Message};

const CHUNK: usize = 64 * 1024;

enum Out {
    Message(Message<'static>),
    Data(DataFrame),
}

/// One stream's state on the plugin's side.
struct Stream {
    /// What the plugin may still send, and a wake-up when `credit` comes.
    window: Mutex<u64>,
    credit: Notify,
    /// The request body or the client's WebSocket messages.
    inbox: mpsc::UnboundedSender<DataFrame>,
    cancel: CancellationToken,
}

#[derive(Clone)]
struct Plugin {
    mode: String,
    out: mpsc::UnboundedSender<Out>,
    streams: Arc<Mutex<HashMap<RequestId, Arc<Stream>>>>,
    notify: Option<String>,
}

pub(crate) async fn serve(stream: UnixStream, mode: &str, notify: Option<String>) {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::new());
    let (out, mut rx) = mpsc::unbounded_channel::<Out>();
    let deaf = CancellationToken::new();
    // Messages are encoded into the buffer; data is written from its own `Bytes` after its
    // 13-byte header (large writes bypass the buffer), as a plugin should.
    tokio::spawn(async move {
        let mut socket = tokio::io::BufWriter::with_capacity(64 * 1024, write);
        let mut codec = FrameCodec::new();
        let mut encoded = BytesMut::new();
        while let Some(item) = rx.recv().await {
            let sent = match item {
                Out::Message(m) => {
                    encoded.clear();
                    codec.encode(m, &mut encoded).expect("encode");
                    socket.write_all(&encoded).await
                }
                Out::Data(d) => {
                    let head =
                        DataFrame::header(d.stream, d.flags, d.data.len(), codec.max_frame_len())
                            .expect("a data frame within the limit");
                    write_all_vectored(&mut socket, &head, &d.data).await
                }
            };
            if sent.is_err() {
                return;
            }
            if rx.is_empty() && socket.flush().await.is_err() {
                return;
            }
        }
    });
    let plugin = Plugin {
        mode: mode.to_owned(),
        out,
        streams: Arc::default(),
        notify,
    };
    while let Some(frame) = frames.next().await {
        match frame.expect("frame") {
            Incoming::Message(frame) => {
                let msg = frame.message().expect("message").into_owned();
                if !plugin.on_message(msg, &deaf) {
                    return;
                }
            }
            Incoming::Data(data) => {
                let stream = plugin.streams.lock().unwrap().get(&data.stream).cloned();
                if let Some(stream) = stream {
                    let _ = stream.inbox.send(data);
                }
            }
        }
        if deaf.is_cancelled() {
            // Never read the socket again; keep it open.
            std::future::pending::<()>().await;
        }
    }
}

/// The header and the data in one vectored write when they are large (the buffer passes them
/// through), not a 13-byte write and then the data.
async fn write_all_vectored(
    out: &mut tokio::io::BufWriter<tokio::net::unix::OwnedWriteHalf>,
    head: &[u8],
    data: &[u8],
) -> std::io::Result<()> {
    let (mut head, mut data) = (head, data);
    while !head.is_empty() || !data.is_empty() {
        let slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(data)];
        let n = out.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        data = &data[n - from_head..];
    }
    Ok(())
}

fn head(status: u16, headers: Vec<(&str, String)>, end_stream: bool) -> Payload<'static> {
    Payload::HttpResponse(HttpResponse {
        status,
        headers: headers
            .into_iter()
            .map(|(n, v)| (CowStr::from(n.to_owned()), CowStr::from(v)))
            .collect(),
        body: None,
        body_base64: None,
        end_stream: Some(end_stream),
    })
}

fn query(req: &HttpRequest<'_>, name: &str) -> Option<u64> {
    req.query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

impl Plugin {
    /// Handles a message; `false` ends the plugin.
    fn on_message(&self, msg: Message<'static>, deaf: &CancellationToken) -> bool {
        let id = msg.request_id;
        match msg.payload {
            Payload::Init(init) => {
                let version = init.protocol.max.min(2);
                self.send(
                    id,
                    Payload::Ready(Ready {
                        protocol_version: version,
                    }),
                );
                if self.mode == "v2-deaf" {
                    deaf.cancel();
                }
            }
            Payload::Ping => self.send(id, Payload::Pong),
            Payload::Shutdown => std::process::exit(0),
            Payload::Cancel => {
                let id = id.unwrap_or(0);
                eprintln!("INFO cancelled request {id}");
                self.tell(format!("cancel {id}"));
                if let Some(s) = self.streams.lock().unwrap().remove(&id) {
                    s.cancel.cancel();
                }
            }
            Payload::Credit(Credit { bytes }) => {
                if let Some(s) = self.stream(id) {
                    *s.window.lock().unwrap() += u64::from(bytes);
                    s.credit.notify_waiters();
                }
            }
            Payload::WsClose(WsClose { code, reason }) => {
                let id = id.unwrap_or(0);
                eprintln!("INFO ws_close {id} {code} {reason}");
                self.tell(format!("ws_close {id} {code}"));
                if let Some(s) = self.streams.lock().unwrap().remove(&id) {
                    s.cancel.cancel();
                }
            }
            Payload::HttpRequest(req) => {
                let Some(id) = id else { return true };
                let (tx, rx) = mpsc::unbounded_channel();
                let stream = Arc::new(Stream {
                    window: Mutex::new(u64::from(STREAM_WINDOW)),
                    credit: Notify::new(),
                    inbox: tx,
                    cancel: CancellationToken::new(),
                });
                self.streams.lock().unwrap().insert(id, Arc::clone(&stream));
                let plugin = self.clone();
                tokio::spawn(async move {
                    let cancel = stream.cancel.clone();
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = plugin.handle(id, req, stream, rx) => {}
                    }
                    plugin.streams.lock().unwrap().remove(&id);
                });
            }
            _ => {}
        }
        true
    }

    fn stream(&self, id: Option<RequestId>) -> Option<Arc<Stream>> {
        self.streams.lock().unwrap().get(&id?).cloned()
    }

    fn send(&self, id: Option<RequestId>, payload: Payload<'static>) {
        let _ = self.out.send(Out::Message(Message::new(id, payload)));
    }

    /// Writes a line to the test's notify socket, if it gave one, before going on (a
    /// `shutdown` may follow at once and end the process).
    fn tell(&self, line: String) {
        if let Some(path) = &self.notify
            && let Ok(mut s) = std::os::unix::net::UnixStream::connect(path)
        {
            let _ = std::io::Write::write_all(&mut s, format!("{line}\n").as_bytes());
        }
    }

    /// Sends data on a stream when the window allows (unless the mode ignores credit).
    async fn data(&self, id: RequestId, stream: &Stream, flags: DataFlags, mut data: Bytes) {
        let ignore_credit = self.mode == "v2-no-credit";
        loop {
            let n = loop {
                let woken = stream.credit.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                {
                    let mut w = stream.window.lock().unwrap();
                    let want = data.len().min(CHUNK);
                    if ignore_credit || want == 0 {
                        break want;
                    }
                    if *w > 0 {
                        let n = (want as u64).min(*w) as usize;
                        *w -= n as u64;
                        break n;
                    }
                }
                woken.await;
            };
            let piece = data.split_to(n);
            let last = data.is_empty();
            let f = if last {
                flags
            } else {
                DataFlags(flags.0 & !DataFlags::END.0)
            };
            let _ = self.out.send(Out::Data(DataFrame::new(id, f, piece)));
            if last {
                return;
            }
        }
    }

    /// Reads a request body to its end, granting credit as it goes.
    async fn body(
        &self,
        id: RequestId,
        rx: &mut mpsc::UnboundedReceiver<DataFrame>,
        mut each: impl FnMut(&[u8]),
    ) -> u64 {
        let mut total = 0u64;
        let mut uncredited = 0u64;
        while let Some(frame) = rx.recv().await {
            each(&frame.data);
            total += frame.data.len() as u64;
            uncredited += frame.data.len() as u64;
            if uncredited >= u64::from(STREAM_WINDOW / 2) {
                self.send(
                    Some(id),
                    Payload::Credit(Credit {
                        bytes: uncredited as u32,
                    }),
                );
                uncredited = 0;
            }
            if frame.flags.contains(DataFlags::END) {
                break;
            }
        }
        total
    }

    async fn handle(
        &self,
        id: RequestId,
        req: HttpRequest<'static>,
        stream: Arc<Stream>,
        mut rx: mpsc::UnboundedReceiver<DataFrame>,
    ) {
        let route = req.path.rsplit('/').next().unwrap_or("").to_owned();
        let has_body = req.end_stream == Some(false);
        match route.as_str() {
            "bytes" => {
                let n = query(&req, "n").unwrap_or(0);
                let length = query(&req, "length").unwrap_or(n);
                self.send(
                    Some(id),
                    head(
                        200,
                        vec![
                            ("content-type", "application/octet-stream".into()),
                            ("content-length", length.to_string()),
                        ],
                        n == 0,
                    ),
                );
                let pattern: Bytes = (0..CHUNK + 251).map(|i| (i % 251) as u8).collect();
                let mut sent = 0u64;
                while sent < n {
                    let len = (n - sent).min(CHUNK as u64) as usize;
                    let start = (sent % 251) as usize;
                    let last = sent + len as u64 == n;
                    let flags = if last {
                        DataFlags::END
                    } else {
                        DataFlags::NONE
                    };
                    self.data(id, &stream, flags, pattern.slice(start..start + len))
                        .await;
                    sent += len as u64;
                }
            }
            "sha256" => {
                let mut hasher = sha2::Sha256::new();
                if has_body {
                    self.body(id, &mut rx, |d| hasher.update(d)).await;
                }
                let hex: String = hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                self.send(
                    Some(id),
                    head(200, vec![("content-type", "text/plain".into())], false),
                );
                self.data(id, &stream, DataFlags::END, Bytes::from(hex))
                    .await;
            }
            "ticks" => {
                let every = query(&req, "every").unwrap_or(1000);
                let count = query(&req, "count");
                self.send(
                    Some(id),
                    head(
                        200,
                        vec![
                            ("content-type", "text/event-stream".into()),
                            ("cache-control", "no-cache".into()),
                        ],
                        false,
                    ),
                );
                let mut k = 1u64;
                loop {
                    let last = count.is_some_and(|c| k >= c);
                    let flags = if last {
                        DataFlags::END
                    } else {
                        DataFlags::NONE
                    };
                    self.data(id, &stream, flags, Bytes::from(format!("data: {k}\n\n")))
                        .await;
                    if last {
                        return;
                    }
                    k += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(every)).await;
                }
            }
            "ws" => self.websocket(id, &req, &stream, rx).await,
            "crash-mid" => {
                let n = query(&req, "n").unwrap_or(1024) as usize;
                self.send(
                    Some(id),
                    head(200, vec![("content-length", (n * 2).to_string())], false),
                );
                self.data(id, &stream, DataFlags::NONE, Bytes::from(vec![7u8; n]))
                    .await;
                // Let the writer put the data on the socket, then die mid-stream.
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                std::process::exit(1);
            }
            "echo" => {
                let len = if has_body {
                    self.body(id, &mut rx, |_| {}).await
                } else {
                    0
                };
                let body = serde_json::json!({
                    "method": req.method.as_str(),
                    "path": req.path.as_str(),
                    "query": req.query.as_str(),
                    "headers": req.headers.iter().map(|(n, v)| [n.as_str(), v.as_str()]).collect::<Vec<_>>(),
                    "body_len": len,
                    "upgrade": req.upgrade.as_ref().map(|u| u.as_str().to_owned()),
                })
                .to_string();
                self.send(
                    Some(id),
                    head(
                        200,
                        vec![("content-type", "application/json".into())],
                        false,
                    ),
                );
                self.data(id, &stream, DataFlags::END, Bytes::from(body))
                    .await;
            }
            "headers" => {
                let n = query(&req, "n").unwrap_or(1);
                let size = query(&req, "size").unwrap_or(8) as usize;
                let value = "v".repeat(size);
                let headers = (0..n).map(|i| ("x-h", format!("{i}-{value}"))).collect();
                self.send(Some(id), head(200, headers, true));
            }
            "cookies" => {
                let cookies = [
                    "toru_session=evil; Path=/",
                    "__Host-TORU_SESSION=evil; Secure; Path=/",
                    "theme=dark; Path=/",
                ];
                let headers = cookies
                    .iter()
                    .map(|c| ("set-cookie", (*c).to_owned()))
                    .collect();
                self.send(Some(id), head(200, headers, true));
            }
            "html" => {
                self.send(
                    Some(id),
                    head(
                        200,
                        vec![("content-type", "text/html; charset=utf-8".into())],
                        false,
                    ),
                );
                let page = "<!doctype html><script>fetch('/api/plugins')</script>";
                self.data(id, &stream, DataFlags::END, Bytes::from(page))
                    .await;
            }
            "error-after-head" => {
                self.send(Some(id), head(200, vec![], false));
                self.data(
                    id,
                    &stream,
                    DataFlags::NONE,
                    Bytes::from_static(b"0123456789"),
                )
                .await;
                self.send(
                    Some(id),
                    Payload::Error(toru_plugin_api::protocol::ErrorReply {
                        code: CowStr::borrowed(error_code::PLUGIN_ERROR),
                        message: CowStr::borrowed("failed half way"),
                    }),
                );
            }
            "idle" => {
                self.send(Some(id), head(200, vec![], false));
                std::future::pending::<()>().await;
            }
            "status" => {
                let code = query(&req, "code").unwrap_or(204) as u16;
                self.send(Some(id), head(code, vec![], true));
            }
            "sleep" => std::future::pending::<()>().await,
            "error" => self.send(
                Some(id),
                Payload::Error(toru_plugin_api::protocol::ErrorReply {
                    code: CowStr::borrowed(error_code::PLUGIN_ERROR),
                    message: CowStr::borrowed("this route always fails"),
                }),
            ),
            _ => self.send(Some(id), head(404, vec![], true)),
        }
    }

    /// A WebSocket echo.
    async fn websocket(
        &self,
        id: RequestId,
        req: &HttpRequest<'static>,
        stream: &Stream,
        mut rx: mpsc::UnboundedReceiver<DataFrame>,
    ) {
        if req.upgrade.as_deref() != Some("websocket") {
            self.send(
                Some(id),
                head(426, vec![("upgrade", "websocket".into())], true),
            );
            return;
        }
        let mut headers = vec![];
        if req
            .headers
            .iter()
            .any(|(n, v)| n.as_str() == "sec-websocket-protocol" && v.contains("chat"))
        {
            headers.push(("sec-websocket-protocol", "chat".to_owned()));
        }
        self.send(Some(id), head(101, headers, false));
        let mut message = BytesMut::new();
        let mut uncredited = 0u64;
        while let Some(frame) = rx.recv().await {
            uncredited += frame.data.len() as u64;
            message.extend_from_slice(&frame.data);
            if uncredited >= u64::from(STREAM_WINDOW / 2) {
                self.send(
                    Some(id),
                    Payload::Credit(Credit {
                        bytes: uncredited as u32,
                    }),
                );
                uncredited = 0;
            }
            if frame.flags.contains(DataFlags::MORE) {
                continue;
            }
            let data = message.split().freeze();
            if frame.flags.contains(DataFlags::TEXT) {
                let text = String::from_utf8_lossy(&data).into_owned();
                match text.as_str() {
                    "close" => {
                        self.send(
                            Some(id),
                            Payload::WsClose(WsClose {
                                code: 4000,
                                reason: CowStr::borrowed("bye"),
                            }),
                        );
                        return;
                    }
                    "crash" => std::process::exit(1),
                    t if t.starts_with("big:") => {
                        let n: usize = t[4..].parse().unwrap_or(0);
                        self.ws_send(id, stream, DataFlags::NONE, Bytes::from(vec![b'x'; n]))
                            .await;
                    }
                    t => {
                        self.ws_send(id, stream, DataFlags::TEXT, Bytes::from(t.to_uppercase()))
                            .await;
                    }
                }
            } else {
                self.ws_send(id, stream, DataFlags::NONE, data).await;
            }
        }
    }

    /// A WebSocket message, split into frames with `MORE`.
    async fn ws_send(&self, id: RequestId, stream: &Stream, flags: DataFlags, mut data: Bytes) {
        loop {
            let n = loop {
                let woken = stream.credit.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                {
                    let mut w = stream.window.lock().unwrap();
                    let want = data.len().min(CHUNK);
                    if want == 0 {
                        break 0;
                    }
                    if *w > 0 {
                        let n = (want as u64).min(*w) as usize;
                        *w -= n as u64;
                        break n;
                    }
                }
                woken.await;
            };
            let piece = data.split_to(n);
            let last = data.is_empty();
            let f = if last { flags } else { flags | DataFlags::MORE };
            let _ = self.out.send(Out::Data(DataFrame::new(id, f, piece)));
            if last {
                return;
            }
        }
    }
}
