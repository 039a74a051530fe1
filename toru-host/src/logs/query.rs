//! Reads a plugin's log newest first, across its rotated files, at a bounded cost.
//!
//! The files are read backwards in 64 KiB blocks, and reading stops as soon as the page and one
//! more entry (for `has_more`) are found. The cost is the entries skipped and returned, never the
//! size of the files; the worst case (a level filter that matches nothing) reads every retained
//! file once, which rotation bounds at `(max_files + 1) * max_file_bytes`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use toru_plugin_api::protocol::Level;

use super::LogError;
use super::entry::LogEntry;

/// A page of a plugin's log, newest first.
///
/// ```
/// use toru_host::{Level, LogQuery};
/// let query = LogQuery::new(0, 50).with_min_level(Level::Warn);
/// assert_eq!(query.effective_page_size(), 50);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogQuery {
    /// The page, from 0.
    pub page: u32,
    /// Entries per page: default 100, at most [`LogQuery::MAX_PAGE_SIZE`]; 0 means the default.
    pub page_size: u32,
    /// Only entries at this level or above.
    pub min_level: Option<Level>,
}

impl LogQuery {
    /// The page size when none is given.
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    /// The largest page size; larger ones are lowered to it.
    pub const MAX_PAGE_SIZE: u32 = 1000;

    /// Page `page` (from 0) of `page_size` entries (0 for the default), at every level.
    pub fn new(page: u32, page_size: u32) -> LogQuery {
        LogQuery {
            page,
            page_size,
            min_level: None,
        }
    }

    /// The same query, for entries at `level` or above only.
    pub fn with_min_level(mut self, level: Level) -> LogQuery {
        self.min_level = Some(level);
        self
    }

    /// The page size used: `page_size`, with 0 meaning the default, at most the maximum.
    pub fn effective_page_size(&self) -> u32 {
        match self.page_size {
            0 => Self::DEFAULT_PAGE_SIZE,
            n => n.min(Self::MAX_PAGE_SIZE),
        }
    }
}

impl Default for LogQuery {
    fn default() -> LogQuery {
        LogQuery {
            page: 0,
            page_size: Self::DEFAULT_PAGE_SIZE,
            min_level: None,
        }
    }
}

/// One page of a plugin's log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LogPage {
    /// The entries, newest first.
    pub entries: Vec<LogEntry>,
    /// The page, from 0.
    pub page: u32,
    /// The page size used.
    pub page_size: u32,
    /// Whether older entries match.
    pub has_more: bool,
}

impl LogPage {
    /// The page `query` asks for, with nothing on it.
    pub(crate) fn empty(query: &LogQuery) -> LogPage {
        LogPage {
            entries: Vec::new(),
            page: query.page,
            page_size: query.effective_page_size(),
            has_more: false,
        }
    }
}

/// How much is read from a file at a time.
const BLOCK: u64 = 64 * 1024;

/// A longer line is skipped rather than held in memory (the host never writes one: lines are
/// capped at `max_line_bytes` before encoding).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// The page `q` asks for from `path` (`<id>.log`) and its rotated files `<id>.log.1`, ...
///
/// The files are opened while holding `rotation`, which the writer holds while renaming them,
/// so they are a consistent set; lines appended after opening are not seen.
pub(super) fn read_page(
    path: &Path,
    rotation: &Mutex<()>,
    q: &LogQuery,
) -> Result<LogPage, LogError> {
    let page_size = q.effective_page_size();
    let files = {
        let _no_renames = rotation.lock().unwrap_or_else(PoisonError::into_inner);
        open_all(path)?
    };
    let mut to_skip = u64::from(q.page) * u64::from(page_size);
    let want = page_size as usize + 1;
    let mut entries = Vec::new();
    'files: for (file_path, file) in files {
        let mut lines =
            RevLines::new(file, MAX_LINE).map_err(|source| io_error(&file_path, source))?;
        while let Some(line) = lines
            .next_line()
            .map_err(|source| io_error(&file_path, source))?
        {
            if let (Some(min), Some(level)) = (q.min_level, quick_level(&line))
                && level < min
            {
                continue; // without parsing the whole line
            }
            let Ok(entry) = serde_json::from_slice::<LogEntry>(&line) else {
                continue;
            };
            if q.min_level.is_some_and(|min| entry.level < min) {
                continue;
            }
            if to_skip > 0 {
                to_skip -= 1;
                continue;
            }
            entries.push(entry);
            if entries.len() == want {
                break 'files;
            }
        }
    }
    let has_more = entries.len() > page_size as usize;
    entries.truncate(page_size as usize);
    Ok(LogPage {
        entries,
        page: q.page,
        page_size,
        has_more,
    })
}

/// The level of a line as the host writes it, read from its fixed place:
/// `{"timestamp":"2026-11-21T23:20:35.123Z","level":"info",...`. `None` for any other shape.
fn quick_level(line: &[u8]) -> Option<Level> {
    const HEAD: &[u8] = b"{\"timestamp\":\"";
    const KEY: &[u8] = b"\",\"level\":\"";
    const TIMESTAMP_LEN: usize = "2026-11-21T23:20:35.123Z".len();
    let rest = line
        .strip_prefix(HEAD)?
        .get(TIMESTAMP_LEN..)?
        .strip_prefix(KEY)?;
    let word = rest.get(..rest.iter().take(6).position(|&b| b == b'"')?)?;
    match word {
        b"trace" => Some(Level::Trace),
        b"debug" => Some(Level::Debug),
        b"info" => Some(Level::Info),
        b"warn" => Some(Level::Warn),
        b"error" => Some(Level::Error),
        _ => None,
    }
}

/// `<id>.log`, `<id>.log.1`, `<id>.log.2`, ... newest first, up to the first one missing.
fn open_all(path: &Path) -> Result<Vec<(PathBuf, File)>, LogError> {
    let mut files = Vec::new();
    for n in 0usize.. {
        let file_path = if n == 0 {
            path.to_path_buf()
        } else {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        match File::open(&file_path) {
            Ok(file) => files.push((file_path, file)),
            // A missing current file (nothing logged since the last rotation, or never) does not
            // mean there are no rotated ones.
            Err(e) if e.kind() == io::ErrorKind::NotFound && n == 0 => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(source) => return Err(io_error(&file_path, source)),
        }
    }
    Ok(files)
}

fn io_error(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The lines of a file, last first, without their newlines.
pub(super) struct RevLines {
    file: File,
    /// Where the bytes in `buf` start in the file.
    pos: u64,
    /// Bytes not yet returned, from `pos` on.
    buf: Vec<u8>,
    /// Longer lines are skipped.
    max_line: usize,
    /// Inside a line longer than `max_line`: drop its bytes until its start is found.
    skipping: bool,
}

impl RevLines {
    pub(super) fn new(mut file: File, max_line: usize) -> io::Result<RevLines> {
        let len = file.seek(SeekFrom::End(0))?;
        let mut lines = RevLines {
            file,
            pos: len,
            buf: Vec::new(),
            max_line,
            skipping: false,
        };
        // The last line's newline ends it; it does not start an empty line after it.
        lines.fill()?;
        if lines.buf.last() == Some(&b'\n') {
            lines.buf.pop();
        }
        Ok(lines)
    }

    pub(super) fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(newline) = self.buf.iter().rposition(|&b| b == b'\n') {
                let line = self.buf.split_off(newline + 1);
                self.buf.pop();
                if std::mem::take(&mut self.skipping) || line.len() > self.max_line {
                    continue; // an over-long line, or the start of one
                }
                return Ok(Some(line));
            }
            if self.pos == 0 {
                if self.buf.is_empty() && !self.skipping {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                if std::mem::take(&mut self.skipping) {
                    return Ok(None);
                }
                return Ok(Some(line));
            }
            if self.buf.len() > self.max_line {
                self.buf.clear();
                self.skipping = true;
            }
            self.fill()?;
        }
    }

    /// Puts the block before `pos` in front of `buf`; at least as much as `buf` holds, so that a
    /// long line costs a few copies, not one per block.
    fn fill(&mut self) -> io::Result<()> {
        let start = self.pos.saturating_sub(BLOCK.max(self.buf.len() as u64));
        let len = (self.pos - start) as usize;
        let mut block = vec![0; len + self.buf.len()];
        self.file.seek(SeekFrom::Start(start))?;
        self.file.read_exact(&mut block[..len])?;
        block[len..].copy_from_slice(&self.buf);
        self.buf = block;
        self.pos = start;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines_of(content: &[u8]) -> Vec<Vec<u8>> {
        lines_with_max(content, MAX_LINE)
    }

    fn lines_with_max(content: &[u8], max_line: usize) -> Vec<Vec<u8>> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        let mut r = RevLines::new(f, max_line).unwrap();
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn reads_lines_last_first_across_blocks() {
        let lines: Vec<String> = (0..40_000).map(|i| format!("line {i}")).collect();
        let content = lines.join("\n") + "\n";
        assert!(content.len() as u64 > 3 * BLOCK);
        let got = lines_of(content.as_bytes());
        let want: Vec<Vec<u8>> = lines.iter().rev().map(|l| l.clone().into_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn quick_level_reads_the_lines_the_host_writes() {
        for level in [
            Level::Trace,
            Level::Debug,
            Level::Info,
            Level::Warn,
            Level::Error,
        ] {
            let entry = LogEntry {
                timestamp: "2026-11-21T23:20:35.123Z".into(),
                level,
                plugin: "p".into(),
                source: super::super::LogSource::Host,
                message: "m".into(),
                error: None,
            };
            let line = serde_json::to_vec(&entry).unwrap();
            assert_eq!(quick_level(&line), Some(level));
        }
        assert_eq!(quick_level(br#"{"level":"info","timestamp":"x"}"#), None);
        assert_eq!(quick_level(br#"{"timestamp":"2026"#), None);
    }

    #[test]
    fn handles_empty_files_and_a_missing_last_newline() {
        assert!(lines_of(b"").is_empty());
        assert_eq!(lines_of(b"a\nb"), vec![b"b".to_vec(), b"a".to_vec()]);
        // An empty file line is not a log entry.
        assert!(lines_of(b"\n").is_empty());
    }

    #[test]
    fn skips_a_line_longer_than_the_limit() {
        let max_line = 1000;
        for long in [max_line + 1, 3 * BLOCK as usize, 5 * BLOCK as usize + 17] {
            let mut content = b"first\n".to_vec();
            content.extend(std::iter::repeat_n(b'x', long));
            content.extend(b"\nlast\n");
            let got = lines_with_max(&content, max_line);
            let lens: Vec<usize> = got.iter().map(Vec::len).collect();
            assert_eq!(lens, [4, 5], "a {long}-byte line was not skipped");
            assert_eq!(got, [b"last".to_vec(), b"first".to_vec()]);
        }
        // A long line at the start of the file.
        let mut content = vec![b'x'; 3 * BLOCK as usize];
        content.extend(b"\nlast\n");
        assert_eq!(lines_with_max(&content, max_line), [b"last".to_vec()]);
    }
}
