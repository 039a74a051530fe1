//! Finding plugins: `*.binary` files in the plugins folder, asked for `--metadata`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use toru_plugin_api::PluginMetadata;

use crate::contain::Containers;
use crate::process::clean_env;

/// The most bytes of `--metadata` output read.
const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// One `*.binary` file and what came of loading it.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// The file in the plugins folder.
    pub(crate) file: PathBuf,
    /// Its metadata, or why it cannot be loaded.
    pub(crate) result: Result<PluginMetadata, String>,
    /// Size and modification time when it was loaded, to notice a replaced file on rescan.
    pub(crate) fingerprint: Option<(u64, std::time::SystemTime)>,
}

impl Found {
    /// Whether `other` is the same file with the same outcome (so a rescan leaves it running).
    pub(crate) fn same_as(&self, other: &Found) -> bool {
        self.file == other.file
            && self.fingerprint == other.fingerprint
            && self.result == other.result
    }
}

fn fingerprint(file: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.len(), meta.modified().ok()?))
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
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Scans `dir` (creating it when missing) and loads every `*.binary` file in name order. A
/// later file whose id or route is already taken fails to load, naming the earlier one.
pub(crate) async fn scan(
    dir: &Path,
    metadata_timeout: Duration,
    containers: &Containers,
) -> std::io::Result<Vec<Found>> {
    std::fs::create_dir_all(dir)?;
    let canonical_dir = dir.canonicalize()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "binary"))
        .collect();
    files.sort();

    let loads = files.into_iter().map(|file| {
        let canonical_dir = canonical_dir.clone();
        async move {
            let fingerprint = fingerprint(&file);
            let result = load(&file, &canonical_dir, metadata_timeout, containers).await;
            Found {
                file,
                result,
                fingerprint,
            }
        }
    });
    let mut found = futures_util::future::join_all(loads).await;

    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    let mut routes: HashMap<String, PathBuf> = HashMap::new();
    for f in &mut found {
        let Ok(meta) = &f.result else { continue };
        let clash = if let Some(other) = ids.get(&meta.id) {
            Some(format!(
                "plugin id {:?} is already used by {}",
                meta.id,
                file_name(other)
            ))
        } else {
            routes.get(&meta.route).map(|other| {
                format!(
                    "route {:?} is already used by {}",
                    meta.route,
                    file_name(other)
                )
            })
        };
        match clash {
            Some(reason) => f.result = Err(reason),
            None => {
                ids.insert(meta.id.clone(), f.file.clone());
                routes.insert(meta.route.clone(), f.file.clone());
            }
        }
    }
    Ok(found)
}

/// Checks one file and asks it for its metadata.
pub(crate) async fn load(
    file: &Path,
    canonical_dir: &Path,
    timeout: Duration,
    containers: &Containers,
) -> Result<PluginMetadata, String> {
    let target = file
        .canonicalize()
        .map_err(|e| format!("cannot resolve the file: {e}"))?;
    if target.parent() != Some(canonical_dir) {
        return Err(format!(
            "it is a link to {}, outside the plugins folder",
            target.display()
        ));
    }
    let meta = std::fs::metadata(&target).map_err(|e| format!("cannot read the file: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("it is not executable (chmod +x it)".into());
    }
    let output = metadata_output(file, timeout, containers).await?;
    let metadata: PluginMetadata = serde_json::from_slice(output.trim_ascii())
        .map_err(|e| format!("--metadata did not print valid metadata JSON: {e}"))?;
    metadata.validate().map_err(|e| e.to_string())?;
    if let Some(range) = metadata.protocol
        && crate::supervisor::HOST_VERSIONS.negotiate(&range).is_none()
    {
        return Err(format!(
            "it speaks protocol {range}; this host speaks {}",
            crate::supervisor::HOST_VERSIONS
        ));
    }
    Ok(metadata)
}

/// Runs `file --metadata` in a container of its own (anything it starts ends with it) and returns
/// its stdout.
async fn metadata_output(
    file: &Path,
    timeout: Duration,
    containers: &Containers,
) -> Result<Vec<u8>, String> {
    let container = containers
        .create("metadata", &containers.default_limits())
        .map_err(|e| format!("cannot contain it for --metadata: {e}"))?;
    let result = run_metadata(file, timeout, &container).await;
    container.dispose().await;
    result
}

async fn run_metadata(
    file: &Path,
    timeout: Duration,
    container: &crate::contain::Container,
) -> Result<Vec<u8>, String> {
    let mut cmd = tokio::process::Command::new(file);
    cmd.arg("--metadata")
        .env_clear()
        .envs(clean_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    container
        .prepare(&mut cmd)
        .map_err(|e| format!("cannot contain it for --metadata: {e}"))?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run it with --metadata: {e}"))?;
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
            Err(format!("--metadata did not finish within {timeout:?}"))
        }
        Ok(Err(e)) => Err(format!("cannot run it with --metadata: {e}")),
        Ok(Ok((status, out, err))) => {
            // What it left behind goes with its container.
            if status.success() {
                Ok(out)
            } else {
                let stderr = String::from_utf8_lossy(&err);
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                Err(format!(
                    "--metadata failed with {}{}",
                    crate::events::ExitStatus::from(status),
                    last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
                ))
            }
        }
    }
}
