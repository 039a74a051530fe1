//! Plugin KV: one namespace per plugin id, with size limits and a per-plugin quota.
//!
//! Keys are stored as `(plugin id, key)`, so a namespace is a contiguous range of the table and
//! a prefix listing is a range scan inside it. The bytes each plugin stores (keys plus values)
//! are kept in `plugin_kv_usage`, updated in the same transaction as the data.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, Table};
use tokio::sync::oneshot;
use toru_plugin_api::protocol::KV_LIST_MAX;

use super::error::{KvError, StoreError, storage};
use super::op::{Op, Outcome};
use super::{PLUGIN_KV, PLUGIN_KV_USAGE, Store};

/// Size limits for plugin KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvLimits {
    /// The longest key, in bytes. Default 1024.
    pub max_key_len: usize,
    /// The longest value, in bytes. Default 1 MiB.
    pub max_value_len: usize,
    /// The most bytes (keys plus values) one plugin may store. Default 64 MiB.
    pub max_bytes_per_plugin: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_key_len: 1024,
            max_value_len: 1024 * 1024,
            max_bytes_per_plugin: 64 * 1024 * 1024,
        }
    }
}

/// Setters for building on the defaults: `KvLimits::default().with_...(..)`.
impl KvLimits {
    /// The same limits with [`max_key_len`](Self::max_key_len) set.
    pub fn with_max_key_len(mut self, max_key_len: usize) -> Self {
        self.max_key_len = max_key_len;
        self
    }

    /// The same limits with [`max_value_len`](Self::max_value_len) set.
    pub fn with_max_value_len(mut self, max_value_len: usize) -> Self {
        self.max_value_len = max_value_len;
        self
    }

    /// The same limits with [`max_bytes_per_plugin`](Self::max_bytes_per_plugin) set.
    pub fn with_max_bytes_per_plugin(mut self, max_bytes_per_plugin: u64) -> Self {
        self.max_bytes_per_plugin = max_bytes_per_plugin;
        self
    }
}

impl KvLimits {
    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        self.check_len(key)
    }

    fn check_len(&self, key: &str) -> Result<(), KvError> {
        if key.len() > self.max_key_len {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.max_key_len,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &str) -> Result<(), KvError> {
        if value.len() > self.max_value_len {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_len,
            });
        }
        Ok(())
    }
}

/// One plugin's KV namespace. Cheap to clone; keeps the [`Store`] open while it lives.
#[derive(Clone)]
pub struct PluginKv {
    store: Store,
    plugin_id: Arc<str>,
}

impl std::fmt::Debug for PluginKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginKv")
            .field("plugin_id", &self.plugin_id)
            .finish_non_exhaustive()
    }
}

impl PluginKv {
    pub(crate) fn new(store: Store, plugin_id: &str) -> Self {
        PluginKv {
            store,
            plugin_id: plugin_id.into(),
        }
    }

    /// The plugin whose namespace this is.
    pub fn plugin_id(&self) -> &str {
        &self.plugin_id
    }

    /// The value of `key`, if set.
    ///
    /// # Errors
    ///
    /// [`KvError::EmptyKey`], [`KvError::KeyTooLarge`], [`KvError::Closed`], or
    /// [`KvError::Storage`] when the read fails.
    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        self.store.limits().check_key(key)?;
        let (plugin_id, key) = (Arc::clone(&self.plugin_id), key.to_owned());
        Ok(self
            .store
            .read(move |db| read_get(db, &plugin_id, &key))
            .await?)
    }

    /// Sets `key` to `value`. Returns once the write is durable.
    ///
    /// # Errors
    ///
    /// [`KvError::EmptyKey`], [`KvError::KeyTooLarge`], [`KvError::ValueTooLarge`],
    /// [`KvError::QuotaExceeded`] (replacing a value counts only the difference),
    /// [`KvError::Closed`], or [`KvError::Storage`] when the commit fails.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        let limits = self.store.limits();
        limits.check_key(key)?;
        limits.check_value(value)?;
        let (reply, rx) = oneshot::channel();
        self.store
            .write(Op::KvSet {
                plugin_id: Arc::clone(&self.plugin_id),
                key: key.to_owned(),
                value: value.to_owned(),
                reply,
            })
            .await?;
        rx.await.map_err(|_| KvError::Closed)?
    }

    /// Removes `key`; returns whether it was set. Returns once the removal is durable.
    ///
    /// # Errors
    ///
    /// [`KvError::EmptyKey`], [`KvError::KeyTooLarge`], [`KvError::Closed`], or
    /// [`KvError::Storage`] when the commit fails.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        self.store.limits().check_key(key)?;
        let (reply, rx) = oneshot::channel();
        self.store
            .write(Op::KvDelete {
                plugin_id: Arc::clone(&self.plugin_id),
                key: key.to_owned(),
                reply,
            })
            .await?;
        rx.await.map_err(|_| KvError::Closed)?
    }

    /// Keys that start with `prefix` (empty for all), in byte order, after `after` when given,
    /// at most `limit` of them (capped at [`KV_LIST_MAX`], 1000; 0 returns none). To page, pass the
    /// last key of one page as the next page's `after`.
    ///
    /// # Errors
    ///
    /// [`KvError::KeyTooLarge`] for a prefix or `after` longer than a key may be,
    /// [`KvError::Closed`], or [`KvError::Storage`] when the read fails.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        let limits = self.store.limits();
        limits.check_len(prefix)?;
        if let Some(after) = after {
            limits.check_len(after)?;
        }
        let plugin_id = Arc::clone(&self.plugin_id);
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        let limit = limit.min(KV_LIST_MAX) as usize;
        let keys = self
            .store
            .read(move |db| read_list(db, &plugin_id, &prefix, after.as_deref(), limit))
            .await?;
        Ok(keys)
    }

    /// The bytes (keys plus values) this namespace stores, as counted against the quota.
    ///
    /// # Errors
    ///
    /// [`KvError::Closed`], or [`KvError::Storage`] when the read fails.
    pub async fn usage(&self) -> Result<u64, KvError> {
        let plugin_id = Arc::clone(&self.plugin_id);
        Ok(self
            .store
            .read(move |db| read_usage(db, &plugin_id))
            .await?)
    }
}

fn read_get(db: &Database, plugin_id: &str, key: &str) -> Result<Option<String>, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(PLUGIN_KV).map_err(storage)?;
    let value = table.get((plugin_id, key)).map_err(storage)?;
    Ok(value.map(|v| v.value().to_owned()))
}

fn read_list(
    db: &Database,
    plugin_id: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(PLUGIN_KV).map_err(storage)?;
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded((plugin_id, after)),
        _ => Bound::Included((plugin_id, prefix)),
    };
    let mut keys = Vec::new();
    for entry in table.range((start, Bound::Unbounded)).map_err(storage)? {
        if keys.len() >= limit {
            break;
        }
        let (k, _) = entry.map_err(storage)?;
        let (owner, key) = k.value();
        // The range is sorted by (plugin, key): the first key outside the prefix ends the match.
        if owner != plugin_id || !key.starts_with(prefix) {
            break;
        }
        keys.push(key.to_owned());
    }
    Ok(keys)
}

fn read_usage(db: &Database, plugin_id: &str) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(PLUGIN_KV_USAGE).map_err(storage)?;
    let used = table.get(plugin_id).map_err(storage)?;
    Ok(used.map_or(0, |v| v.value()))
}

/// The `plugin_kv` table, open for writing.
pub(crate) type KvTable<'txn> = Table<'txn, (&'static str, &'static str), &'static str>;

/// Per-plugin byte counts for one batch: read once, kept in memory, written back at the end.
pub(crate) struct Usage<'txn> {
    table: Table<'txn, &'static str, u64>,
    counts: HashMap<String, u64>,
}

impl<'txn> Usage<'txn> {
    pub(crate) fn new(table: Table<'txn, &'static str, u64>) -> Self {
        Usage {
            table,
            counts: HashMap::new(),
        }
    }

    fn get(&mut self, plugin_id: &str) -> Result<u64, StoreError> {
        if let Some(&used) = self.counts.get(plugin_id) {
            return Ok(used);
        }
        let used = self
            .table
            .get(plugin_id)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        self.counts.insert(plugin_id.to_owned(), used);
        Ok(used)
    }

    fn set(&mut self, plugin_id: &str, used: u64) {
        if let Some(count) = self.counts.get_mut(plugin_id) {
            *count = used;
        } else {
            self.counts.insert(plugin_id.to_owned(), used);
        }
    }

    pub(crate) fn flush(mut self) -> Result<(), StoreError> {
        for (plugin_id, used) in self.counts.drain() {
            if used == 0 {
                self.table.remove(plugin_id.as_str()).map_err(storage)?;
            } else {
                self.table
                    .insert(plugin_id.as_str(), used)
                    .map_err(storage)?;
            }
        }
        Ok(())
    }
}

/// Sets `key` unless that takes the plugin past its quota.
pub(crate) fn apply_set(
    table: &mut KvTable<'_>,
    usage: &mut Usage<'_>,
    limits: &KvLimits,
    plugin_id: &str,
    key: &str,
    value: &str,
) -> Result<Outcome, StoreError> {
    let used = usage.get(plugin_id)?;
    let requested = (key.len() + value.len()) as u64;
    if used.saturating_add(requested) <= limits.max_bytes_per_plugin {
        // Fits whatever the old value was: one lookup, by the insert itself.
        put(table, usage, plugin_id, key, value, used)?;
        return Ok(Outcome::Done);
    }
    let old = old_size(table, plugin_id, key)?;
    let new_used = used.saturating_sub(old.unwrap_or(0)) + requested;
    // Only growth is refused, so a namespace over a lowered quota can still shrink.
    if new_used > limits.max_bytes_per_plugin && new_used > used {
        return Ok(Outcome::Refused(KvError::QuotaExceeded {
            plugin: plugin_id.to_owned(),
            used,
            requested,
            max: limits.max_bytes_per_plugin,
        }));
    }
    put(table, usage, plugin_id, key, value, used)?;
    Ok(Outcome::Done)
}

/// Inserts, and counts the new value instead of the old one.
fn put(
    table: &mut KvTable<'_>,
    usage: &mut Usage<'_>,
    plugin_id: &str,
    key: &str,
    value: &str,
    used: u64,
) -> Result<(), StoreError> {
    let old = table
        .insert((plugin_id, key), value)
        .map_err(storage)?
        .map_or(0, |v| (key.len() + v.value().len()) as u64);
    let new_used = used.saturating_sub(old) + (key.len() + value.len()) as u64;
    usage.set(plugin_id, new_used);
    Ok(())
}

/// Sets `key` with no quota check: replaying a write that was acknowledged.
pub(crate) fn replay_set(
    table: &mut KvTable<'_>,
    usage: &mut Usage<'_>,
    plugin_id: &str,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    let used = usage.get(plugin_id)?;
    put(table, usage, plugin_id, key, value, used)
}

fn old_size(table: &KvTable<'_>, plugin_id: &str, key: &str) -> Result<Option<u64>, StoreError> {
    Ok(table
        .get((plugin_id, key))
        .map_err(storage)?
        .map(|v| (key.len() + v.value().len()) as u64))
}

pub(crate) fn apply_delete(
    table: &mut KvTable<'_>,
    usage: &mut Usage<'_>,
    plugin_id: &str,
    key: &str,
) -> Result<Outcome, StoreError> {
    let Some(old) = table.remove((plugin_id, key)).map_err(storage)? else {
        return Ok(Outcome::Existed(false));
    };
    let freed = (key.len() + old.value().len()) as u64;
    drop(old);
    let used = usage.get(plugin_id)?;
    usage.set(plugin_id, used.saturating_sub(freed));
    Ok(Outcome::Existed(true))
}
