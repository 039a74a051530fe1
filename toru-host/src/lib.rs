//! Host crash-isolated plugin processes.
//!
//! A [`PluginHost`] finds plugin executables (`*.binary`) in a folder, asks each for its
//! metadata, starts the enabled ones as separate processes, talks to them over Unix sockets
//! (see `docs/protocol.md`), restarts them with backoff when they crash, gives each a private
//! key-value namespace in a redb database, and writes their logs. The folder is live: files
//! added, replaced (an upgrade without downtime) or removed while the host runs are noticed on
//! their own.
//!
//! ```no_run
//! use toru_host::{PluginHost, PluginRequest};
//!
//! # async fn demo() -> Result<(), toru_host::Error> {
//! let host = PluginHost::builder()
//!     .plugin_dir("./plugins")
//!     .data_dir("./data")
//!     .start()
//!     .await?; // returns at once; plugins come up in the background
//! let mut events = host.subscribe(); // discovered, started, crashed, upgraded, ...
//! host.discovered().await; // every file in the folder is listed, enabled ones starting
//! let response = host
//!     .request_by_path(&PluginRequest::get("/hello-rust/"))
//!     .await?;
//! println!("{} {:?}", response.status, response.body);
//! host.kv("hello-rust").set("greeting", "hi").await?;
//! host.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Every plugin runs in its own process group and container (a cgroup, a PID namespace, or the
//! host as subreaper; see [`Containment`]), under its [`Limits`], and dies with the host (the
//! parent-death signal, and a watchdog for everything it started), so this crate is Linux-only.
//!
//! # Serving plugin routes from a web framework
//!
//! [`PluginHost::forward`] serves a whole plugin route in one call: it takes an
//! `http::Request` of any body and answers an `http::Response<`[`PluginBody`]`>` that hyper,
//! axum or warp can serve as it is, with bodies streamed both ways, every error mapped to a
//! status and JSON, and WebSocket upgrades bridged when hyper's `OnUpgrade` is in the request:
//!
//! ```no_run
//! # async fn demo(host: toru_host::PluginHost) {
//! // axum: Router::new().route("/plugins/{*rest}", any(move |req: Request| {
//! //     let host = host.clone();
//! //     async move { host.forward(req, "/plugins").await }
//! // }))
//! let request = toru_host::http::Request::get("/plugins/hello-rust/echo?x=1")
//!     .body(http_body_util::Empty::<bytes::Bytes>::new())
//!     .unwrap();
//! let response = host.forward(request, "/plugins").await;
//! println!("{}", response.status());
//! # }
//! ```
//!
//! [`PluginHost::stream`] is the same call for one plugin with the errors as [`CallError`]s,
//! [`PluginHost::websocket`] offers an upgrade to a plugin for frameworks that do the handshake
//! themselves, and [`PluginHost::request`] reads a whole response. The library applies the header
//! rules for every caller: credentials and hop-by-hop headers never reach a plugin, a plugin
//! cannot set a [protected cookie](PluginHostBuilder::protected_cookies), and its pages are
//! sandboxed (`docs/architecture.md`, "The data path").
//!
//! Every plugin runs in its own process group and dies with the host (the parent-death signal),
//! so this crate is Linux-only.
#![deny(missing_docs)]

mod body;
mod builder;
mod check;
mod config;
mod connection;
mod contain;
mod discovery;
mod error;
mod events;
#[doc(hidden)]
pub mod fuzz;
mod headers;
mod host;
mod logs;
mod process;
mod request;
mod shared;
mod state;
mod store;
mod supervisor;
mod websocket;

pub use body::{BodyError, BodyStream, PluginBody};
pub use builder::PluginHostBuilder;
pub use check::{CheckReport, CheckStep, check_plugin};
pub use contain::Containment;
pub use contain::limits::{
    Bytes, Cores, Enforcement, Enforcer, Limit, LimitErrors, LimitKind, LimitOverrides, Limits,
};
pub use error::{
    CallError, ConfigError, Error, HTTP_ERRORS, HttpError, ManageError, StartError, error_response,
};
pub use events::{EventKind, EventQuery, ExitStatus, PluginEvent};
pub use host::{ForwardedTo, NotReady, PluginHost, PluginInfo, PluginState, ScanReport};
/// The `http` crate this one speaks, so that an application uses the same version.
pub use http;
pub use logs::{
    LogConfig, LogEntry, LogError, LogPage, LogQuery, LogSource, SUPERVISOR_LOG, SupervisorEntry,
};
pub use request::{PluginRequest, PluginResponse};
pub use store::{AppSettings, KvError, KvLimits, PluginKv, Store, StoreError};
pub use supervisor::{HealthPolicy, RestartPolicy};
/// Types of the plugin protocol that this crate's API shows: a plugin's metadata and the
/// settings it declares, its protocol versions, log levels, and the KV listing limit.
pub use toru_plugin_api::protocol::{
    KV_LIST_MAX, Level, PluginMetadata, SettingKind, SettingSpec, VersionRange,
};
pub use websocket::{
    BridgeMessage, ClientFrame, WebSocketSession, WsClosed, WsEvent, WsMessage, WsReceiver,
    WsSender, WsUpgrade,
};
