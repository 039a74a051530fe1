//! Committing batches: apply to redb, log, acknowledge; checkpoints; recovery at open.
//!
//! A batch is applied in one redb write transaction, and the changes it made are appended to
//! the log (`log.rs`) as one record and `fdatasync`ed; only then is the transaction committed,
//! *without* `fsync` ([`Durability::None`]), and the batch acknowledged. So a write is
//! acknowledged once it is durable in the log, and readers see it from that moment on (never
//! before: until the commit, readers see the state before the batch).
//!
//! A commit without `fsync` keeps redb's changed pages in memory; a **checkpoint** (a durable
//! redb commit) writes them all and `fsync`s once, records in the `store_log` table which log
//! records it covers, and starts the log over. Checkpoints run when the log reaches
//! [`CHECKPOINT_BYTES`], after [`CHECKPOINT_INTERVAL`] with changes, after [`IDLE_CHECKPOINT`]
//! without a commit, and at close. The log costs one sequential write and one `fdatasync` per
//! batch, however many pages of the B-tree the batch changes: that is what lets group commit
//! scale on a keyspace spread over many pages.
//!
//! At open, the records that the last checkpoint did not cover are applied again (recovery),
//! then a checkpoint makes them durable in redb.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase};

use super::STORE_LOG;
use super::apply::{Tables, apply, replay_change};
use super::error::{StoreError, storage};
use super::kv::KvLimits;
use super::log::{self, HEADER, Log, ReadError};
use super::op::{Op, Outcome};
use super::record;

/// The log's size that triggers a checkpoint.
pub(crate) const CHECKPOINT_BYTES: u64 = 8 << 20;
/// The longest a change waits for a checkpoint while writes keep coming.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// A checkpoint is due once no batch has been committed for this long.
pub(crate) const IDLE_CHECKPOINT: Duration = Duration::from_secs(5);

/// Keys of the `store_log` table, written by every checkpoint.
mod meta {
    /// The current log generation's salt.
    pub(super) const SALT: &str = "salt";
    /// The sequence number of the generation's first record.
    pub(super) const BASE: &str = "base";
    /// The last record whose changes redb holds (also written by every batch).
    pub(super) const APPLIED: &str = "applied";
    /// 1 while the log may hold records redb has not made durable; 0 after a clean close.
    pub(super) const OPEN: &str = "open";
}

/// The state the writer works on: the database, the log and what has not been checkpointed.
pub(crate) struct Engine {
    db: Arc<Database>,
    log: Log,
    limits: KvLimits,
    /// The record being built: [`HEADER`] bytes of room, then the changes.
    record: Vec<u8>,
    /// Batches committed since the last checkpoint.
    uncheckpointed: u64,
    last_checkpoint: Instant,
    last_commit: Instant,
    /// An append failed: the log may end in a torn or unacknowledged record, so nothing more is
    /// appended to this generation before a checkpoint starts a new one.
    log_broken: bool,
    /// A batch is in the log but its redb commit failed, or a checkpoint's commit failed (its
    /// new salt may or may not be durable): redb and the log may disagree until the store is
    /// reopened (which replays the log), so nothing more is committed.
    failed: Option<StoreError>,
    #[cfg(test)]
    pub(crate) stats: Stats,
}

/// What the engine has done, for tests.
#[cfg(test)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// Batches logged and committed.
    pub(crate) batches: u64,
    pub(crate) checkpoints: u64,
    /// Records applied again at open.
    pub(crate) replayed: u64,
}

impl Engine {
    /// Recovers what the log holds beyond the last checkpoint, then checkpoints.
    pub(crate) fn open(
        db: Arc<Database>,
        db_path: &Path,
        limits: KvLimits,
    ) -> Result<Engine, StoreError> {
        let path = log::path_for(db_path);
        let log_error = |e| StoreError::log(path.clone(), e);
        let meta = Meta::read(&db)?;
        let file = match log::open_file(&path).map_err(log_error)? {
            Some(file) => file,
            None if meta.as_ref().is_some_and(|m| m.open) => {
                return Err(StoreError::LogMissing { path });
            }
            None => log::create_file(&path).map_err(log_error)?,
        };
        let mut applied = meta.as_ref().map_or(0, |m| m.applied);
        let mut replayed = 0u64;
        if let Some(meta) = &meta {
            let started = Instant::now();
            log::read(&file, meta.salt, meta.base, |r| {
                if r.lsn > applied {
                    replay(&db, &path, r.lsn, &r.payload).map_err(Recovery::Store)?;
                    applied = r.lsn;
                    replayed += 1;
                }
                Ok(())
            })
            .map_err(|e| match e {
                Recovery::Store(e) => e,
                Recovery::Read(ReadError::Io(e)) => StoreError::log(path.clone(), e),
                Recovery::Read(e) => StoreError::LogCorrupt {
                    path: path.clone(),
                    detail: e.to_string(),
                },
            })?;
            if replayed > 0 {
                tracing::info!(
                    log = %path.display(),
                    batches = replayed,
                    took = ?started.elapsed(),
                    "recovered writes from the log"
                );
            }
        }
        let log = Log::new(file, path.clone(), 0, applied + 1).map_err(log_error)?;
        let mut engine = Engine {
            db,
            log,
            limits,
            record: Vec::new(),
            uncheckpointed: 0,
            last_checkpoint: Instant::now(),
            last_commit: Instant::now(),
            log_broken: false,
            failed: None,
            #[cfg(test)]
            stats: Stats {
                replayed,
                ..Stats::default()
            },
        };
        engine.checkpoint(true)?;
        Ok(engine)
    }

    /// Applies `batch` in order, logs what it changed, commits, and returns each write's
    /// outcome. A write refused on its own merits (a quota) is an outcome; an error fails the
    /// whole batch, and nothing of it is kept.
    pub(crate) fn commit(&mut self, batch: &[Op]) -> Result<Vec<Outcome>, StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.share());
        }
        if self.log_broken {
            self.checkpoint(true)?;
        }
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::None).map_err(storage)?;
        self.record.clear();
        self.record.resize(HEADER, 0);
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut tables = Tables::new(&txn);
            for op in batch {
                outcomes.push(apply(&mut tables, &self.limits, op, &mut self.record)?);
            }
            if self.record.len() == HEADER {
                // Nothing changed (refusals, deletes of missing keys): nothing to make durable.
                drop(tables);
                txn.abort().map_err(storage)?;
                return Ok(outcomes);
            }
            let lsn = self.log.next_lsn();
            tables.meta()?.insert(meta::APPLIED, lsn).map_err(storage)?;
            tables.finish()?;
        }
        if let Err(e) = self.log.append(&mut self.record) {
            self.log_broken = true;
            let _ = txn.abort();
            let e = StoreError::log(self.log.path().to_path_buf(), e);
            tracing::error!(error = %e, writes = batch.len(), "store log append failed");
            return Err(e);
        }
        if let Err(e) = txn.commit() {
            let e = storage(e);
            tracing::error!(
                error = %e,
                "store commit failed after logging; the store refuses writes until reopened"
            );
            self.failed = Some(e.share());
            return Err(e);
        }
        self.uncheckpointed += 1;
        self.last_commit = Instant::now();
        #[cfg(test)]
        {
            self.stats.batches += 1;
        }
        tracing::trace!(
            writes = batch.len(),
            bytes = self.record.len(),
            "store batch committed"
        );
        Ok(outcomes)
    }

    /// Whether a checkpoint is due: the log is large, a change has waited long, or nothing has
    /// been committed for a while.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.failed.is_none()
            && (self.log_broken
                || self.log.bytes() >= CHECKPOINT_BYTES
                || (self.uncheckpointed > 0
                    && (self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
                        || self.last_commit.elapsed() >= IDLE_CHECKPOINT)))
    }

    /// Makes everything committed durable in redb and starts the log over. `open` is false only
    /// for the last checkpoint before the file is released.
    pub(crate) fn checkpoint(&mut self, open: bool) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.share());
        }
        let started = Instant::now();
        let salt = uuid::Uuid::new_v4().as_u64_pair().0;
        let base = self.log.next_lsn();
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut table = txn.open_table(STORE_LOG).map_err(storage)?;
            for (key, value) in [
                (meta::SALT, salt),
                (meta::BASE, base),
                (meta::APPLIED, base - 1),
                (meta::OPEN, u64::from(open)),
            ] {
                table.insert(key, value).map_err(storage)?;
            }
        }
        if let Err(e) = txn.commit() {
            // The new salt may or may not be durable: records appended now could be unreadable
            // at the next open, so nothing more is acknowledged until then.
            let e = storage(e);
            tracing::error!(error = %e, "store checkpoint failed; the store refuses writes until reopened");
            self.failed = Some(e.share());
            return Err(e);
        }
        let path = self.log.path().to_path_buf();
        self.log
            .restart(salt, base, 2 * CHECKPOINT_BYTES)
            .map_err(|e| StoreError::log(path, e))?;
        tracing::debug!(
            batches = self.uncheckpointed,
            took = ?started.elapsed(),
            "store checkpoint"
        );
        self.uncheckpointed = 0;
        self.last_checkpoint = Instant::now();
        self.log_broken = false;
        #[cfg(test)]
        {
            self.stats.checkpoints += 1;
        }
        Ok(())
    }

    /// The log, for tests.
    #[cfg(test)]
    pub(crate) fn log(&mut self) -> &mut Log {
        &mut self.log
    }

    /// Whether redb and the log disagree after a failed commit (the final checkpoint is skipped
    /// then, so the next open replays the log).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.is_some()
    }
}

/// The log's position as the last checkpoint recorded it.
struct Meta {
    salt: u64,
    base: u64,
    applied: u64,
    open: bool,
}

impl Meta {
    /// `None` for a database no checkpoint has written (new, or from before the log existed).
    fn read(db: &Database) -> Result<Option<Meta>, StoreError> {
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(STORE_LOG) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let get = |key| -> Result<Option<u64>, StoreError> {
            Ok(table.get(key).map_err(storage)?.map(|v| v.value()))
        };
        let (Some(salt), Some(base), Some(applied), Some(open)) = (
            get(meta::SALT)?,
            get(meta::BASE)?,
            get(meta::APPLIED)?,
            get(meta::OPEN)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Meta {
            salt,
            base,
            applied,
            open: open != 0,
        }))
    }
}

/// A failure while recovering: reading the log, or applying what it holds.
enum Recovery {
    Read(ReadError),
    Store(StoreError),
}

impl From<ReadError> for Recovery {
    fn from(e: ReadError) -> Self {
        Recovery::Read(e)
    }
}

/// Applies the changes of record `lsn` again, in one transaction of its own.
fn replay(db: &Database, path: &Path, lsn: u64, payload: &[u8]) -> Result<(), StoreError> {
    let corrupt = |detail: String| StoreError::LogCorrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::None).map_err(storage)?;
    {
        let mut tables = Tables::new(&txn);
        for change in record::decode(payload) {
            let change = change.map_err(|e| corrupt(format!("record {lsn}: {e}")))?;
            replay_change(&mut tables, change)?;
        }
        tables.meta()?.insert(meta::APPLIED, lsn).map_err(storage)?;
        tables.finish()?;
    }
    txn.commit().map_err(storage)
}
