//! Host crash-isolated plugin processes in a Rust application.
//!
//! A [`PluginHost`] finds plugin executables (`*.binary`) in a folder, asks each for its
//! metadata, starts the enabled ones as separate processes, talks to them over Unix sockets
//! (`docs/protocol.md`), restarts them with backoff when they crash, gives each a private
//! key-value namespace in a redb database, and writes their logs. The folder is live: files
//! added, replaced (an upgrade without downtime) or removed while the host runs are noticed on
//! their own. Everything a web server needs to serve the plugins' routes is here too: one call
//! forwards an `http::Request` (bodies streamed both ways, WebSockets bridged) and answers an
//! `http::Response`, with the header rules and every error's HTTP status applied by the library.
//!
//! The entry points:
//!
//! - [`PluginHost::builder`] configures a host (every setting has a default) and
//!   [`start`](PluginHostBuilder::start)s it; the [`PluginHost`] handle is cheap to clone.
//! - Serving plugins: [`forward`](PluginHost::forward) (a whole plugin route, any framework on
//!   the `http` crate), [`stream`](PluginHost::stream) and [`request`](PluginHost::request) (one
//!   plugin, streamed or whole), [`websocket`](PluginHost::websocket) (frameworks that do the
//!   WebSocket handshake themselves).
//! - Managing them: [`list`](PluginHost::list), [`get`](PluginHost::get),
//!   [`set_enabled`](PluginHost::set_enabled), [`enable_and_wait`](PluginHost::enable_and_wait),
//!   [`wait_ready`](PluginHost::wait_ready), [`restart`](PluginHost::restart),
//!   [`rescan`](PluginHost::rescan), [`logs`](PluginHost::logs), [`events`](PluginHost::events),
//!   [`subscribe`](PluginHost::subscribe), [`kv`](PluginHost::kv).
//! - The application's own data: [`app_settings`](PluginHost::app_settings).
//! - Ending: [`shutdown`](PluginHost::shutdown).
//!
//! # Without a web server
//!
//! ```no_run
//! use std::time::Duration;
//! use toru_host::{PluginHost, PluginRequest};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut builder = PluginHost::builder();
//! let mut events = builder.subscribe(); // every event, from the first `discovered`
//! let host = builder
//!     .plugin_dir("./plugins")
//!     .data_dir("./data") // toru.redb, and the logs in ./data/logs
//!     .start()
//!     .await?; // returns at once; plugins come up in the background
//! host.discovered().await; // every file in the folder is listed
//! host.wait_ready("hello-rust", Duration::from_secs(10)).await?; // or why not: crashed, failed, ...
//! let response = host
//!     .request("hello-rust", &PluginRequest::get("/hello-rust/"))
//!     .await?;
//! println!("{} {:?}", response.status, response.body);
//! host.kv("hello-rust")?.set("greeting", "hi").await?;
//! host.set_enabled("hello-rust", false).await?;
//! host.shutdown().await; // every plugin stopped, the database closed
//! # Ok(())
//! # }
//! ```
//!
//! # In axum
//!
//! [`PluginHost::forward`] is a whole handler: it strips a prefix, finds the plugin whose route
//! is the next segment, streams the body both ways and answers the plugin's response, or the
//! error as JSON with its status and `Retry-After`. axum keeps hyper's `OnUpgrade` in the
//! request, so WebSocket upgrades go through too. (`examples/embed-axum` is a whole
//! application: an admin API, events in its log, a clean Ctrl-C.)
//!
//! ```no_run
//! use axum::extract::{Request, State};
//! use axum::response::IntoResponse;
//! use axum::routing::any;
//! use toru_host::PluginHost;
//!
//! async fn plugins(State(host): State<PluginHost>, request: Request) -> impl IntoResponse {
//!     // `/plugins/hello-rust/echo` reaches plugin `hello-rust` as `/hello-rust/echo`.
//!     host.forward(request, "/plugins").await
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let host = PluginHost::builder().plugin_dir("./plugins").start().await?;
//! let app = axum::Router::new()
//!     .route("/plugins/{*rest}", any(plugins))
//!     .with_state(host.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let stopping = host.clone();
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         // Ends open streams and WebSockets, which the server would wait for, and stops
//!         // every plugin.
//!         stopping.shutdown().await;
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Check your users' authentication before forwarding: the host does not know them. Whatever
//! it is, the plugin never sees the request's `Cookie`, `Authorization` or hop-by-hop headers.
//!
//! # In hyper
//!
//! ```no_run
//! use hyper::server::conn::http1;
//! use hyper::service::service_fn;
//! use hyper_util::rt::TokioIo;
//!
//! # async fn demo(host: toru_host::PluginHost) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let host = host.clone();
//!     tokio::spawn(async move {
//!         let service = service_fn(move |request| {
//!             let host = host.clone();
//!             async move { Ok::<_, std::convert::Infallible>(host.forward(request, "/plugins").await) }
//!         });
//!         // `with_upgrades` lets WebSockets through.
//!         let served = http1::Builder::new()
//!             .serve_connection(TokioIo::new(stream), service)
//!             .with_upgrades()
//!             .await;
//!         if let Err(e) = served {
//!             eprintln!("connection: {e}");
//!         }
//!     });
//! }
//! # }
//! ```
//!
//! # What the library does for every caller
//!
//! - **Header rules**: credentials and hop-by-hop headers never reach a plugin; a plugin cannot
//!   set a [protected cookie](PluginHostBuilder::protected_cookies); its responses get
//!   `nosniff` and a CSP `sandbox`; response heads are size-limited.
//! - **Errors with HTTP meaning**: [`CallError`], [`ManageError`] and [`NotReady`] each have
//!   `status()`, `code()`, `retry_after()` and `to_response()`, from one table,
//!   [`HTTP_ERRORS`].
//! - **Limits**: request and response bodies, streams per plugin, WebSocket messages, frames and
//!   KV sizes are bounded; every bound is a builder setting with its default documented.
//!
//! # Events and logging
//!
//! Every change of a plugin's state is a [`PluginEvent`]: recorded in the database
//! ([`PluginHost::events`]), written to `<log dir>/plugin-supervisor.log`, sent to subscribers
//! ([`PluginHostBuilder::subscribe`] sees them from the very first; [`PluginHost::subscribe`]
//! from then on), and logged with `tracing` (target `toru_host::events`) unless
//! [`log_events`](PluginHostBuilder::log_events) is off, which an application that logs the
//! events itself does. The crate never installs a `tracing` subscriber.
//!
//! # Files, and the end of a host
//!
//! By default a host reads `./plugins` (and keeps `./plugins/.metadata/config.json`), and
//! writes `<data dir>/toru.redb` and the logs in `<data dir>/logs`; nothing outside the folders
//! it is given. [`shutdown`](PluginHost::shutdown) stops every plugin and returns once they are
//! gone; dropping the application's last handle without it starts the same shutdown in the
//! background (see [`PluginHost`]).
//!
//! # Platform and weight
//!
//! Every plugin runs in its own process group and container (a cgroup, a PID namespace, or the
//! host as subreaper; see [`Containment`]), under its [`Limits`], and dies with the host (the
//! parent-death signal, and a watchdog for everything it started), so this crate is Linux-only.
//! It depends on `toru-plugin-api` without its `sdk` and `license` features: a host needs the
//! protocol and the codec, not the plugin SDK or the license verifier.
#![deny(missing_docs)]

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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
mod settings;
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
    CallError, ConfigError, Error, HTTP_ERRORS, HttpError, ManageError, PLUGIN_MESSAGE_MAX,
    StartError, error_response,
};
pub use events::{EventKind, EventQuery, ExitStatus, PluginEvent};
pub use host::{ForwardedTo, NotReady, PluginHost, PluginInfo, PluginState, ScanReport};
/// The `http` crate this one speaks, so that an application uses the same version.
pub use http;
pub use logs::{
    LogConfig, LogEntry, LogError, LogPage, LogQuery, LogSource, SUPERVISOR_LOG, SupervisorEntry,
};
pub use request::{PluginRequest, PluginResponse};
pub use settings::{SettingErrors, SettingView};
pub use store::{AppSettings, KvError, KvLimits, PluginKv, Store, StoreError};
pub use supervisor::{HealthPolicy, RestartPolicy};
/// Types of the plugin protocol that this crate's API shows: a plugin's metadata and the
/// settings it declares (and their limits), its protocol versions, log levels, and the KV listing
/// limit.
pub use toru_plugin_api::protocol::{
    KV_LIST_MAX, Level, MAX_SETTINGS, MAX_TEXT_SETTING, PluginMetadata, SettingKind, SettingSpec,
    VersionRange,
};
pub use websocket::{
    BridgeMessage, ClientFrame, WebSocketSession, WsClosed, WsEvent, WsMessage, WsReceiver,
    WsSender, WsUpgrade,
};
