//! What a plugin knows about its host: ids, settings, the KV client and logging.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::error::KvError;
use super::link::Link;
use super::writer::QueueError;
use crate::license::LicenseClaims;
use crate::protocol::{
    CowStr, Init, KV_LIST_MAX, KvRequest, Level, LogRecord, Message, Payload, SettingSpec,
};

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
        let key = CowStr::from(key);
        let result = self.link.call(Payload::Kv(KvRequest::Get { key })).await?;
        Ok(result.value.map(CowStr::into_string))
    }

    /// Sets `key` to `value`. Returns once the host has made the write durable.
    ///
    /// # Errors
    /// [`KvError`] when the host refuses (a key or value too large, the quota full) or the
    /// connection is gone.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        let (key, value) = (key.into(), value.into());
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
        let key = CowStr::from(key);
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
            prefix: prefix.into(),
            after: after.map(Into::into),
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
    /// The declarations from the metadata, for defaults and checks.
    specs: Vec<SettingSpec>,
    settings: RwLock<Arc<BTreeMap<String, Value>>>,
    protocol_version: u32,
    kv: Kv,
    license: Option<LicenseClaims>,
    shutdown: CancellationToken,
}

impl PluginContext {
    pub(crate) fn new(
        init: Init<'_>,
        protocol_version: u32,
        link: Arc<Link>,
        license: Option<LicenseClaims>,
        specs: Vec<SettingSpec>,
    ) -> Self {
        let ctx = PluginContext {
            inner: Arc::new(Inner {
                instance_id: init.instance_id.into_string(),
                plugin_id: init.plugin_id.into_string(),
                log_path: PathBuf::from(init.log_path.as_str()),
                specs,
                settings: RwLock::new(Arc::default()),
                protocol_version,
                kv: Kv { link },
                license,
                shutdown: CancellationToken::new(),
            }),
        };
        ctx.apply_settings(init.settings, None);
        ctx
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

    /// The plugin's settings now: those from `init`, replaced by each `settings` message (for a
    /// plugin with `live_settings`). A setting declared in the metadata with a `default` and
    /// not set has its default.
    pub fn settings(&self) -> Arc<BTreeMap<String, Value>> {
        self.inner
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One setting, for example `license_key`.
    pub fn setting(&self, name: &str) -> Option<Value> {
        self.settings().get(name).cloned()
    }

    /// One setting as a `T` (a `String`, a number, a `bool`); `None` when it is not set or has
    /// another type.
    ///
    /// ```no_run
    /// # fn f(ctx: &toru_plugin_api::PluginContext) {
    /// let greeting: String = ctx.setting_as("greeting").unwrap_or_else(|| "Hello".into());
    /// # }
    /// ```
    pub fn setting_as<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.settings()
            .get(name)
            .and_then(|v| T::deserialize(v).ok())
    }

    /// Replaces the settings with `values`: each declared setting is checked against its
    /// declaration, and one that does not fit is logged (at level error, without its value) and
    /// left as it was; a declared setting without a value gets its default.
    pub(crate) fn apply_settings(
        &self,
        mut values: BTreeMap<String, Value>,
        previous: Option<&BTreeMap<String, Value>>,
    ) {
        for spec in &self.inner.specs {
            match values.get(&spec.name) {
                Some(Value::Null) | None => {
                    values.remove(&spec.name);
                }
                Some(value) => {
                    if let Err(e) = spec.check(value) {
                        self.error(format!("ignored the value of setting {:?}: {e}", spec.name));
                        values.remove(&spec.name);
                        if let Some(old) = previous.and_then(|p| p.get(&spec.name)) {
                            values.insert(spec.name.clone(), old.clone());
                        }
                    }
                }
            }
            if !values.contains_key(&spec.name)
                && let Some(default) = &spec.default
            {
                values.insert(spec.name.clone(), default.clone());
            }
        }
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(values);
    }

    /// The protocol version agreed with the host.
    pub fn protocol_version(&self) -> u32 {
        self.inner.protocol_version
    }

    /// The plugin's key-value store.
    pub fn kv(&self) -> &Kv {
        &self.inner.kv
    }

    /// Whether the host has asked the plugin to shut down. Requests in flight may still finish
    /// (for up to 5 s); long-running work (an event stream, a background loop) should end.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Waits until the host asks the plugin to shut down (at once when it has).
    pub async fn shutting_down(&self) {
        self.inner.shutdown.cancelled().await;
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Sends a line to the plugin's log on the host. Never waits: while the host is not reading
    /// fast enough to leave room for it, the line goes to stderr instead (which the host also
    /// logs), and after the connection closed it is dropped.
    pub fn log(&self, level: Level, message: impl Into<String>) {
        let message = message.into();
        let record = LogRecord {
            level,
            message: CowStr::borrowed(&message),
            error: None,
        };
        let msg = Message::new(None, Payload::Log(record));
        if let Err(QueueError::Full) = self.inner.kv.link.try_send(&msg) {
            eprintln!("{} {message}", level.as_str().to_ascii_uppercase());
        }
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

    use crate::protocol::{ErrorReply, KvResult, SettingKind};
    use crate::sdk::writer::{Queue, Receiver};

    fn context_with(specs: Vec<SettingSpec>, settings: &str) -> (PluginContext, Receiver) {
        let (queue, rx) = Queue::new();
        let json = format!(
            r#"{{"protocol":{{"min":1,"max":1}},"instance_id":"i-1","plugin_id":"p",
                "socket_path":"/s","log_path":"/l/p.log","settings":{settings}}}"#
        );
        let init: Init<'_> = serde_json::from_str(&json).unwrap();
        let link = Arc::new(Link::new(queue));
        (PluginContext::new(init, 1, link, None, specs), rx)
    }

    fn context() -> (PluginContext, Receiver) {
        context_with(Vec::new(), r#"{"license_key":"k"}"#)
    }

    fn next(rx: &mut Receiver) -> Message<'static> {
        rx.try_next_message().expect("a queued message")
    }

    fn greeting_spec() -> Vec<SettingSpec> {
        vec![SettingSpec {
            name: "greeting".into(),
            label: "Greeting".into(),
            kind: SettingKind::String,
            default: Some(serde_json::json!("Hello")),
            required: false,
            help: String::new(),
            choices: Vec::new(),
        }]
    }

    #[test]
    fn declared_settings_get_defaults_and_bad_values_are_ignored_and_logged() {
        let (ctx, mut rx) = context_with(greeting_spec(), r#"{"other":1}"#);
        assert_eq!(
            ctx.setting_as::<String>("greeting").as_deref(),
            Some("Hello")
        );
        assert_eq!(ctx.setting_as::<u32>("other"), Some(1));
        assert_eq!(ctx.setting_as::<String>("other"), None);
        let old = ctx.settings();
        let howdy = serde_json::from_str(r#"{"greeting":"Howdy"}"#).unwrap();
        ctx.apply_settings(howdy, Some(&old));
        assert_eq!(
            ctx.setting_as::<String>("greeting").as_deref(),
            Some("Howdy")
        );
        let old = ctx.settings();
        let bad = serde_json::from_str(r#"{"greeting":5}"#).unwrap();
        ctx.apply_settings(bad, Some(&old));
        assert_eq!(
            ctx.setting_as::<String>("greeting").as_deref(),
            Some("Howdy")
        );
        let Payload::Log(log) = next(&mut rx).payload else {
            panic!("expected a log line")
        };
        assert_eq!(log.level, Level::Error);
        assert!(log.message.contains("greeting"), "{}", log.message);
        assert!(!log.message.contains('5'), "the value is not logged");
        assert!(old.contains_key("greeting"), "a snapshot does not change");
    }

    #[test]
    fn exposes_what_init_said() {
        let (ctx, _rx) = context();
        assert_eq!(ctx.instance_id(), "i-1");
        assert_eq!(ctx.plugin_id(), "p");
        assert_eq!(ctx.log_path(), Path::new("/l/p.log"));
        assert_eq!(ctx.setting("license_key"), Some(serde_json::json!("k")));
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
            let msg = rx.next_message().await.expect("a kv request");
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
        let _ = rx.next_message().await;
        assert_eq!(link.lock_pending().len(), 1);
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert!(link.lock_pending().is_empty());
        let kv = ctx.kv().clone();
        let waiting = tokio::spawn(async move { kv.set("a", "b").await });
        let _ = rx.next_message().await;
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
            let msg = rx.next_message().await.expect("a list request");
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
