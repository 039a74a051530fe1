use serde::{Deserialize, Serialize};

use super::{MAX_SETTINGS, SettingError, SettingSpec, VersionRange};

/// What `plugin --metadata` prints: one JSON object on stdout.
///
/// ```json
/// {"id": "hello-rust", "name": "Hello (Rust)", "version": "0.1.0", "author": "Toru",
///  "description": "Greets, counts and echoes", "icon": "👋", "route": "/hello-rust"}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginMetadata {
    /// The plugin's id: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a letter or
    /// digit. It names the plugin's KV namespace, log file and API paths.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The plugin's version (free text; semver is recommended).
    pub version: String,
    /// Who wrote it.
    #[serde(default)]
    pub author: String,
    /// One or two sentences on what it does.
    #[serde(default)]
    pub description: String,
    /// An emoji or a short text shown beside the name.
    #[serde(default)]
    pub icon: String,
    /// The route prefix: `/` and one segment that follows the id's pattern (`/acme`). Requests
    /// to `/plugins/acme/...` reach the plugin with the path `/acme/...`.
    pub route: String,
    /// The protocol versions the plugin speaks, when it says; the host then refuses an
    /// incompatible plugin before starting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<VersionRange>,
    /// Whether the plugin serves a frontend bundle (`get_bundle`).
    #[serde(default)]
    pub frontend: bool,
    /// Whether the plugin needs a license key in its settings to start.
    #[serde(default)]
    pub license_required: bool,
    /// The settings the plugin takes, in the order a form shows them (see [`SettingSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<SettingSpec>,
    /// Whether the plugin applies changed settings while it runs (it handles the `settings`
    /// message); when `false`, the host restarts it to apply them.
    #[serde(default)]
    pub live_settings: bool,
}

/// Why metadata is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The id breaks the id pattern.
    #[error(
        "plugin id {0:?} is not valid: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    BadId(String),
    /// The route breaks the route pattern.
    #[error(
        "route {0:?} is not valid: use '/' and one segment of a-z, 0-9 and '-' (for example \"/acme\")"
    )]
    BadRoute(String),
    /// A required text field is empty.
    #[error("metadata field {0:?} is empty")]
    Empty(&'static str),
    /// A setting's declaration breaks a rule, or a name is declared twice, or there are too many.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A field is longer than the host accepts.
    #[error("metadata field {field:?} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Whether `s` is 1 to 63 characters of `a-z`, `0-9` and `-`, not starting with `-`.
fn is_slug(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl PluginMetadata {
    /// Metadata with the four fields every plugin needs; the others are empty, and the Rust SDK
    /// fills in `protocol`, `frontend` and `license_required` itself. Add the rest with the
    /// `with_*` setters.
    ///
    /// ```
    /// use toru_plugin_api::PluginMetadata;
    /// use toru_plugin_api::protocol::{SettingKind, SettingSpec};
    /// let meta = PluginMetadata::new("weather", "Weather", "1.2.0", "/weather")
    ///     .with_author("You")
    ///     .with_description("Today's weather.")
    ///     .with_icon("⛅")
    ///     .with_setting(SettingSpec::new("city", SettingKind::String, "City").with_default("Oslo"));
    /// assert_eq!(meta.validate(), Ok(()));
    /// ```
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        version: impl Into<String>,
        route: impl Into<String>,
    ) -> Self {
        PluginMetadata {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            route: route.into(),
            ..Default::default()
        }
    }

    /// Sets who wrote the plugin.
    pub fn with_author(mut self, author: impl Into<String>) -> Self {
        self.author = author.into();
        self
    }

    /// Sets the description: one or two sentences on what the plugin does.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the icon: an emoji or a short text.
    pub fn with_icon(mut self, icon: impl Into<String>) -> Self {
        self.icon = icon.into();
        self
    }

    /// Declares a setting (see [`SettingSpec`]); the form shows them in this order.
    pub fn with_setting(mut self, setting: SettingSpec) -> Self {
        self.settings.push(setting);
        self
    }

    /// Says the plugin applies changed settings while it runs (it handles the `settings`
    /// message), so the host does not restart it to apply them.
    pub fn with_live_settings(mut self) -> Self {
        self.live_settings = true;
        self
    }

    /// Checks the id and route patterns and the field lengths.
    ///
    /// # Errors
    /// The first rule the metadata breaks.
    pub fn validate(&self) -> Result<(), MetadataError> {
        if !is_slug(&self.id) {
            return Err(MetadataError::BadId(self.id.clone()));
        }
        match self.route.strip_prefix('/') {
            Some(segment) if is_slug(segment) => {}
            _ => return Err(MetadataError::BadRoute(self.route.clone())),
        }
        for (field, value, max) in [
            ("name", &self.name, 100),
            ("version", &self.version, 64),
            ("author", &self.author, 200),
            ("description", &self.description, 2000),
            ("icon", &self.icon, 64),
        ] {
            if value.len() > max {
                return Err(MetadataError::TooLong {
                    field,
                    len: value.len(),
                    max,
                });
            }
        }
        if self.name.trim().is_empty() {
            return Err(MetadataError::Empty("name"));
        }
        if self.version.trim().is_empty() {
            return Err(MetadataError::Empty("version"));
        }
        if self.settings.len() > MAX_SETTINGS {
            return Err(MetadataError::TooLong {
                field: "settings",
                len: self.settings.len(),
                max: MAX_SETTINGS,
            });
        }
        for (i, setting) in self.settings.iter().enumerate() {
            setting.validate()?;
            if self.settings[..i].iter().any(|s| s.name == setting.name) {
                return Err(SettingError::Declaration {
                    name: setting.name.clone(),
                    why: "the name is declared twice".into(),
                }
                .into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, route: &str) -> PluginMetadata {
        PluginMetadata {
            id: id.into(),
            name: "N".into(),
            version: "1".into(),
            author: String::new(),
            description: String::new(),
            icon: String::new(),
            route: route.into(),
            protocol: None,
            frontend: false,
            license_required: false,
            settings: Vec::new(),
            live_settings: false,
        }
    }

    #[test]
    fn accepts_the_documented_patterns() {
        assert_eq!(meta("acme", "/acme").validate(), Ok(()));
        assert_eq!(meta("a-1", "/x9").validate(), Ok(()));
    }

    #[test]
    fn refuses_ids_and_routes_that_break_the_patterns() {
        for id in ["", "Acme", "-a", "a/b", "a.b", &"a".repeat(64), "ä"] {
            assert!(
                matches!(meta(id, "/a").validate(), Err(MetadataError::BadId(_))),
                "{id}"
            );
        }
        for route in ["", "/", "acme", "/acme/x", "/Acme", "//a", "/a b"] {
            assert!(
                matches!(meta("a", route).validate(), Err(MetadataError::BadRoute(_))),
                "{route}"
            );
        }
    }

    #[test]
    fn refuses_empty_names_and_long_fields() {
        let mut m = meta("a", "/a");
        m.name = " ".into();
        assert_eq!(m.validate(), Err(MetadataError::Empty("name")));
        let mut m = meta("a", "/a");
        m.icon = "x".repeat(65);
        assert!(matches!(
            m.validate(),
            Err(MetadataError::TooLong { field: "icon", .. })
        ));
    }
}
