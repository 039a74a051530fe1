//! Plugin settings: what a plugin takes (its metadata's `settings`, and `license_key` for a
//! plugin that needs a license), the values an operator stored in `config.json`, what the
//! plugin is sent (`init`'s `settings` and the `settings` message), and what the API shows of
//! them: a secret only as set or not set.
//!
//! These are pure functions over the declarations and the stored values; `host/settings.rs`
//! stores and applies, and the supervisor asks [`effective`] before every start.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use toru_plugin_api::PluginMetadata;
use toru_plugin_api::protocol::LICENSE_KEY_SETTING;
use toru_plugin_api::protocol::{SettingKind, SettingSpec};

/// Setting values by name, as `config.json` keeps them and the plugin gets them.
pub(crate) type Values = BTreeMap<String, Value>;

/// The settings `meta`'s plugin takes, in the order a form shows them: its own, and a
/// `license_key` secret when it needs a license and does not declare one itself.
pub(crate) fn declared(meta: &PluginMetadata) -> Vec<SettingSpec> {
    let mut specs = meta.settings.clone();
    if meta.license_required && !specs.iter().any(|s| s.name == LICENSE_KEY_SETTING) {
        specs.push(
            SettingSpec::new(LICENSE_KEY_SETTING, SettingKind::Secret, "License key").with_help(
                "The key from the plugin's vendor, issued for this Toru instance; the plugin \
                 checks it when it starts.",
            ),
        );
    }
    specs
}

/// One setting as [`PluginInfo`](crate::PluginInfo) shows it: its declaration, the value in
/// effect, and whether a value is stored. A secret's value is never shown, only whether it is
/// set.
///
/// ```json
/// {"name": "greeting", "label": "Greeting", "type": "string", "default": "Hello",
///  "required": false, "help": "", "value": "Howdy", "set": true}
/// {"name": "api_token", "label": "API token", "type": "secret", "required": false,
///  "help": "", "set": true}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SettingView {
    /// The declaration.
    #[serde(flatten)]
    pub spec: SettingSpec,
    /// The value in effect: the stored one, else the default, else `null`. `None` (left out of
    /// the JSON) for a secret, always.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Whether a value is stored for it (otherwise the default applies, if there is one). For a
    /// secret, this is all that is shown.
    pub set: bool,
}

/// Every declared setting as the API shows it.
pub(crate) fn views(specs: &[SettingSpec], stored: &Values) -> Vec<SettingView> {
    specs
        .iter()
        .map(|spec| {
            let value = stored.get(&spec.name).filter(|v| !v.is_null());
            SettingView {
                value: match spec.kind {
                    SettingKind::Secret => None,
                    _ => Some(
                        value
                            .or(spec.default.as_ref())
                            .cloned()
                            .unwrap_or(Value::Null),
                    ),
                },
                set: value.is_some(),
                spec: spec.clone(),
            }
        })
        .collect()
}

/// Why a plugin cannot be started with its settings as they are: required ones without a
/// value, stored values its declarations no longer accept (after an upgrade changed them).
/// Names only: a value, which may be secret, is never in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unmet {
    pub(crate) missing: Vec<String>,
    pub(crate) unfit: Vec<(String, String)>,
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted = |names: &[&String]| {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        match self.missing.as_slice() {
            [] => {}
            [one] => parts.push(format!("setting {one:?} is required and has no value")),
            many => parts.push(format!(
                "settings {} are required and have no value",
                quoted(&many.iter().collect::<Vec<_>>())
            )),
        }
        for (name, why) in &self.unfit {
            parts.push(format!(
                "the stored value of setting {name:?} does not fit its declaration ({why})"
            ));
        }
        write!(
            f,
            "{}; set {} in the plugin's settings",
            parts.join("; "),
            if self.missing.len() + self.unfit.len() == 1 {
                "it"
            } else {
                "them"
            }
        )
    }
}

/// What the plugin is sent: every stored value, and each declared setting's default where none
/// is stored.
///
/// # Errors
/// [`Unmet`] when a required setting has neither a value nor a default, or a stored value does
/// not fit its declaration: the plugin is not started until an operator sets them.
pub(crate) fn effective(specs: &[SettingSpec], stored: &Values) -> Result<Values, Unmet> {
    let mut values = stored.clone();
    values.retain(|_, v| !v.is_null());
    let mut unmet = Unmet {
        missing: Vec::new(),
        unfit: Vec::new(),
    };
    for spec in specs {
        match values.get(&spec.name) {
            Some(value) => {
                if let Err(e) = spec.check(value) {
                    unmet.unfit.push((spec.name.clone(), e.to_string()));
                }
            }
            None => match &spec.default {
                Some(default) => {
                    values.insert(spec.name.clone(), default.clone());
                }
                None if spec.required => unmet.missing.push(spec.name.clone()),
                None => {}
            },
        }
    }
    if unmet.missing.is_empty() && unmet.unfit.is_empty() {
        Ok(values)
    } else {
        Err(unmet)
    }
}

/// Settings that were refused: each field with what is wrong with it (a value is never
/// repeated, since it may be secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
pub struct SettingErrors(pub Vec<(String, String)>);

/// Applies `changes` (a name and its new value; `null` removes the stored value, so the default
/// applies again) to `stored`, after checking every one against its declaration. A blank secret
/// removes it too, and a license key is trimmed (pasted keys carry newlines). Names the plugin
/// does not take are refused, except `null` for one still stored (left by an earlier version):
/// that removes it.
///
/// # Errors
/// Every refused name with its message, in the declarations' order (names the plugin does not
/// take last); then nothing is applied.
pub(crate) fn apply(
    specs: &[SettingSpec],
    stored: &Values,
    changes: &Map<String, Value>,
) -> Result<Values, SettingErrors> {
    let mut next = stored.clone();
    let mut errors = Vec::new();
    for (name, value) in changes {
        let Some(spec) = specs.iter().find(|s| &s.name == name) else {
            if value.is_null() && stored.contains_key(name) {
                next.remove(name);
            } else {
                errors.push((field_name(name), unknown(specs)));
            }
            continue;
        };
        let value = normalise(spec, value);
        match spec.check(&value) {
            Err(e) => errors.push((name.clone(), e.to_string())),
            Ok(()) if value.is_null() => {
                next.remove(name);
            }
            Ok(()) => {
                next.insert(name.clone(), value);
            }
        }
    }
    if errors.is_empty() {
        Ok(next)
    } else {
        // In the form's order, names the plugin does not take last: whatever order the
        // request's object had.
        let rank = |name: &str| {
            specs
                .iter()
                .position(|s| s.name == name)
                .unwrap_or(usize::MAX)
        };
        errors.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
        Err(SettingErrors(errors))
    }
}

/// The names whose value differs between `before` and `after`, in name order.
pub(crate) fn changed(before: &Values, after: &Values) -> Vec<String> {
    let mut names: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

fn normalise(spec: &SettingSpec, value: &Value) -> Value {
    match (spec.kind, value) {
        (SettingKind::Secret, Value::String(s)) if s.trim().is_empty() => Value::Null,
        (SettingKind::Secret, Value::String(s)) if spec.name == LICENSE_KEY_SETTING => {
            Value::String(s.trim().to_owned())
        }
        _ => value.clone(),
    }
}

/// A name from a request, as an error's field: cut short when it is long.
fn field_name(name: &str) -> String {
    if name.chars().count() > 64 {
        let cut: String = name.chars().take(64).collect();
        format!("{cut}…")
    } else {
        name.to_owned()
    }
}

fn unknown(specs: &[SettingSpec]) -> String {
    match specs {
        [] => "is not a setting of this plugin; it takes none".into(),
        specs => format!(
            "is not a setting of this plugin; it takes {}",
            specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<SettingSpec> {
        serde_json::from_value(json!([
            {"name": "greeting", "type": "string", "default": "Hello"},
            {"name": "retries", "type": "number"},
            {"name": "verbose", "type": "boolean", "default": false},
            {"name": "mode", "type": "choice", "choices": ["fast", "safe"], "default": "safe"},
            {"name": "api_token", "type": "secret"},
            {"name": "endpoint", "type": "string", "required": true},
        ]))
        .unwrap()
    }

    fn values(v: Value) -> Values {
        serde_json::from_value(v).unwrap()
    }

    fn changes(v: Value) -> Map<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_licensed_plugin_takes_a_license_key_without_declaring_it() {
        let mut meta = PluginMetadata::new("a", "A", "1", "/a");
        assert!(declared(&meta).is_empty());
        meta.license_required = true;
        let specs = declared(&meta);
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].name, LICENSE_KEY_SETTING);
        assert_eq!(specs[0].kind, SettingKind::Secret);
        assert_eq!(specs[0].validate(), Ok(()));
        // Declared by the plugin itself: its own declaration stands, once.
        meta.settings = vec![SettingSpec::new(
            LICENSE_KEY_SETTING,
            SettingKind::Secret,
            "Key",
        )];
        assert_eq!(declared(&meta), meta.settings);
    }

    #[test]
    fn defaults_fill_in_and_a_missing_required_setting_is_named() {
        let err = effective(&specs(), &Values::new()).unwrap_err();
        assert_eq!(err.missing, ["endpoint"]);
        assert_eq!(
            err.to_string(),
            "setting \"endpoint\" is required and has no value; set it in the plugin's settings"
        );
        let got = effective(
            &specs(),
            &values(json!({"endpoint": "https://x", "api_token": "s3cret", "old": 1})),
        )
        .unwrap();
        assert_eq!(
            Value::Object(got.into_iter().collect()),
            json!({"endpoint": "https://x", "api_token": "s3cret", "old": 1,
                   "greeting": "Hello", "verbose": false, "mode": "safe"})
        );
    }

    #[test]
    fn a_stored_value_that_no_longer_fits_stops_the_start_without_showing_it() {
        let stored = values(json!({"endpoint": "x", "retries": "three", "api_token": 5}));
        let err = effective(&specs(), &stored).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("setting \"retries\" does not fit"), "{text}");
        assert!(text.contains("expected a number"), "{text}");
        assert!(text.contains("\"api_token\""), "{text}");
        assert!(
            text.ends_with("set them in the plugin's settings"),
            "{text}"
        );
        assert!(!text.contains("three"), "{text}");
    }

    #[test]
    fn changes_are_checked_one_by_one_and_refused_together() {
        let stored = values(json!({"endpoint": "x"}));
        let err = apply(
            &specs(),
            &stored,
            &changes(json!({
                "greeting": 3, "retries": "many", "verbose": "yes", "mode": "slow",
                "endpoint": null, "nope": 1, "api_token": ["s3cret-list"],
            })),
        )
        .unwrap_err();
        let fields: BTreeMap<String, String> = err.0.iter().cloned().collect();
        assert_eq!(fields["greeting"], "expected text");
        assert_eq!(fields["retries"], "expected a number");
        assert_eq!(fields["verbose"], "expected true or false");
        assert_eq!(fields["mode"], "\"slow\" is not one of fast, safe");
        assert_eq!(fields["endpoint"], "a value is required");
        assert!(
            fields["nope"]
                .starts_with("is not a setting of this plugin; it takes greeting, retries")
        );
        assert_eq!(fields["api_token"], "expected text");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn null_and_blank_secrets_remove_and_names_left_out_stay() {
        let stored = values(json!({"endpoint": "x", "api_token": "t", "greeting": "Hi", "old": 1}));
        let next = apply(
            &specs(),
            &stored,
            &changes(json!({"greeting": null, "api_token": "  ", "retries": 2.5, "old": null})),
        )
        .unwrap();
        assert_eq!(
            Value::Object(next.clone().into_iter().collect()),
            json!({"endpoint": "x", "retries": 2.5})
        );
        assert_eq!(
            changed(&stored, &next),
            ["api_token", "greeting", "old", "retries"]
        );
        assert!(changed(&next, &next).is_empty());
        // Unknown and not stored: refused, even as null.
        assert!(apply(&specs(), &stored, &changes(json!({"other": null}))).is_err());
    }

    #[test]
    fn a_license_key_is_trimmed_and_shown_only_as_set() {
        let mut meta = PluginMetadata::new("a", "A", "1", "/a");
        meta.license_required = true;
        let specs = declared(&meta);
        let next = apply(
            &specs,
            &Values::new(),
            &changes(json!({"license_key": " toru1.key\n"})),
        )
        .unwrap();
        assert_eq!(next["license_key"], "toru1.key");
        let shown = serde_json::to_value(views(&specs, &next)).unwrap();
        assert_eq!(shown[0]["set"], true);
        assert!(shown[0].get("value").is_none(), "{shown}");
        assert!(!shown.to_string().contains("toru1.key"), "{shown}");
    }

    #[test]
    fn views_show_the_value_in_effect() {
        let shown = views(
            &specs(),
            &values(json!({"greeting": "Howdy", "api_token": "t"})),
        );
        let by_name: BTreeMap<&str, &SettingView> =
            shown.iter().map(|v| (v.spec.name.as_str(), v)).collect();
        assert_eq!(by_name["greeting"].value, Some(json!("Howdy")));
        assert!(by_name["greeting"].set);
        assert_eq!(by_name["mode"].value, Some(json!("safe")));
        assert!(!by_name["mode"].set);
        assert_eq!(by_name["retries"].value, Some(Value::Null));
        assert_eq!(by_name["api_token"].value, None);
        assert!(by_name["api_token"].set);
    }
}
