//! Who commits: a lone write on its caller's thread, concurrent writes in groups on the writer
//! thread.
//!
//! One [`Engine`] (the database and its log) is shared behind a mutex. A write that finds
//! nothing queued and the engine free commits right away on its own thread, inside
//! [`tokio::task::block_in_place`], with no hand-off to another thread and back: that is the lone
//! write's whole cost, one redb transaction and one log append. Every other write is queued (the
//! queue is bounded: see [`QUEUE_PERMITS`]) and the writer thread commits whatever is queued in
//! one batch (group commit), so many writers share one `fdatasync`. While the writer thread is
//! busy, waiting a moment for the next writes (see [`gather`]), or has just committed a group
//! (see [`MIN_HOLD`]), it holds the engine, so new writes join the queue rather than commit
//! alone.
//!
//! The inline path needs a thread that may block: a task on a multi-threaded tokio runtime. On a
//! current-thread runtime, or outside tokio, every write goes through the writer thread. The
//! writer thread also runs the checkpoints (`commit.rs`), so a caller never pays for one.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

use super::commit::Engine;
use super::error::StoreError;
use super::op::{Op, answer_all};

/// The most writes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// A batch stops growing once its keys and values reach this many bytes.
pub(crate) const MAX_BATCH_BYTES: usize = 16 << 20;
/// The longest the writer waits for more writes before a commit; see [`gather`].
const MAX_LINGER: Duration = Duration::from_micros(500);
/// The queue's bound, in permits: a write takes one, plus one per KiB of its keys and values,
/// so the queue holds at most 65,536 writes and 64 MiB. Writers beyond it wait for room. (The
/// crate's tests use a smaller bound, to reach it.)
pub(crate) const QUEUE_PERMITS: usize = if cfg!(test) { 1024 } else { 64 * 1024 };
/// How often the idle writer thread wakes to see whether a checkpoint is due.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// After committing a group, the writer thread keeps the engine for four times that commit's
/// duration, within these bounds, so that the group's writers, coming back, queue again
/// rather than commit alone.
const MIN_HOLD: Duration = Duration::from_millis(1);
const MAX_HOLD: Duration = Duration::from_millis(100);

/// The queue permits `op` holds while queued.
fn permits(op: &Op) -> u32 {
    (1 + op.size() / 1024).min(QUEUE_PERMITS) as u32
}

/// The writer: the engine, the queue, and the thread that commits groups.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a write is queued, a checkpoint is wanted, or the store closes.
    work: Condvar,
    /// `None` once the writer thread has released the database.
    engine: Mutex<Option<Engine>>,
    room: Semaphore,
    #[cfg(test)]
    inline_commits: std::sync::atomic::AtomicU64,
}

struct Queue {
    ops: VecDeque<(Op, u32)>,
    /// No more writes are taken; the thread commits what is queued and stops.
    closing: bool,
    /// A write committed inline found a checkpoint due.
    checkpoint: bool,
    /// The writer thread is waiting on [`Shared::work`] for something to do: the next write
    /// queued must wake it. (While it gathers a batch it polls instead, so that the writes of a
    /// group do not each pay for waking it.)
    sleeping: bool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Writer {
    pub(crate) fn spawn(engine: Engine) -> Result<Writer, StoreError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                ops: VecDeque::new(),
                closing: false,
                checkpoint: false,
                sleeping: false,
            }),
            work: Condvar::new(),
            engine: Mutex::new(Some(engine)),
            room: Semaphore::new(QUEUE_PERMITS),
            #[cfg(test)]
            inline_commits: Default::default(),
        });
        let for_thread = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("toru-store-writer".into())
            .spawn(move || run(&for_thread))
            .map_err(StoreError::Thread)?;
        Ok(Writer {
            shared,
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Commits `op` now on this thread if nothing else is being committed, else queues it for
    /// the writer thread. Either way, `op`'s reply carries the outcome.
    pub(crate) async fn submit(&self, op: Op) -> Result<(), StoreError> {
        let Some(op) = self.try_inline(op)? else {
            return Ok(());
        };
        let permits = permits(&op);
        self.shared
            .room
            .acquire_many(permits)
            .await
            .map_err(|_| StoreError::Closed)?
            .forget();
        let mut queue = self.shared.queue();
        if queue.closing {
            drop(queue);
            self.shared.room.add_permits(permits as usize);
            return Err(StoreError::Closed);
        }
        queue.ops.push_back((op, permits));
        let wake = std::mem::take(&mut queue.sleeping);
        drop(queue);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Commits `op` on this thread when that is allowed and nothing else is queued or being
    /// committed; gives it back otherwise.
    fn try_inline(&self, op: Op) -> Result<Option<Op>, StoreError> {
        if !may_block_here() {
            return Ok(Some(op));
        }
        let queue = self.shared.queue();
        if queue.closing {
            return Err(StoreError::Closed);
        }
        if !queue.ops.is_empty() {
            return Ok(Some(op));
        }
        // Never waits: the lock order is queue then engine here, engine then queue in the thread.
        let Ok(mut engine) = self.shared.engine.try_lock() else {
            return Ok(Some(op));
        };
        drop(queue);
        let Some(engine) = engine.as_mut() else {
            return Err(StoreError::Closed);
        };
        let checkpoint_due = tokio::task::block_in_place(|| {
            let batch = [op];
            let result = engine.commit(&batch);
            answer_all(batch, result);
            engine.checkpoint_due()
        });
        #[cfg(test)]
        self.shared
            .inline_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if checkpoint_due {
            self.shared.queue().checkpoint = true;
            self.shared.work.notify_one();
        }
        Ok(None)
    }

    /// Takes no more writes; the thread commits what is queued, checkpoints and releases the
    /// database. Returns the thread to wait for, to the first caller only.
    pub(crate) fn close(&self) -> Option<JoinHandle<()>> {
        self.shared.queue().closing = true;
        self.shared.room.close();
        self.shared.work.notify_one();
        self.thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Writes committed on their caller's thread so far.
    #[cfg(test)]
    pub(crate) fn inline_commits(&self) -> u64 {
        self.shared
            .inline_commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` on the engine (waiting for it), or returns `None` once it is released.
    #[cfg(test)]
    pub(crate) fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
        let mut engine = self.hold_engine();
        engine.as_mut().map(f)
    }

    /// Holds the engine, as a commit in progress would.
    #[cfg(test)]
    pub(crate) fn hold_engine(&self) -> MutexGuard<'_, Option<Engine>> {
        self.shared
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes waiting in the queue.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.shared.queue().ops.len()
    }

    /// Room left in the queue, in permits.
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.shared.room.available_permits()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Waiting makes the file's release deterministic: it is free once the last handle is
        // dropped.
        if let Some(handle) = self.close() {
            let _ = handle.join();
        }
    }
}

/// Whether this thread may block on a commit: a task on a multi-threaded tokio runtime, whose
/// other tasks `block_in_place` hands to another thread meanwhile.
fn may_block_here() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
        && tokio::task::try_id().is_some()
}

fn run(shared: &Shared) {
    // However the thread ends, queued writers learn the store is closed.
    let _exit = OnExit(shared);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        wait_for_work(shared, None);
        let mut engine_slot = shared.engine.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(engine) = engine_slot.as_mut() else {
            return;
        };
        let (mut linger, mut hold_until, mut group) = (Duration::ZERO, Instant::now(), 0);
        loop {
            gather(shared, &mut batch, linger, group);
            if batch.is_empty() {
                // After a group, keep the engine a while: its writers are coming back, and one
                // that found the engine free would commit alone and split the group in two.
                if Instant::now() < hold_until && wait_for_work(shared, Some(hold_until)) {
                    continue;
                }
                break;
            }
            let started = Instant::now();
            let result = engine.commit(&batch);
            let took = started.elapsed();
            group = batch.len();
            if group > 1 {
                linger = (took / 4).min(MAX_LINGER);
                hold_until = Instant::now() + (took * 4).clamp(MIN_HOLD, MAX_HOLD);
            } else {
                linger = Duration::ZERO;
            }
            answer_all(batch.drain(..), result);
            checkpoint_if_due(engine);
        }
        let closing = {
            let mut queue = shared.queue();
            queue.checkpoint = false;
            queue.closing && queue.ops.is_empty()
        };
        if closing {
            let mut engine = engine_slot.take().expect("the engine is here");
            if !engine.has_failed()
                && let Err(e) = engine.checkpoint(false)
            {
                tracing::error!(error = %e, "the store's last checkpoint failed; the log keeps the writes");
            }
            return;
        }
        checkpoint_if_due(engine);
    }
}

fn checkpoint_if_due(engine: &mut Engine) {
    if engine.checkpoint_due()
        && let Err(e) = engine.checkpoint(true)
    {
        tracing::error!(error = %e, "store checkpoint failed; the log keeps the writes");
    }
}

/// Waits until a write is queued (true), or until the store closes, a checkpoint is wanted, or
/// `deadline` passes (false); without a deadline, wakes after [`IDLE_WAKE`] so that the caller
/// can see whether a checkpoint is due.
fn wait_for_work(shared: &Shared, deadline: Option<Instant>) -> bool {
    let mut queue = shared.queue();
    loop {
        if !queue.ops.is_empty() {
            return true;
        }
        if queue.closing || queue.checkpoint {
            return false;
        }
        let wait = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => wait,
                _ => return false,
            },
            None => IDLE_WAKE,
        };
        queue.sleeping = true;
        let (q, timeout) = shared
            .work
            .wait_timeout(queue, wait)
            .unwrap_or_else(PoisonError::into_inner);
        queue = q;
        queue.sleeping = false;
        if timeout.timed_out() && deadline.is_none() {
            return false;
        }
    }
}

/// Moves queued writes into `batch`, up to [`MAX_BATCH`] writes or [`MAX_BATCH_BYTES`], until
/// `group` writes are there or none has come for `linger`.
///
/// The callers answered by the last commit are typically re-submitting right now; without a
/// short wait for them, concurrent writers split into two groups that take turns, and every
/// round costs two commits instead of one. So after a commit of several writes (`group`), the
/// writer waits for as many to be queued again, but no longer than a quarter of that commit's
/// time, at most [`MAX_LINGER`], after the last arrival. After a lone write it does not wait at
/// all, and with nothing queued it returns at once.
///
/// The wait polls, yielding the CPU between looks, rather than sleeping until woken: a wake-up
/// per arriving write costs more than the whole write.
fn gather(shared: &Shared, batch: &mut Vec<Op>, linger: Duration, group: usize) {
    let (mut bytes, mut released) = (0, 0);
    let mut last_arrival = Instant::now();
    loop {
        let mut queue = shared.queue();
        let before = batch.len();
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Some((op, permits)) = queue.ops.pop_front() else {
                break;
            };
            bytes += op.size();
            released += permits as usize;
            batch.push(op);
        }
        let closing = queue.closing;
        drop(queue);
        if batch.is_empty()
            || batch.len() >= group.clamp(1, MAX_BATCH)
            || bytes >= MAX_BATCH_BYTES
            || closing
        {
            break;
        }
        if batch.len() > before {
            last_arrival = Instant::now();
        } else if last_arrival.elapsed() >= linger {
            break;
        }
        std::thread::yield_now();
    }
    shared.room.add_permits(released);
}

struct OnExit<'a>(&'a Shared);

impl Drop for OnExit<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        queue.closing = true;
        // Dropping a queued write's reply tells its caller the store is closed.
        let orphans: Vec<_> = queue.ops.drain(..).collect();
        drop(queue);
        self.0.room.close();
        drop(orphans);
    }
}
