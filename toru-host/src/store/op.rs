//! One write, with where to send its answer, and what it did.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::KvError;
use super::error::StoreError;

/// One write, with where to send its answer.
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
}

impl Op {
    /// Bytes of keys and values.
    pub(crate) fn size(&self) -> usize {
        match self {
            Op::KvSet {
                plugin_id,
                key,
                value,
                ..
            } => plugin_id.len() + key.len() + value.len(),
            Op::KvDelete { plugin_id, key, .. } => plugin_id.len() + key.len(),
            Op::SetSetting { key, value, .. } => key.len() + value.len(),
            Op::RecordEvent {
                plugin_id, json, ..
            } => plugin_id.len() + json.len(),
            Op::CleanupEvents { .. } => 0,
        }
    }
}

/// What one write did, to be sent once its batch is committed.
pub(crate) enum Outcome {
    Done,
    Existed(bool),
    Count(u64),
    Refused(KvError),
}

/// Answers each write of `batch` with its outcome, or all of them with the batch's error.
pub(crate) fn answer_all(
    batch: impl IntoIterator<Item = Op>,
    result: Result<Vec<Outcome>, StoreError>,
) {
    match result {
        Ok(outcomes) => {
            for (op, outcome) in batch.into_iter().zip(outcomes) {
                answer(op, Ok(outcome));
            }
        }
        Err(e) => {
            for op in batch {
                answer(op, Err(e.share()));
            }
        }
    }
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
    }
}
