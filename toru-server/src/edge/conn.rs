//! One connection: its I/O, its requests, and the timeouts that close it.
//!
//! The connection's task runs hyper on the socket and watches the connection's [`Phase`]:
//! - a new connection must send a whole request head within the header timeout;
//! - between requests (keep-alive), it may stay silent for the idle timeout; once the next
//!   request's first byte arrives, the rest of its head must follow within the header timeout;
//! - while a request is in flight (from its head to the last byte of its response), neither
//!   applies: the plugin's own timeouts and the client's reading decide.
//!
//! Requests are counted by wrapping the service (a request starts when hyper hands it over) and
//! the response body (it ends with its last frame, or when hyper drops it): see
//! [`service`](super::service). The socket tells when bytes arrive: see [`socket`](super::socket).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::service::EdgeService;
use super::slots::{Slot, Slots};
use super::socket::ConnIo;
use super::{Direct, PeerAddr};

/// How long a client may take to send a request head, and stay silent between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// From a new connection, or from the first byte of a later request, to the end of its head.
    pub(crate) header: Duration,
    /// From the end of a response to the first byte of the next request.
    pub(crate) idle: Duration,
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The request head did not arrive in time.
    HeaderTimeout,
    /// No new request came in time.
    IdleTimeout,
    /// A new connection needed its slot (at the cap, the longest idle one goes).
    Evicted,
}

impl CloseReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// Requests whose response has not ended.
    in_flight: usize,
    /// Requests received so far.
    served: u64,
    /// When the last request ended (or the connection was accepted).
    idle_since: Instant,
    /// The first byte read since then.
    first_byte: Option<Instant>,
    /// The slots' turn taken when it last became idle (the lowest is idle the longest).
    idle_turn: u64,
    /// Asked to close, or gone: never idle again.
    closing: bool,
    /// The deadline the connection's task is waiting for (`None`: none). A change that brings
    /// the deadline before it wakes the task; a later one waits until it fires.
    armed: Option<Instant>,
}

impl Phase {
    /// When the connection is to be closed if nothing changes, and why; `None` while a request
    /// is in flight.
    fn deadline(&self, timeouts: &Timeouts) -> Option<(Instant, CloseReason)> {
        if self.in_flight > 0 {
            return None;
        }
        if self.served == 0 {
            return Some((
                self.idle_since + timeouts.header,
                CloseReason::HeaderTimeout,
            ));
        }
        Some(match self.first_byte {
            Some(at) => (at + timeouts.header, CloseReason::HeaderTimeout),
            None => (self.idle_since + timeouts.idle, CloseReason::IdleTimeout),
        })
    }

    /// Whether the deadline now comes before the one the task waits for.
    fn sooner(&self, timeouts: &Timeouts) -> bool {
        match (self.deadline(timeouts), self.armed) {
            (Some((at, _)), Some(armed)) => at < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// A connection's state, shared by its task, its I/O, its requests and the slots.
#[derive(Debug)]
pub(crate) struct ConnState {
    slots: Arc<Slots>,
    timeouts: Timeouts,
    /// Its key in the slots' list.
    key: u64,
    phase: Mutex<Phase>,
    /// Set while idle with no byte read yet, so that reads look at the phase only once.
    awaiting_first_byte: AtomicBool,
    /// The deadline may have come sooner than the task's timer.
    changed: Notify,
    /// The connection is to close now, to make room for a new one.
    evicted: Notify,
}

impl ConnState {
    /// A new connection, idle, listed in `slots`.
    fn new(slots: Arc<Slots>, timeouts: Timeouts, now: Instant) -> Arc<ConnState> {
        let turn = slots.next_idle_turn();
        Arc::new_cyclic(|weak: &std::sync::Weak<ConnState>| {
            let key = slots.add(weak.clone());
            ConnState {
                slots,
                timeouts,
                key,
                phase: Mutex::new(Phase {
                    in_flight: 0,
                    served: 0,
                    idle_since: now,
                    first_byte: None,
                    idle_turn: turn,
                    closing: false,
                    armed: None,
                }),
                awaiting_first_byte: AtomicBool::new(true),
                changed: Notify::new(),
                evicted: Notify::new(),
            }
        })
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The deadline, noted as the one the task now waits for.
    fn arm(&self) -> Option<(Instant, CloseReason)> {
        let mut phase = self.phase();
        let deadline = phase.deadline(&self.timeouts);
        phase.armed = deadline.map(|(at, _)| at);
        deadline
    }

    fn deadline(&self) -> Option<(Instant, CloseReason)> {
        self.phase().deadline(&self.timeouts)
    }

    /// Its turn in the idle order when it is idle.
    pub(crate) fn idle_turn(&self) -> Option<u64> {
        let phase = self.phase();
        (phase.in_flight == 0 && !phase.closing).then_some(phase.idle_turn)
    }

    /// Asks the connection to close at once.
    pub(crate) fn evict(&self) {
        self.phase().closing = true;
        self.evicted.notify_one();
    }

    pub(super) fn request_started(&self) {
        let mut phase = self.phase();
        phase.in_flight += 1;
        phase.served += 1;
        self.awaiting_first_byte.store(false, Ordering::Relaxed);
    }

    pub(super) fn request_ended(&self) {
        let mut phase = self.phase();
        phase.in_flight = phase.in_flight.saturating_sub(1);
        if phase.in_flight == 0 && !phase.closing {
            phase.idle_since = Instant::now();
            phase.first_byte = None;
            phase.idle_turn = self.slots.next_idle_turn();
            self.awaiting_first_byte.store(true, Ordering::Relaxed);
            if phase.sooner(&self.timeouts) {
                drop(phase);
                self.changed.notify_one();
            }
        }
    }

    /// Bytes arrived from the client.
    pub(super) fn bytes_read(&self) {
        if !self.awaiting_first_byte.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut phase = self.phase();
        if phase.in_flight == 0 && phase.first_byte.is_none() {
            phase.first_byte = Some(Instant::now());
            if phase.sooner(&self.timeouts) {
                drop(phase);
                self.changed.notify_one();
            }
        }
    }

    /// The connection's task is ending: off the list for good.
    fn leave(&self) {
        {
            let mut phase = self.phase();
            // No more phase changes: after an upgrade the socket lives on, and reads must not
            // wait on the lock.
            self.awaiting_first_byte.store(false, Ordering::Relaxed);
            phase.closing = true;
            phase.in_flight += 1;
        }
        self.slots.remove(self.key);
    }
}

/// What a connection's task needs besides its socket.
#[derive(Debug, Clone)]
pub(crate) struct Shared<S, D> {
    pub(crate) slots: Arc<Slots>,
    pub(crate) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(crate) service: S,
    pub(crate) direct: D,
    pub(crate) timeouts: Timeouts,
    pub(crate) shutdown: CancellationToken,
}

/// Serves one connection until it ends, times out, is evicted, or drains after shutdown.
pub(crate) async fn serve<S, B, D>(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    shared: Shared<S, D>,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    D: Direct,
{
    let conn = ConnState::new(Arc::clone(&shared.slots), shared.timeouts, Instant::now());
    let io = TokioIo::new(ConnIo::new(stream, Arc::clone(&conn), slot));
    let service = EdgeService {
        inner: shared.service,
        direct: shared.direct,
        conn: Arc::clone(&conn),
        peer: PeerAddr(peer),
    };
    let connection = shared.builder.serve_connection_with_upgrades(io, service);
    let mut connection = pin!(connection);
    // One timer for the connection's life, moved only when its deadline moves: requests change
    // the deadline without waking this task (see `Phase::armed`).
    let timer = tokio::time::sleep_until(far_future());
    let mut timer = pin!(timer);
    let mut armed = None;
    let mut draining = false;
    let closed = loop {
        let deadline = conn.arm().map(|(at, _)| at);
        if deadline != armed {
            timer.as_mut().reset(deadline.unwrap_or_else(far_future));
            armed = deadline;
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break None;
            }
            () = timer.as_mut() => {
                if let Some((at, reason)) = conn.deadline()
                    && at <= Instant::now()
                {
                    break Some(reason);
                }
                // It moved on meanwhile: set again.
                timer.as_mut().reset(far_future());
                armed = None;
            }
            () = conn.changed.notified() => {}
            () = conn.evicted.notified() => break Some(CloseReason::Evicted),
            () = shared.shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    };
    conn.leave();
    if let Some(reason) = closed {
        tracing::debug!(%peer, reason = reason.label(), "closing the connection");
        super::metrics::closed(reason);
    }
}

/// A time no connection waits for (a year from now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::super::service::RequestGuard;
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn phase(t0: Instant) -> Phase {
        Phase {
            in_flight: 0,
            served: 0,
            idle_since: t0,
            first_byte: None,
            idle_turn: 0,
            closing: false,
            armed: None,
        }
    }

    #[test]
    fn a_new_connection_has_the_header_timeout_from_its_accept() {
        let t0 = Instant::now();
        let mut p = phase(t0);
        assert_eq!(
            p.deadline(&T),
            Some((t0 + T.header, CloseReason::HeaderTimeout))
        );
        // A byte a second does not move it.
        p.first_byte = Some(t0 + Duration::from_secs(1));
        assert_eq!(
            p.deadline(&T),
            Some((t0 + T.header, CloseReason::HeaderTimeout))
        );
    }

    #[test]
    fn a_request_in_flight_has_no_deadline() {
        let t0 = Instant::now();
        let mut p = phase(t0);
        p.in_flight = 1;
        p.served = 1;
        assert_eq!(p.deadline(&T), None);
    }

    #[test]
    fn between_requests_the_idle_timeout_then_the_header_timeout_from_the_first_byte() {
        let t0 = Instant::now();
        let mut p = phase(t0);
        p.served = 3;
        assert_eq!(
            p.deadline(&T),
            Some((t0 + T.idle, CloseReason::IdleTimeout))
        );
        let first = t0 + Duration::from_secs(55);
        p.first_byte = Some(first);
        assert_eq!(
            p.deadline(&T),
            Some((first + T.header, CloseReason::HeaderTimeout))
        );
    }

    #[test]
    fn only_a_deadline_sooner_than_the_armed_one_wakes_the_task() {
        let t0 = Instant::now();
        let mut p = phase(t0);
        assert!(p.sooner(&T), "nothing armed yet");
        p.armed = p.deadline(&T).map(|(at, _)| at);
        assert!(!p.sooner(&T));
        // A request comes and goes: the idle deadline is later than the armed one.
        p.served = 1;
        p.idle_since = t0 + Duration::from_secs(1);
        assert!(!p.sooner(&T));
        // The task saw the request in flight and disarmed: the next deadline wakes it.
        p.armed = None;
        assert!(p.sooner(&T));
        // A first byte after a long idle time: its header deadline is sooner.
        p.armed = Some(t0 + T.idle);
        p.first_byte = Some(t0 + Duration::from_secs(2));
        assert!(p.sooner(&T));
    }

    #[tokio::test]
    async fn requests_take_a_connection_off_the_idle_list_and_put_it_back() {
        let slots = Slots::new(4);
        let conn = ConnState::new(Arc::clone(&slots), T, Instant::now());
        assert_eq!(slots.idle_count(), 1);
        let a = RequestGuard::new(&conn);
        let b = RequestGuard::new(&conn);
        assert_eq!(slots.idle_count(), 0);
        drop(a);
        assert_eq!(slots.idle_count(), 0, "one request is still in flight");
        drop(b);
        assert_eq!(slots.idle_count(), 1);
        let p = *conn.phase();
        assert_eq!(p.served, 2);
        assert_eq!(
            p.deadline(&T).map(|(_, r)| r),
            Some(CloseReason::IdleTimeout)
        );
        conn.bytes_read();
        assert!(conn.phase().first_byte.is_some());
        conn.leave();
        assert_eq!(slots.idle_count(), 0);
        // After leaving (an upgrade), nothing lists it again.
        drop(RequestGuard::new(&conn));
        assert_eq!(slots.idle_count(), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_is_evicted_first() {
        let slots = Slots::new(2);
        let older = ConnState::new(Arc::clone(&slots), T, Instant::now());
        let newer = ConnState::new(Arc::clone(&slots), T, Instant::now());
        // The older one gets a request and finishes it: now it is the newer idle one.
        drop(RequestGuard::new(&older));
        assert!(slots.evict_oldest_idle());
        tokio::time::timeout(Duration::from_secs(1), newer.evicted.notified())
            .await
            .expect("the connection idle the longest is evicted");
        assert!(slots.evict_oldest_idle());
        tokio::time::timeout(Duration::from_secs(1), older.evicted.notified())
            .await
            .expect("then the next");
        assert!(!slots.evict_oldest_idle(), "no idle connection is left");
    }
}
