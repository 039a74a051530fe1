//! Plugin logs with real files and real child processes.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};
use toru_plugin_api::protocol::{CowStr, Level, LogRecord};

use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn logs(dir: &TempDir, config: LogConfig) -> PluginLogs {
    PluginLogs::open(dir.path(), config).expect("open plugin logs")
}

fn spawn(logs: &PluginLogs, id: &str, program: &str, args: &[&str]) -> (Child, Capture) {
    let mut child: Child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let capture = logs.capture(
        id,
        child.stdout.take().unwrap(),
        child.stderr.take().unwrap(),
    );
    (child, capture)
}

async fn exits(child: &mut Child, within: Duration) {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("the child did not exit: blocked on its output?")
        .unwrap();
    assert!(status.success(), "the child failed: {status}");
}

async fn finished(capture: Capture) -> Vec<String> {
    tokio::time::timeout(WAIT, capture.finished())
        .await
        .expect("capture did not finish after the child exited")
}

/// Runs `program args`, captures its output, and returns the last lines once it has exited and
/// both pipes are closed.
async fn run(logs: &PluginLogs, id: &str, program: &str, args: &[&str]) -> Vec<String> {
    let (mut child, capture) = spawn(logs, id, program, args);
    exits(&mut child, WAIT).await;
    finished(capture).await
}

/// Holds the rotation lock, so that the writer thread hangs at its next rotation as it would on
/// a hung disk, until released (or dropped).
struct Stall {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Stall {
    fn writer(logs: &PluginLogs) -> Stall {
        let rotation = logs.shared.rotation.clone();
        let (locked, is_locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _guard = rotation.lock().unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
        });
        is_locked
            .recv_timeout(WAIT)
            .expect("the stall thread did not take the lock");
        Stall { release, thread }
    }

    fn release(self) {
        drop(self.release);
        self.thread.join().unwrap();
    }
}

async fn sh(logs: &PluginLogs, id: &str, script: &str) -> Vec<String> {
    run(logs, id, "sh", &["-c", script]).await
}

/// Every line of every file of the plugin, oldest file first; each must be a `LogEntry`.
fn entries_on_disk(path: &Path) -> Vec<LogEntry> {
    let mut files: Vec<_> = (1..100)
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut entries = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let entry: LogEntry = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line:.200}", file.display()));
            entries.push(entry);
        }
    }
    entries
}

fn levels_and_messages(entries: &[LogEntry]) -> Vec<(Level, &str)> {
    entries
        .iter()
        .map(|e| (e.level, e.message.as_str()))
        .collect()
}

async fn page(logs: &PluginLogs, id: &str, page: u32, size: u32, min: Option<Level>) -> LogPage {
    let q = LogQuery {
        page,
        page_size: size,
        min_level: min,
    };
    logs.query(id, &q).await.expect("query")
}

#[tokio::test]
async fn stdout_and_stderr_lines_get_levels_and_sources() {
    let dir = TempDir::new().unwrap();
    let logs = logs(&dir, LogConfig::default());
    let script = r#"
        echo '{"timestamp":"2026-01-01T00:00:00Z","level":"WARN","fields":{"message":"json warn"},"target":"p"}'
        echo 'ERROR: prefixed error' >&2
        echo 'plain stderr' >&2
        echo 'DEBUG plain debug'
    "#;
    let tail = sh(&logs, "levels", script).await;
    let entries = entries_on_disk(&logs.path_for("levels"));
    let mut got: Vec<_> = entries
        .iter()
        .map(|e| (e.source, e.level, e.message.as_str(), e.plugin.as_str()))
        .collect();
    got.sort_by_key(|e| e.2);
    assert_eq!(
        got,
        vec![
            (
                LogSource::Stdout,
                Level::Debug,
                "DEBUG plain debug",
                "levels"
            ),
            (
                LogSource::Stderr,
                Level::Error,
                "ERROR: prefixed error",
                "levels"
            ),
            (LogSource::Stdout, Level::Warn, "json warn", "levels"),
            (LogSource::Stderr, Level::Info, "plain stderr", "levels"),
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e.timestamp.ends_with('Z') && e.timestamp.len() == 24)
    );
    assert_eq!(tail.len(), 4, "{tail:?}");
    assert!(tail.contains(&"json warn".to_owned()), "{tail:?}");
}

#[tokio::test]
async fn lines_after_a_panic_or_traceback_are_errors() {
    let dir = TempDir::new().unwrap();
    let logs = logs(&dir, LogConfig::default());
    let script = r#"
import sys
print("INFO starting", file=sys.stderr, flush=True)
try:
    raise ValueError("bad settings")
except ValueError:
    import traceback
    traceback.print_exc()
print("INFO recovered", file=sys.stderr, flush=True)
print("thread 'main' panicked at src/main.rs:4:5:\nboom\nnote: run with RUST_BACKTRACE=1", file=sys.stderr)
"#;
    let tail = run(&logs, "crashy", "python3", &["-c", script]).await;
    let entries = entries_on_disk(&logs.path_for("crashy"));
    let got = levels_and_messages(&entries);
    assert_eq!(got[0], (Level::Info, "INFO starting"));
    assert_eq!(got[1], (Level::Error, "Traceback (most recent call last):"));
    let recovered = got.iter().position(|e| e.1 == "INFO recovered").unwrap();
    assert!(
        got[1..recovered].iter().all(|e| e.0 == Level::Error),
        "{got:#?}"
    );
    assert_eq!(
        got[recovered - 1],
        (Level::Error, "ValueError: bad settings")
    );
    assert_eq!(got[recovered].0, Level::Info);
    assert_eq!(
        &got[recovered + 1..],
        &[
            (Level::Error, "thread 'main' panicked at src/main.rs:4:5:"),
            (Level::Error, "boom"),
            (Level::Error, "note: run with RUST_BACKTRACE=1"),
        ]
    );
    assert_eq!(
        tail.last().map(String::as_str),
        Some("note: run with RUST_BACKTRACE=1")
    );
}

#[tokio::test]
async fn a_long_line_is_capped_with_a_marker_and_bad_bytes_are_replaced() {
    let dir = TempDir::new().unwrap();
    let logs = logs(&dir, LogConfig::default());
    // 200 KiB of 'a' without a newline in between, then a line with invalid UTF-8.
    let script = r#"
import sys
sys.stderr.write("a" * (200 * 1024) + "\n")
sys.stderr.flush()
sys.stderr.buffer.write(b"bad \xff\xfe bytes\n")
"#;
    run(&logs, "long", "python3", &["-c", script]).await;
    let entries = entries_on_disk(&logs.path_for("long"));
    assert_eq!(entries.len(), 2);
    let cut = 200 * 1024 - 64 * 1024;
    let want = format!("{}{}", "a".repeat(64 * 1024), truncation_marker(cut));
    assert_eq!(entries[0].message, want);
    assert!(entries[0].message.ends_with(" … [truncated 139264 bytes]"));
    assert_eq!(entries[1].message, "bad \u{fffd}\u{fffd} bytes");
}

#[tokio::test]
async fn fifty_megabytes_on_stderr_do_not_block_on_a_hung_disk_and_rotate() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        max_file_bytes: 1024 * 1024,
        max_files: 3,
        max_queued_bytes: 80 * 1024 * 1024,
        ..LogConfig::default()
    };
    let logs = logs(&dir, config);
    // 50 MiB in one write: 51,200 lines of 1 KiB, then a last line.
    let script = r#"
import sys
line = ("WARN " + "x" * 1018 + "\n").encode()
sys.stderr.buffer.write(line * (50 * 1024))
sys.stderr.buffer.write(b"ERROR the last line\n")
"#;
    // The writer hangs at its first rotation, after 1 MiB, until the plugin has exited: the
    // plugin must get all of its output out regardless.
    let stall = Stall::writer(&logs);
    let (mut child, capture) = spawn(&logs, "noisy", "python3", &["-c", script]);
    // Not WAIT: classifying and encoding 50 MB takes about 5 s in a debug build on a busy
    // machine (serde_json's escaping unoptimised); blocking would never end.
    exits(&mut child, Duration::from_secs(60)).await;
    stall.release();
    let tail = finished(capture).await;
    assert_eq!(tail.last().map(String::as_str), Some("ERROR the last line"));
    assert_eq!(tail.len(), config.tail_lines);

    let path = logs.path_for("noisy");
    let mut names: Vec<String> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["noisy.log", "noisy.log.1", "noisy.log.2", "noisy.log.3"]
    );
    for name in &names {
        let len = fs::metadata(path.with_file_name(name)).unwrap().len();
        assert!(len <= config.max_file_bytes, "{name} has {len} bytes");
        // A rotated file is full: rotation happens only when the next line does not fit.
        if name != "noisy.log" {
            assert!(
                len > config.max_file_bytes - 2048,
                "{name} has only {len} bytes"
            );
        }
    }
    // T21: every line of every file is a LogEntry; nothing was dropped.
    let on_disk = entries_on_disk(&path);
    assert_eq!(
        on_disk.last().map(|e| e.message.as_str()),
        Some("ERROR the last line")
    );
    assert!(
        on_disk.iter().all(|e| e.source == LogSource::Stderr),
        "a line was dropped"
    );

    let newest = page(&logs, "noisy", 0, 2, None).await;
    assert_eq!(newest.entries[0].message, "ERROR the last line");
    assert_eq!(newest.entries[0].level, Level::Error);
    assert_eq!(newest.entries[1].level, Level::Warn);
    assert!(newest.has_more);
    let errors = page(&logs, "noisy", 0, 10, Some(Level::Error)).await;
    assert_eq!(errors.entries.len(), 1);
    assert!(!errors.has_more);
}

#[tokio::test]
async fn lines_beyond_the_queue_limit_are_dropped_and_counted() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        max_file_bytes: 64 * 1024,
        max_files: 1000,
        max_queued_bytes: 256 * 1024,
        ..LogConfig::default()
    };
    let logs = logs(&dir, config);
    let script = r#"
import sys
for i in range(4000):
    sys.stderr.write("INFO line %d %s\n" % (i, "y" * 500))
"#;
    let stall = Stall::writer(&logs);
    let (mut child, capture) = spawn(&logs, "flood", "python3", &["-c", script]);
    exits(&mut child, WAIT).await;
    stall.release();
    let tail = finished(capture).await;
    assert!(
        tail.last().unwrap().starts_with("INFO line 3999 "),
        "the tail keeps every line"
    );

    // The lines written are in order, and a note stands where lines are missing, with their
    // number.
    let entries = entries_on_disk(&logs.path_for("flood"));
    let (mut next, mut notes) = (0, 0);
    for entry in &entries {
        if entry.source == LogSource::Host {
            assert_eq!(entry.level, Level::Warn);
            let (count, rest) = entry.message.split_once(' ').unwrap();
            assert_eq!(
                rest,
                "lines from stderr were dropped: the log writer fell behind"
            );
            next += count.parse::<usize>().unwrap();
            notes += 1;
        } else {
            let want = format!("INFO line {next} ");
            assert!(
                entry.message.starts_with(&want),
                "want {want:?}, got {:.20}",
                entry.message
            );
            next += 1;
        }
    }
    assert_eq!(next, 4000, "lines written and dropped add up");
    assert!(
        notes > 0 && entries.len() < 1000,
        "{} entries, {notes} notes",
        entries.len()
    );
}

#[tokio::test]
async fn query_pages_newest_first_across_rotated_files_with_a_level_filter() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        max_file_bytes: 4 * 1024,
        max_files: 50,
        ..LogConfig::default()
    };
    let logs = logs(&dir, config);
    let levels = [Level::Debug, Level::Info, Level::Warn, Level::Error];
    for i in 0..300 {
        let level = levels[i % 4];
        logs.write("pager", level, LogSource::Host, &format!("entry {i}"), None);
    }
    logs.flush().await;
    let path = logs.path_for("pager");
    assert!(
        path.with_file_name("pager.log.5").exists(),
        "expected several rotated files"
    );
    assert_eq!(entries_on_disk(&path).len(), 300);

    let all = page(&logs, "pager", 0, 7, None).await;
    let messages: Vec<_> = all.entries.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "entry 299",
            "entry 298",
            "entry 297",
            "entry 296",
            "entry 295",
            "entry 294",
            "entry 293"
        ]
    );
    assert!(all.has_more);

    // Warn and above: entries 298, 299 (mod 4 = 2, 3), then 295, 294, ...: 150 in all.
    let mut seen = Vec::new();
    for n in 0.. {
        let p = page(&logs, "pager", n, 40, Some(Level::Warn)).await;
        assert_eq!((p.page, p.page_size), (n, 40));
        assert!(p.entries.iter().all(|e| e.level >= Level::Warn));
        seen.extend(p.entries.iter().map(|e| e.message.clone()));
        if !p.has_more {
            assert_eq!(p.entries.len(), 150 - 40 * 3);
            break;
        }
    }
    let want: Vec<String> = (0..300)
        .rev()
        .filter(|i| i % 4 >= 2)
        .map(|i| format!("entry {i}"))
        .collect();
    assert_eq!(seen, want);

    let past_the_end = page(&logs, "pager", 100, 100, None).await;
    assert!(past_the_end.entries.is_empty() && !past_the_end.has_more);
    // Page size 0 is the default, and the maximum is enforced.
    assert_eq!(page(&logs, "pager", 0, 0, None).await.page_size, 100);
    assert_eq!(page(&logs, "pager", 0, 5000, None).await.page_size, 1000);
}

#[tokio::test]
async fn query_skips_bad_lines_and_unknown_plugins_are_empty() {
    let dir = TempDir::new().unwrap();
    let logs = logs(&dir, LogConfig::default());
    let empty = page(&logs, "never-ran", 0, 10, None).await;
    assert!(empty.entries.is_empty() && !empty.has_more);
    assert!(matches!(
        logs.query("../etc", &LogQuery::default()).await,
        Err(LogError::InvalidPluginId(_))
    ));

    logs.write("mixed", Level::Info, LogSource::Host, "before", None);
    logs.flush().await;
    let path = logs.path_for("mixed");
    // A line cut off by a host killed mid-write, with no newline.
    let mut text = fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"timestamp\":\"2026");
    fs::write(&path, &text).unwrap();
    // A second PluginLogs over the same files, as after a host restart.
    let again = PluginLogs::open(dir.path(), LogConfig::default()).unwrap();
    again.write("mixed", Level::Warn, LogSource::Host, "after", Some("why"));
    let p = page(&again, "mixed", 0, 10, None).await;
    let got: Vec<_> = p
        .entries
        .iter()
        .map(|e| (e.message.as_str(), e.error.as_deref()))
        .collect();
    assert_eq!(got, [("after", Some("why")), ("before", None)]);
}

#[tokio::test]
async fn protocol_records_are_logged_and_join_the_tail() {
    let dir = TempDir::new().unwrap();
    let logs = logs(&dir, LogConfig::default());
    let mut child = Command::new("sh")
        .args(["-c", "echo 'INFO from stdout'; read _"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let capture = logs.capture(
        "proto",
        child.stdout.take().unwrap(),
        child.stderr.take().unwrap(),
    );
    logs.protocol_record(
        "proto",
        &LogRecord {
            level: Level::Error,
            message: CowStr::borrowed("license rejected"),
            error: Some(CowStr::borrowed("signature mismatch")),
        },
    );
    drop(child.stdin.take()); // lets `read` return
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("sh did not exit")
        .unwrap();
    let tail = tokio::time::timeout(WAIT, capture.finished())
        .await
        .expect("capture did not finish");
    assert!(
        tail.contains(&"license rejected: signature mismatch".to_owned()),
        "{tail:?}"
    );
    assert!(tail.contains(&"INFO from stdout".to_owned()), "{tail:?}");
    let entries = entries_on_disk(&logs.path_for("proto"));
    let record = entries
        .iter()
        .find(|e| e.source == LogSource::Protocol)
        .unwrap();
    assert_eq!(
        (
            record.level,
            record.message.as_str(),
            record.error.as_deref()
        ),
        (Level::Error, "license rejected", Some("signature mismatch"))
    );
}

#[tokio::test]
async fn supervisor_lines_are_json() {
    let dir = TempDir::new().unwrap();
    let logs = logs(&dir, LogConfig::default());
    logs.supervisor(Level::Info, "hello", "spawn", "spawned pid 42");
    logs.supervisor(
        Level::Error,
        "hello",
        "disable",
        "disabled after 10 crashes \"quoted\"\n",
    );
    logs.flush().await;
    let text = fs::read_to_string(dir.path().join(SUPERVISOR_LOG)).unwrap();
    let lines: Vec<SupervisorEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0].action.as_str(), lines[0].level),
        ("spawn", Level::Info)
    );
    assert_eq!(lines[1].message, "disabled after 10 crashes \"quoted\"\n");
    assert_eq!(SUPERVISOR_LOG, "plugin-supervisor.log");
}

#[test]
fn entry_format_is_stable() {
    let entry = LogEntry {
        timestamp: "2026-11-21T23:20:35.123Z".into(),
        level: Level::Info,
        plugin: "hello-rust".into(),
        source: LogSource::Stderr,
        message: "hi".into(),
        error: None,
    };
    let json = serde_json::to_string(&entry).unwrap();
    assert_eq!(
        json,
        r#"{"timestamp":"2026-11-21T23:20:35.123Z","level":"info","plugin":"hello-rust","source":"stderr","message":"hi"}"#
    );
    let mut line = Vec::new();
    push_json_line(
        &mut line,
        &EntryRef {
            timestamp: &entry.timestamp,
            level: entry.level,
            plugin: &entry.plugin,
            source: entry.source,
            message: &entry.message,
            error: None,
        },
    );
    assert_eq!(line, format!("{json}\n").into_bytes());
}

#[test]
fn a_log_dir_given_must_be_writable() {
    let dir = TempDir::new().unwrap();
    let wanted = dir.path().join("var-log");
    let got = PluginLogs::resolve_log_dir(Some(&wanted), &dir.path().join("data")).unwrap();
    assert_eq!(got, wanted);
    assert!(wanted.join("plugins").is_dir());

    // A path below a regular file can never be created.
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = PluginLogs::resolve_log_dir(Some(&file.join("logs")), &dir.path().join("data"))
        .expect_err("an unwritable log dir given explicitly");
    assert!(
        matches!(&err, LogError::Io { path, .. } if *path == file.join("logs")),
        "{err:?}"
    );
    assert!(!dir.path().join("data").exists(), "no fallback was made");
}

#[test]
fn the_default_log_dir_is_under_the_data_dir() {
    let dir = TempDir::new().unwrap();
    let got = PluginLogs::resolve_log_dir(None, &dir.path().join("data")).unwrap();
    assert_eq!(got, dir.path().join("data").join("logs"));
}

#[tokio::test]
async fn log_files_are_made_0640_and_existing_ones_tightened() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new().unwrap();
    let old = dir.path().join("plugins/old.log");
    fs::create_dir_all(old.parent().unwrap()).unwrap();
    for path in [old.clone(), dir.path().join("plugins/old.log.1")] {
        fs::write(&path, b"{}\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    }
    let logs = logs(&dir, LogConfig::default());
    for id in ["new", "old"] {
        logs.write(id, Level::Info, LogSource::Host, "line", None);
    }
    logs.supervisor(Level::Info, "new", "spawn", "spawned");
    logs.flush().await;
    for file in ["plugins/new.log", SUPERVISOR_LOG] {
        let m = mode(&dir.path().join(file));
        // 0640, or less under a stricter umask.
        assert_eq!(m & !0o640, 0, "{file} is {m:o}");
        assert_eq!(m & 0o600, 0o600, "{file} is {m:o}");
    }
    assert_eq!(mode(&old), 0o640);
    assert_eq!(mode(&dir.path().join("plugins/old.log.1")), 0o640);
}

#[test]
fn cap_keeps_characters_whole() {
    assert_eq!(cap("short", 10), "short");
    assert_eq!(cap("aé", 2), format!("a{}", truncation_marker(2)));
}
