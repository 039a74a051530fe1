//! `toru-server`: the HTTP shell around `toru-host`. It parses the command line, sets up
//! tracing, builds a `PluginHost`, and serves the REST API, the plugins' routes and the web UI.
//! Everything an embedding application would also want lives in `toru-host`.

mod auth;
mod cli;
mod demo;
mod edge;
mod logdir;
mod metrics;
mod routes;
mod secret;
mod serve;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

// The server allocates a little for every forwarded request on every worker thread; mimalloc's
// thread-local heaps cost a fraction of glibc malloc's arenas there (see benches/load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Levels when `RUST_LOG` is not set, for the server: a line per failed request, none per
/// successful one.
const SERVER_LOG_FILTER: &str = "info,warp::filters::trace=warn";
/// Levels when `RUST_LOG` is not set, for the one-shot commands: their report is on stdout,
/// their errors on stderr, and the host's log lines would only repeat them.
const COMMAND_LOG_FILTER: &str = "off";

fn main() -> ExitCode {
    let command = Cli::parse().into_command();
    let (format, default_filter) = match &command {
        Command::Serve { server } | Command::Demo { server } => {
            (server.log_format, SERVER_LOG_FILTER)
        }
        _ => (LogFormat::Text, COMMAND_LOG_FILTER),
    };
    init_tracing(format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A plugin gets SIGKILL when the *thread* that spawned it exits (its parent-death
        // signal), and a worker thread that runs `block_in_place` (the store's writer does) may
        // be retired into the blocking pool, which ends idle threads after `thread_keep_alive`
        // (10 s by default): plugins then died 10 s after they started. Idle threads are kept.
        // (The library should spawn plugins from a thread of its own; see the hotpath report.)
        .thread_keep_alive(std::time::Duration::from_secs(365 * 24 * 3600))
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "toru-server failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { server } => serve::serve(&server, serve::Extras::default()).await?,
        Command::Demo { server } => demo::demo(*server).await?,
        Command::CheckPlugin { file } => {
            let report = toru_host::check_plugin(&file).await;
            println!("{report}");
            return Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::ResetAdminSecret { data_dir } => reset_admin_secret(&data_dir).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes a new admin secret, stores its hash and prints it once.
async fn reset_admin_secret(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let path = toru_host::PluginHost::builder()
        .data_dir(data_dir)
        .db_path();
    let store =
        toru_host::Store::open(&path, toru_host::KvLimits::default()).with_context(|| {
            format!(
                "cannot open {} (is toru-server running? stop it first)",
                path.display()
            )
        })?;
    let made = secret::make_and_store(&store.app_settings()).await;
    store.close().await.context("cannot close the database")?;
    let (secret, _) = made?;
    println!("new admin secret (shown only now; keep it): {secret}");
    if std::env::var_os(secret::ENV_SECRET).is_some() {
        println!(
            "note: {} is set, and while it is, it is the admin secret instead",
            secret::ENV_SECRET
        );
    }
    println!("sessions made with the old secret end when the server restarts");
    Ok(())
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
