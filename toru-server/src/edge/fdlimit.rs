//! The open-file limit: raised to the hard limit at start, and the connection cap derived from it.
//!
//! Every connection holds a file descriptor, and so does everything else the server does: each
//! plugin's socket and output pipes, its log file, the database, the start of a new plugin
//! process. The cap on connections keeps a reserve of descriptors for those, so that no number
//! of clients can stop a crashed plugin from being restarted.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The auto cap never goes above this many connections (set `--max-connections` for more): each
/// open connection costs memory too (buffers, a task), tens of KiB at worst.
pub(crate) const AUTO_CAP_CEILING: usize = 16_384;

/// The open-file limit after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdLimit {
    /// The soft limit before the raise.
    pub(crate) before: Option<u64>,
    /// The soft limit in effect now.
    pub(crate) soft: Option<u64>,
    /// The hard limit.
    pub(crate) hard: Option<u64>,
}

/// Raises the soft open-file limit to the hard limit (an unprivileged process may), and logs both
/// figures.
pub(crate) fn raise() -> FdLimit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut limit = FdLimit {
        before: current,
        soft: current,
        hard: maximum,
    };
    if let (Some(soft), Some(hard)) = (current, maximum)
        && soft < hard
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit.soft = Some(hard),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    let (before, soft, hard) = (shown(limit.before), shown(limit.soft), shown(limit.hard));
    if limit.before == limit.soft {
        tracing::info!(soft = %soft, hard = %hard, "open-file limit");
    } else {
        tracing::info!(from = %before, to = %soft, hard = %hard, "raised the open-file limit");
    }
    limit
}

fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// Descriptors kept out of the connection cap for plugins, sockets and files: a quarter of the
/// limit, at least 64 and at most 1,024.
pub(crate) fn reserve(limit: u64) -> u64 {
    (limit / 4).clamp(64, 1024)
}

/// The connection cap when none is given: the open-file limit minus [`reserve`], at least 16 and
/// at most [`AUTO_CAP_CEILING`]. No limit at all (unlikely on Linux) gives the ceiling.
pub(crate) fn auto_cap(soft: Option<u64>) -> usize {
    let Some(limit) = soft else {
        return AUTO_CAP_CEILING;
    };
    let cap = limit.saturating_sub(reserve(limit)).max(16);
    usize::try_from(cap).map_or(AUTO_CAP_CEILING, |cap| cap.min(AUTO_CAP_CEILING))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_a_reserve_for_plugins_and_files() {
        assert_eq!(auto_cap(Some(1024)), 768);
        assert_eq!(auto_cap(Some(4096)), 3072);
        // A quarter, but never more than 1,024 reserved, nor a cap above the ceiling.
        assert_eq!(auto_cap(Some(20_000)), AUTO_CAP_CEILING);
        assert_eq!(auto_cap(Some(8192)), 7168);
        // Tiny limits still leave 64 descriptors, and allow a few connections.
        assert_eq!(auto_cap(Some(256)), 192);
        assert_eq!(auto_cap(Some(64)), 16);
        assert_eq!(auto_cap(None), AUTO_CAP_CEILING);
    }
}
