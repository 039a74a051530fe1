//! Settings a plugin declares in its metadata, and the check of a value against its declaration.
//!
//! The host renders a form from the declarations, checks what an operator enters with
//! [`SettingSpec::check`], stores the values, and sends them in `init` (and in `settings`, to a
//! plugin that applies them live). Secret settings are sent to the plugin but never shown back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most settings one plugin may declare.
pub const MAX_SETTINGS: usize = 64;

/// The type of a setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SettingKind {
    /// Text (a JSON string).
    String,
    /// A number (a JSON number).
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of the declaration's `choices` (a JSON string).
    Choice,
    /// Text that is never shown back or logged: an API token, a password, a license key.
    Secret,
}

impl SettingKind {
    /// The type's name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SettingKind::String => "string",
            SettingKind::Number => "number",
            SettingKind::Boolean => "boolean",
            SettingKind::Choice => "choice",
            SettingKind::Secret => "secret",
        }
    }
}

/// One setting a plugin declares in its metadata's `settings` list.
///
/// ```json
/// {"name": "greeting", "label": "Greeting", "type": "string", "default": "Hello",
///  "required": false, "help": "The word the plugin greets with."}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingSpec {
    /// The key the value is stored and sent under: 1 to 64 characters of `a-z`, `0-9` and `_`,
    /// starting with a letter.
    pub name: String,
    /// A label for the form.
    #[serde(default)]
    pub label: String,
    /// The value's type.
    #[serde(rename = "type")]
    pub kind: SettingKind,
    /// The value used while none is stored. Never set for a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Whether the plugin needs a value (stored, or a default) to start.
    #[serde(default)]
    pub required: bool,
    /// A sentence of help shown under the field.
    #[serde(default)]
    pub help: String,
    /// For `choice`: the allowed values, in the order shown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

/// Why a declaration or a value is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    /// The declaration breaks a rule (the text says which).
    #[error("setting {name:?} is declared wrongly: {why}")]
    Declaration {
        /// The setting's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A value does not fit its declaration.
    #[error("{why}")]
    Value {
        /// What is wrong, for the form's field.
        why: String,
    },
}

fn value_error(why: impl Into<String>) -> SettingError {
    SettingError::Value { why: why.into() }
}

/// The longest text value accepted, in bytes.
pub const MAX_TEXT_SETTING: usize = 64 * 1024;

impl SettingSpec {
    /// A setting called `name` of type `kind`, labelled `label` in the form; not required, no
    /// default, no help.
    ///
    /// ```
    /// use toru_plugin_api::protocol::{SettingKind, SettingSpec};
    /// let greeting = SettingSpec::new("greeting", SettingKind::String, "Greeting")
    ///     .with_default("Hello")
    ///     .with_help("The word the plugin greets with.");
    /// assert_eq!(greeting.validate(), Ok(()));
    /// let mode = SettingSpec::new("mode", SettingKind::Choice, "Mode").with_choices(["fast", "safe"]);
    /// assert_eq!(mode.validate(), Ok(()));
    /// ```
    pub fn new(name: impl Into<String>, kind: SettingKind, label: impl Into<String>) -> Self {
        SettingSpec {
            name: name.into(),
            label: label.into(),
            kind,
            default: None,
            required: false,
            help: String::new(),
            choices: Vec::new(),
        }
    }

    /// Sets the default value.
    pub fn with_default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    /// Sets the help sentence.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }

    /// Marks the setting as required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Sets the choices (for a [`SettingKind::Choice`]).
    pub fn with_choices<I, T>(mut self, choices: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.choices = choices.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the declaration itself: the name's pattern, `choices` for a choice and only for
    /// a choice, no default for a secret, and a default that fits the type.
    ///
    /// # Errors
    /// [`SettingError::Declaration`] naming the setting and the rule.
    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |why: &str| {
            Err(SettingError::Declaration {
                name: self.name.clone(),
                why: why.to_owned(),
            })
        };
        let name_ok = (1..=64).contains(&self.name.len())
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return bad("use 1 to 64 characters of a-z, 0-9 and '_', starting with a letter");
        }
        match (self.kind, self.choices.is_empty()) {
            (SettingKind::Choice, true) => return bad("a choice needs at least one of `choices`"),
            (SettingKind::Choice, false) => {}
            (_, false) => return bad("only a choice has `choices`"),
            (_, true) => {}
        }
        if self.label.len() > 200 || self.help.len() > 2000 {
            return bad("the label is limited to 200 bytes and the help to 2000");
        }
        match &self.default {
            Some(_) if self.kind == SettingKind::Secret => bad("a secret cannot have a default"),
            Some(value) => match self.check(value) {
                Ok(()) => Ok(()),
                Err(e) => bad(&format!("its default does not fit: {e}")),
            },
            None => Ok(()),
        }
    }

    /// Checks a value against the declaration: its JSON type, and for a choice that it is one
    /// of the choices. `null` is accepted only for a setting that is not required (it removes
    /// the stored value).
    ///
    /// ```
    /// use toru_plugin_api::protocol::{SettingKind, SettingSpec};
    /// let spec: SettingSpec = serde_json::from_str(
    ///     r#"{"name": "mode", "type": "choice", "choices": ["fast", "safe"]}"#,
    /// ).unwrap();
    /// assert!(spec.check(&"fast".into()).is_ok());
    /// assert!(spec.check(&"slow".into()).is_err());
    /// assert!(spec.check(&3.into()).is_err());
    /// ```
    ///
    /// # Errors
    /// [`SettingError::Value`] with a sentence for the form's field.
    pub fn check(&self, value: &Value) -> Result<(), SettingError> {
        match (self.kind, value) {
            (_, Value::Null) if self.required => Err(value_error("a value is required")),
            (_, Value::Null) => Ok(()),
            (SettingKind::String | SettingKind::Secret, Value::String(s)) => {
                if s.len() > MAX_TEXT_SETTING {
                    Err(value_error(format!(
                        "at most {MAX_TEXT_SETTING} bytes of text are accepted"
                    )))
                } else if self.required && s.trim().is_empty() {
                    Err(value_error("a value is required"))
                } else {
                    Ok(())
                }
            }
            (SettingKind::Number, Value::Number(_)) => Ok(()),
            (SettingKind::Boolean, Value::Bool(_)) => Ok(()),
            (SettingKind::Choice, Value::String(s)) if self.choices.contains(s) => Ok(()),
            (SettingKind::Choice, Value::String(s)) => Err(value_error(format!(
                "{s:?} is not one of {}",
                self.choices.join(", ")
            ))),
            (kind, _) => Err(value_error(format!("expected {}", expected(kind)))),
        }
    }
}

fn expected(kind: SettingKind) -> &'static str {
    match kind {
        SettingKind::String | SettingKind::Secret => "text",
        SettingKind::Number => "a number",
        SettingKind::Boolean => "true or false",
        SettingKind::Choice => "one of the choices",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(json: Value) -> SettingSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn declarations_follow_the_rules() {
        let ok = spec(json!({"name": "api_token", "type": "secret", "required": true}));
        assert_eq!(ok.validate(), Ok(()));
        for bad in [
            json!({"name": "Api", "type": "string"}),
            json!({"name": "", "type": "string"}),
            json!({"name": "1a", "type": "string"}),
            json!({"name": "mode", "type": "choice"}),
            json!({"name": "n", "type": "number", "choices": ["1"]}),
            json!({"name": "key", "type": "secret", "default": "x"}),
            json!({"name": "n", "type": "number", "default": "ten"}),
        ] {
            assert!(
                matches!(
                    spec(bad.clone()).validate(),
                    Err(SettingError::Declaration { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_are_checked_against_their_type() {
        let greeting = spec(json!({"name": "greeting", "type": "string", "default": "Hello"}));
        assert_eq!(greeting.validate(), Ok(()));
        assert!(greeting.check(&json!("Hi")).is_ok());
        assert!(greeting.check(&json!(null)).is_ok());
        assert!(greeting.check(&json!(3)).is_err());
        let n = spec(json!({"name": "n", "type": "number", "required": true}));
        assert!(n.check(&json!(2.5)).is_ok());
        assert!(n.check(&json!(null)).is_err());
        assert!(n.check(&json!("2")).is_err());
        let flag = spec(json!({"name": "on", "type": "boolean"}));
        assert!(flag.check(&json!(false)).is_ok());
        assert!(flag.check(&json!("false")).is_err());
        let token = spec(json!({"name": "token", "type": "secret", "required": true}));
        assert!(token.check(&json!("  ")).is_err());
        assert!(
            token
                .check(&json!("x".repeat(MAX_TEXT_SETTING + 1)))
                .is_err()
        );
        assert!(token.check(&json!("s3cret")).is_ok());
    }
}
