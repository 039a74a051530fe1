//! The command line: flags, their `TORU_*` environment variables, and the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Hosts Toru plugins and serves their routes, the REST API and the web UI.
#[derive(Debug, Parser)]
#[command(name = "toru-server", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server (the default).
    Serve,
    /// Check that a file is a valid Toru plugin: metadata, start, one request, shutdown.
    CheckPlugin {
        /// The plugin file (an executable, or a script with a shebang).
        file: PathBuf,
    },
    /// Make a new admin secret, print it once and store its hash (stop the server first).
    ResetAdminSecret,
    /// Build the example plugins, install them in ./demo/plugins and serve them, enabled.
    Demo,
}

/// Settings of the server and its plugin host. Every flag can also be given in the
/// environment variable named beside it.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "TORU_BIND",
        default_value = "127.0.0.1:3000",
        global = true
    )]
    pub(crate) bind: SocketAddr,

    /// Folder of `*.binary` plugin files (created when missing).
    #[arg(
        long,
        env = "TORU_PLUGINS_DIR",
        default_value = "./plugins",
        global = true
    )]
    pub(crate) plugins_dir: PathBuf,

    /// Folder of the database, `toru.redb` (created when missing).
    #[arg(long, env = "TORU_DATA_DIR", default_value = ".", global = true)]
    pub(crate) data_dir: PathBuf,

    /// Folder of the plugin logs [default: /var/log/toru, or <data dir>/logs when that is not
    /// writable].
    #[arg(long, env = "TORU_LOG_DIR", global = true)]
    pub(crate) log_dir: Option<PathBuf>,

    /// How long a plugin may take to answer a request (then 504, and the plugin gets `cancel`).
    #[arg(long, env = "TORU_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration, global = true)]
    pub(crate) request_timeout: Duration,

    /// How long a plugin may take from start to ready; longer counts as a crash.
    #[arg(long, env = "TORU_START_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub(crate) start_timeout: Duration,

    /// How long a plugin gets to exit after `shutdown`, and again after SIGTERM, before SIGKILL.
    #[arg(long, env = "TORU_STOP_GRACE", default_value = "5s", value_parser = duration, global = true)]
    pub(crate) stop_grace: Duration,

    /// On SIGINT or SIGTERM, how long requests in flight may run on before they are cancelled.
    #[arg(long, env = "TORU_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub(crate) drain_timeout: Duration,

    /// The largest request body held in memory, in bytes (larger: 413): API requests, and
    /// requests for protocol 1 plugins (which get bodies whole).
    #[arg(long, env = "TORU_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024, global = true)]
    pub(crate) max_body_bytes: u64,

    /// The largest request body streamed to a protocol 2 plugin, in bytes (larger: 413). It is
    /// never held in memory.
    #[arg(long, env = "TORU_MAX_UPLOAD_BYTES", default_value_t = 1024 * 1024 * 1024, global = true)]
    pub(crate) max_upload_bytes: u64,

    /// How long a streamed response, upload or WebSocket may go with nothing moving either way
    /// before it is cancelled (the request timeout applies until a response's head).
    #[arg(long, env = "TORU_STREAM_IDLE_TIMEOUT", default_value = "300s", value_parser = duration, global = true)]
    pub(crate) stream_idle_timeout: Duration,

    /// How many requests and streams one plugin may have open at once (more: 503).
    #[arg(
        long,
        env = "TORU_MAX_STREAMS_PER_PLUGIN",
        default_value_t = 2048,
        global = true
    )]
    pub(crate) max_streams_per_plugin: usize,

    /// The largest WebSocket message, either way, in bytes (a client's larger message: close
    /// 1009).
    #[arg(long, env = "TORU_MAX_WS_MESSAGE_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub(crate) max_ws_message_bytes: usize,

    /// Mark the session cookie `Secure` (set it when Toru is served over HTTPS; a request with
    /// `X-Forwarded-Proto: https` gets it anyway).
    #[arg(long, env = "TORU_SECURE_COOKIES", global = true)]
    pub(crate) secure_cookies: bool,

    /// The format of the server's own log lines on stderr (RUST_LOG sets the levels).
    #[arg(
        long,
        env = "TORU_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `500ms`, `30s`, `2m`, ...
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags_after_the_subcommand() {
        let cli = Cli::try_parse_from(["toru-server"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.server.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(cli.server.request_timeout, Duration::from_secs(30));
        assert_eq!(cli.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(cli.server.max_upload_bytes, 1 << 30);
        assert_eq!(cli.server.stream_idle_timeout, Duration::from_secs(300));
        assert_eq!(cli.server.max_streams_per_plugin, 2048);
        assert_eq!(cli.server.max_ws_message_bytes, 1 << 20);

        let cli = Cli::try_parse_from([
            "toru-server",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--request-timeout",
            "500ms",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Serve)));
        assert_eq!(cli.server.bind.port(), 0);
        assert_eq!(cli.server.request_timeout, Duration::from_millis(500));
    }

    #[test]
    fn a_bad_duration_is_refused() {
        let err = Cli::try_parse_from(["toru-server", "--request-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
