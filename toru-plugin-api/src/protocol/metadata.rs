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
    /// What the plugin's pages may do beyond the host's default sandbox: tokens of the CSP
    /// `sandbox` directive (see [`SANDBOX_TOKENS`]), such as `allow-same-origin`. In JSON a
    /// space-separated string or a list of strings. The host serves every response from the
    /// plugin's routes with `Content-Security-Policy: sandbox` and its default tokens
    /// (`allow-scripts allow-forms allow-popups allow-modals allow-downloads`) plus these.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "sandbox_tokens"
    )]
    pub sandbox: Vec<String>,
}

/// The tokens a plugin may list in [`PluginMetadata::sandbox`]: the CSP `sandbox` directive's
/// `allow-*` flags.
pub const SANDBOX_TOKENS: &[&str] = &[
    "allow-downloads",
    "allow-forms",
    "allow-modals",
    "allow-orientation-lock",
    "allow-pointer-lock",
    "allow-popups",
    "allow-popups-to-escape-sandbox",
    "allow-presentation",
    "allow-same-origin",
    "allow-scripts",
    "allow-storage-access-by-user-activation",
    "allow-top-navigation",
    "allow-top-navigation-by-user-activation",
    "allow-top-navigation-to-custom-protocols",
];

/// `"allow-a allow-b"` or `["allow-a", "allow-b"]`.
fn sandbox_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tokens {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Tokens::deserialize(d)? {
        Tokens::Text(text) => text.split_ascii_whitespace().map(str::to_owned).collect(),
        Tokens::List(list) => list,
    })
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
    /// A `sandbox` token is not one of [`SANDBOX_TOKENS`].
    #[error("sandbox token {0:?} is not one of the CSP sandbox's allow-* flags")]
    BadSandbox(String),
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
        if let Some(bad) = self
            .sandbox
            .iter()
            .find(|t| !SANDBOX_TOKENS.contains(&t.as_str()))
        {
            return Err(MetadataError::BadSandbox(bad.clone()));
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
            sandbox: Vec::new(),
        }
    }

    #[test]
    fn sandbox_is_a_string_or_a_list_of_known_tokens() {
        let base = r#""id": "a", "name": "A", "version": "1", "route": "/a""#;
        for (json, tokens) in [
            (format!("{{{base}}}"), vec![]),
            (
                format!(r#"{{{base}, "sandbox": "allow-same-origin  allow-top-navigation"}}"#),
                vec!["allow-same-origin", "allow-top-navigation"],
            ),
            (
                format!(r#"{{{base}, "sandbox": ["allow-same-origin"]}}"#),
                vec!["allow-same-origin"],
            ),
        ] {
            let m: PluginMetadata = serde_json::from_str(&json).unwrap();
            assert_eq!(m.sandbox, tokens, "{json}");
            assert_eq!(m.validate(), Ok(()));
        }
        let mut m = meta("a", "/a");
        m.sandbox = vec!["allow-everything".into()];
        assert_eq!(
            m.validate(),
            Err(MetadataError::BadSandbox("allow-everything".into()))
        );
        assert!(
            serde_json::from_str::<PluginMetadata>(&format!(r#"{{{base}, "sandbox": 3}}"#))
                .is_err()
        );
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
