//! The writer thread: group commit of every write waiting in the queue.
//!
//! The thread takes the first queued write, then everything else queued (up to [`MAX_BATCH`],
//! waiting briefly for more after a busy commit; see [`gather`]), applies them in order in one write transaction, commits it durably, and only
//! then answers each write. A write refused on its own merits (a quota) is answered with its
//! error and leaves the rest of the batch alone; a storage or commit failure fails the whole
//! batch, and nothing of it is kept.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::error::{StoreError, storage};
use super::kv::{KvLimits, Usage};
use super::{KvError, events, kv};

/// The most writes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// The longest the writer waits for more writes before a commit; see [`gather`].
const MAX_LINGER: Duration = Duration::from_micros(500);

/// One write for the writer thread, with where to send its answer.
pub(crate) enum Op {
    KvSet {
        plugin_id: Arc<str>,
        key: String,
        value: String,
        reply: oneshot::Sender<Result<(), KvError>>,
    },
    KvDelete {
        plugin_id: Arc<str>,
        key: String,
        reply: oneshot::Sender<Result<bool, KvError>>,
    },
    SetSetting {
        key: String,
        value: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    RecordEvent {
        plugin_id: String,
        time_ms: u64,
        json: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CleanupEvents {
        older_than_ms: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Commit what is queued, then stop. Answered once the thread has let go of the database.
    Close { reply: oneshot::Sender<()> },
}

/// What one write did, to be sent once its batch is committed.
pub(crate) enum Outcome {
    Done,
    Existed(bool),
    Count(u64),
    Refused(KvError),
}

/// The writer thread's handle; dropping it waits for the thread to end.
pub(crate) struct WriterThread(Option<JoinHandle<()>>);

impl WriterThread {
    pub(crate) fn spawn(
        db: Arc<Database>,
        rx: mpsc::Receiver<Op>,
        limits: KvLimits,
    ) -> Result<Self, StoreError> {
        let handle = std::thread::Builder::new()
            .name("toru-store-writer".into())
            .spawn(move || run(db, rx, limits))
            .map_err(StoreError::Thread)?;
        Ok(WriterThread(Some(handle)))
    }

    pub(crate) fn take(&mut self) -> Option<JoinHandle<()>> {
        self.0.take()
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        // The queue's sender is already gone (it is dropped first), so the thread is finishing
        // its last batch; waiting makes the file's release deterministic.
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

fn run(db: Arc<Database>, mut rx: mpsc::Receiver<Op>, limits: KvLimits) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut close_replies = Vec::new();
    let mut linger = Duration::ZERO;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        gather(&mut rx, &mut batch, linger);
        let started = Instant::now();
        let result = commit(&db, &batch, &limits);
        linger = if batch.len() > 1 {
            (started.elapsed() / 4).min(MAX_LINGER)
        } else {
            Duration::ZERO
        };
        let outcomes = match result {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "store commit failed");
                batch.iter().map(|_| Err(e.share())).collect::<Vec<_>>()
            }
        };
        for (op, outcome) in batch.drain(..).zip(outcomes) {
            if let Op::Close { reply } = op {
                // Refuse new writes; those already queued are still committed.
                rx.close();
                close_replies.push(reply);
            } else {
                answer(op, outcome);
            }
        }
    }
    drop(db);
    for reply in close_replies {
        let _ = reply.send(());
    }
}

/// Adds queued writes to `batch` until none has come for `linger`.
///
/// The callers answered by the last commit are typically re-submitting right now; without a
/// short wait for them, concurrent writers split into two groups that take turns, and every
/// round costs two commits instead of one. So after a commit of several writes, the writer
/// waits (yielding the CPU, never sleeping) for a quarter of that commit's time, at most
/// [`MAX_LINGER`], after the last arrival. After a lone write it does not wait at all.
fn gather(rx: &mut mpsc::Receiver<Op>, batch: &mut Vec<Op>, linger: Duration) {
    let mut last_arrival = Instant::now();
    loop {
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if batch.len() >= MAX_BATCH {
            return;
        }
        if batch.len() > before {
            last_arrival = Instant::now();
        } else if last_arrival.elapsed() >= linger {
            return;
        }
        std::thread::yield_now();
    }
}

/// Applies `batch` in one write transaction and commits it durably.
fn commit(db: &Database, batch: &[Op], limits: &KvLimits) -> Result<Vec<Outcome>, StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut tables = Tables::new(&txn);
        for op in batch {
            outcomes.push(apply(&mut tables, limits, op)?);
        }
        tables.finish()?;
    }
    txn.commit().map_err(storage)?;
    tracing::trace!(writes = batch.len(), "store batch committed");
    Ok(outcomes)
}

fn apply(tables: &mut Tables<'_>, limits: &KvLimits, op: &Op) -> Result<Outcome, StoreError> {
    match op {
        Op::KvSet {
            plugin_id,
            key,
            value,
            ..
        } => {
            let (table, usage) = tables.kv()?;
            kv::apply_set(table, usage, limits, plugin_id, key, value)
        }
        Op::KvDelete { plugin_id, key, .. } => {
            let (table, usage) = tables.kv()?;
            kv::apply_delete(table, usage, plugin_id, key)
        }
        Op::SetSetting { key, value, .. } => {
            let table = open(&mut tables.settings, || {
                tables.txn.open_table(super::SETTINGS)
            })?;
            table
                .insert(key.as_str(), value.as_str())
                .map_err(storage)?;
            Ok(Outcome::Done)
        }
        Op::RecordEvent {
            plugin_id,
            time_ms,
            json,
            ..
        } => {
            let (events, index) = tables.events()?;
            events::apply_record(events, index, plugin_id, *time_ms, json)
        }
        Op::CleanupEvents { older_than_ms, .. } => {
            let (events, index) = tables.events()?;
            events::apply_cleanup(events, index, *older_than_ms)
        }
        Op::Close { .. } => Ok(Outcome::Done),
    }
}

/// The tables a batch writes, each opened when a write first needs it.
struct Tables<'txn> {
    txn: &'txn WriteTransaction,
    kv: Option<(kv::KvTable<'txn>, Usage<'txn>)>,
    settings: Option<Table<'txn, &'static str, &'static str>>,
    events: Option<(events::Events<'txn>, events::Index<'txn>)>,
}

impl<'txn> Tables<'txn> {
    fn new(txn: &'txn WriteTransaction) -> Self {
        Tables {
            txn,
            kv: None,
            settings: None,
            events: None,
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

    /// Writes back what is kept in memory during the batch (the KV usage counts).
    fn finish(self) -> Result<(), StoreError> {
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

fn answer(op: Op, outcome: Result<Outcome, StoreError>) {
    // A caller that gave up waiting has dropped its receiver; its write stands regardless.
    match op {
        Op::KvSet { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Refused(e)) => Err(e),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            });
        }
        Op::KvDelete { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Existed(existed)) => Ok(existed),
                Ok(Outcome::Refused(e)) => Err(e),
                Ok(_) => Ok(false),
                Err(e) => Err(e.into()),
            });
        }
        Op::SetSetting { reply, .. } | Op::RecordEvent { reply, .. } => {
            let _ = reply.send(outcome.map(|_| ()));
        }
        Op::CleanupEvents { reply, .. } => {
            let _ = reply.send(outcome.map(|o| match o {
                Outcome::Count(n) => n,
                _ => 0,
            }));
        }
        Op::Close { reply } => {
            let _ = reply.send(());
        }
    }
}
