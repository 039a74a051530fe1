//! An axum application that hosts Toru plugins: their routes under `/ext/<route>/...` (streams
//! and WebSockets included), a small admin API, the plugins' events in its log, and a clean stop
//! on Ctrl-C. `toru-host` does the work; this file is the glue.
//!
//! ```sh
//! embed-axum --bind 127.0.0.1:3000 --plugins-dir ./plugins --data-dir ./data
//! curl http://127.0.0.1:3000/ext/hello-rust/echo          # reaches the plugin's /hello-rust/echo
//! curl http://127.0.0.1:3000/admin/plugins
//! curl -X POST http://127.0.0.1:3000/admin/plugins/hello-rust/disable
//! ```
//!
//! It has no authentication of its own: put yours in front of `/admin` (and of `/ext` if your
//! plugins need it) before binding anything but localhost.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get, post};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use toru_host::{PluginHost, error_response, http::StatusCode};

/// How long `POST /admin/plugins/{id}/enable` waits for the plugin to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:3000")]
    bind: SocketAddr,
    /// Folder of the plugin files (`*.binary`).
    #[arg(long, default_value = "./plugins")]
    plugins_dir: PathBuf,
    /// Folder of the database and the plugin logs.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// How long a plugin may take to answer a request (then 504).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.bind).await?;

    let mut builder = PluginHost::builder();
    let events = builder.subscribe(); // from the very first event
    let host = builder
        .plugin_dir(&args.plugins_dir)
        .data_dir(&args.data_dir)
        .request_timeout(args.request_timeout)
        .log_events(false) // logged below, once
        .start()
        .await?;
    tokio::spawn(log_events(events));

    let app = axum::Router::new()
        .route("/ext/{*rest}", any(forward))
        .route("/admin/plugins", get(list))
        .route("/admin/plugins/{id}/enable", post(enable))
        .route("/admin/plugins/{id}/disable", post(disable))
        .fallback(|| async {
            error_response(StatusCode::NOT_FOUND, "not_found", "no such page", None)
        })
        .with_state(host.clone());
    println!("listening on http://{}", listener.local_addr()?);

    // On Ctrl-C (or SIGTERM): stop accepting, and stop the host, which ends open streams and
    // WebSockets (so that the server's graceful shutdown does not wait on them) and every plugin.
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let (served, ()) = tokio::join!(server, async {
        stop.cancelled().await;
        host.shutdown().await;
    });
    served?;
    tracing::info!("stopped; every plugin is stopped");
    Ok(())
}

/// `/ext/<route>/...`: the plugin whose route is `/<route>` gets `/<route>/...`, body streamed
/// both ways, WebSocket upgrades bridged, errors as JSON with their status.
async fn forward(State(host): State<PluginHost>, request: Request) -> Response {
    host.forward(request, "/ext").await.into_response()
}

async fn list(State(host): State<PluginHost>) -> Response {
    Json(host.list()).into_response()
}

/// Enables a plugin and answers once it serves, or why it does not.
async fn enable(State(host): State<PluginHost>, Path(id): Path<String>) -> Response {
    match host.enable_and_wait(&id, READY_TIMEOUT).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => e.to_response().into_response(),
    }
}

async fn disable(State(host): State<PluginHost>, Path(id): Path<String>) -> Response {
    match host.disable(&id).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => e.to_response().into_response(),
    }
}

async fn log_events(mut events: tokio::sync::broadcast::Receiver<toru_host::PluginEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(e) => {
                tracing::info!(plugin = %e.plugin_id, event = %e.kind, reason = e.reason.as_deref().unwrap_or(""), "plugin event")
            }
            Err(RecvError::Lagged(n)) => tracing::warn!(skipped = n, "plugin events skipped"),
            Err(RecvError::Closed) => return,
        }
    }
}

async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return tracing::error!("cannot handle signals");
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!("stopping");
    stop.cancel();
}
