//! The process tree as `/proc` shows it: how the subreaper fallback finds what a plugin started.

use std::collections::{HashMap, HashSet};

/// One process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    /// `R`, `S`, `T` (stopped), `Z` (zombie), ...
    pub(crate) state: u8,
}

impl Proc {
    /// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp ...`; the name may hold spaces and
    /// parentheses, so the fields are read after the last `)`.
    pub(crate) fn parse(stat: &str) -> Option<Proc> {
        let (head, rest) = stat.rsplit_once(')')?;
        let pid = head.split_once(' ')?.0.trim().parse().ok()?;
        let mut fields = rest.split_whitespace();
        let state = *fields.next()?.as_bytes().first()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Proc {
            pid,
            ppid,
            pgrp,
            state,
        })
    }

    pub(crate) fn is_zombie(&self) -> bool {
        self.state == b'Z' || self.state == b'X'
    }
}

/// Every process now.
pub(crate) fn snapshot() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| Proc::parse(&s))
        .collect()
}

/// The descendants of `roots` (not the roots themselves), parents before children.
pub(crate) fn descendants(procs: &[Proc], roots: &[i32]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen: HashSet<i32> = roots.iter().copied().collect();
    let mut out = Vec::new();
    let mut queue: Vec<i32> = roots.to_vec();
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child) {
                out.push(child);
                queue.push(child);
            }
        }
    }
    out
}

/// Whether process `pid` was started with `entry` (`NAME=value`) in its environment.
pub(crate) fn has_env(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names_parse() {
        let p = Proc::parse("42 (my (odd) name) S 7 42 1 0 -1 4194560 ...").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 42,
                ppid: 7,
                pgrp: 42,
                state: b'S'
            }
        );
        assert!(Proc::parse("garbage").is_none());
    }

    #[test]
    fn descendants_are_found_through_every_generation() {
        let p = |pid, ppid| Proc {
            pid,
            ppid,
            pgrp: pid,
            state: b'S',
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(13, 10)];
        let mut found = descendants(&procs, &[10]);
        found.sort();
        assert_eq!(found, [11, 12, 13]);
        assert!(descendants(&procs, &[12]).is_empty());
    }

    #[test]
    fn this_process_is_in_the_snapshot_with_its_parent() {
        let me = std::process::id() as i32;
        let procs = snapshot();
        let mine = procs.iter().find(|p| p.pid == me).expect("this process");
        assert_eq!(mine.ppid as u32, std::os::unix::process::parent_id());
    }
}
