//! The Rust plugin SDK: implement [`ToruPlugin`], call [`run`] from `main`.
//!
//! [`run`] answers `--metadata`, listens on the socket the host names in `TORU_SOCKET_PATH`,
//! accepts the host, completes `init`/`ready` and then [`serve`]s: every `http_request` runs in
//! its own task with an owned [`Request`], `ping` is answered at once, `cancel` drops the
//! handler, and `shutdown` lets requests in flight finish (up to 5 s) before the process exits
//! 0. Handlers reach the host through the [`PluginContext`]: its [`Kv`] store and its log.
//!
//! A handler in a test can be called directly with a hand-made [`Request`]; a whole plugin can
//! be driven over [`tokio::net::UnixStream::pair`] with [`serve`].

mod context;
mod error;
mod http;
mod in_flight;
mod plugin;
mod run;
mod serve;
mod writer;

pub use context::{Kv, PluginContext};
pub use error::{InitError, KvError, ServeError};
pub use http::{Request, Response};
pub use plugin::ToruPlugin;
pub use run::run;
pub use serve::serve;

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
