//! Plugin logs: `<log dir>/plugins/<id>.log` and `<log dir>/plugin-supervisor.log`.
//!
//! Both are JSON lines ([`LogEntry`], [`SupervisorEntry`]) that an outside reader can tail and
//! parse. A plugin's file gets its stdout and stderr (each line classified: see below), the `log`
//! messages it sends over its socket, and lines the host writes about it. Files rotate by size:
//! `<id>.log` is current, `<id>.log.1` the newest rotated file, up to `<id>.log.<max_files>`.
//!
//! Levels of stdout and stderr lines:
//! - a JSON object with a level or a message (tracing-subscriber's `json`, Python JSON loggers,
//!   Go's `slog`) keeps its level, message and error;
//! - a plain line takes its level from a prefix (`ERROR ...`, `WARNING:root:...`, `[warn] ...`,
//!   `error: ...`, also after a timestamp); otherwise it is `info`, on stdout and on stderr alike,
//!   because stderr is where most loggers write routine lines;
//! - a line containing `panicked at`, or starting with `panic:`, `fatal error:` or `Traceback`,
//!   and the lines after it up to the next prefixed or JSON line, are `error`.
//!
//! Lines longer than [`LogConfig::max_line_bytes`] are cut, with `… [truncated N bytes]` at the
//! end; bytes that are not UTF-8 become U+FFFD; ANSI colour codes are removed; blank lines are
//! dropped.
//!
//! Writing never blocks a plugin or a caller: lines go to a writer thread over a channel. When
//! more than [`LogConfig::max_queued_bytes`] wait for the disk, further lines are dropped and the
//! count is logged once the writer has caught up.

mod capture;
mod classify;
mod entry;
mod query;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot};
use toru_plugin_api::protocol::{Level, LogRecord};

pub(crate) use capture::Capture;
pub use entry::{LogEntry, LogSource, SupervisorEntry};
pub use query::{LogPage, LogQuery};

use capture::{SharedTail, Tail, truncation_marker};
use entry::{EntryRef, SupervisorRef, now_timestamp, push_json_line};
use writer::Cmd;

/// The supervisor's log file, in the log dir.
pub const SUPERVISOR_LOG: &str = "plugin-supervisor.log";

/// Limits for the plugin logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogConfig {
    /// A file is rotated before a line would take it past this size. Default 10 MiB.
    pub max_file_bytes: u64,
    /// How many rotated files are kept besides the current one. Default 5.
    pub max_files: usize,
    /// Longer stdout and stderr lines, and longer `log` messages, are cut. Default 64 KiB.
    pub max_line_bytes: usize,
    /// How many of a plugin's last lines are kept for crash reports. Default 20.
    pub tail_lines: usize,
    /// When this many bytes wait for the disk, new lines are dropped rather than held.
    /// Default 32 MiB.
    pub max_queued_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 5,
            max_line_bytes: 64 * 1024,
            tail_lines: 20,
            max_queued_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Setters for building on the defaults: `LogConfig::default().with_...(..)`.
impl LogConfig {
    /// The same configuration with [`max_file_bytes`](Self::max_file_bytes) set.
    pub fn with_max_file_bytes(mut self, max_file_bytes: u64) -> Self {
        self.max_file_bytes = max_file_bytes;
        self
    }

    /// The same configuration with [`max_files`](Self::max_files) set.
    pub fn with_max_files(mut self, max_files: usize) -> Self {
        self.max_files = max_files;
        self
    }

    /// The same configuration with [`max_line_bytes`](Self::max_line_bytes) set.
    pub fn with_max_line_bytes(mut self, max_line_bytes: usize) -> Self {
        self.max_line_bytes = max_line_bytes;
        self
    }

    /// The same configuration with [`tail_lines`](Self::tail_lines) set.
    pub fn with_tail_lines(mut self, tail_lines: usize) -> Self {
        self.tail_lines = tail_lines;
        self
    }

    /// The same configuration with [`max_queued_bytes`](Self::max_queued_bytes) set.
    pub fn with_max_queued_bytes(mut self, max_queued_bytes: usize) -> Self {
        self.max_queued_bytes = max_queued_bytes;
        self
    }
}

/// Reading or setting up the plugin logs failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A log file or folder could not be created, written or read.
    #[error("log path {path:?} could not be used")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The plugin id cannot be part of a file name.
    #[error("plugin id {0:?} cannot name a log file")]
    InvalidPluginId(String),
    /// The writer thread could not be started.
    #[error("the log writer thread could not start")]
    WriterThread(#[source] io::Error),
    /// The runtime shut down during a query.
    #[error("the log query was cancelled")]
    Cancelled,
}

/// The host's plugin logs: one writer thread for every file. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct PluginLogs {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    plugins_dir: PathBuf,
    supervisor_path: Arc<Path>,
    config: LogConfig,
    tx: mpsc::UnboundedSender<Cmd>,
    queued: Arc<AtomicUsize>,
    rotation: Arc<Mutex<()>>,
    /// The current process's last lines, per plugin.
    tails: Mutex<HashMap<String, SharedTail>>,
    /// Lines are being dropped (reported once until the queue drains).
    dropping: AtomicBool,
    /// An invalid id was reported.
    bad_id_reported: AtomicBool,
}

impl PluginLogs {
    /// Creates `<log_dir>/plugins/` and starts the writer thread.
    ///
    /// # Errors
    ///
    /// [`LogError::Io`] when the folder cannot be created, [`LogError::WriterThread`] when the
    /// thread cannot start.
    pub(crate) fn open(log_dir: &Path, config: LogConfig) -> Result<PluginLogs, LogError> {
        let plugins_dir = log_dir.join("plugins");
        fs::create_dir_all(&plugins_dir).map_err(|source| LogError::Io {
            path: plugins_dir.clone(),
            source,
        })?;
        let queued = Arc::new(AtomicUsize::new(0));
        let rotation = Arc::new(Mutex::new(()));
        let tx = writer::spawn(config, queued.clone(), rotation.clone())
            .map_err(LogError::WriterThread)?;
        Ok(PluginLogs {
            shared: Arc::new(Shared {
                plugins_dir,
                supervisor_path: log_dir.join(SUPERVISOR_LOG).into(),
                config,
                tx,
                queued,
                rotation,
                tails: Mutex::new(HashMap::new()),
                dropping: AtomicBool::new(false),
                bad_id_reported: AtomicBool::new(false),
            }),
        })
    }

    /// The log dir to use: `preferred` when given, which must be writable (a file can be created
    /// in it and in its `plugins` folder); else `<data_dir>/logs`.
    ///
    /// # Errors
    ///
    /// [`LogError::Io`] when `preferred` is given and is not writable: the application asked for
    /// that folder, and logs silently written elsewhere would be missed.
    pub(crate) fn resolve_log_dir(
        preferred: Option<&Path>,
        data_dir: &Path,
    ) -> Result<PathBuf, LogError> {
        match preferred {
            Some(dir) => probe(dir)
                .map(|()| dir.to_path_buf())
                .map_err(|source| LogError::Io {
                    path: dir.to_path_buf(),
                    source,
                }),
            None => Ok(data_dir.join("logs")),
        }
    }

    /// The limits in use.
    pub(crate) fn config(&self) -> LogConfig {
        self.shared.config
    }

    /// `<log dir>/plugins/<id>.log`.
    pub(crate) fn path_for(&self, plugin_id: &str) -> PathBuf {
        self.shared.plugins_dir.join(format!("{plugin_id}.log"))
    }

    /// Appends one entry to the plugin's log. Never blocks and never fails: an I/O error is
    /// reported once with `tracing::warn`. `message` and `error` are cut at `max_line_bytes`.
    pub(crate) fn write(
        &self,
        plugin_id: &str,
        level: Level,
        source: LogSource,
        message: &str,
        error: Option<&str>,
    ) {
        if let Some(path) = self.checked_path(plugin_id) {
            let mut bytes = Vec::new();
            self.encode(&mut bytes, plugin_id, level, source, message, error);
            self.enqueue(&path, bytes, false);
        }
    }

    /// Appends a `log` message the plugin sent, and keeps it among the plugin's last lines.
    pub(crate) fn protocol_record(&self, plugin_id: &str, record: &LogRecord<'_>) {
        let error = record.error.as_deref();
        self.write(
            plugin_id,
            record.level,
            LogSource::Protocol,
            &record.message,
            error,
        );
        let tail = self.tails().get(plugin_id).cloned();
        if let Some(tail) = tail {
            let max = self.shared.config.max_line_bytes;
            let message = cap(&record.message, max);
            let line = match error {
                Some(error) => format!("{message}: {}", cap(error, max)),
                None => message.into_owned(),
            };
            Tail::push(&tail, self.shared.config.tail_lines, [line]);
        }
    }

    /// Starts reading a plugin process's stdout and stderr into its log. Call it from within the
    /// Tokio runtime; the reading tasks run until the pipes close.
    pub(crate) fn capture<O, E>(&self, plugin_id: &str, stdout: O, stderr: E) -> Capture
    where
        O: AsyncRead + Unpin + Send + 'static,
        E: AsyncRead + Unpin + Send + 'static,
    {
        Capture::start(self, plugin_id, stdout, stderr)
    }

    /// Appends a line to the supervisor's log: what it did to which plugin (`action`: `spawn`,
    /// `kill`, `restart`, `disable`, ...).
    pub(crate) fn supervisor(&self, level: Level, plugin_id: &str, action: &str, message: &str) {
        let timestamp = now_timestamp();
        let mut bytes = Vec::new();
        push_json_line(
            &mut bytes,
            &SupervisorRef {
                timestamp: &timestamp,
                level,
                plugin: plugin_id,
                action,
                message: &cap(message, self.shared.config.max_line_bytes),
            },
        );
        // Rare and what an operator looks for first: never dropped.
        self.enqueue(&self.shared.supervisor_path, bytes, true);
    }

    /// Waits until every line sent so far has been handed to the kernel (not fsynced), so that
    /// readers of the files see it.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.shared.tx.send(Cmd::Flush(done)).is_ok() {
            // An error means the writer thread is gone; there is nothing more to wait for.
            let _ = wait.await;
        }
    }

    /// A page of the plugin's log, newest first, across its rotated files. A plugin that never
    /// logged has an empty page.
    ///
    /// # Errors
    ///
    /// [`LogError::InvalidPluginId`] for an id that cannot name a file (`../x`), [`LogError::Io`]
    /// when a file exists but cannot be read.
    pub(crate) async fn query(&self, plugin_id: &str, q: &LogQuery) -> Result<LogPage, LogError> {
        if !valid_id(plugin_id) {
            return Err(LogError::InvalidPluginId(plugin_id.to_owned()));
        }
        self.flush().await;
        let path = self.path_for(plugin_id);
        let rotation = self.shared.rotation.clone();
        let q = *q;
        match tokio::task::spawn_blocking(move || query::read_page(&path, &rotation, &q)).await {
            Ok(page) => page,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(LogError::Cancelled),
        }
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<String, SharedTail>> {
        self.shared
            .tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh list of last lines for a new process of the plugin.
    fn new_tail(&self, plugin_id: &str) -> SharedTail {
        let tail = SharedTail::default();
        self.tails().insert(plugin_id.to_owned(), tail.clone());
        tail
    }

    /// The plugin's log file, or `None` (reported once) when the id cannot name a file.
    fn checked_path(&self, plugin_id: &str) -> Option<Arc<Path>> {
        if valid_id(plugin_id) {
            return Some(self.path_for(plugin_id).into());
        }
        if !self.shared.bad_id_reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(plugin.id = ?plugin_id, "plugin id cannot name a log file; its lines are not logged");
        }
        None
    }

    /// Appends one encoded entry to `out`, with `message` and `error` cut at `max_line_bytes`.
    fn encode(
        &self,
        out: &mut Vec<u8>,
        plugin_id: &str,
        level: Level,
        source: LogSource,
        message: &str,
        error: Option<&str>,
    ) {
        let max = self.shared.config.max_line_bytes;
        let timestamp = now_timestamp();
        let error = error.map(|e| cap(e, max));
        let entry = EntryRef {
            timestamp: &timestamp,
            level,
            plugin: plugin_id,
            source,
            message: &cap(message, max),
            error: error.as_deref(),
        };
        push_json_line(out, &entry);
    }

    /// Hands encoded lines to the writer thread; `false` when they were dropped because too
    /// much is waiting for the disk (unless `force`).
    fn enqueue(&self, path: &Arc<Path>, bytes: Vec<u8>, force: bool) -> bool {
        let shared = &self.shared;
        let len = bytes.len();
        let queued = shared.queued.fetch_add(len, Ordering::Relaxed);
        if !force && queued > 0 && queued + len > shared.config.max_queued_bytes {
            shared.queued.fetch_sub(len, Ordering::Relaxed);
            if !shared.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %path.display(), queued, "log writer is behind; dropping log lines");
            }
            return false;
        }
        shared.dropping.store(false, Ordering::Relaxed);
        let cmd = Cmd::Write {
            path: path.clone(),
            bytes,
        };
        if shared.tx.send(cmd).is_err() {
            // The writer thread has gone (it does not exit while a sender lives, so only a panic
            // gets here); nothing more can be written.
            shared.queued.fetch_sub(len, Ordering::Relaxed);
            if !shared.dropping.swap(true, Ordering::Relaxed) {
                tracing::error!(path = %path.display(), "log writer thread has stopped; dropping log lines");
            }
            return false;
        }
        true
    }
}

/// `text` cut at `max` bytes (on a character boundary) with the truncation marker.
fn cap(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let marker = truncation_marker((text.len() - end) as u64);
    format!("{}{marker}", &text[..end]).into()
}

/// Whether the id can be a file name in the plugins folder: ASCII letters, digits, `-`, `_` and
/// `.`, not starting with `.`, at most 128 bytes. Plugin ids (`a-z`, `0-9`, `-`) always are.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Creates `dir/plugins` and a file in each of `dir` and `dir/plugins`.
fn probe(dir: &Path) -> io::Result<()> {
    let plugins = dir.join("plugins");
    fs::create_dir_all(&plugins)?;
    for folder in [dir, plugins.as_path()] {
        let file = folder.join(format!(".toru-write-probe-{}", std::process::id()));
        fs::write(&file, b"")?;
        fs::remove_file(&file)?;
    }
    Ok(())
}
