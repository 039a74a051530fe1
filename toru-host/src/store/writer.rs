//! The writer thread: group commit of every write waiting in the queue.
//!
//! The thread takes the first queued write, then everything else already queued (up to
//! [`MAX_BATCH`]), applies them in order in one write transaction, commits it durably, and only
//! then answers each write. A write refused on its own merits (a quota) is answered with its
//! error and leaves the rest of the batch alone; a storage or commit failure fails the whole
//! batch, and nothing of it is kept.

use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot};

use super::error::{StoreError, storage};
use super::kv::{KvLimits, Usage};
use super::{KvError, events, kv};

/// The most writes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

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
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        gather(&mut rx, &mut batch);
        STATS_B.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        STATS_O.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let t0 = std::time::Instant::now();
        let r = commit(&db, &batch, &limits);
        STATS_T.fetch_add(
            t0.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let outcomes = match r {
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
    eprintln!(
        "STATS batches {} ops {} commit_us {}",
        STATS_B.load(std::sync::atomic::Ordering::Relaxed),
        STATS_O.load(std::sync::atomic::Ordering::Relaxed),
        STATS_T.load(std::sync::atomic::Ordering::Relaxed)
    );
    drop(db);
    for reply in close_replies {
        let _ = reply.send(());
    }
}

/// Adds the writes already queued to `batch`. The callers answered by the last commit are
/// typically re-submitting right now, so while yielding the CPU brings more writes, keep
/// gathering: without this, batches alternate between a few writes and the rest. A lone writer
/// pays one `sched_yield`, never a sleep.
fn gather(rx: &mut mpsc::Receiver<Op>, batch: &mut Vec<Op>) {
    loop {
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if batch.len() == before || batch.len() >= MAX_BATCH {
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
        let mut kv_table = txn.open_table(super::PLUGIN_KV).map_err(storage)?;
        let mut usage = Usage::new(txn.open_table(super::PLUGIN_KV_USAGE).map_err(storage)?);
        let mut settings_table = txn.open_table(super::SETTINGS).map_err(storage)?;
        let mut events_table = txn.open_table(super::PLUGIN_EVENTS).map_err(storage)?;
        let mut index = txn
            .open_table(super::PLUGIN_EVENTS_BY_PLUGIN)
            .map_err(storage)?;
        for op in batch {
            let outcome = match op {
                Op::KvSet {
                    plugin_id,
                    key,
                    value,
                    ..
                } => kv::apply_set(&mut kv_table, &mut usage, limits, plugin_id, key, value)?,
                Op::KvDelete { plugin_id, key, .. } => {
                    kv::apply_delete(&mut kv_table, &mut usage, plugin_id, key)?
                }
                Op::SetSetting { key, value, .. } => {
                    settings_table
                        .insert(key.as_str(), value.as_str())
                        .map_err(storage)?;
                    Outcome::Done
                }
                Op::RecordEvent {
                    plugin_id,
                    time_ms,
                    json,
                    ..
                } => {
                    events::apply_record(&mut events_table, &mut index, plugin_id, *time_ms, json)?
                }
                Op::CleanupEvents { older_than_ms, .. } => {
                    events::apply_cleanup(&mut events_table, &mut index, *older_than_ms)?
                }
                Op::Close { .. } => Outcome::Done,
            };
            outcomes.push(outcome);
        }
        usage.flush()?;
    }
    txn.commit().map_err(storage)?;
    tracing::trace!(writes = batch.len(), "store batch committed");
    Ok(outcomes)
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

static STATS_B: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STATS_O: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STATS_T: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
