//! Gives each line a plugin writes to stdout or stderr a level and a message.
//!
//! - A JSON object with a level or a message (tracing-subscriber's `json`, Python JSON loggers,
//!   Go's `slog`, zap, pino) keeps its level, message and error; other fields are appended to the
//!   message as `key=value`.
//! - A plain line takes its level from a level word at its start, after any timestamps:
//!   `ERROR ...`, `WARNING:root:...`, `[error] ...`, `error: ...`,
//!   `2026-11-21T23:20:35Z  INFO target: ...`, `[2026-11-21T23:20:35Z WARN app] ...`, and glog's
//!   `E1121 23:20:35.123 ...`. Bare words count only in upper case (`ERROR`), other spellings
//!   only when decorated by brackets or a colon (`[error]`, `Error:`), so that a sentence such as
//!   "Error reading the file" keeps the default level.
//! - A line containing `panicked at`, or starting with `panic:`, `fatal error:` or `Traceback`,
//!   is an error, and so is every following line of that stream until one that looks like a normal
//!   log line again (a level prefix or JSON).
//! - Other lines get the stream's default level. ANSI colour codes are removed; blank lines are
//!   dropped.

use std::borrow::Cow;

use serde_json::{Map, Value};
use toru_plugin_api::protocol::Level;

/// A line's level and text.
#[derive(Debug, PartialEq)]
pub(super) struct Classified {
    pub(super) level: Level,
    pub(super) message: String,
    pub(super) error: Option<String>,
}

/// Classifies the lines of one stream, in order: it remembers whether a crash report is running.
pub(super) struct Classifier {
    default: Level,
    in_crash: bool,
}

impl Classifier {
    pub(super) fn new(default: Level) -> Classifier {
        Classifier {
            default,
            in_crash: false,
        }
    }

    /// The line's level and message; `None` for a blank line.
    pub(super) fn classify(&mut self, line: &str) -> Option<Classified> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let text = strip_ansi(line);
        if text.trim().is_empty() {
            return None;
        }
        if let Some(classified) = from_json(&text, self.default) {
            self.in_crash = false;
            return Some(classified);
        }
        let level = if starts_crash(&text) {
            self.in_crash = true;
            Level::Error
        } else if let Some(level) = prefix_level(&text) {
            self.in_crash = false;
            level
        } else if self.in_crash {
            Level::Error
        } else {
            self.default
        };
        Some(Classified {
            level,
            message: text.into_owned(),
            error: None,
        })
    }
}

fn starts_crash(text: &str) -> bool {
    let start = text.trim_start();
    text.contains("panicked at")
        || start.starts_with("panic:")
        || start.starts_with("fatal error:")
        || start.starts_with("Traceback")
}

/// The level named by one of the first words, when only timestamps come before it.
fn prefix_level(text: &str) -> Option<Level> {
    let mut tokens = text.split_whitespace().take(4).peekable();
    if let Some(level) = tokens.peek().and_then(|first| glog_level(first)) {
        return Some(level);
    }
    for token in tokens {
        if let Some(level) = token_level(token) {
            return Some(level);
        }
        if !looks_like_timestamp(token) {
            return None;
        }
    }
    None
}

/// glog's `E1121 23:20:35.123456 ...`: the level letter and the month and day.
fn glog_level(token: &str) -> Option<Level> {
    let bytes = token.as_bytes();
    if bytes.len() != 5 || !bytes[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    match bytes[0] {
        b'I' => Some(Level::Info),
        b'W' => Some(Level::Warn),
        b'E' | b'F' => Some(Level::Error),
        _ => None,
    }
}

fn token_level(token: &str) -> Option<Level> {
    let mut inner = token;
    let mut decorated = false;
    if let Some(rest) = inner.strip_prefix(['[', '<', '(']) {
        inner = rest;
        decorated = true;
    }
    if let Some((head, _)) = inner.split_once(':') {
        inner = head;
        decorated = true;
    }
    let trimmed = inner.trim_end_matches([']', '>', ')', ',', '|']);
    decorated |= trimmed.len() != inner.len();
    let level = level_word(trimmed)?;
    (decorated || !trimmed.bytes().any(|b| b.is_ascii_lowercase())).then_some(level)
}

/// Starts with a digit (after an opening bracket) and has no lower-case letter: a date, a time,
/// a pid.
fn looks_like_timestamp(token: &str) -> bool {
    let token = token.trim_start_matches(['[', '(']);
    token.starts_with(|c: char| c.is_ascii_digit())
        && !token.bytes().any(|b| b.is_ascii_lowercase())
}

fn level_word(word: &str) -> Option<Level> {
    let level = match word.to_ascii_lowercase().as_str() {
        "trace" | "trc" => Level::Trace,
        "debug" | "dbg" => Level::Debug,
        "info" | "inf" | "notice" => Level::Info,
        "warn" | "warning" | "wrn" => Level::Warn,
        "error" | "err" | "fatal" | "ftl" | "critical" | "crit" | "alert" | "emerg" => Level::Error,
        _ => return None,
    };
    Some(level)
}

const LEVEL_KEYS: &[&str] = &["level", "levelname", "severity", "lvl", "log.level"];
const MESSAGE_KEYS: &[&str] = &["message", "msg", "event"];
const ERROR_KEYS: &[&str] = &["error", "err", "exception", "exc_info", "stack_trace"];
/// Fields that repeat what the log entry already says, or say where in the code the line came
/// from; they are not appended to the message.
const SKIPPED_KEYS: &[&str] = &[
    "timestamp",
    "time",
    "ts",
    "@timestamp",
    "asctime",
    "created",
    "msecs",
    "relativeCreated",
    "levelno",
    "target",
    "name",
    "logger",
    "module",
    "filename",
    "pathname",
    "funcName",
    "lineno",
    "line_number",
    "caller",
    "thread",
    "threadName",
    "process",
    "processName",
    "taskName",
    "pid",
    "hostname",
    "v",
    "span",
    "spans",
];

/// A JSON object with a level or a message; `None` for anything else.
fn from_json(text: &str, default: Level) -> Option<Classified> {
    let text = text.trim();
    if !(text.starts_with('{') && text.ends_with('}')) {
        return None;
    }
    let Ok(Value::Object(mut top)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    // tracing-subscriber's json format nests the event's fields under "fields".
    let mut fields = match top.remove("fields") {
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            top.insert("fields".to_owned(), other);
            Map::new()
        }
        None => Map::new(),
    };
    let level = remove_first(&mut top, LEVEL_KEYS);
    let message =
        remove_first(&mut top, MESSAGE_KEYS).or_else(|| remove_first(&mut fields, MESSAGE_KEYS));
    if level.is_none() && message.is_none() {
        return None;
    }
    let error =
        remove_first(&mut top, ERROR_KEYS).or_else(|| remove_first(&mut fields, ERROR_KEYS));
    let message = match message {
        Some(message) => {
            let mut message = value_text(message);
            for (key, value) in top.into_iter().chain(fields) {
                if !SKIPPED_KEYS.contains(&key.as_str()) {
                    message.push(' ');
                    message.push_str(&key);
                    message.push('=');
                    message.push_str(&value_text(value));
                }
            }
            message
        }
        None => text.to_owned(),
    };
    Some(Classified {
        level: level.as_ref().and_then(json_level).unwrap_or(default),
        message,
        error: error.filter(|e| !e.is_null()).map(value_text),
    })
}

fn remove_first(map: &mut Map<String, Value>, keys: &[&str]) -> Option<Value> {
    keys.iter().find_map(|key| map.remove(*key))
}

fn value_text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// A level name, or pino's and bunyan's numbers (10 trace ... 50 error, 60 fatal).
fn json_level(value: &Value) -> Option<Level> {
    match value {
        Value::String(s) => level_word(s),
        Value::Number(n) => Some(match n.as_u64()? {
            0..=10 => Level::Trace,
            11..=20 => Level::Debug,
            21..=30 => Level::Info,
            31..=40 => Level::Warn,
            _ => Level::Error,
        }),
        _ => None,
    }
}

/// The text without ANSI escape sequences (colours, cursor movement).
fn strip_ansi(text: &str) -> Cow<'_, str> {
    if !text.contains('\x1b') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in '@'..='~'.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC '\'.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next().is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level_of(line: &str) -> Level {
        Classifier::new(Level::Info).classify(line).unwrap().level
    }

    #[test]
    fn level_prefixes_in_common_formats() {
        let cases = [
            ("ERROR something broke", Level::Error),
            ("WARN low disk", Level::Warn),
            ("WARNING:root:low disk", Level::Warn),
            ("INFO started", Level::Info),
            ("DEBUG x=1", Level::Debug),
            ("TRACE frame", Level::Trace),
            ("[error] bad", Level::Error),
            ("[Warn] careful", Level::Warn),
            ("error: could not bind", Level::Error),
            ("Error: license rejected", Level::Error),
            ("CRITICAL:app:db gone", Level::Error),
            ("2026-11-21T23:20:35.123456Z  WARN hello: slow", Level::Warn),
            ("[2026-11-21T23:20:35Z DEBUG app] detail", Level::Debug),
            ("2026/11/21 23:20:35 ERROR boom", Level::Error),
            ("12:00AM WRN zerolog", Level::Warn),
            (
                "E1121 23:20:35.123456   42 main.go:12] failed",
                Level::Error,
            ),
            ("W1121 23:20:35.123456   42 main.go:12] hmm", Level::Warn),
        ];
        for (line, level) in cases {
            assert_eq!(level_of(line), level, "{line}");
        }
    }

    #[test]
    fn sentences_keep_the_default_level() {
        let mut c = Classifier::new(Level::Info);
        for line in [
            "Error reading the file is handled",
            "info is lower case here",
            "the ERROR count is 0",
            "listening on 127.0.0.1:8080",
            "E12345 is not glog",
        ] {
            assert_eq!(c.classify(line).unwrap().level, Level::Info, "{line}");
        }
        let mut c = Classifier::new(Level::Debug);
        assert_eq!(c.classify("plain").unwrap().level, Level::Debug);
    }

    #[test]
    fn plain_lines_keep_their_text_without_colours() {
        let got = Classifier::new(Level::Info)
            .classify("\x1b[2m2026-11-21T23:20:35Z\x1b[0m \x1b[31mERROR\x1b[0m boom\r")
            .unwrap();
        assert_eq!(got.level, Level::Error);
        assert_eq!(got.message, "2026-11-21T23:20:35Z ERROR boom");
        assert_eq!(Classifier::new(Level::Info).classify(" \r"), None);
    }

    #[test]
    fn json_lines_keep_level_message_and_error() {
        let mut c = Classifier::new(Level::Info);
        let tracing = r#"{"timestamp":"2026-11-21T23:20:35Z","level":"WARN","fields":{"message":"slow","ms":12},"target":"hello"}"#;
        assert_eq!(
            c.classify(tracing),
            Some(Classified {
                level: Level::Warn,
                message: "slow ms=12".into(),
                error: None
            })
        );
        let python = r#"{"levelname": "ERROR", "message": "db gone", "exc_info": "Traceback ..."}"#;
        let got = c.classify(python).unwrap();
        assert_eq!((got.level, got.message.as_str()), (Level::Error, "db gone"));
        assert_eq!(got.error.as_deref(), Some("Traceback ..."));
        let slog = r#"{"time":"x","level":"DEBUG","msg":"tick","n":3,"err":null}"#;
        let got = c.classify(slog).unwrap();
        assert_eq!(
            (got.level, got.message.as_str(), got.error),
            (Level::Debug, "tick n=3", None)
        );
        assert_eq!(
            c.classify(r#"{"level":50,"msg":"pino"}"#).unwrap().level,
            Level::Error
        );
        let no_message = r#"{"level":"warn","code":7}"#;
        assert_eq!(c.classify(no_message).unwrap().message, no_message);
        // JSON that is not a log record is a plain line.
        let other = c.classify(r#"{"a":1}"#).unwrap();
        assert_eq!(
            (other.level, other.message.as_str()),
            (Level::Info, r#"{"a":1}"#)
        );
    }

    #[test]
    fn lines_after_a_panic_are_errors_until_a_normal_line() {
        let mut c = Classifier::new(Level::Info);
        let lines = [
            ("INFO starting", Level::Info),
            ("thread 'main' panicked at src/main.rs:4:5:", Level::Error),
            ("boom", Level::Error),
            ("note: run with `RUST_BACKTRACE=1`", Level::Error),
            ("INFO restarted", Level::Info),
            ("plain again", Level::Info),
            ("Traceback (most recent call last):", Level::Error),
            ("  File \"plugin.py\", line 3, in <module>", Level::Error),
            ("ValueError: bad", Level::Error),
            (r#"{"level":"info","message":"json ends it"}"#, Level::Info),
            ("plain", Level::Info),
            ("panic: runtime error: index out of range", Level::Error),
            ("goroutine 1 [running]:", Level::Error),
            ("DEBUG next", Level::Debug),
        ];
        for (line, level) in lines {
            assert_eq!(c.classify(line).unwrap().level, level, "{line}");
        }
    }
}
