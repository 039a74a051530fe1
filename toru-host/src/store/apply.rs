//! What a batch does to the tables: each write applied with its limits (and the change it made
//! recorded for the log), or a logged change applied again on recovery.

use redb::{Table, WriteTransaction};

use super::error::{StoreError, storage};
use super::kv::{self, KvLimits, Usage};
use super::op::{Op, Outcome};
use super::record::Change;
use super::{STORE_LOG, events};

/// Applies `op`, and appends the change it made, if any, to `record`.
pub(crate) fn apply(
    tables: &mut Tables<'_>,
    limits: &KvLimits,
    op: &Op,
    record: &mut Vec<u8>,
) -> Result<Outcome, StoreError> {
    let (outcome, change) = match op {
        Op::KvSet {
            plugin_id,
            key,
            value,
            ..
        } => {
            let (table, usage) = tables.kv()?;
            let outcome = kv::apply_set(table, usage, limits, plugin_id, key, value)?;
            let change = matches!(outcome, Outcome::Done).then_some(Change::KvSet {
                plugin: plugin_id,
                key,
                value,
            });
            (outcome, change)
        }
        Op::KvDelete { plugin_id, key, .. } => {
            let (table, usage) = tables.kv()?;
            let outcome = kv::apply_delete(table, usage, plugin_id, key)?;
            let change = matches!(outcome, Outcome::Existed(true)).then_some(Change::KvDelete {
                plugin: plugin_id,
                key,
            });
            (outcome, change)
        }
        Op::SetSetting { key, value, .. } => {
            tables
                .settings()?
                .insert(key.as_str(), value.as_str())
                .map_err(storage)?;
            (Outcome::Done, Some(Change::Setting { key, value }))
        }
        Op::RecordEvent {
            plugin_id,
            time_ms,
            json,
            ..
        } => {
            let (events, index) = tables.events()?;
            let seq = events::apply_record(events, index, plugin_id, *time_ms, json)?;
            let change = Change::Event {
                plugin: plugin_id,
                time_ms: *time_ms,
                seq,
                json,
            };
            (Outcome::Done, Some(change))
        }
        Op::CleanupEvents { older_than_ms, .. } => {
            let (events, index) = tables.events()?;
            let count = events::apply_cleanup(events, index, *older_than_ms)?;
            let change = (count > 0).then_some(Change::CleanupEvents {
                older_than_ms: *older_than_ms,
            });
            (Outcome::Count(count), change)
        }
    };
    if let Some(change) = change {
        change.encode(record);
    }
    Ok(outcome)
}

/// Applies a change read back from the log.
pub(crate) fn replay_change(tables: &mut Tables<'_>, change: Change<'_>) -> Result<(), StoreError> {
    match change {
        Change::KvSet { plugin, key, value } => {
            let (table, usage) = tables.kv()?;
            kv::replay_set(table, usage, plugin, key, value)
        }
        Change::KvDelete { plugin, key } => {
            let (table, usage) = tables.kv()?;
            kv::apply_delete(table, usage, plugin, key).map(drop)
        }
        Change::Setting { key, value } => {
            tables.settings()?.insert(key, value).map_err(storage)?;
            Ok(())
        }
        Change::Event {
            plugin,
            time_ms,
            seq,
            json,
        } => {
            let (events, index) = tables.events()?;
            events::insert(events, index, plugin, time_ms, seq, json)
        }
        Change::CleanupEvents { older_than_ms } => {
            let (events, index) = tables.events()?;
            events::apply_cleanup(events, index, older_than_ms).map(drop)
        }
    }
}

/// The tables a batch writes, each opened when a write first needs it.
pub(crate) struct Tables<'txn> {
    txn: &'txn WriteTransaction,
    kv: Option<(kv::KvTable<'txn>, Usage<'txn>)>,
    settings: Option<Table<'txn, &'static str, &'static str>>,
    events: Option<(events::Events<'txn>, events::Index<'txn>)>,
    meta: Option<Table<'txn, &'static str, u64>>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn new(txn: &'txn WriteTransaction) -> Self {
        Tables {
            txn,
            kv: None,
            settings: None,
            events: None,
            meta: None,
        }
    }

    fn kv(&mut self) -> Result<(&mut kv::KvTable<'txn>, &mut Usage<'txn>), StoreError> {
        let txn = self.txn;
        let (table, usage) = open(&mut self.kv, || {
            Ok::<_, redb::TableError>((
                txn.open_table(super::PLUGIN_KV)?,
                Usage::new(txn.open_table(super::PLUGIN_KV_USAGE)?),
            ))
        })?;
        Ok((table, usage))
    }

    fn settings(&mut self) -> Result<&mut Table<'txn, &'static str, &'static str>, StoreError> {
        let txn = self.txn;
        open(&mut self.settings, || txn.open_table(super::SETTINGS))
    }

    fn events(
        &mut self,
    ) -> Result<(&mut events::Events<'txn>, &mut events::Index<'txn>), StoreError> {
        let txn = self.txn;
        let (events, index) = open(&mut self.events, || {
            Ok::<_, redb::TableError>((
                txn.open_table(super::PLUGIN_EVENTS)?,
                txn.open_table(super::PLUGIN_EVENTS_BY_PLUGIN)?,
            ))
        })?;
        Ok((events, index))
    }

    /// The `store_log` table.
    pub(crate) fn meta(&mut self) -> Result<&mut Table<'txn, &'static str, u64>, StoreError> {
        let txn = self.txn;
        open(&mut self.meta, || txn.open_table(STORE_LOG))
    }

    /// Writes back what is kept in memory during the batch (the KV usage counts).
    pub(crate) fn finish(self) -> Result<(), StoreError> {
        match self.kv {
            Some((_, usage)) => usage.flush(),
            None => Ok(()),
        }
    }
}

fn open<T, E: Into<redb::Error>>(
    slot: &mut Option<T>,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<&mut T, StoreError> {
    let opened = match slot.take() {
        Some(opened) => opened,
        None => f().map_err(storage)?,
    };
    Ok(slot.insert(opened))
}
