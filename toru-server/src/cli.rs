//! The command line: flags, their `TORU_*` environment variables, and the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use toru_host::{Bytes, Containment, Cores, Limit, Limits};

/// Hosts Toru plugins and serves their routes, the REST API and the web UI.
///
/// The server's flags go before any subcommand (`toru-server --bind ...`) or after `serve`
/// and `demo`; the other subcommands take only their own.
#[derive(Debug, Parser)]
#[command(
    name = "toru-server",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

impl Cli {
    /// What to do: the subcommand, or `serve` with the flags given without one.
    pub(crate) fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve {
            server: Box::new(self.server),
        })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server (the default).
    Serve {
        #[command(flatten)]
        server: Box<ServerArgs>,
    },
    /// Check that a file is a valid Toru plugin: metadata, start, one request, shutdown. It runs
    /// where it is, in its own folder, in a private host (nothing else there is run or written).
    CheckPlugin {
        /// The plugin file (an executable, or a script with a shebang).
        file: PathBuf,
    },
    /// Make a new admin secret, print it once and store its hash (stop the server first).
    ResetAdminSecret {
        /// Folder of the database, `toru.redb`.
        #[arg(long, env = "TORU_DATA_DIR", default_value = ".")]
        data_dir: PathBuf,
    },
    /// Build the example plugins, install them in ./demo/plugins and serve them, enabled.
    Demo {
        #[command(flatten)]
        server: Box<ServerArgs>,
    },
}

/// Settings of the server and its plugin host. Every flag can also be given in the
/// environment variable named beside it.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Address and port to listen on.
    #[arg(long, env = "TORU_BIND", default_value = "127.0.0.1:3000")]
    pub(crate) bind: SocketAddr,

    /// Folder of `*.binary` plugin files (created when missing).
    #[arg(long, env = "TORU_PLUGINS_DIR", default_value = "./plugins")]
    pub(crate) plugins_dir: PathBuf,

    /// Folder of the database, `toru.redb` (created when missing).
    #[arg(long, env = "TORU_DATA_DIR", default_value = ".")]
    pub(crate) data_dir: PathBuf,

    /// Folder of the plugin logs; one given here must be writable [default: /var/log/toru, or
    /// DATA_DIR/logs when that is not writable].
    #[arg(long, env = "TORU_LOG_DIR")]
    pub(crate) log_dir: Option<PathBuf>,

    /// How long a plugin may take to answer a request (then 504, and the plugin gets `cancel`).
    #[arg(long, env = "TORU_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub(crate) request_timeout: Duration,

    /// How long a plugin may take from start to ready; longer counts as a crash.
    #[arg(long, env = "TORU_START_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub(crate) start_timeout: Duration,

    /// How long a plugin gets to exit after `shutdown`, and again after SIGTERM, before SIGKILL.
    #[arg(long, env = "TORU_STOP_GRACE", default_value = "5s", value_parser = duration)]
    pub(crate) stop_grace: Duration,

    /// Do not watch the plugins folder (inotify): new, replaced and removed plugin files are
    /// then noticed every --rescan-interval and on `POST /api/plugins/rescan` only.
    #[arg(long, env = "TORU_NO_WATCH")]
    pub(crate) no_watch: bool,

    /// How often the plugins folder is scanned even when no change was reported.
    #[arg(long, env = "TORU_RESCAN_INTERVAL", default_value = "30s", value_parser = duration)]
    pub(crate) rescan_interval: Duration,

    /// How many plugins may run `--metadata` or start (spawn to ready) at once [default: the
    /// number of CPUs, at least 2].
    #[arg(long, env = "TORU_LAUNCH_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) launch_concurrency: Option<u16>,

    /// After a plugin's file is replaced, how long its old version may take to finish its
    /// requests in flight before it is stopped.
    #[arg(long, env = "TORU_UPGRADE_DRAIN", default_value = "30s", value_parser = duration)]
    pub(crate) upgrade_drain: Duration,

    /// On SIGINT or SIGTERM, how long requests in flight may run on before they are cancelled.
    #[arg(long, env = "TORU_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub(crate) drain_timeout: Duration,

    /// How long a client may take to send a request head: from a new connection, or from the
    /// first byte of a later request on a kept-alive one. Slower: the connection is closed.
    #[arg(long, env = "TORU_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub(crate) header_timeout: Duration,

    /// How long a kept-alive connection may stay silent between requests before it is closed.
    #[arg(long, env = "TORU_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub(crate) idle_timeout: Duration,

    /// Client connections open at most [default: the open-file limit minus a reserve for
    /// plugins and files: a quarter of the limit, 64 to 1024; at most 16384]. At the cap, a new
    /// connection closes the one idle the longest; when all are busy, new ones wait.
    #[arg(long, env = "TORU_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: Option<u32>,

    /// The largest request body held in memory, in bytes (larger: 413): API requests, and
    /// requests for protocol 1 plugins (which get bodies whole).
    #[arg(long, env = "TORU_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub(crate) max_body_bytes: u64,

    /// The largest request body streamed to a protocol 2 plugin, in bytes (larger: 413). It is
    /// never held in memory.
    #[arg(long, env = "TORU_MAX_UPLOAD_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub(crate) max_upload_bytes: u64,

    /// How long a streamed response, upload or WebSocket may go with nothing moving either way
    /// before it is cancelled (the request timeout applies until a response's head).
    #[arg(long, env = "TORU_STREAM_IDLE_TIMEOUT", default_value = "300s", value_parser = duration)]
    pub(crate) stream_idle_timeout: Duration,

    /// How many requests and streams one plugin may have open at once (more: 503).
    #[arg(long, env = "TORU_MAX_STREAMS_PER_PLUGIN", default_value_t = 2048)]
    pub(crate) max_streams_per_plugin: usize,

    /// The largest WebSocket message, either way, in bytes (a client's larger message: close
    /// 1009).
    #[arg(long, env = "TORU_MAX_WS_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub(crate) max_ws_message_bytes: usize,

    /// Mark the session cookie `Secure` (set it when Toru is served over HTTPS; a request with
    /// `X-Forwarded-Proto: https` gets it anyway).
    #[arg(long, env = "TORU_SECURE_COOKIES")]
    pub(crate) secure_cookies: bool,

    /// The memory each plugin may use (its processes together, in a cgroup), with a 1024-based
    /// unit (`128MiB`, `1G`) or `unlimited`. A plugin's own limit (config.json, the API)
    /// replaces it.
    #[arg(long, env = "TORU_PLUGIN_MEMORY_LIMIT", default_value_t = Limits::default().memory, value_parser = Limits::parse_memory)]
    pub(crate) plugin_memory_limit: Limit<Bytes>,

    /// How many processes and threads each plugin may run, or `unlimited`.
    #[arg(long, env = "TORU_PLUGIN_MAX_PROCESSES", default_value_t = Limits::default().processes, value_parser = Limits::parse_processes)]
    pub(crate) plugin_max_processes: Limit<u64>,

    /// How many files (and sockets) each plugin process may have open, or `unlimited`.
    #[arg(long, env = "TORU_PLUGIN_MAX_OPEN_FILES", default_value_t = Limits::default().open_files, value_parser = Limits::parse_open_files)]
    pub(crate) plugin_max_open_files: Limit<u64>,

    /// The CPU each plugin may use: cores (`0.5`, `2`), a percentage of one core (`50%`), or
    /// `unlimited`.
    #[arg(long, env = "TORU_PLUGIN_CPU", default_value_t = Limits::default().cpu, value_parser = Limits::parse_cpu)]
    pub(crate) plugin_cpu: Limit<Cores>,

    /// How plugins are kept together, if not the best this machine offers: the first of
    /// cgroup-v2, cgroup-v1, pid-namespace, subreaper to try (the host falls back down the list).
    #[arg(long, env = "TORU_PLUGIN_CONTAINMENT", value_parser = containment)]
    pub(crate) plugin_containment: Option<Containment>,

    /// The format of the server's own log lines on stderr (RUST_LOG sets the levels).
    #[arg(long, env = "TORU_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl ServerArgs {
    /// The limits of a plugin with none of its own.
    pub(crate) fn plugin_limits(&self) -> Limits {
        Limits::default()
            .with_memory(self.plugin_memory_limit)
            .with_processes(self.plugin_max_processes)
            .with_open_files(self.plugin_max_open_files)
            .with_cpu(self.plugin_cpu)
    }
}

fn containment(s: &str) -> Result<Containment, String> {
    s.parse()
}

/// `500ms`, `30s`, `2m`, ...
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's settings of a command line that serves.
    fn served(args: &[&str]) -> ServerArgs {
        match Cli::try_parse_from(args).unwrap().into_command() {
            Command::Serve { server } => *server,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags_after_the_subcommand() {
        let server = served(&["toru-server"]);
        assert_eq!(server.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(server.request_timeout, Duration::from_secs(30));
        assert_eq!(server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(server.header_timeout, Duration::from_secs(10));
        assert_eq!(server.idle_timeout, Duration::from_secs(60));
        assert_eq!(server.max_connections, None);
        assert_eq!(server.max_upload_bytes, 1 << 30);
        assert_eq!(server.stream_idle_timeout, Duration::from_secs(300));
        assert_eq!(server.max_streams_per_plugin, 2048);
        assert_eq!(server.max_ws_message_bytes, 1 << 20);

        for args in [
            &["toru-server", "serve", "--bind", "127.0.0.1:0"][..],
            &["toru-server", "--bind", "127.0.0.1:0"][..],
        ] {
            let mut args = args.to_vec();
            args.extend(["--request-timeout", "500ms", "--max-connections", "100"]);
            let server = served(&args);
            assert_eq!(server.max_connections, Some(100));
            assert_eq!(server.bind.port(), 0);
            assert_eq!(server.request_timeout, Duration::from_millis(500));
        }
    }

    /// `check-plugin --help` lists its own arguments, not the server's flags; those are refused
    /// there.
    #[test]
    fn commands_take_only_their_own_flags() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let check = cli.find_subcommand_mut("check-plugin").unwrap();
        let help = check.render_long_help().to_string();
        assert!(help.contains("<FILE>"), "{help}");
        for flag in [
            "--bind",
            "--plugins-dir",
            "--data-dir",
            "--plugin-cpu",
            "--log-format",
        ] {
            assert!(!help.contains(flag), "{flag} in:\n{help}");
        }
        assert!(Cli::try_parse_from(["toru-server", "check-plugin", "--bind", "x", "f"]).is_err());
        let reset = cli.find_subcommand_mut("reset-admin-secret").unwrap();
        let help = reset.render_long_help().to_string();
        assert!(
            help.contains("--data-dir") && !help.contains("--bind"),
            "{help}"
        );
        match Cli::try_parse_from(["toru-server", "reset-admin-secret", "--data-dir", "/d"])
            .unwrap()
            .into_command()
        {
            Command::ResetAdminSecret { data_dir } => assert_eq!(data_dir, PathBuf::from("/d")),
            other => panic!("{other:?}"),
        }
        // A server's flag before a subcommand is refused, not silently dropped.
        assert!(Cli::try_parse_from(["toru-server", "--bind", "127.0.0.1:0", "demo"]).is_err());
    }

    #[test]
    fn plugin_limits_take_units_and_default_to_the_hosts() {
        let server = served(&["toru-server"]);
        assert_eq!(server.plugin_limits(), Limits::default());
        assert_eq!(server.plugin_containment, None);
        let server = served(&[
            "toru-server",
            "--plugin-memory-limit",
            "128MiB",
            "--plugin-max-processes",
            "64",
            "--plugin-max-open-files",
            "unlimited",
            "--plugin-cpu",
            "50%",
            "--plugin-containment",
            "pid-namespace",
        ]);
        let limits = server.plugin_limits();
        assert_eq!(limits.memory, Limit::At(Bytes(128 << 20)));
        assert_eq!(limits.processes, Limit::At(64));
        assert_eq!(limits.open_files, Limit::Unlimited);
        assert_eq!(limits.cpu, Limit::At(Cores::from_millicores(500)));
        assert_eq!(server.plugin_containment, Some(Containment::PidNamespace));
    }

    #[test]
    fn bad_plugin_limits_are_refused_with_the_value() {
        for (flag, value, says) in [
            ("--plugin-memory-limit", "lots", "is not a size"),
            ("--plugin-memory-limit", "1KiB", "at least 4 MiB"),
            ("--plugin-max-processes", "0", "out of range"),
            ("--plugin-cpu", "0%", "out of range"),
            ("--plugin-containment", "docker", "is not a containment"),
        ] {
            let err = Cli::try_parse_from(["toru-server", flag, value]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(value) && text.contains(says),
                "{flag} {value}: {text}"
            );
        }
    }

    #[test]
    fn a_bad_duration_is_refused() {
        let err = Cli::try_parse_from(["toru-server", "--request-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn a_connection_cap_of_zero_is_refused() {
        assert!(Cli::try_parse_from(["toru-server", "--max-connections", "0"]).is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
