//! The Toru plugin protocol, its frame codec, and the SDK for writing plugins in Rust.
//!
//! A Toru plugin is an executable that the host starts as its own process. It prints its
//! metadata when run with `--metadata`; otherwise it listens on the Unix socket named by
//! `TORU_SOCKET_PATH`, accepts the host's connection and exchanges length-prefixed JSON messages
//! with it (see `docs/protocol.md`).
//!
//! - [`protocol`]: the messages, as plain serde types with no I/O.
//! - [`codec`]: the frame codec, a tokio-util `Decoder`/`Encoder`.
//! - [`sdk`]: [`ToruPlugin`] and [`run`]. Implement the trait, call `run` from `main`.
//! - [`license`]: license keys bound to a plugin and a host's instance id (Ed25519 or
//!   HMAC-SHA256), checked by the SDK before `init` when [`ToruPlugin::license`] returns a policy.
//!
//! Unix only: plugins talk to their host over Unix domain sockets.
//!
//! # A whole plugin
//!
//! ```no_run
//! use toru_plugin_api::{PluginContext, PluginMetadata, Request, Response, ToruPlugin};
//!
//! struct Counter;
//!
//! #[toru_plugin_api::async_trait]
//! impl ToruPlugin for Counter {
//!     fn metadata(&self) -> PluginMetadata {
//!         PluginMetadata {
//!             id: "counter".into(),
//!             name: "Counter".into(),
//!             version: "0.1.0".into(),
//!             author: "Toru".into(),
//!             description: "Counts visits in the host's key-value store.".into(),
//!             icon: "🔢".into(),
//!             route: "/counter".into(),
//!             protocol: None, // filled in by the SDK
//!             frontend: false,
//!             license_required: false,
//!             ..Default::default()
//!         }
//!     }
//!
//!     async fn handle_http(&self, ctx: &PluginContext, req: Request) -> Response {
//!         match (req.method.as_str(), req.subpath()) {
//!             ("POST", "/visit") => {
//!                 let kv = ctx.kv();
//!                 let n = match kv.get("visits").await {
//!                     Ok(v) => v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1,
//!                     Err(e) => return Response::error(500, &e.to_string()),
//!                 };
//!                 if let Err(e) = kv.set("visits", &n.to_string()).await {
//!                     return Response::error(500, &e.to_string());
//!                 }
//!                 ctx.info(format!("visit {n}"));
//!                 Response::json(200, &serde_json::json!({ "visits": n }))
//!             }
//!             (_, "/visit") => Response::error(405, "method not allowed"),
//!             _ => Response::error(404, "not found"),
//!         }
//!     }
//! }
//!
//! fn main() {
//!     toru_plugin_api::run(Counter)
//! }
//! ```
#![deny(missing_docs)]

pub mod codec;
pub mod license;
pub mod protocol;
pub mod sdk;
#[cfg(test)]
mod testutil;

pub use codec::{CodecError, DataFlags, DataFrame, Frame, FrameCodec, Incoming};
pub use protocol::{Level, Message, Payload, PluginMetadata};
pub use sdk::{
    InitError, Kv, KvError, PluginContext, Request, Response, ServeError, ToruPlugin, run, serve,
};

/// The attribute that `impl ToruPlugin` blocks need, re-exported so a plugin does not have to
/// depend on `async-trait` itself.
pub use async_trait::async_trait;
