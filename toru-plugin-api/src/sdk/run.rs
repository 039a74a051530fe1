//! The entry point a plugin's `main` calls: arguments, environment, socket, exit code.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use super::error_chain;
use super::plugin::ToruPlugin;
use super::serve::serve;
use crate::protocol::{ENV_SOCKET_PATH, PluginMetadata};

/// The exit code for a plugin started the wrong way (by hand, or with arguments it does not
/// know).
pub(crate) const EXIT_USAGE: i32 = 2;

/// Runs a plugin as the host expects, then exits the process.
///
/// - `plugin --metadata` prints the metadata as one JSON object on stdout and exits 0 (1 when
///   the metadata breaks the id or route rules).
/// - With `TORU_SOCKET_PATH` set, it removes a stale file there, binds and listens, accepts one
///   connection (the host), stops listening, and [`serve`]s it. It exits 0 after `shutdown` or
///   when the host hangs up, 78 ([`EXIT_CONFIG`](crate::protocol::EXIT_CONFIG)) when the
///   protocol versions do not overlap or [`ToruPlugin::init`] refuses, and 1 when the connection
///   breaks (for example a frame over the 16 MiB limit). Each failure is one line on stderr,
///   starting `ERROR` so that the host logs it at that level.
/// - Otherwise (started by hand) it prints one sentence on stderr saying how it is meant to be
///   started, and exits 2.
///
/// It builds a multi-threaded tokio runtime; do not call it from inside one.
///
/// ```no_run
/// # use toru_plugin_api::{HttpResult, ToruPlugin, PluginContext, PluginMetadata, Request};
/// # struct MyPlugin;
/// # #[async_trait::async_trait]
/// # impl ToruPlugin for MyPlugin {
/// #     fn metadata(&self) -> PluginMetadata { unimplemented!() }
/// #     async fn handle_http(&self, _: &PluginContext, _: Request) -> HttpResult { unimplemented!() }
/// # }
/// fn main() {
///     toru_plugin_api::run(MyPlugin)
/// }
/// ```
pub fn run<P: ToruPlugin>(plugin: P) -> ! {
    let args = std::env::args_os().skip(1).collect();
    let socket = std::env::var_os(ENV_SOCKET_PATH);
    let code = main_code(plugin, args, socket);
    std::process::exit(code)
}

/// What the process was started to do.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Metadata,
    Serve(PathBuf),
    ByHand,
}

fn mode(args: &[OsString], socket: Option<OsString>) -> Mode {
    match (args, socket) {
        ([flag], _) if flag == "--metadata" => Mode::Metadata,
        ([], Some(path)) if !path.is_empty() => Mode::Serve(PathBuf::from(path)),
        _ => Mode::ByHand,
    }
}

/// The metadata as `--metadata` prints it: `protocol`, `frontend` and `license_required` filled
/// in by the SDK.
pub(crate) fn effective_metadata<P: ToruPlugin>(plugin: &P) -> PluginMetadata {
    let mut meta = plugin.metadata();
    meta.protocol.get_or_insert(super::serve::SDK_VERSIONS);
    meta.frontend |= plugin.bundle().is_some();
    meta.license_required |= plugin.license().is_some();
    meta
}

fn main_code<P: ToruPlugin>(plugin: P, args: Vec<OsString>, socket: Option<OsString>) -> i32 {
    let meta = effective_metadata(&plugin);
    match mode(&args, socket) {
        Mode::Metadata => print_metadata(&meta),
        Mode::ByHand => {
            eprintln!("{}", by_hand_sentence(&meta.id));
            EXIT_USAGE
        }
        Mode::Serve(path) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ERROR {}: cannot start the tokio runtime: {e}", meta.id);
                    return 1;
                }
            };
            let code = runtime.block_on(listen_and_serve(plugin, &path, &meta.id));
            // Handlers stuck in blocking code must not hold the exit up.
            runtime.shutdown_timeout(Duration::from_millis(100));
            code
        }
    }
}

fn print_metadata(meta: &PluginMetadata) -> i32 {
    if let Err(e) = meta.validate() {
        eprintln!("ERROR {}: the plugin's metadata is not valid: {e}", meta.id);
        return 1;
    }
    let json = serde_json::to_string(meta).expect("metadata serialises");
    match writeln!(std::io::stdout().lock(), "{json}") {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn by_hand_sentence(id: &str) -> String {
    format!(
        "{id} is a Toru plugin: a Toru host starts it with {ENV_SOCKET_PATH} set to the socket \
         it should listen on, and running it with --metadata prints its metadata."
    )
}

async fn listen_and_serve<P: ToruPlugin>(plugin: P, path: &Path, id: &str) -> i32 {
    let stream = match accept_one(path).await {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("ERROR {id}: cannot listen on {}: {e}", path.display());
            return 1;
        }
    };
    match serve(plugin, stream).await {
        Ok(()) => 0,
        Err(e) => {
            // The level prefix makes the host log the line as an error.
            eprintln!("ERROR {id}: {}", error_chain(&e));
            e.exit_code()
        }
    }
}

/// Listens at `path`, accepts one connection, then stops listening and removes the socket file.
async fn accept_one(path: &Path) -> std::io::Result<UnixStream> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let (stream, _) = listener.accept().await?;
    drop(listener);
    let _ = std::fs::remove_file(path);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn picks_the_mode_from_arguments_and_environment() {
        let sock = || Some(OsString::from("/run/p.sock"));
        assert_eq!(mode(&os(&["--metadata"]), sock()), Mode::Metadata);
        assert_eq!(mode(&os(&["--metadata"]), None), Mode::Metadata);
        assert_eq!(mode(&os(&[]), sock()), Mode::Serve("/run/p.sock".into()));
        assert_eq!(mode(&os(&[]), None), Mode::ByHand);
        assert_eq!(mode(&os(&[]), Some(OsString::new())), Mode::ByHand);
        assert_eq!(mode(&os(&["--help"]), sock()), Mode::ByHand);
        assert_eq!(mode(&os(&["--metadata", "x"]), None), Mode::ByHand);
    }

    #[test]
    fn the_by_hand_message_is_one_sentence_naming_the_variable_and_flag() {
        let s = by_hand_sentence("acme");
        assert!(s.starts_with("acme is a Toru plugin"));
        assert!(s.contains("TORU_SOCKET_PATH") && s.contains("--metadata"));
        assert!(!s.contains('\n'));
        assert_eq!(s.matches(". ").count(), 0);
    }

    #[tokio::test]
    async fn accept_one_replaces_a_stale_file_and_unlinks_after_accepting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        std::fs::write(&path, b"stale").unwrap();
        let accepting = tokio::spawn({
            let path = path.clone();
            async move { accept_one(&path).await }
        });
        let connect = async {
            loop {
                // Connecting fails until the listener has replaced the stale file.
                if let Ok(c) = UnixStream::connect(&path).await {
                    return c;
                }
                tokio::task::yield_now().await;
            }
        };
        let client = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .expect("the socket did not become connectable within 10 s");
        let server = tokio::time::timeout(Duration::from_secs(10), accepting)
            .await
            .expect("accept_one did not accept within 10 s")
            .unwrap()
            .unwrap();
        assert!(!path.exists(), "the socket file is removed after accepting");
        drop((client, server));
    }
}
