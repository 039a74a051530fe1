//! The server's edge: its own accept loop on hyper, serving the warp routes through
//! `warp::service`, with what warp's built-in server lacks against hostile clients:
//!
//! - a **header-read timeout**: a connection that sends nothing, or its request head a byte at a
//!   time, is closed (see [`conn`] for exactly when);
//! - an **idle timeout** for keep-alive connections between requests;
//! - a **cap on open connections** that keeps file descriptors in reserve for plugins, sockets
//!   and files (derived from the open-file limit, see [`fdlimit`]). At the cap a new connection
//!   closes the connection idle the longest; when every connection is serving a request, new
//!   ones wait in the kernel's listen backlog;
//! - accept errors (out of descriptors, out of memory) handled without a busy loop: close the
//!   longest idle connection and retry once its descriptor is free, else back off;
//! - graceful shutdown: stop accepting, let requests in flight finish, close idle connections.
//!
//! Requests go first to the edge's own routes ([`Direct`]: toru-server serves `/plugins/` there,
//! as plain functions, before warp's filter chain), then to the service, each with the client's
//! address as a [`PeerAddr`] extension.

mod conn;
pub(crate) mod fdlimit;
mod metrics;
mod service;
mod slots;
mod socket;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use conn::Timeouts;
use slots::Slots;

/// The client's address (the TCP peer: behind a reverse proxy, the proxy), in every request's
/// extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// Routes the edge serves itself, before the service.
pub(crate) trait Direct: Clone + Send + Sync + 'static {
    /// The body of their responses.
    type Body: Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Unpin
        + Send
        + 'static;

    /// Whether `request` is for one of these routes (else it goes to the service).
    fn takes(&self, request: &Request<Incoming>) -> bool;

    /// The response to `request` (one these routes [`take`](Self::takes)) from the client at
    /// `peer`.
    fn serve(
        &self,
        request: Request<Incoming>,
        peer: PeerAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static;
}

/// No routes of the edge's own: everything goes to the service.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoDirect;

#[cfg(test)]
impl Direct for NoDirect {
    type Body = http_body_util::Empty<bytes::Bytes>;

    fn takes(&self, _: &Request<Incoming>) -> bool {
        false
    }

    fn serve(
        &self,
        _: Request<Incoming>,
        _: PeerAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static {
        std::future::ready(Response::new(http_body_util::Empty::new()))
    }
}

/// How the edge treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EdgeConfig {
    pub(crate) timeouts: Timeouts,
    /// Connections open at most.
    pub(crate) max_connections: usize,
}

/// The longest wait between retries after an accept error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Repeated warnings (accept errors, a full house) are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts and serves connections until `shutdown` is cancelled, then stops accepting and waits
/// for the connections to finish their requests (the caller bounds that wait). Requests go to
/// `direct`, and those it does not take to `service`.
pub(crate) async fn serve<S, B, D>(
    listener: TcpListener,
    service: S,
    direct: D,
    config: EdgeConfig,
    shutdown: CancellationToken,
) where
    D: Direct,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    metrics::describe();
    let slots = Slots::new(config.max_connections);
    let shared = conn::Shared {
        slots: Arc::clone(&slots),
        builder: Arc::new(auto::Builder::new(TokioExecutor::new())),
        service,
        direct,
        timeouts: config.timeouts,
        shutdown: shutdown.clone(),
    };
    let tracker = TaskTracker::new();
    let mut errors = AcceptErrors::default();
    let mut full = Throttled::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                errors.backoff = Duration::ZERO;
                pair
            }
            Err(e) => {
                errors.handle(e, &slots, &shutdown).await;
                continue;
            }
        };
        let slot = match slots.try_acquire() {
            Some(slot) => slot,
            None => {
                if !slots.evict_oldest_idle() {
                    full.warn(|suppressed| {
                        tracing::warn!(
                            cap = slots.cap(),
                            suppressed,
                            "every connection is serving a request at the connection cap; new connections wait"
                        );
                    });
                }
                tokio::select! {
                    slot = slots.acquire() => slot,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        metrics::open(slots.open());
        let shared = shared.clone();
        tracker.spawn(async move {
            conn::serve(stream, peer, slot, shared.clone()).await;
            metrics::open(shared.slots.open());
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// A warning that repeats at most every [`WARN_EVERY`], saying how many were left out.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn warn(&mut self, log: impl FnOnce(u64)) {
        self.warn_at(Instant::now(), log);
    }

    fn warn_at(&mut self, now: Instant, log: impl FnOnce(u64)) {
        if self.last.is_some_and(|at| now < at + WARN_EVERY) {
            self.suppressed += 1;
            return;
        }
        log(std::mem::take(&mut self.suppressed));
        self.last = Some(now);
    }
}

#[derive(Debug, Default)]
struct AcceptErrors {
    backoff: Duration,
    warning: Throttled,
}

impl AcceptErrors {
    /// Deals with a failed `accept`, returning when it is worth trying again.
    async fn handle(&mut self, e: io::Error, slots: &Slots, shutdown: &CancellationToken) {
        if is_connection_error(&e) {
            // That client is gone; the next one is not affected.
            tracing::debug!(error = %e, "a connection failed before it was accepted");
            return;
        }
        let out_of_resources = is_out_of_resources(&e);
        self.warning.warn(|suppressed| {
            if out_of_resources {
                tracing::warn!(
                    error = %e,
                    open = slots.open(),
                    suppressed,
                    "cannot accept connections: out of descriptors or memory; closing idle connections"
                );
            } else {
                tracing::warn!(error = %e, suppressed, "cannot accept a connection");
            }
        });
        if out_of_resources {
            // Closing an idle connection frees a descriptor: retry as soon as it is closed.
            let mut released = std::pin::pin!(slots.released());
            released.as_mut().enable();
            if slots.evict_oldest_idle() {
                tokio::select! {
                    () = released => {}
                    () = tokio::time::sleep(MAX_BACKOFF) => {}
                    () = shutdown.cancelled() => {}
                }
                return;
            }
        }
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(self.backoff) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// Errors about one incoming connection, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM.
fn is_out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| errno.raw_os_error() == code)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn out_of_descriptors_is_told_from_a_client_that_left() {
        let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert!(is_out_of_resources(&emfile));
        assert!(!is_connection_error(&emfile));
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(is_connection_error(&reset));
        assert!(!is_out_of_resources(&reset));
    }

    #[test]
    fn repeated_warnings_are_throttled_and_counted() {
        let mut throttled = Throttled::default();
        let mut logged = Vec::new();
        let t0 = Instant::now();
        for _ in 0..5 {
            throttled.warn_at(t0, |n| logged.push(n));
        }
        assert_eq!(logged, [0]);
        throttled.warn_at(t0 + WARN_EVERY, |n| logged.push(n));
        assert_eq!(logged, [0, 4]);
    }
}
