//! The redb store at `<data dir>/toru.redb`: settings (the instance id, the admin secret hash),
//! each plugin's KV namespace, and the plugin events.
//!
//! Reads run on tokio's blocking pool in their own read transactions. Every write goes to one
//! writer thread, which applies all the writes waiting for it in one write transaction and
//! commits it durably ([`redb::Durability::Immediate`]) before answering any of them, so a write
//! is acknowledged only once it is on disk, and concurrent writers share one `fsync` (group
//! commit): throughput grows with the number of writers.
//!
//! Tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `settings` | name | text |
//! | `plugin_kv` | (plugin id, key) | value |
//! | `plugin_kv_usage` | plugin id | bytes of keys plus values |
//! | `plugin_events` | (time ms, sequence) | [`PluginEvent`] as JSON |
//! | `plugin_events_by_plugin` | (plugin id, time ms, sequence) | nothing (an index) |

mod error;
mod events;
mod file;
mod kv;
mod settings;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{Database, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use error::{KvError, StoreError};
pub use kv::{KvLimits, PluginKv};

use crate::events::{EventQuery, PluginEvent};
use writer::{Op, WriterThread};

pub(crate) const SETTINGS: TableDefinition<'_, &str, &str> = TableDefinition::new("settings");
pub(crate) const PLUGIN_KV: TableDefinition<'_, (&str, &str), &str> =
    TableDefinition::new("plugin_kv");
pub(crate) const PLUGIN_KV_USAGE: TableDefinition<'_, &str, u64> =
    TableDefinition::new("plugin_kv_usage");
pub(crate) const PLUGIN_EVENTS: TableDefinition<'_, (u64, u64), &str> =
    TableDefinition::new("plugin_events");
pub(crate) const PLUGIN_EVENTS_BY_PLUGIN: TableDefinition<'_, (&str, u64, u64), ()> =
    TableDefinition::new("plugin_events_by_plugin");

/// Writes waiting for the writer thread before senders wait for room.
const QUEUE_CAPACITY: usize = 4096;

/// The host's database. Cheap to clone; every clone is the same store.
///
/// The writer thread ends, and the file is released, when [`Store::close`] is called or the
/// last clone (including every [`PluginKv`] made from it) is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

// Fields drop in order: the sender first, so the writer thread sees the queue end, then the
// writer, whose drop joins the thread.
struct Inner {
    tx: mpsc::Sender<Op>,
    db: RwLock<Option<Arc<Database>>>,
    writer: Mutex<WriterThread>,
    path: PathBuf,
    instance_id: Uuid,
    limits: KvLimits,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("instance_id", &self.inner.instance_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the database at `path`, creating the file (readable by its owner only), its folder
    /// and its tables when missing, and the instance id on first open. An existing file that
    /// others may read has those permissions removed, with a warning.
    ///
    /// The whole file is checked on open, so a damaged file is reported rather than trusted.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when the file is empty, is not a redb database or is damaged (the
    /// file is left untouched), [`StoreError::AlreadyOpen`] when another process or `Store` holds it,
    /// [`StoreError::Open`] or [`StoreError::CreateDir`] for anything else; each names the path.
    pub fn open(path: &Path, limits: KvLimits) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        file::prepare(path)?;
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| StoreError::open(path.to_path_buf(), e))?;
        let instance_id = settings::init(&db)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = WriterThread::spawn(Arc::clone(&db), rx, limits)?;
        tracing::debug!(path = %path.display(), %instance_id, "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                tx,
                db: RwLock::new(Some(db)),
                writer: Mutex::new(writer),
                path: path.to_path_buf(),
                instance_id,
                limits,
            }),
        })
    }

    /// This installation's id: a UUID v4 made on first open and the same on every later open.
    pub fn instance_id(&self) -> Uuid {
        self.inner.instance_id
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The KV limits this store enforces.
    pub fn limits(&self) -> KvLimits {
        self.inner.limits
    }

    /// The KV namespace of `plugin_id`. Keys in it are invisible to every other namespace.
    pub fn kv(&self, plugin_id: &str) -> PluginKv {
        PluginKv::new(self.clone(), plugin_id)
    }

    /// The setting `key`, if set. Reads inline: settings are few and small.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] after [`Store::close`]; [`StoreError::Storage`] when the read fails.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let db = self.db()?;
        settings::get(&db, key)
    }

    /// Sets the setting `key` to `value`; returns once it is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] after [`Store::close`]; [`StoreError::Storage`] when the commit
    /// fails.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.write(Op::SetSetting {
            key: key.to_owned(),
            value: value.to_owned(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores `event` in `plugin_events`; returns once it is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] after [`Store::close`]; [`StoreError::Storage`] when the commit
    /// fails.
    pub async fn record_event(&self, event: &PluginEvent) -> Result<(), StoreError> {
        let json = serde_json::to_string(event).map_err(|e| StoreError::Invalid {
            what: "event",
            detail: e.to_string(),
        })?;
        let (reply, rx) = oneshot::channel();
        self.write(Op::RecordEvent {
            plugin_id: event.plugin_id.clone(),
            time_ms: event.time_ms,
            json,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stored events, newest first: one page of `query.page_size` (default 50, at most 1000),
    /// for one plugin or for all. Events of the same millisecond come in reverse recording order.
    /// A stored event this version cannot read is skipped with a warning.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] after [`Store::close`]; [`StoreError::Storage`] when the read fails.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<PluginEvent>, StoreError> {
        let query = query.clone();
        self.read(move |db| events::query(db, &query)).await
    }

    /// Deletes every event older than `older_than_ms` (milliseconds since the Unix epoch) and
    /// returns how many were deleted.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] after [`Store::close`]; [`StoreError::Storage`] when the commit
    /// fails.
    pub async fn cleanup_events(&self, older_than_ms: u64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.write(Op::CleanupEvents {
            older_than_ms,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits every write already queued, stops the writer thread and releases the file (once
    /// reads still running finish). Later calls on any clone return [`StoreError::Closed`] or
    /// [`KvError::Closed`]. Calling it again does nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] if the writer thread had panicked.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        if self.inner.tx.send(Op::Close { reply }).await.is_ok() {
            // The writer answers once it has committed everything queued and dropped its handle.
            let _ = rx.await;
        }
        self.inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let thread = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match thread {
            Some(handle) => tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|_| StoreError::Closed)?
                .map_err(|_| StoreError::Closed),
            None => Ok(()),
        }
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)
    }

    async fn write(&self, op: Op) -> Result<(), StoreError> {
        self.inner.tx.send(op).await.map_err(|_| StoreError::Closed)
    }

    /// Runs `f` in a read transaction's worth of blocking work, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }
}
