//! Reads a plugin's stdout and stderr into its log file.
//!
//! Each pipe has its own task that reads as fast as the plugin writes: lines are classified,
//! encoded and handed to the writer thread without waiting for the disk, so a plugin never blocks
//! on a full pipe because the host is slow.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use toru_plugin_api::protocol::Level;
use tracing::Instrument;

use super::PluginLogs;
use super::classify::Classifier;
use super::entry::{EntryRef, LogSource, now_timestamp, push_json_line};

/// How much one read takes from a pipe; also the most one batch to the writer holds, roughly.
const READ_CHUNK: usize = 64 * 1024;

/// The last lines a plugin wrote, from stdout, stderr and `log` messages, in arrival order.
#[derive(Debug, Default)]
pub(super) struct Tail {
    lines: VecDeque<String>,
}

pub(super) type SharedTail = Arc<Mutex<Tail>>;

impl Tail {
    pub(super) fn push(tail: &SharedTail, max: usize, lines: impl IntoIterator<Item = String>) {
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        for line in lines {
            if tail.lines.len() == max {
                tail.lines.pop_front();
            }
            if max > 0 {
                tail.lines.push_back(line);
            }
        }
    }

    pub(super) fn snapshot(tail: &SharedTail) -> Vec<String> {
        let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.lines.iter().cloned().collect()
    }
}

/// The capture of one plugin process's stdout and stderr.
///
/// Dropping it leaves the reading tasks running until the pipes close.
#[derive(Debug)]
pub(crate) struct Capture {
    tasks: [JoinHandle<()>; 2],
    tail: SharedTail,
    logs: PluginLogs,
}

impl Capture {
    pub(super) fn start<O, E>(logs: &PluginLogs, plugin_id: &str, stdout: O, stderr: E) -> Capture
    where
        O: AsyncRead + Unpin + Send + 'static,
        E: AsyncRead + Unpin + Send + 'static,
    {
        let tail = logs.new_tail(plugin_id);
        // With an id that cannot name a file the pipes are still drained, into the tail only.
        let path = logs.checked_path(plugin_id);
        let pump = |source| Pump {
            logs: logs.clone(),
            plugin: plugin_id.to_owned(),
            path: path.clone(),
            source,
            tail: tail.clone(),
        };
        // In the caller's span (the plugin's), so that a read error names the plugin.
        let tasks = [
            tokio::spawn(pump(LogSource::Stdout).run(stdout).in_current_span()),
            tokio::spawn(pump(LogSource::Stderr).run(stderr).in_current_span()),
        ];
        Capture {
            tasks,
            tail,
            logs: logs.clone(),
        }
    }

    /// Waits until both pipes are closed and every line is in the log file, then returns the
    /// plugin's last lines (see [`Capture::tail`]).
    ///
    /// The pipes close when every process holding them has exited: the plugin and any child it
    /// started. Kill the process group first, or bound the wait with a timeout.
    pub(crate) async fn finished(self) -> Vec<String> {
        for task in self.tasks {
            // A reading task does not panic; if it did, its lines so far are all there is.
            let _ = task.await;
        }
        self.logs.flush().await;
        Tail::snapshot(&self.tail)
    }

    /// The plugin's last `tail_lines` lines so far, oldest first: stdout, stderr and `log`
    /// messages in the order they arrived, each as its message text (`message: error` when the
    /// line carries an error), truncated lines with their marker.
    pub(crate) fn tail(&self) -> Vec<String> {
        Tail::snapshot(&self.tail)
    }
}

/// One pipe's reading task.
struct Pump {
    logs: PluginLogs,
    plugin: String,
    path: Option<Arc<Path>>,
    source: LogSource,
    tail: SharedTail,
}

impl Pump {
    async fn run(self, mut pipe: impl AsyncRead + Unpin) {
        let config = self.logs.config();
        // stderr is where most loggers write routine lines (env_logger, Python's logging, Go's
        // log), so an unprefixed stderr line is not a warning; crashes are recognised by content.
        let mut classifier = Classifier::new(Level::Info);
        let mut splitter = LineSplitter::new(config.max_line_bytes);
        let mut chunk = vec![0; READ_CHUNK];
        let mut batch = Batch::default();
        loop {
            let n = match pipe.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(plugin.id = %self.plugin, source = ?self.source, error = %e,
                        "reading the plugin's output failed");
                    break;
                }
            };
            splitter.feed(&chunk[..n], |line, cut| {
                self.line(&mut classifier, &mut batch, line, cut)
            });
            self.send(&mut batch, false);
        }
        splitter.finish(|line, cut| self.line(&mut classifier, &mut batch, line, cut));
        self.send(&mut batch, true);
    }

    fn line(&self, classifier: &mut Classifier, batch: &mut Batch, line: &[u8], cut: u64) {
        let text = String::from_utf8_lossy(line);
        let Some(mut c) = classifier.classify(&text) else {
            return;
        };
        if cut > 0 {
            c.message.push_str(&truncation_marker(cut));
        }
        let timestamp = now_timestamp();
        let entry = EntryRef {
            timestamp: &timestamp,
            level: c.level,
            plugin: &self.plugin,
            source: self.source,
            message: &c.message,
            error: c.error.as_deref(),
        };
        push_json_line(&mut batch.bytes, &entry);
        batch.lines += 1;
        batch.tail.push(match c.error {
            Some(error) => format!("{}: {error}", c.message),
            None => c.message,
        });
    }

    fn send(&self, batch: &mut Batch, at_eof: bool) {
        let tail_lines = self.logs.config().tail_lines;
        let skip = batch.tail.len().saturating_sub(tail_lines);
        Tail::push(&self.tail, tail_lines, batch.tail.drain(..).skip(skip));
        let Some(path) = self.path.as_ref() else {
            batch.bytes.clear();
            return;
        };
        let note = batch.dropped > 0;
        if batch.bytes.is_empty() && !(note && at_eof) {
            return;
        }
        let bytes = if note {
            // Where the gap is: before the first lines written again.
            let message = format!(
                "{} lines from {} were dropped: the log writer fell behind",
                batch.dropped,
                self.source.as_str()
            );
            let mut bytes = Vec::new();
            let (level, source) = (Level::Warn, LogSource::Host);
            self.logs
                .encode(&mut bytes, &self.plugin, level, source, &message, None);
            bytes.append(&mut batch.bytes);
            bytes
        } else {
            std::mem::take(&mut batch.bytes)
        };
        let lines = std::mem::take(&mut batch.lines);
        // At the end of the stream the note goes out however full the queue is.
        if self.logs.enqueue(path, bytes, note && at_eof) {
            batch.dropped = 0;
        } else {
            batch.dropped += lines;
        }
    }
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
    dropped: u64,
    tail: Vec<String>,
}

/// The marker appended to a line cut at `max_line_bytes`.
pub(super) fn truncation_marker(cut: u64) -> String {
    format!(" … [truncated {cut} bytes]")
}

/// Splits a byte stream into lines, keeping at most `max` bytes of each and counting the rest.
pub(super) struct LineSplitter {
    max: usize,
    line: Vec<u8>,
    cut: u64,
}

impl LineSplitter {
    pub(super) fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            line: Vec::new(),
            cut: 0,
        }
    }

    /// Calls `emit(line, bytes_cut)` for each line that `data` completes.
    pub(super) fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8], u64)) {
        while let Some(end) = find_newline(data) {
            self.push(&data[..end]);
            self.emit(&mut emit);
            data = &data[end + 1..];
        }
        self.push(data);
    }

    /// Emits the last line when the stream did not end with a newline.
    pub(super) fn finish(&mut self, mut emit: impl FnMut(&[u8], u64)) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit(&mut emit);
        }
    }

    fn push(&mut self, part: &[u8]) {
        let room = self.max - self.line.len();
        let keep = part.len().min(room);
        self.line.extend_from_slice(&part[..keep]);
        self.cut += (part.len() - keep) as u64;
    }

    fn emit(&mut self, emit: &mut impl FnMut(&[u8], u64)) {
        if self.cut > 0 {
            // Do not leave half a character at the cut.
            let partial = incomplete_utf8_tail(&self.line);
            self.line.truncate(self.line.len() - partial);
            self.cut += partial as u64;
        }
        emit(&self.line, self.cut);
        self.line.clear();
        self.cut = 0;
    }
}

/// Where the first newline in `bytes` is.
///
/// `BufRead::skip_until` on a slice searches with the C library's `memchr`; an iterator's
/// `position` costs a call per byte in a debug build, which made reading 50 MB take seconds.
pub(super) fn find_newline(bytes: &[u8]) -> Option<usize> {
    let mut rest = bytes;
    // Reading from a slice cannot fail.
    let n = std::io::BufRead::skip_until(&mut rest, b'\n').unwrap_or(0);
    (n > 0 && bytes[n - 1] == b'\n').then(|| n - 1)
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 sequence that is cut off.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, u64)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            s.feed(chunk, |l, cut| out.push((l.to_vec(), cut)));
        }
        s.finish(|l, cut| out.push((l.to_vec(), cut)));
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let got = split(100, &[b"ab", b"c\nde", b"f\n\ng"]);
        let want: Vec<(Vec<u8>, u64)> = vec![
            (b"abc".to_vec(), 0),
            (b"def".to_vec(), 0),
            (b"".to_vec(), 0),
            (b"g".to_vec(), 0),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn caps_long_lines_and_counts_the_rest() {
        let got = split(4, &[b"abcdef", b"gh\nxy\n"]);
        assert_eq!(got, vec![(b"abcd".to_vec(), 4), (b"xy".to_vec(), 0)]);
    }

    #[test]
    fn finds_newlines() {
        assert_eq!(find_newline(b""), None);
        assert_eq!(find_newline(b"abc"), None);
        assert_eq!(find_newline(b"\n"), Some(0));
        assert_eq!(find_newline(b"ab\ncd\n"), Some(2));
    }

    #[test]
    fn never_cuts_a_character_in_half() {
        // "aé€" is 1 + 2 + 3 bytes; a cap of 5 would split the euro sign.
        let got = split(5, &["aé€x\n".as_bytes()]);
        assert_eq!(got, vec![("aé".as_bytes().to_vec(), 4)]);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&[0xF0, 0x9F, 0x98]), 3);
        assert_eq!(incomplete_utf8_tail(&[b'a', 0xFF]), 0);
    }
}
