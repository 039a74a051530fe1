//! The Rust plugin SDK: build a [`Plugin`] from metadata and a [`Router`] (or implement
//! [`ToruPlugin`] yourself), and call [`run`] from `main`.
//!
//! [`run`] answers `--metadata`, listens on the socket the host names in `TORU_SOCKET_PATH`,
//! accepts the host, completes `init`/`ready` (choosing protocol 2 when the host offers it) and
//! then [`serve`]s: every `http_request` runs in its own task with an owned [`Request`], `ping` is
//! answered at once, `cancel` drops the handler, `settings` updates [`PluginContext::settings`],
//! and `shutdown` lets requests and streams in flight finish (up to 5 s) before the process exits
//! 0. Handlers reach the host through the [`PluginContext`]: its [`Kv`] store, its settings and
//! its log.
//!
//! # Streams (protocol 2)
//!
//! - A request's [`Body`] streams in as the client sends it: read it chunk by chunk with
//!   [`Body::chunk`], or whole up to a limit with [`Body::collect`], [`Request::text`] or
//!   [`Request::json`]. Reading is what lets the client send more.
//! - A response streams out with [`Response::stream`], [`Response::try_stream`] or
//!   [`Response::streamed`] (a [`BodyWriter`]); server-sent events with [`Response::sse`] (an
//!   [`Sse`]). Sending waits while the client is not reading.
//! - A WebSocket is accepted with [`Request::websocket`] and [`WebSocketUpgrade::accept`]; the
//!   session gets a [`WebSocket`] to receive and send messages.
//! - `cancel` (the client went away) drops the handler or producer at its next `.await`; an
//!   error after the head aborts the client's response (a WebSocket closes with 1011); shutdown
//!   ends event streams and closes WebSockets with 1001.
//!
//! On a protocol 1 connection (an older host) every handler still works: bodies arrive whole,
//! a streamed response is collected and sent whole (up to 12 MiB; an endless event stream never
//! completes), and [`Request::websocket`] fails with 501.
//!
//! A handler in a test can be called directly with a hand-made [`Request`]; a whole plugin can
//! be driven over [`tokio::net::UnixStream::pair`] with [`serve`].

mod body;
mod builder;
mod context;
mod error;
mod in_flight;
mod link;
mod plugin;
mod request;
mod respond;
mod response;
mod router;
mod run;
mod serve;
mod sse;
mod stream;
mod websocket;
mod writer;

pub use body::{Body, BodyWriter};
pub use builder::Plugin;
pub use context::{Kv, PluginContext};
pub use error::{HttpError, HttpResult, InitError, KvError, ServeError, StreamError};
pub use plugin::ToruPlugin;
pub use request::{DEFAULT_BODY_LIMIT, Request};
pub use response::Response;
pub use router::{Handler, IntoResponse, Router};
pub use run::run;
pub use serve::serve;
pub use sse::Sse;
pub use stream::CloseFrame;
pub use websocket::{DEFAULT_MAX_MESSAGE, WebSocket, WebSocketUpgrade, WsMessage};

/// An error and its sources, joined by `": "`: one line for stderr or an `error` reply.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Crate-private pieces the crate's test fixtures build contexts from.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) use super::link::Link;
    pub(crate) use super::writer::{Queue, Receiver};
}
