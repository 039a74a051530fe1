//! Finding plugins: `*.binary` files in the plugins folder, recognised by their contents
//! (SHA-256), each asked for its `--metadata`. Deciding what a scan means for the plugins the
//! host has (new, replaced, removed) is `host/rescan.rs`'s job; watching the folder is
//! [`watch`]'s.

pub(crate) mod explain;
pub(crate) mod watch;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use sha2::Digest as _;
use tokio::io::AsyncReadExt;
use toru_plugin_api::PluginMetadata;

use crate::contain::{Container, Containers};
use crate::process::clean_env;

/// The most bytes of `--metadata` output read.
const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// A file's SHA-256.
pub(crate) type Digest = [u8; 32];

/// What `stat` says of a file. While none of it changes, neither do the contents: every write
/// changes the ctime, which no program can set back. When it changes, the contents are hashed
/// again, and only a different hash is a different file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    /// The stamp of `file` (following a link) and its modification time.
    pub(crate) fn of(file: &Path) -> std::io::Result<(Stamp, SystemTime)> {
        let meta = std::fs::metadata(file)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        };
        Ok((stamp, meta.modified()?))
    }
}

/// Why a file did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadError {
    /// `--metadata` did not finish in time: tried again, with backoff, on later scans.
    TimedOut(Duration),
    /// It could not be run for now (too many open files or processes, too little memory, the
    /// file is being written): tried again on later scans.
    Transient(String),
    /// It is not a plugin this host can load; not tried again until the file changes.
    Invalid(String),
}

impl LoadError {
    /// Whether a later scan tries the same file again.
    pub(crate) fn retried(&self) -> bool {
        !matches!(self, LoadError::Invalid(_))
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::TimedOut(t) => {
                write!(
                    f,
                    "--metadata did not finish within {t:?} (tried again later)"
                )
            }
            LoadError::Transient(why) => write!(f, "{why} (tried again later)"),
            LoadError::Invalid(why) => f.write_str(why),
        }
    }
}

/// One `*.binary` file and what came of loading it.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The file in the plugins folder.
    pub(crate) file: PathBuf,
    /// Its metadata, or why it cannot be loaded.
    pub(crate) result: Result<PluginMetadata, LoadError>,
    /// What `stat` said when it was loaded.
    pub(crate) stamp: Option<Stamp>,
    /// Its contents' SHA-256 when it was loaded.
    pub(crate) hash: Option<Digest>,
}

impl Found {
    /// The id the host lists the plugin under: its metadata id, or for a plugin that failed to
    /// load, its file name (which contains a `.`, so it never collides with a valid id).
    pub(crate) fn key(&self) -> String {
        match &self.result {
            Ok(meta) => meta.id.clone(),
            Err(_) => file_name(&self.file),
        }
    }

    /// The version its metadata declares (`?` when it has none).
    pub(crate) fn version(&self) -> String {
        self.result
            .as_ref()
            .map(|m| m.version.clone())
            .unwrap_or_else(|_| "?".into())
    }

    /// The same file, failed to load for `reason`.
    pub(crate) fn refused(mut self, reason: String) -> Found {
        self.result = Err(LoadError::Invalid(reason));
        self
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A digest in lower-case hex.
pub(crate) fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `*.binary` files in `dir` (created when missing), in name order.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_plugin_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `path` names a plugin file (`*.binary`).
pub(crate) fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "binary")
}

/// Whether a file modified at `modified` may still be being written: it changed less than
/// `settle` ago. A modification time in the future (a clock set back) counts as settled.
pub(crate) fn still_changing(modified: SystemTime, settle: Duration) -> bool {
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age < settle)
}

/// The SHA-256 of a file's contents.
pub(crate) fn hash_file(file: &Path) -> std::io::Result<Digest> {
    let mut f = std::fs::File::open(file)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Checks one file and asks it for its metadata.
pub(crate) async fn load_metadata(
    file: &Path,
    canonical_dir: &Path,
    timeout: Duration,
    containers: &Containers,
) -> Result<PluginMetadata, LoadError> {
    let invalid = LoadError::Invalid;
    let target = file
        .canonicalize()
        .map_err(|e| invalid(format!("cannot resolve the file: {e}")))?;
    if target.parent() != Some(canonical_dir) {
        return Err(invalid(format!(
            "it is a link to {}, outside the plugins folder",
            target.display()
        )));
    }
    let meta =
        std::fs::metadata(&target).map_err(|e| invalid(format!("cannot read the file: {e}")))?;
    if !meta.is_file() {
        return Err(invalid("it is not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid("it is not executable (chmod +x it)".into()));
    }
    let output = metadata_output(file, timeout, containers).await?;
    let metadata: PluginMetadata = serde_json::from_slice(output.trim_ascii())
        .map_err(|e| invalid(format!("--metadata did not print valid metadata JSON: {e}")))?;
    metadata.validate().map_err(|e| invalid(e.to_string()))?;
    if let Some(range) = metadata.protocol
        && crate::supervisor::HOST_VERSIONS.negotiate(&range).is_none()
    {
        return Err(invalid(format!(
            "it speaks protocol {range}; this host speaks {}",
            crate::supervisor::HOST_VERSIONS
        )));
    }
    Ok(metadata)
}

/// Whether an OS error means the machine or the host ran out of something for now (open files,
/// processes, memory), so that the same thing may work later.
pub(crate) fn lack_of_resources(errno: Option<i32>) -> bool {
    use rustix::io::Errno;
    errno.is_some_and(|n| {
        [Errno::MFILE, Errno::NFILE, Errno::AGAIN, Errno::NOMEM]
            .iter()
            .any(|e| e.raw_os_error() == n)
    })
}

/// Runs `file --metadata` in a container of its own (anything it starts ends with it) and returns
/// its stdout.
async fn metadata_output(
    file: &Path,
    timeout: Duration,
    containers: &Containers,
) -> Result<Vec<u8>, LoadError> {
    let container = containers
        .create("metadata", &containers.default_limits())
        .map_err(|e| {
            let why = format!("cannot contain it for --metadata: {e}");
            if lack_of_resources(e.raw_os_error()) {
                LoadError::Transient(why)
            } else {
                LoadError::Invalid(why)
            }
        })?;
    let result = run_metadata(file, timeout, &container).await;
    container.dispose().await;
    result
}

async fn run_metadata(
    file: &Path,
    timeout: Duration,
    container: &Container,
) -> Result<Vec<u8>, LoadError> {
    let mut cmd = tokio::process::Command::new(file);
    cmd.arg("--metadata")
        .env_clear()
        .envs(clean_env())
        // Where the plugin runs: its folder (a Node.js plugin's `package.json` lookup, a
        // Python plugin's imports of files beside it start there).
        .current_dir(file.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    container
        .prepare(&mut cmd)
        .map_err(|e| LoadError::Invalid(format!("cannot contain it for --metadata: {e}")))?;
    let mut child = cmd.spawn().map_err(|e| {
        let why = match explain::script_problem(file, e.raw_os_error()) {
            Some(problem) => format!("cannot run it with --metadata: {problem} ({e})"),
            None => format!("cannot run it with --metadata: {e}"),
        };
        if lack_of_resources(e.raw_os_error())
            || e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
        {
            LoadError::Transient(why)
        } else {
            LoadError::Invalid(why)
        }
    })?;
    if let Some(pid) = child.id() {
        container.started(pid);
    }
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stdout = (&mut stdout).take(MAX_METADATA_BYTES);
        let mut stderr = (&mut stderr).take(MAX_METADATA_BYTES);
        // Once it exits, whatever it started goes, and with it any hold on its pipes.
        let (read_out, read_err, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            async {
                let status = child.wait().await;
                container.kill_all();
                status
            }
        );
        read_out.and(read_err).and(status.map(|s| (s, out, err)))
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            container.kill_all();
            let _ = child.wait().await;
            Err(LoadError::TimedOut(timeout))
        }
        Ok(Err(e)) => Err(LoadError::Invalid(format!(
            "cannot run it with --metadata: {e}"
        ))),
        Ok(Ok((status, out, err))) => {
            // What it left behind went with its container.
            if status.success() {
                Ok(out)
            } else {
                let excerpt = explain::stderr_excerpt(&String::from_utf8_lossy(&err));
                let mut why = format!(
                    "--metadata failed with {}",
                    crate::events::ExitStatus::from(status)
                );
                if let Some(problem) = explain::script_problem(file, None) {
                    why.push_str(&format!(": {problem}"));
                }
                match excerpt.as_slice() {
                    [] => {}
                    [one] => why.push_str(&format!("; its stderr: {}", one.trim())),
                    lines => {
                        why.push_str("; its stderr:");
                        for line in lines {
                            why.push_str("\n  ");
                            why.push_str(line);
                        }
                    }
                }
                Err(LoadError::Invalid(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_changes_with_the_contents_and_a_hash_only_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.binary");
        std::fs::write(&file, b"one").unwrap();
        let (first, _) = Stamp::of(&file).unwrap();
        let hash = hash_file(&file).unwrap();
        assert_eq!(Stamp::of(&file).unwrap().0, first);
        // Same size, same contents rewritten: the stamp changes (ctime), the hash does not.
        std::fs::write(&file, b"one").unwrap();
        let file2 = dir.path().join("b.binary");
        std::fs::write(&file2, b"one").unwrap();
        assert_eq!(hash_file(&file2).unwrap(), hash);
        std::fs::write(&file, b"two").unwrap();
        assert_ne!(hash_file(&file).unwrap(), hash);
        assert_eq!(
            hex(&hash),
            "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
        );
    }

    #[test]
    fn only_binary_files_in_name_order_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.binary", "a.binary", "notes.txt", "c.binary.tmp"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = list(dir.path())
            .unwrap()
            .iter()
            .map(|p| file_name(p))
            .collect();
        assert_eq!(names, ["a.binary", "b.binary"]);
    }

    #[test]
    fn a_file_changed_just_now_is_still_changing() {
        let settle = Duration::from_secs(1);
        assert!(still_changing(SystemTime::now(), settle));
        assert!(!still_changing(
            SystemTime::now() - Duration::from_secs(2),
            settle
        ));
        assert!(!still_changing(
            SystemTime::now() + Duration::from_secs(60),
            settle
        ));
    }

    #[test]
    fn resource_errors_are_told_from_others() {
        use rustix::io::Errno;
        for e in [Errno::MFILE, Errno::NFILE, Errno::AGAIN, Errno::NOMEM] {
            assert!(lack_of_resources(Some(e.raw_os_error())), "{e}");
        }
        for e in [Errno::NOENT, Errno::ACCESS, Errno::NOEXEC] {
            assert!(!lack_of_resources(Some(e.raw_os_error())), "{e}");
        }
        assert!(!lack_of_resources(None));
    }
}
