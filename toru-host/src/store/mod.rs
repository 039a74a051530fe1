//! The redb store at `<data dir>/toru.redb`: settings (the instance id, the admin secret hash),
//! each plugin's KV namespace, and the plugin events; with its write-ahead log beside it,
//! `toru.redb.wal`.
//!
//! Reads run on tokio's blocking pool in their own read transactions, and see every write that
//! has been acknowledged. A write is acknowledged only once it is durable: applied in a redb
//! transaction, appended to the log and `fdatasync`ed, then committed to redb without an
//! `fsync` of its own (`commit.rs`). redb makes those commits durable in a *checkpoint* now and
//! then, and recovery at open applies again whatever the log holds beyond the last checkpoint,
//! so a crash at any moment (a SIGKILL, a power cut as far as `fsync` promises) loses no
//! acknowledged write, and the file always opens.
//!
//! Who commits (`writer.rs`): a write that finds the store idle commits on its caller's thread,
//! paying for one transaction and one log append and nothing else; writes that arrive while
//! another is committing are queued, and the writer thread commits everything queued in one
//! batch (group commit): one log append and one `fdatasync` for the batch, however many pages of
//! the B-tree it touches, so throughput grows with the number of writers.
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
//! | `store_log` | name | where the log stands at the last checkpoint (`commit.rs`) |

mod app;
mod apply;
mod commit;
mod error;
mod events;
mod file;
mod kv;
mod log;
mod op;
mod record;
mod settings;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, TableDefinition};
use tokio::sync::oneshot;
use uuid::Uuid;

pub use app::AppSettings;
pub use error::{KvError, StoreError};
pub use kv::{KvLimits, PluginKv};

use crate::events::{EventQuery, PluginEvent};
use commit::Engine;
use op::Op;
use writer::Writer;

pub(crate) const SETTINGS: TableDefinition<'_, &str, &str> = TableDefinition::new("settings");
pub(crate) const PLUGIN_KV: TableDefinition<'_, (&str, &str), &str> =
    TableDefinition::new("plugin_kv");
pub(crate) const PLUGIN_KV_USAGE: TableDefinition<'_, &str, u64> =
    TableDefinition::new("plugin_kv_usage");
pub(crate) const PLUGIN_EVENTS: TableDefinition<'_, (u64, u64), &str> =
    TableDefinition::new("plugin_events");
pub(crate) const PLUGIN_EVENTS_BY_PLUGIN: TableDefinition<'_, (&str, u64, u64), ()> =
    TableDefinition::new("plugin_events_by_plugin");
pub(crate) const STORE_LOG: TableDefinition<'_, &str, u64> = TableDefinition::new("store_log");

/// The host's database, `<data dir>/toru.redb`, opened directly: for tools that run while no
/// host does (a command that resets an application setting, a backup, a benchmark of the KV
/// store). A running host keeps its database to itself: opening it again fails with
/// [`StoreError::AlreadyOpen`], and a host hands out only narrow handles to it
/// ([`PluginHost::kv`](crate::PluginHost::kv), [`PluginHost::app_settings`](crate::PluginHost::app_settings)).
///
/// Cheap to clone; every clone is the same store. The writer thread ends, and the file is
/// released, when [`Store::close`] is called or the last clone (including every [`PluginKv`]
/// and [`AppSettings`] made from it) is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), toru_host::StoreError> {
/// use toru_host::{KvLimits, Store};
/// let store = Store::open("./data/toru.redb".as_ref(), KvLimits::default())?;
/// store.app_settings().set("greeting", "hello").await?;
/// let visits = store.kv("hello-rust").get("counter").await.ok().flatten();
/// println!("{visits:?}");
/// store.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

// The writer's drop closes the queue and waits for the thread's last checkpoint.
struct Inner {
    writer: Writer,
    db: RwLock<Option<Arc<Database>>>,
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
    /// Opens the database at `path` and its log beside it (`path` with `.wal` added), creating
    /// the files (readable by their owner only), their folder and the tables when missing, and
    /// the instance id on first open. An existing database that others may read has those
    /// permissions removed, with a warning. Writes the log holds beyond the last checkpoint (the
    /// store was not closed: a crash, a kill) are applied again and made durable in the database
    /// before this returns.
    ///
    /// The whole file is checked on open, so a damaged file is reported rather than trusted.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when the file is empty, is not a redb database or is damaged (the file is
    /// left untouched), [`StoreError::AlreadyOpen`] when another process or `Store` holds it,
    /// [`StoreError::LogMissing`] or [`StoreError::LogCorrupt`] when the log the database needs
    /// is gone or damaged (the log is left untouched), [`StoreError::Log`] when it cannot be
    /// read or written, [`StoreError::Open`] or [`StoreError::CreateDir`] for anything else;
    /// each names the path.
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
        let engine = Engine::open(Arc::clone(&db), path, limits)?;
        let writer = Writer::spawn(engine)?;
        tracing::debug!(path = %path.display(), %instance_id, "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                writer,
                db: RwLock::new(Some(db)),
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

    /// The application's own settings in this database (see [`AppSettings`]).
    pub fn app_settings(&self) -> AppSettings {
        AppSettings::new(self.clone())
    }

    /// The setting `key`, if set. Reads inline: settings are few and small.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] after [`Store::close`]; [`StoreError::Storage`] when the read fails.
    pub(crate) fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let db = self.db()?;
        settings::get(&db, key)
    }

    /// Sets the setting `key` to `value`; returns once it is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] after [`Store::close`]; [`StoreError::Storage`] when the commit
    /// fails.
    pub(crate) async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
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
    pub(crate) async fn record_event(&self, event: &PluginEvent) -> Result<(), StoreError> {
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
    pub(crate) async fn events(&self, query: &EventQuery) -> Result<Vec<PluginEvent>, StoreError> {
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
    pub(crate) async fn cleanup_events(&self, older_than_ms: u64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.write(Op::CleanupEvents {
            older_than_ms,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits every write already queued, stops the writer thread, makes everything durable
    /// in the database file (a last checkpoint, after which the log holds nothing) and releases
    /// the file (once reads still running finish). Later calls on any clone return
    /// [`StoreError::Closed`] or [`KvError::Closed`]. Calling it again does nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] if the writer thread had panicked.
    pub async fn close(&self) -> Result<(), StoreError> {
        let thread = self.inner.writer.close();
        self.inner
            .db
            .write()
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
        self.inner.writer.submit(op).await
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
