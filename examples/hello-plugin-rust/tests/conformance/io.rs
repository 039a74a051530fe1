//! The suite's tasks around a running plugin: the socket's reader (answers KV, collects logs,
//! keeps the windows and checks the plugin's data against them) and writer, and stderr.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures_util::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::{Encoder as _, FramedRead};
use toru_plugin_api::protocol::{
    ErrorReply, KvRequest, KvResult, LogRecord, Message, Payload, RequestId,
};
use toru_plugin_api::{DataFrame, FrameCodec, Incoming};

use super::host::{Inbound, KvState, Out, WINDOW, Windows};

pub(crate) async fn collect_stderr(
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

pub(crate) async fn write_loop(mut write: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Out>) {
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

/// Reads everything the plugin sends: answers KV, collects logs, keeps the windows, and passes
/// the rest on.
pub(crate) struct Reader {
    pub(crate) out: mpsc::UnboundedSender<Out>,
    pub(crate) inbox: mpsc::UnboundedSender<Result<Inbound, String>>,
    pub(crate) logs: mpsc::UnboundedSender<LogRecord<'static>>,
    pub(crate) kv: Arc<Mutex<KvState>>,
    pub(crate) windows: Arc<Mutex<Windows>>,
    pub(crate) credit_came: Arc<Notify>,
}

impl Reader {
    pub(crate) async fn run(self, read: OwnedReadHalf) {
        let mut frames = FramedRead::new(read, FrameCodec::new());
        while let Some(frame) = frames.next().await {
            if let Err(e) = self.on_frame(frame) {
                let _ = self.inbox.send(Err(e));
                return;
            }
        }
    }

    fn on_frame(&self, frame: Result<Incoming, toru_plugin_api::CodecError>) -> Result<(), String> {
        let frame = match frame.map_err(|e| format!("the plugin sent a bad frame: {e}"))? {
            Incoming::Data(data) => return self.on_data(data),
            Incoming::Message(frame) => frame,
        };
        let msg = frame
            .message()
            .map(Message::into_owned)
            .map_err(|e| format!("the plugin sent an invalid frame: {e}"))?;
        match msg.payload {
            Payload::Kv(req) => {
                let reply = answer_kv(&self.kv, msg.request_id, req);
                let mut buf = BytesMut::new();
                FrameCodec::new().encode(&reply, &mut buf).expect("encode");
                let _ = self.out.send(Out::Bytes(buf));
            }
            Payload::Log(record) => {
                let _ = self.logs.send(record);
            }
            Payload::Credit(credit) => {
                let id = msg
                    .request_id
                    .ok_or("the plugin sent credit without a stream id")?;
                let mut w = self.windows.lock().unwrap();
                *w.ours.entry(id).or_insert(WINDOW as i64) += i64::from(credit.bytes);
                *w.credited.entry(id).or_default() += u64::from(credit.bytes);
                drop(w);
                self.credit_came.notify_waiters();
            }
            _ => {
                let _ = self.inbox.send(Ok(Inbound::Message(msg)));
            }
        }
        Ok(())
    }

    /// A data frame from the plugin: it must fit the window the suite gave for its stream.
    fn on_data(&self, data: DataFrame) -> Result<(), String> {
        {
            let mut w = self.windows.lock().unwrap();
            let window = w.theirs.entry(data.stream).or_insert(WINDOW as i64);
            *window -= data.data.len() as i64;
            if *window < 0 {
                return Err(format!(
                    "the plugin sent {} bytes on stream {} past its window (by {})",
                    data.data.len(),
                    data.stream,
                    -*window
                ));
            }
        }
        let _ = self.inbox.send(Ok(Inbound::Data(data)));
        Ok(())
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
