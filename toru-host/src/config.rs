//! `plugins/.metadata/config.json`: which plugins are enabled, and their settings.
//!
//! ```json
//! {"version": 1, "plugins": {"hello-rust": {"enabled": true, "settings": {"license_key": "..."},
//!   "limits": {"memory": "128MiB", "cpu": "50%"}}}}
//! ```
//!
//! Written atomically (a temp file in the same folder, fsync, rename, fsync of the folder). A file
//! that cannot be parsed is an error naming it; it is never overwritten.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::contain::limits::LimitOverrides;
use crate::error::ConfigError;

/// One plugin's entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PluginConfig {
    /// Whether the plugin runs. `None` means the operator never chose; the host's default
    /// applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) enabled: Option<bool>,
    /// Settings sent in `init`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) settings: BTreeMap<String, serde_json::Value>,
    /// Limits of its own, replacing the host's defaults.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub(crate) limits: LimitOverrides,
}

/// The file format's version, written in every file.
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default = "version")]
    version: u32,
    #[serde(default)]
    plugins: BTreeMap<String, PluginConfig>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            version: VERSION,
            plugins: BTreeMap::new(),
        }
    }
}

fn version() -> u32 {
    VERSION
}

/// The config file and its contents.
#[derive(Debug)]
pub(crate) struct Config {
    path: PathBuf,
    file: ConfigFile,
}

impl Config {
    /// Reads the file; a missing file is an empty configuration.
    pub(crate) fn load(path: PathBuf) -> Result<Config, ConfigError> {
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        Ok(Config { path, file })
    }

    /// A plugin's entry, if the file has one.
    pub(crate) fn plugin(&self, id: &str) -> Option<&PluginConfig> {
        self.file.plugins.get(id)
    }

    /// Records whether `id` is enabled and writes the file.
    pub(crate) fn set_enabled(&mut self, id: &str, enabled: bool) -> Result<(), ConfigError> {
        self.update(|file| {
            file.plugins.entry(id.to_owned()).or_default().enabled = Some(enabled);
        })
    }

    /// Replaces the stored settings of `id` and writes the file.
    pub(crate) fn set_settings(
        &mut self,
        id: &str,
        settings: BTreeMap<String, serde_json::Value>,
    ) -> Result<(), ConfigError> {
        self.update(|file| {
            file.plugins.entry(id.to_owned()).or_default().settings = settings;
        })
    }

    /// Sets `id`'s own limits (empty: the host's defaults) and writes the file.
    pub(crate) fn set_limits(
        &mut self,
        id: &str,
        limits: LimitOverrides,
    ) -> Result<(), ConfigError> {
        self.update(|file| {
            file.plugins.entry(id.to_owned()).or_default().limits = limits;
        })
    }

    /// Applies `change` to a copy, writes the copy, and keeps it only once it is on disk.
    fn update(&mut self, change: impl FnOnce(&mut ConfigFile)) -> Result<(), ConfigError> {
        let mut next = self.file.clone();
        change(&mut next);
        write_atomically(&self.path, &next)?;
        self.file = next;
        Ok(())
    }
}

fn write_atomically(path: &Path, file: &ConfigFile) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    // A new temp file is 0600 (it holds secrets); the rename keeps that.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let mut json = serde_json::to_vec_pretty(file).expect("config serialises");
    json.push(b'\n');
    tmp.write_all(&json).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // The rename is durable only once the folder is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_and_writes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".metadata/config.json");
        let mut config = Config::load(path.clone()).unwrap();
        assert_eq!(config.plugin("a"), None);
        config.set_enabled("a", false).unwrap();
        config
            .set_settings("a", [("license_key".to_owned(), "k".into())].into())
            .unwrap();
        let again = Config::load(path.clone()).unwrap();
        let a = again.plugin("a").unwrap();
        assert_eq!(a.enabled, Some(false));
        assert_eq!(a.settings["license_key"], "k");
    }

    /// The file holds secrets (license keys, API tokens): only its owner may read it, however
    /// it was created before.
    #[test]
    fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, br#"{"version": 1}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = Config::load(path.clone()).unwrap();
        config
            .set_settings("a", [("api_token".to_owned(), "s3cret".into())].into())
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    /// The example in docs/operations.md, parsed.
    fn documented() -> ConfigFile {
        let docs = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
        )
        .unwrap();
        let example = docs
            .split("### config.json")
            .nth(1)
            .and_then(|section| section.split("```json").nth(1))
            .and_then(|block| block.split("```").next())
            .expect("docs/operations.md has a config.json example");
        serde_json::from_str(example).expect("the documented config.json parses")
    }

    #[test]
    fn the_version_written_is_the_one_the_docs_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        Config::load(path.clone())
            .unwrap()
            .set_enabled("a", true)
            .unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["version"], VERSION);
        assert_eq!(documented().version, VERSION);
        assert_eq!(
            documented().plugins["hello-rust"].enabled,
            Some(true),
            "the example still reads as documented"
        );
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = Config::load(path.clone()).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
    }
}
