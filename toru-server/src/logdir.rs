//! The server's log folder when `--log-dir` is not given: `/var/log/toru`, the spec's, when the
//! server can write there; else the library's default, `<data dir>/logs`, said at start-up.
//! (A folder given with `--log-dir` must be writable: the host refuses to start otherwise.)

use std::io;
use std::path::{Path, PathBuf};

/// The log folder the spec names.
pub(crate) const DEFAULT_LOG_DIR: &str = "/var/log/toru";

/// `wanted` when it (and its `plugins` folder) can be written, else the OS error saying why.
pub(crate) fn writable(wanted: &Path) -> Result<PathBuf, io::Error> {
    let plugins = wanted.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    for folder in [wanted, plugins.as_path()] {
        let probe = folder.join(format!(".toru-write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)?;
    }
    Ok(wanted.to_path_buf())
}

/// The log folder for the host when none was given: [`DEFAULT_LOG_DIR`] if writable, else
/// `None` (the host's default under the data folder), with a warning saying so.
pub(crate) fn default(data_dir: &Path) -> Option<PathBuf> {
    match writable(Path::new(DEFAULT_LOG_DIR)) {
        Ok(dir) => Some(dir),
        Err(e) => {
            tracing::warn!(
                log_dir = %data_dir.join("logs").display(),
                "log dir {DEFAULT_LOG_DIR} is not writable ({e}); writing logs under the data folder instead"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_dir_that_cannot_be_written_is_refused_with_why() {
        let dir = tempfile::TempDir::new().unwrap();
        let ok = dir.path().join("var-log");
        assert_eq!(writable(&ok).unwrap(), ok);
        assert!(ok.join("plugins").is_dir());
        // A path below a regular file can never be created.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(writable(&file.join("logs")).is_err());
    }
}
