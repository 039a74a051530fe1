//! The edge's metrics: open connections, and connections the server closed, by reason.

use super::conn::CloseReason;

const OPEN: &str = "toru_http_connections";
const CLOSED: &str = "toru_http_connections_closed_total";

/// Describes the metrics (once the recorder is installed).
pub(super) fn describe() {
    metrics::describe_gauge!(OPEN, "Client connections open now.");
    metrics::describe_counter!(
        CLOSED,
        "Client connections the server closed: header_timeout, idle_timeout, or evicted (at the connection cap, to make room)."
    );
}

/// `open` connections are open now.
pub(super) fn open(open: usize) {
    metrics::gauge!(OPEN).set(open as f64);
}

/// The server closed a connection.
pub(super) fn closed(reason: CloseReason) {
    metrics::counter!(CLOSED, "reason" => reason.label()).increment(1);
}
