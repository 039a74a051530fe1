//! Health pings: a task per running process pings it, reports missed pings and recoveries as
//! state changes, and gives up on the process after too many missed in a row.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use toru_plugin_api::protocol::Payload;

use crate::connection::{CallFailure, Connection, Reply};
use crate::shared::Shared;
use crate::state::machine::Change;

/// The ping task of one process.
pub(super) struct Health {
    hung: CancellationToken,
    missed: Arc<AtomicU32>,
    task: AbortHandle,
}

impl Health {
    /// Starts pinging `conn` every health interval.
    pub(super) fn spawn(shared: &Arc<Shared>, id: &str, conn: &Connection) -> Health {
        let hung = CancellationToken::new();
        let missed = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(ping(
            Arc::clone(shared),
            id.to_owned(),
            conn.clone(),
            hung.clone(),
            Arc::clone(&missed),
        ))
        .abort_handle();
        Health { hung, missed, task }
    }

    /// Waits until the process has missed too many pings in a row; returns how many.
    pub(super) async fn hung(&self) -> u32 {
        self.hung.cancelled().await;
        self.missed.load(Ordering::Relaxed)
    }

    /// Stops pinging (the process is stopping, or it is an old version being retired).
    pub(super) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ping(
    shared: Arc<Shared>,
    id: String,
    conn: Connection,
    hung: CancellationToken,
    missed: Arc<AtomicU32>,
) {
    let policy = shared.settings.health_policy;
    loop {
        tokio::time::sleep(policy.interval).await;
        match conn.call(Payload::Ping, policy.timeout).await {
            Ok(Reply::Pong) => {
                if missed.swap(0, Ordering::Relaxed) > 0 {
                    shared.transition(&id, Change::Pong, |_| {}).await;
                }
            }
            // The connection's own end is reported by `closed()`.
            Err(CallFailure::Closed) => return,
            _ => {
                let n = missed.fetch_add(1, Ordering::Relaxed) + 1;
                shared.transition(&id, Change::MissedPing, |_| {}).await;
                if n >= policy.max_missed {
                    hung.cancel();
                    return;
                }
            }
        }
    }
}
