//! Running the server: bind, start the plugin host, serve until SIGINT or SIGTERM, then drain
//! requests in flight and stop every plugin.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use toru_host::PluginHost;

use crate::auth::Auth;
use crate::cli::ServerArgs;
use crate::edge::{self, EdgeConfig};
use crate::routes::{self, AppState, PluginRoutes};
use crate::secret::{self, SecretSource};

/// What the demo changes about a normal start.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// Plugins enabled once the host has started.
    pub(crate) enable: Vec<String>,
    /// Make (and print) a new admin secret even when one is stored.
    pub(crate) fresh_secret: bool,
}

pub(crate) async fn serve(args: &ServerArgs, extras: Extras) -> anyhow::Result<()> {
    // First, before anything opens files: every connection and plugin needs descriptors.
    let fd_limit = edge::fdlimit::raise();
    let edge_config = edge_config(args, fd_limit);
    // Bind first: a port in use is reported before any plugin starts.
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone())?;

    let host = host_builder(args)
        .start()
        .await
        .context("cannot start the plugin host")?;
    let started = async {
        if !extras.enable.is_empty() {
            // The host scans its folder in the background; the demo's plugins must be found.
            host.discovered().await;
        }
        for id in &extras.enable {
            host.enable(id)
                .await
                .with_context(|| format!("cannot enable plugin {id}"))?;
        }
        secret::load_or_create(&host.app_settings(), extras.fresh_secret).await
    }
    .await;
    let admin = match started {
        Ok(admin) => admin,
        Err(e) => {
            host.shutdown().await;
            return Err(e);
        }
    };

    let state = Arc::new(AppState {
        host: host.clone(),
        auth: Auth::new(admin.check, Some(host.app_settings())),
        max_body_bytes: args.max_body_bytes,
        secure_cookies: args.secure_cookies,
        shutdown: shutdown.clone(),
    });
    let routes = routes::routes(Arc::clone(&state));
    crate::metrics::spawn_upkeep(shutdown.clone());
    announce(addr, admin.new_secret.as_deref(), admin.source);
    tracing::info!(
        %addr,
        plugins_dir = %host.plugin_dir().display(),
        max_connections = edge_config.max_connections,
        header_timeout = ?edge_config.timeouts.header,
        idle_timeout = ?edge_config.timeouts.idle,
        "toru-server listening; plugins come up behind it"
    );

    let server = edge::serve(
        listener,
        warp::service(routes),
        PluginRoutes {
            state: Arc::clone(&state),
        },
        edge_config,
        shutdown.clone(),
    );
    let drain = args.drain_timeout;
    tokio::select! {
        () = server => {}
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        } => tracing::warn!(timeout = ?drain, "requests still in flight after the drain timeout are cancelled"),
    }
    tracing::info!("stopping every plugin");
    host.shutdown().await;
    tracing::info!("toru-server stopped");
    Ok(())
}

/// The edge's timeouts and connection cap, from the flags and the open-file limit.
fn edge_config(args: &ServerArgs, fd_limit: edge::fdlimit::FdLimit) -> EdgeConfig {
    let auto = edge::fdlimit::auto_cap(fd_limit.soft);
    let max_connections = match args.max_connections {
        Some(cap) => {
            let cap = cap as usize;
            if cap > auto {
                tracing::warn!(
                    max_connections = cap,
                    open_file_limit = ?fd_limit.soft,
                    "--max-connections leaves less than the usual reserve of descriptors for plugins and files"
                );
            }
            cap
        }
        None => auto,
    };
    EdgeConfig {
        timeouts: edge::Timeouts {
            header: args.header_timeout,
            idle: args.idle_timeout,
        },
        max_connections,
    }
}

pub(crate) fn host_builder(args: &ServerArgs) -> toru_host::PluginHostBuilder {
    let mut builder = PluginHost::builder();
    builder
        .plugin_dir(&args.plugins_dir)
        .data_dir(&args.data_dir)
        .request_timeout(args.request_timeout)
        .start_timeout(args.start_timeout)
        .stop_grace(args.stop_grace)
        .default_limits(args.plugin_limits())
        .watch_plugins(!args.no_watch)
        .rescan_interval(args.rescan_interval)
        .drain_timeout(args.upgrade_drain)
        .max_body_bytes(args.max_body_bytes)
        .max_upload_bytes(args.max_upload_bytes)
        .stream_idle_timeout(args.stream_idle_timeout)
        .max_streams_per_plugin(args.max_streams_per_plugin)
        .max_ws_message_bytes(args.max_ws_message_bytes)
        .protected_cookies([crate::routes::SESSION_COOKIE]);
    if let Some(n) = args.launch_concurrency {
        builder.launch_concurrency(usize::from(n));
    }
    match &args.log_dir {
        Some(dir) => {
            builder.log_dir(dir);
        }
        None => {
            if let Some(dir) = crate::logdir::default(&args.data_dir) {
                builder.log_dir(dir);
            }
        }
    }
    if let Some(first) = args.plugin_containment {
        builder.containment(first);
    }
    builder
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        shutdown.cancel();
    });
    Ok(())
}

/// The start-up lines on stdout: the URL, and the admin secret when it was just made (the only
/// time it is ever shown).
fn announce(addr: SocketAddr, new_secret: Option<&str>, source: SecretSource) {
    let open = if addr.ip().is_unspecified() {
        format!("http://localhost:{}/", addr.port())
    } else {
        format!("http://{addr}/")
    };
    println!("toru-server listening on http://{addr}");
    match (new_secret, source) {
        (Some(secret), _) => {
            println!("admin secret (shown only now; keep it): {secret}");
        }
        (None, SecretSource::Env) => {
            println!("admin secret: the value of {}", secret::ENV_SECRET);
        }
        (None, _) => println!(
            "admin secret: the one shown on first start (`toru-server reset-admin-secret` makes a new one)"
        ),
    }
    println!("open {open} and log in with the admin secret");
}
