//! The Toru plugin protocol, its frame codec, and the SDK for writing plugins in Rust.
//!
//! A Toru plugin is an executable that the host starts as its own process. It prints its
//! metadata when run with `--metadata`; otherwise it listens on the Unix socket named by
//! `TORU_SOCKET_PATH`, accepts the host's connection and exchanges length-prefixed frames with
//! it: JSON messages, and in protocol 2 the raw bytes of bodies and WebSocket messages (see
//! `docs/protocol.md`).
//!
//! - [`protocol`]: the messages, as plain serde types with no I/O.
//! - [`codec`]: the frame codec, a tokio-util `Decoder`/`Encoder`.
//! - [`sdk`]: build a [`Plugin`] from [`PluginMetadata`] and a [`Router`] (or implement
//!   [`ToruPlugin`]), call [`run`] from `main`. Streamed bodies, server-sent events and
//!   WebSockets (protocol 2) are in the [`sdk`] docs.
//! - [`license`]: license keys bound to a plugin and a host's instance id (Ed25519 or
//!   HMAC-SHA256), checked by the SDK before `init` when [`ToruPlugin::license`] returns a policy.
//!
//! Unix only: plugins talk to their host over Unix domain sockets.
//!
//! # Cargo features
//!
//! - `sdk` (default): the SDK ([`sdk`], [`run`], [`serve`], [`Plugin`], ...). Brings `license`.
//! - `license` (default): [`license`] keys, issued and checked (Ed25519 and HMAC-SHA256).
//!
//! Without them (`default-features = false`) the crate is the protocol and the codec only, which
//! is all a host needs: `toru-host` builds that way, without the SDK's and the license
//! verifier's dependencies.
//!
#![cfg_attr(
    feature = "sdk",
    doc = r##"
# A whole plugin

Two routes and a counter in the host's key-value store. Handlers return [`HttpResult`], so
`?` turns a KV failure into a 500 and a body that is not the JSON expected into a 400; the
router answers 404 and 405 itself.

```no_run
use serde_json::json;
use toru_plugin_api::{HttpResult, Plugin, PluginContext, PluginMetadata, Request, Response, Router};

async fn hello(ctx: PluginContext, _: Request) -> HttpResult {
    Ok(Response::json(200, &json!({ "hello": ctx.instance_id() })))
}

async fn visit(ctx: PluginContext, _: Request) -> HttpResult {
    let visits = ctx.kv().get("visits").await?.and_then(|v| v.parse().ok()).unwrap_or(0u64) + 1;
    ctx.kv().set("visits", &visits.to_string()).await?;
    ctx.info(format!("visit {visits}"));
    Ok(Response::json(200, &json!({ "visits": visits })))
}

fn main() {
    let meta = PluginMetadata::new("counter", "Counter", "0.1.0", "/counter")
        .with_description("Counts visits in the host's key-value store.")
        .with_icon("🔢");
    let routes = Router::new().get("/", hello).post("/visit", visit);
    toru_plugin_api::run(Plugin::new(meta, routes))
}
```
"##
)]
#![deny(missing_docs)]

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod codec;
#[cfg(feature = "license")]
pub mod license;
pub mod protocol;
#[cfg(feature = "sdk")]
pub mod sdk;
#[cfg(test)]
mod testutil;

pub use codec::{CodecError, DataFlags, DataFrame, Frame, FrameCodec, Incoming};
pub use protocol::{Level, Message, Payload, PluginMetadata};
#[cfg(feature = "sdk")]
pub use sdk::{
    Body, BodyWriter, CloseFrame, HttpError, HttpResult, InitError, IntoResponse, Kv, KvError,
    Plugin, PluginContext, Request, Response, Router, ServeError, Sse, StreamError, ToruPlugin,
    WebSocket, WebSocketUpgrade, WsMessage, run, serve,
};

/// The Rust examples of `docs/plugin-guide.md`, compiled as doctests so that the guide cannot
/// drift from the SDK.
#[cfg(all(doctest, feature = "sdk"))]
#[doc = include_str!("../../docs/plugin-guide.md")]
pub struct PluginGuide;

/// The attribute that `impl ToruPlugin` blocks need, re-exported so a plugin does not have to
/// depend on `async-trait` itself.
#[cfg(feature = "sdk")]
pub use async_trait::async_trait;
