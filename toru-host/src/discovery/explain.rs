//! Words for why a plugin file does not run, where the system's own words point elsewhere: a
//! script without a shebang line ("Exec format error", or a syntax error from the `/bin/sh` the C
//! library runs it with), a script with Windows line endings (the
//! kernel, or `env`, looks for an interpreter called `python3\r`), an interpreter that is not
//! installed ("No such file or directory", of a file that is there), and a `--metadata` whose
//! last line of stderr is not the error (Node.js ends with its version).

use std::io::Read;
use std::path::Path;

/// What the kernel reads of a shebang line (Linux reads 256 bytes since 5.1).
const HEAD: usize = 256;

/// Why `file` cannot be run as a plugin, when its first bytes say more than `errno` (the error
/// of the exec, if it failed) does; `None` when they do not.
pub(crate) fn script_problem(file: &Path, errno: Option<i32>) -> Option<String> {
    let mut head = Vec::with_capacity(HEAD);
    std::fs::File::open(file)
        .ok()?
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .ok()?;
    problem_in(&head, errno, |interpreter| Path::new(interpreter).exists())
}

/// [`script_problem`] on a file's first bytes; `exists` says whether an interpreter is there.
fn problem_in(head: &[u8], errno: Option<i32>, exists: impl Fn(&str) -> bool) -> Option<String> {
    use rustix::io::Errno;
    if head.starts_with(b"\x7fELF") {
        return None;
    }
    let Some(shebang) = head.strip_prefix(b"#!") else {
        // The kernel refuses it ("Exec format error"), or the C library runs it with /bin/sh
        // and sh fails on it.
        return (errno.is_none() || errno == Some(Errno::NOEXEC.raw_os_error())).then(|| {
            "a shebang line is missing: the file is not a program, and a script's first line \
             must name its interpreter (for example `#!/usr/bin/env python3`); without one it \
             is not run, or run by /bin/sh"
                .to_owned()
        });
    };
    let line = shebang.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    if line.ends_with(b"\r") {
        let asked = text.trim_end_matches('\r').trim();
        return Some(format!(
            "the script has Windows (CRLF) line endings: its shebang line asks for `{asked}\\r`, \
             with a carriage return the system takes as part of the interpreter's name; convert \
             it to Unix (LF) line endings (for example with `dos2unix` or `sed -i 's/\\r$//'`)"
        ));
    }
    let interpreter = text.split_whitespace().next().unwrap_or_default();
    if errno == Some(Errno::NOENT.raw_os_error()) && !interpreter.is_empty() && !exists(interpreter)
    {
        return Some(format!(
            "its shebang line names the interpreter {interpreter}, which is not installed here"
        ));
    }
    None
}

/// The most lines of stderr an excerpt shows.
const EXCERPT_LINES: usize = 8;
/// The longest line an excerpt shows, in characters.
const EXCERPT_LINE_CHARS: usize = 300;

/// The lines of a failed run's stderr that tell why: all of them when there are few; else the
/// first lines that look like an error (with the few before it, which may name the file and
/// line) and the last line, since an interpreter may end with something else (Node.js prints
/// its version) or with the error itself (Python's traceback). Stack frames are left out.
pub(crate) fn stderr_excerpt(stderr: &str) -> Vec<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let shorten = |l: &str| {
        if l.chars().count() > EXCERPT_LINE_CHARS {
            let cut: String = l.chars().take(EXCERPT_LINE_CHARS).collect();
            format!("{cut}…")
        } else {
            l.to_owned()
        }
    };
    if lines.len() <= EXCERPT_LINES {
        return lines.into_iter().map(shorten).collect();
    }
    // Stack frames and the code they quote are indented, in Python and Node.js alike.
    let is_frame = |l: &str| l.starts_with([' ', '\t']);
    let mut picked: Vec<usize> = Vec::new();
    if let Some(first) = lines.iter().position(|l| looks_like_error(l)) {
        // Node.js names the file and line, and quotes the code, just before the error.
        let from = first.saturating_sub(3);
        picked.extend(
            (from..lines.len())
                .filter(|&i| i <= first || !is_frame(lines[i]))
                .take(EXCERPT_LINES - 2),
        );
    } else {
        picked.extend(0..3);
    }
    let last = lines.len() - 1;
    let mut out: Vec<String> = Vec::new();
    for (n, &i) in picked.iter().enumerate() {
        if n > 0 && i != picked[n - 1] + 1 {
            out.push("…".into());
        }
        out.push(shorten(lines[i]));
    }
    if picked.last() != Some(&last) {
        if picked.last().is_none_or(|&p| p + 1 != last) {
            out.push("…".into());
        }
        out.push(shorten(lines[last]));
    }
    out
}

fn looks_like_error(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    [
        "error",
        "exception",
        "traceback",
        "fatal",
        "panicked",
        "cannot",
        "can't",
        "not found",
        "no such file",
        "permission denied",
        "failed",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    const NOEXEC: Option<i32> = Some(Errno::NOEXEC.raw_os_error());
    const NOENT: Option<i32> = Some(Errno::NOENT.raw_os_error());

    #[test]
    fn a_script_without_a_shebang_line_is_told_so() {
        let why = problem_in(b"import sys\nprint(1)\n", NOEXEC, |_| true).unwrap();
        assert!(why.contains("a shebang line is missing"), "{why}");
        let ran_by_sh = problem_in(b"import sys\n", None, |_| true).unwrap();
        assert!(
            ran_by_sh.contains("a shebang line is missing"),
            "{ran_by_sh}"
        );
        // A program, or an error that is not about the format: nothing to add.
        assert_eq!(problem_in(b"\x7fELF\x02\x01", NOEXEC, |_| true), None);
        let eacces = Some(Errno::ACCESS.raw_os_error());
        assert_eq!(problem_in(b"import sys\n", eacces, |_| true), None);
    }

    #[test]
    fn windows_line_endings_are_named_whatever_the_error() {
        for errno in [NOENT, None] {
            let why =
                problem_in(b"#!/usr/bin/env python3\r\nimport sys\r\n", errno, |_| true).unwrap();
            assert!(why.contains("Windows (CRLF) line endings"), "{why}");
            assert!(why.contains("`/usr/bin/env python3\\r`"), "{why}");
        }
        assert_eq!(problem_in(b"#!/bin/sh\nexit 0\n", None, |_| true), None);
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        let why = problem_in(b"#!/usr/bin/python9 -u\n", NOENT, |_| false).unwrap();
        assert_eq!(
            why,
            "its shebang line names the interpreter /usr/bin/python9, which is not installed here"
        );
        assert_eq!(problem_in(b"#!/bin/sh\n", NOENT, |_| true), None);
    }

    #[test]
    fn a_short_stderr_is_shown_whole() {
        assert_eq!(
            stderr_excerpt("\nfirst\n\n  second  \n"),
            ["first", "  second"]
        );
    }

    #[test]
    fn the_first_error_lines_and_the_last_line_are_shown() {
        // Node.js: the cause at the top, its version at the end.
        let node = "/srv/plugins/x.binary:1\nimport { Plugin } from \"./toru-plugin.mjs\";\n^^^^^^\n\
            \nSyntaxError: Cannot use import statement outside a module\n    at wrapSafe (node:internal/modules/cjs/loader:1378:20)\n\
            \x20   at Module._compile (node:internal/modules/cjs/loader:1428:41)\n    at Object..js (node:internal/modules/cjs/loader:1548:10)\n\
            \x20   at Module.load (node:internal/modules/cjs/loader:1288:32)\n    at Function._load (node:internal/modules/cjs/loader:1104:12)\n\
            \x20   at run_main (node:internal/modules/run_main:135:12)\n\nNode.js v20.11.0\n";
        let excerpt = stderr_excerpt(node);
        assert!(
            excerpt.contains(&"SyntaxError: Cannot use import statement outside a module".into()),
            "{excerpt:#?}"
        );
        assert_eq!(excerpt.last().unwrap(), "Node.js v20.11.0");
        assert!(
            !excerpt.iter().any(|l| l.contains("at Module")),
            "{excerpt:#?}"
        );
        assert!(excerpt.len() <= EXCERPT_LINES + 2, "{excerpt:#?}");

        // Python: the traceback's start and its last line, the exception.
        let mut python = String::from("Traceback (most recent call last):\n");
        for i in 0..10 {
            python.push_str(&format!("  File \"/x/m{i}.py\", line {i}, in f\n    g()\n"));
        }
        python.push_str("ModuleNotFoundError: No module named 'toru_plugin'\n");
        let excerpt = stderr_excerpt(&python);
        assert_eq!(excerpt[0], "Traceback (most recent call last):");
        assert_eq!(
            excerpt.last().unwrap(),
            "ModuleNotFoundError: No module named 'toru_plugin'"
        );
    }

    #[test]
    fn long_lines_are_cut() {
        let excerpt = stderr_excerpt(&"x".repeat(1000));
        assert_eq!(excerpt[0].chars().count(), EXCERPT_LINE_CHARS + 1);
    }
}
