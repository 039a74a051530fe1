//! What a plugin knows about its host: ids, settings, the KV client and logging.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use super::error::KvError;
use crate::license::LicenseClaims;

use crate::protocol::{
    CowStr, ErrorReply, Init, KV_LIST_MAX, KvRequest, KvResult, Level, LogRecord, Message, Payload,
    RequestId,
};

/// What the writer task is fed: messages in order, then `Close`.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Message(Message<'static>),
    /// Write what came before, then close the connection.
    Close,
}

/// A reply to one of the plugin's own requests.
pub(crate) type Reply = Result<KvResult<'static>, ErrorReply<'static>>;

/// The plugin's side of the connection, shared by the serve loop and every context clone.
#[derive(Debug)]
pub(crate) struct Link {
    out: mpsc::UnboundedSender<Outgoing>,
    /// The plugin's own requests waiting for a reply, by request id.
    pending: Mutex<HashMap<RequestId, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
}

impl Link {
    pub(crate) fn new(out: mpsc::UnboundedSender<Outgoing>) -> Self {
        Link {
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Queues a message for the writer. Returns false once the connection is closing.
    pub(crate) fn send(&self, msg: Message<'static>) -> bool {
        self.out.send(Outgoing::Message(msg)).is_ok()
    }

    /// Asks the writer to close the connection after everything queued so far.
    pub(crate) fn close(&self) {
        let _ = self.out.send(Outgoing::Close);
    }

    /// Routes a reply to the request waiting for it. Returns false when none is.
    pub(crate) fn resolve(&self, id: RequestId, reply: Reply) -> bool {
        let waiter = self.lock_pending().remove(&id);
        waiter.is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Fails every request still waiting, once the host is gone.
    pub(crate) fn disconnect(&self) {
        self.lock_pending().clear();
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RequestId, oneshot::Sender<Reply>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a request and waits for its reply.
    async fn call(&self, payload: Payload<'static>) -> Result<KvResult<'static>, KvError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        // Removes the entry if the caller stops waiting (a cancelled handler).
        let _guard = PendingGuard { link: self, id };
        if !self.send(Message::with_id(id, payload)) {
            return Err(KvError::Disconnected);
        }
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(KvError::Host {
                code: e.code.into_string(),
                message: e.message.into_string(),
            }),
            Err(_) => Err(KvError::Disconnected),
        }
    }
}

struct PendingGuard<'a> {
    link: &'a Link,
    id: RequestId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link.lock_pending().remove(&self.id);
    }
}

/// The plugin's key-value store, kept by the host in its own namespace. Get it from
/// [`PluginContext::kv`]. Every call is one request to the host; many may be in flight at once.
#[derive(Debug, Clone)]
pub struct Kv {
    link: Arc<Link>,
}

impl Kv {
    /// The value of `key`, or `None` when it is not set.
    ///
    /// # Errors
    /// [`KvError`] when the host refuses or the connection is gone.
    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        let key = CowStr::from(key.to_owned());
        let result = self.link.call(Payload::Kv(KvRequest::Get { key })).await?;
        Ok(result.value.map(CowStr::into_string))
    }

    /// Sets `key` to `value`. Returns once the host has made the write durable.
    ///
    /// # Errors
    /// [`KvError`] when the host refuses (a key or value too large, the quota full) or the
    /// connection is gone.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        let (key, value) = (key.to_owned().into(), value.to_owned().into());
        self.link
            .call(Payload::Kv(KvRequest::Set { key, value }))
            .await?;
        Ok(())
    }

    /// Removes `key`; returns whether it was set.
    ///
    /// # Errors
    /// [`KvError`] when the host refuses or the connection is gone.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let key = CowStr::from(key.to_owned());
        let result = self
            .link
            .call(Payload::Kv(KvRequest::Delete { key }))
            .await?;
        Ok(result.existed.unwrap_or(false))
    }

    /// Every key that starts with `prefix`, in byte order (the empty prefix lists all keys).
    /// Long listings take several requests of up to [`KV_LIST_MAX`] keys.
    ///
    /// # Errors
    /// [`KvError`] when the host refuses or the connection is gone.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        loop {
            let page = self
                .list_page(prefix, keys.last().map(String::as_str), KV_LIST_MAX)
                .await?;
            let done = page.len() < KV_LIST_MAX as usize;
            keys.extend(page);
            if done {
                return Ok(keys);
            }
        }
    }

    /// One page of keys that start with `prefix`: at most `limit` of them, after the key
    /// `after` when given.
    ///
    /// # Errors
    /// [`KvError`] when the host refuses or the connection is gone.
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        let request = KvRequest::List {
            prefix: prefix.to_owned().into(),
            after: after.map(|a| a.to_owned().into()),
            limit: Some(limit),
        };
        let result = self.link.call(Payload::Kv(request)).await?;
        Ok(result
            .keys
            .unwrap_or_default()
            .into_iter()
            .map(CowStr::into_string)
            .collect())
    }
}

/// What a plugin knows about its host, given to every handler. Cheap to clone.
///
/// Holds the ids and settings from `init`, the [`Kv`] client and logging. Log lines sent with
/// [`log`](Self::log) go to the plugin's log file on the host; stderr is captured too.
#[derive(Debug, Clone)]
pub struct PluginContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    instance_id: String,
    plugin_id: String,
    log_path: PathBuf,
    settings: BTreeMap<String, serde_json::Value>,
    protocol_version: u32,
    kv: Kv,
    license: Option<LicenseClaims>,
}

impl PluginContext {
    pub(crate) fn new(
        init: Init<'_>,
        protocol_version: u32,
        link: Arc<Link>,
        license: Option<LicenseClaims>,
    ) -> Self {
        PluginContext {
            inner: Arc::new(Inner {
                instance_id: init.instance_id.into_string(),
                plugin_id: init.plugin_id.into_string(),
                log_path: PathBuf::from(init.log_path.as_str()),
                settings: init.settings,
                protocol_version,
                kv: Kv { link },
                license,
            }),
        }
    }

    /// The license the SDK accepted for this run, for a plugin whose
    /// [`ToruPlugin::license`](super::ToruPlugin::license) returns a policy.
    pub fn license(&self) -> Option<&LicenseClaims> {
        self.inner.license.as_ref()
    }

    /// The host's instance id (a UUID).
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The id the host knows this plugin by.
    pub fn plugin_id(&self) -> &str {
        &self.inner.plugin_id
    }

    /// The file the host writes this plugin's logs to.
    pub fn log_path(&self) -> &Path {
        &self.inner.log_path
    }

    /// The plugin's settings from the host's configuration.
    pub fn settings(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.inner.settings
    }

    /// One setting, for example `license_key`.
    pub fn setting(&self, name: &str) -> Option<&serde_json::Value> {
        self.inner.settings.get(name)
    }

    /// The protocol version agreed with the host.
    pub fn protocol_version(&self) -> u32 {
        self.inner.protocol_version
    }

    /// The plugin's key-value store.
    pub fn kv(&self) -> &Kv {
        &self.inner.kv
    }

    /// Sends a line to the plugin's log on the host. Never waits; a line sent after the
    /// connection closed is dropped.
    pub fn log(&self, level: Level, message: impl Into<String>) {
        let record = LogRecord {
            level,
            message: message.into().into(),
            error: None,
        };
        self.inner
            .kv
            .link
            .send(Message::new(None, Payload::Log(record)));
    }

    /// [`log`](Self::log) at [`Level::Debug`].
    pub fn debug(&self, message: impl Into<String>) {
        self.log(Level::Debug, message);
    }

    /// [`log`](Self::log) at [`Level::Info`].
    pub fn info(&self, message: impl Into<String>) {
        self.log(Level::Info, message);
    }

    /// [`log`](Self::log) at [`Level::Warn`].
    pub fn warn(&self, message: impl Into<String>) {
        self.log(Level::Warn, message);
    }

    /// [`log`](Self::log) at [`Level::Error`].
    pub fn error(&self, message: impl Into<String>) {
        self.log(Level::Error, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> (PluginContext, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let init: Init<'_> = serde_json::from_str(
            r#"{"protocol":{"min":1,"max":1},"instance_id":"i-1","plugin_id":"p",
                "socket_path":"/s","log_path":"/l/p.log","settings":{"license_key":"k"}}"#,
        )
        .unwrap();
        (
            PluginContext::new(init, 1, Arc::new(Link::new(tx)), None),
            rx,
        )
    }

    fn next(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Message<'static> {
        match rx.try_recv() {
            Ok(Outgoing::Message(m)) => m,
            other => panic!("expected a queued message, got {other:?}"),
        }
    }

    #[test]
    fn exposes_what_init_said() {
        let (ctx, _rx) = context();
        assert_eq!(ctx.instance_id(), "i-1");
        assert_eq!(ctx.plugin_id(), "p");
        assert_eq!(ctx.log_path(), Path::new("/l/p.log"));
        assert_eq!(ctx.setting("license_key"), Some(&serde_json::json!("k")));
        assert_eq!(ctx.protocol_version(), 1);
    }

    #[test]
    fn log_sends_a_log_message_without_id() {
        let (ctx, mut rx) = context();
        ctx.warn("disk nearly full");
        let msg = next(&mut rx);
        assert_eq!(msg.request_id, None);
        match msg.payload {
            Payload::Log(r) => {
                assert_eq!(r.level, Level::Warn);
                assert_eq!(r.message, "disk nearly full");
            }
            other => panic!("expected log, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn kv_calls_are_numbered_from_one_and_matched_by_id() {
        let (ctx, mut rx) = context();
        let kv = ctx.kv().clone();
        let first = tokio::spawn({
            let kv = kv.clone();
            async move { kv.get("a").await }
        });
        let second = tokio::spawn(async move { kv.delete("b").await });
        let mut ids = Vec::new();
        for _ in 0..2 {
            let msg = match rx.recv().await {
                Some(Outgoing::Message(m)) => m,
                other => panic!("expected a kv request, got {other:?}"),
            };
            ids.push((msg.request_id.unwrap(), msg.payload));
        }
        ids.sort_by_key(|(id, _)| *id);
        assert_eq!(ids[0].0, 1);
        assert_eq!(ids[1].0, 2);
        let link = &ctx.inner.kv.link;
        for (id, payload) in ids {
            let reply = match payload {
                Payload::Kv(KvRequest::Get { .. }) => Ok(KvResult {
                    value: Some("1".into()),
                    ..Default::default()
                }),
                Payload::Kv(KvRequest::Delete { .. }) => Err(ErrorReply {
                    code: "kv_too_large".into(),
                    message: "no".into(),
                }),
                other => panic!("unexpected {other:?}"),
            };
            assert!(link.resolve(id, reply));
        }
        assert_eq!(first.await.unwrap(), Ok(Some("1".into())));
        let err = second.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "kv_too_large: no");
        assert!(link.lock_pending().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_call_leaves_nothing_pending_and_disconnect_fails_waiters() {
        let (ctx, mut rx) = context();
        let link = ctx.inner.kv.link.clone();
        let kv = ctx.kv().clone();
        let call = tokio::spawn(async move { kv.get("a").await });
        let _ = rx.recv().await;
        assert_eq!(link.lock_pending().len(), 1);
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert!(link.lock_pending().is_empty());
        let kv = ctx.kv().clone();
        let waiting = tokio::spawn(async move { kv.set("a", "b").await });
        let _ = rx.recv().await;
        link.disconnect();
        assert_eq!(waiting.await.unwrap(), Err(KvError::Disconnected));
    }

    #[tokio::test]
    async fn list_pages_until_a_short_page() {
        let (ctx, mut rx) = context();
        let kv = ctx.kv().clone();
        let listing = tokio::spawn(async move { kv.list("k").await });
        let link = ctx.inner.kv.link.clone();
        let mut afters = Vec::new();
        for page in 0..2u32 {
            let Some(Outgoing::Message(msg)) = rx.recv().await else {
                panic!("expected a list request")
            };
            let Payload::Kv(KvRequest::List { after, limit, .. }) = msg.payload else {
                panic!("expected list")
            };
            afters.push(after.map(CowStr::into_string));
            assert_eq!(limit, Some(KV_LIST_MAX));
            let n = if page == 0 { KV_LIST_MAX } else { 2 };
            let keys = (0..n).map(|i| format!("k{page}-{i:04}").into()).collect();
            link.resolve(
                msg.request_id.unwrap(),
                Ok(KvResult {
                    keys: Some(keys),
                    ..Default::default()
                }),
            );
        }
        let keys = listing.await.unwrap().unwrap();
        assert_eq!(keys.len(), KV_LIST_MAX as usize + 2);
        assert_eq!(afters, vec![None, Some("k0-0999".to_owned())]);
    }
}
