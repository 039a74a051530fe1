//! The writer thread: owns every log file, appends whole lines and rotates by size.
//!
//! Everything that logs (the capture tasks, `log` messages, the supervisor) sends encoded lines
//! over one channel, so no caller ever waits for the disk, and the lines of one file are written
//! in the order they were sent. The thread writes a file's lines in 64 KiB pieces and pushes them
//! to the kernel whenever the channel runs empty or a flush is asked for.
//!
//! Rotation uses file-rotate's [`AppendCount`] scheme (`<id>.log.1` is the newest rotated file)
//! with [`ContentLimit::None`]: this module decides when to rotate, before a line that would take
//! the file past `max_file_bytes`, so a line is never split between two files (file-rotate's own
//! `ContentLimit::Bytes` cuts at the exact byte). file-rotate drops writes silently when it cannot
//! open a file, and asserts or unwraps on a few file system races; so this module checks that a
//! file can be opened before handing it over, and treats a panic inside file-rotate as an I/O
//! error and starts that file afresh.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tokio::sync::{mpsc, oneshot};

use super::LogConfig;
use super::capture::find_newline;

/// How many bytes of one file the thread gathers before writing them.
const WRITE_CHUNK: usize = 64 * 1024;

/// Permissions of a new log file: the owner writes, the group (say `adm`, for a log shipper)
/// reads, others nothing.
pub(crate) const LOG_MODE: u32 = 0o640;

/// A request to the writer thread.
#[derive(Debug)]
pub(super) enum Cmd {
    /// Append these complete JSON lines to the file.
    Write { path: Arc<Path>, bytes: Vec<u8> },
    /// Push everything sent before to the kernel, then answer.
    Flush(oneshot::Sender<()>),
}

/// Starts the writer thread. It ends when every sender is dropped, after writing what is left.
///
/// `queued` counts the bytes sent and not yet taken by the thread; `rotation` is held while
/// files are renamed, so that a reader can open a consistent set of files.
pub(super) fn spawn(
    config: LogConfig,
    queued: Arc<AtomicUsize>,
    rotation: Arc<Mutex<()>>,
) -> io::Result<mpsc::UnboundedSender<Cmd>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = Writer {
        config,
        queued,
        rotation,
        files: HashMap::new(),
    };
    std::thread::Builder::new()
        .name("toru-logs".into())
        .spawn(move || writer.run(rx))?;
    Ok(tx)
}

struct Writer {
    config: LogConfig,
    queued: Arc<AtomicUsize>,
    rotation: Arc<Mutex<()>>,
    files: HashMap<Arc<Path>, LogFile>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = rx.blocking_recv() {
            self.handle(cmd);
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.write_out_all();
        }
        self.write_out_all();
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Write { path, bytes } => {
                self.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                let config = self.config;
                let file = self
                    .files
                    .entry(path.clone())
                    .or_insert_with(|| LogFile::new(path));
                file.write_lines(&bytes, &config, &self.rotation);
            }
            Cmd::Flush(done) => {
                self.write_out_all();
                let _ = done.send(());
            }
        }
    }

    fn write_out_all(&mut self) {
        for file in self.files.values_mut() {
            file.write_out(&self.config);
        }
    }
}

/// One log file and the lines waiting for it.
struct LogFile {
    path: Arc<Path>,
    rotate: Option<FileRotate<AppendCount>>,
    /// The file's size, counting the lines in `pending`.
    size: u64,
    pending: Vec<u8>,
    /// The file ended in the middle of a line when it was opened (a host killed mid-write).
    needs_newline: bool,
    /// A write or open error has been reported and nothing has succeeded since: stay quiet.
    failing: bool,
    /// The same for rotation, which fails without losing lines.
    rotate_failing: bool,
}

impl LogFile {
    fn new(path: Arc<Path>) -> LogFile {
        LogFile {
            path,
            rotate: None,
            size: 0,
            pending: Vec::new(),
            needs_newline: false,
            failing: false,
            rotate_failing: false,
        }
    }

    /// Appends complete lines, rotating first whenever the next line would not fit.
    fn write_lines(&mut self, mut bytes: &[u8], config: &LogConfig, rotation: &Mutex<()>) {
        if self.rotate.is_none() && self.pending.is_empty() {
            // Learn the size of what is already on disk before deciding where the lines go.
            self.open(config);
        }
        while !bytes.is_empty() {
            let room = config.max_file_bytes.saturating_sub(self.size);
            if bytes.len() as u64 <= room {
                self.append(bytes, config);
                return;
            }
            // `room < bytes.len()`, so the cast is lossless. Only this line's bytes are searched.
            let fits = bytes[..room as usize]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1);
            let take = if fits == 0 && self.size == 0 {
                // A line longer than a whole file gets a file of its own rather than being split.
                find_newline(bytes).map_or(bytes.len(), |newline| newline + 1)
            } else {
                fits
            };
            self.append(&bytes[..take], config);
            bytes = &bytes[take..];
            if !bytes.is_empty() {
                self.write_out(config);
                if !self.rotate_now(config, rotation) {
                    // Let the file grow rather than lose lines; the next batch tries again.
                    self.append(bytes, config);
                    return;
                }
            }
        }
    }

    fn append(&mut self, lines: &[u8], config: &LogConfig) {
        self.pending.extend_from_slice(lines);
        self.size += lines.len() as u64;
        if self.pending.len() >= WRITE_CHUNK {
            self.write_out(config);
        }
    }

    /// Hands the pending lines to the kernel. On failure they are lost, and reported once.
    fn write_out(&mut self, config: &LogConfig) {
        if self.pending.is_empty() {
            return;
        }
        if self.rotate.is_none() {
            self.open(config);
        }
        let result = match self.rotate.as_mut() {
            Some(rotate) => {
                let newline = std::mem::take(&mut self.needs_newline);
                let result = if newline {
                    rotate.write_all(b"\n")
                } else {
                    Ok(())
                };
                result
                    .and_then(|()| rotate.write_all(&self.pending))
                    .and_then(|()| rotate.flush())
            }
            None => Ok(()), // open failed and was reported
        };
        match result {
            Ok(()) if self.rotate.is_some() => self.failing = false,
            Ok(()) => {}
            Err(e) => self.report(
                "writing the log file failed; lines are lost until it works",
                &e,
            ),
        }
        self.pending.clear();
    }

    fn open(&mut self, config: &LogConfig) {
        match self.try_open(config) {
            Ok(rotate) => self.rotate = Some(rotate),
            Err(e) => {
                self.rotate = None;
                self.report(
                    "opening the log file failed; lines are lost until it works",
                    &e,
                );
            }
        }
    }

    fn try_open(&mut self, config: &LogConfig) -> io::Result<FileRotate<AppendCount>> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        // file-rotate ignores a failure to open the file and then drops every write; open it
        // here first so that the failure is seen.
        let mut file = log_file_options().open(&self.path)?;
        let meta = file.metadata()?;
        tighten(&self.path, meta.permissions().mode());
        for n in 1..=config.max_files {
            let rotated = rotated_path(&self.path, n);
            if let Ok(meta) = fs::metadata(&rotated) {
                tighten(&rotated, meta.permissions().mode());
            }
        }
        let len = meta.len();
        self.size = len + self.pending.len() as u64;
        self.needs_newline = len > 0 && !ends_with_newline(&mut file, len)?;
        drop(file);
        let path = self.path.clone();
        let max_files = config.max_files;
        catch_unwind(move || {
            FileRotate::new(
                &*path,
                AppendCount::new(max_files),
                ContentLimit::None,
                Compression::None,
                Some(log_file_options()),
            )
        })
        .map_err(|_| io::Error::other("file-rotate panicked while opening the file"))
    }

    /// Rotates the file; `false` when that failed and the current file is still the one open.
    fn rotate_now(&mut self, config: &LogConfig, rotation: &Mutex<()>) -> bool {
        let Some(mut rotate) = self.rotate.take() else {
            // The file could not be opened: nothing to rotate; opening is retried on the next
            // write.
            self.size = 0;
            return true;
        };
        let result = {
            let _renaming = rotation.lock().unwrap_or_else(PoisonError::into_inner);
            catch_unwind(AssertUnwindSafe(|| rotate.rotate()))
        };
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(io::Error::other("file-rotate panicked")),
        };
        let rotated = error.is_none();
        match error {
            None => self.rotate_failing = false,
            Some(e) => report(
                &mut self.rotate_failing,
                &self.path,
                "rotating the log file failed; it grows until rotation works",
                &e,
            ),
        }
        // Reopen through the same checks as at the start (and rescan the rotated files if the
        // rotation went wrong half way).
        drop(rotate);
        self.open(config);
        rotated || self.size == 0
    }

    fn report(&mut self, what: &str, error: &io::Error) {
        report(&mut self.failing, &self.path, what, error);
    }
}

/// How log files are opened: appending, created when missing with [`LOG_MODE`] (file-rotate
/// makes each new file with these options too).
fn log_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true).mode(LOG_MODE);
    options
}

/// `<path>.<n>`, a rotated file.
fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Removes write permission for the group and every permission for others from a log file (a
/// plugin's log may hold what it was sent), with a warning.
fn tighten(path: &Path, mode: u32) {
    let mode = mode & 0o7777;
    let tight = mode & !0o027;
    if tight == mode {
        return;
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(tight)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            from = format!("{mode:04o}"),
            to = format!("{tight:04o}"),
            "the log file was readable by others; tightened its permissions"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            error = %e,
            "the log file is readable by others, and its permissions cannot be changed"
        ),
    }
}

/// Warns about `error`, unless `reported` says that was done already.
fn report(reported: &mut bool, path: &Path, what: &str, error: &io::Error) {
    if !std::mem::replace(reported, true) {
        tracing::warn!(path = %path.display(), error = %error, "{what}");
    }
}

fn ends_with_newline(file: &mut File, len: u64) -> io::Result<bool> {
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}
