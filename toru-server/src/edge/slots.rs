//! Connection slots: the cap on open connections, and the list of idle ones to close first when
//! a new connection arrives at the cap.
//!
//! A connection holds its slot (a semaphore permit) for as long as its socket is open, upgraded
//! connections included. A connection with no request in flight (a new one that has not sent
//! its request yet, one between keep-alive requests, one still sending its header) is *idle*.
//! At the cap, a new connection closes the one idle the longest; when none is idle, every slot
//! is serving a request, and new connections wait in the kernel's listen backlog until one ends.
//!
//! Every open connection is listed once, from its accept to its end; whether it is idle, and
//! since when, is its own state (see `ConnState`), so that a request costs no work on the shared
//! list. The list is searched only at the cap.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::conn::ConnState;

/// The cap and the idle list. Shared by the accept loop and every connection.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    cap: usize,
    idle: Mutex<IdleList>,
    /// The next [`next_idle_turn`](Self::next_idle_turn).
    idle_turns: AtomicU64,
    /// Notified whenever a slot is given back.
    released: Notify,
}

#[derive(Debug, Default)]
struct IdleList {
    next_key: u64,
    /// Every open connection, by key.
    conns: BTreeMap<u64, Weak<ConnState>>,
}

impl Slots {
    pub(crate) fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
            idle: Mutex::new(IdleList::default()),
            idle_turns: AtomicU64::new(0),
            released: Notify::new(),
        })
    }

    /// The cap.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    /// A slot if one is free.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(Slot {
            _permit: permit,
            slots: Arc::clone(self),
        })
    }

    /// Waits for a slot.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        Slot {
            _permit: permit,
            slots: Arc::clone(self),
        }
    }

    /// Resolves when a connection next gives its slot back (its socket is closed). Make it, and
    /// `enable` it, before whatever should cause the release.
    pub(crate) fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Lists a new connection; returns its key in the list.
    pub(crate) fn add(&self, conn: Weak<ConnState>) -> u64 {
        let mut idle = self.idle();
        let key = idle.next_key;
        idle.next_key += 1;
        idle.conns.insert(key, conn);
        key
    }

    /// Takes a connection off the list (it is closing).
    pub(crate) fn remove(&self, key: u64) {
        self.idle().conns.remove(&key);
    }

    /// A number that grows each time a connection becomes idle: the lowest is idle the longest.
    pub(crate) fn next_idle_turn(&self) -> u64 {
        self.idle_turns.fetch_add(1, Ordering::Relaxed)
    }

    /// Asks the connection idle the longest to close; `false` when none is idle.
    pub(crate) fn evict_oldest_idle(&self) -> bool {
        let oldest = self
            .idle()
            .conns
            .values()
            .filter_map(Weak::upgrade)
            .filter_map(|conn| conn.idle_turn().map(|turn| (turn, conn)))
            .min_by_key(|(turn, _)| *turn);
        match oldest {
            Some((_, conn)) => {
                conn.evict();
                true
            }
            None => false,
        }
    }

    /// Connections idle now.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle()
            .conns
            .values()
            .filter_map(Weak::upgrade)
            .filter(|conn| conn.idle_turn().is_some())
            .count()
    }

    fn idle(&self) -> MutexGuard<'_, IdleList> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's slot, given back when dropped (after the socket is closed: it is the last
/// field of the connection's I/O).
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.released.notify_waiters();
    }
}
