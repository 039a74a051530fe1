//! License keys that bind a plugin to one Toru instance.
//!
//! A vendor [issues](Issuer::issue) a key for a plugin id and an instance id (the host's, a
//! UUID), with an issue time, an optional expiry and optional feature names. The operator puts
//! it in the plugin's `license_key` setting; the host sends it in `init`; the plugin checks it
//! with a [`LicensePolicy`] (usually through [`check_init`]) and refuses to start if it does not
//! hold, which makes it exit with [`EXIT_CONFIG`](crate::protocol::EXIT_CONFIG) (78).
//!
//! # The key
//!
//! One line of ASCII with no whitespace, safe to paste into mail, chat, JSON and shells:
//!
//! ```text
//! toru1.<scheme>.<key id>.<payload>.<signature>
//! ```
//!
//! - `toru1`: the format version.
//! - `<scheme>`: `ed25519` or `hmac` (HMAC-SHA256).
//! - `<key id>`: which of the vendor's keys signed it (1 to 32 of `A-Z a-z 0-9 - _`).
//! - `<payload>`: the [`LicenseClaims`] as JSON, base64url without padding.
//! - `<signature>`: over the ASCII text before the last dot (so the scheme and key id are
//!   signed too), base64url without padding: 64 bytes for Ed25519, 32 for HMAC.
//!
//! Whitespace anywhere is ignored when reading, so a key wrapped across lines still works.
//!
//! # The schemes
//!
//! - **Ed25519** (recommended): the plugin embeds only the vendor's public key. Someone who reads
//!   the plugin's binary can check keys but cannot make one.
//! - **HMAC-SHA256** (the spec's scheme): the plugin embeds the vendor's secret, so anyone who
//!   extracts it from the binary can make keys for any instance. It shows tampering with a key,
//!   nothing more.
//!
//! Neither stops someone who patches the check out of the plugin's binary: licensing keeps
//! honest operators honest.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use toru_plugin_api::license::{self, Issuer, LicenseClaims, LicenseError, LicensePolicy, Scheme, Timestamp};
//!
//! // The vendor, once: a key pair. The plugin embeds the public half.
//! let vendor = Issuer::generate(Scheme::Ed25519, "acme-2026")?;
//! let public_text = vendor.verifying_key().to_text(); // "toru1.ed25519-public.acme-2026.…"
//! let policy = LicensePolicy::from_keys([public_text])?;
//!
//! // The vendor, per customer: a key for the customer's instance, for a year.
//! let instance = "6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f";
//! let mut claims = LicenseClaims::new("reports", instance, Timestamp::now());
//! claims.expires_at = Some(Timestamp::now().add_days(365));
//! claims.features.push("pdf".into());
//! let key = vendor.issue(&claims);
//!
//! // The plugin, in `init`:
//! let mut settings = BTreeMap::new();
//! settings.insert("license_key".to_owned(), serde_json::Value::from(key));
//! let granted = license::check_init(&policy, "reports", instance, &settings)?;
//! assert!(granted.has_feature("pdf"));
//!
//! // The same key on another instance is refused, and says why.
//! let err = license::check_init(&policy, "reports", "another-instance", &settings).unwrap_err();
//! assert!(matches!(err, LicenseError::OtherInstance { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod claims;
mod error;
mod issuer;
mod keys;
mod policy;
mod time;
mod token;

use std::collections::BTreeMap;

pub use claims::{ISSUED_AT_TOLERANCE_SECS, LicenseClaims};
pub use error::{KeyError, LicenseError};
pub use issuer::Issuer;
pub use keys::{Scheme, VerifyingKey};
pub use policy::LicensePolicy;
pub use time::{Timestamp, TimestampError};
pub use token::{DecodedLicense, decode};

/// The first part of every license key and key text.
pub const VERSION: &str = "toru1";

pub use crate::protocol::LICENSE_KEY_SETTING;

/// The longest license key read, in characters (whitespace removed).
pub const MAX_KEY_LEN: usize = 4096;

/// The shortest HMAC secret accepted, in bytes: the length of a SHA-256 output.
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// Checks the `license_key` setting from `init` against this plugin and instance, at the
/// current time. Call it from [`ToruPlugin::init`](crate::ToruPlugin::init) and turn an error
/// into [`InitError::refused`](crate::InitError::refused) with its message.
///
/// `plugin_id` should be the plugin's own id (the one its keys are issued for), not the name a
/// host gives it.
///
/// # Errors
/// [`LicenseError::Missing`] when the setting is absent, `null` or blank;
/// [`LicenseError::Malformed`] when it is not a string; otherwise what
/// [`LicensePolicy::verify`] says.
pub fn check_init(
    policy: &LicensePolicy,
    plugin_id: &str,
    instance_id: &str,
    settings: &BTreeMap<String, serde_json::Value>,
) -> Result<LicenseClaims, LicenseError> {
    check_settings(policy, plugin_id, instance_id, settings, Timestamp::now())
}

fn check_settings(
    policy: &LicensePolicy,
    plugin_id: &str,
    instance_id: &str,
    settings: &BTreeMap<String, serde_json::Value>,
    now: Timestamp,
) -> Result<LicenseClaims, LicenseError> {
    use serde_json::Value;
    let key = match settings.get(LICENSE_KEY_SETTING) {
        None | Some(Value::Null) => return Err(LicenseError::Missing),
        Some(Value::String(key)) if key.trim().is_empty() => return Err(LicenseError::Missing),
        Some(Value::String(key)) => key,
        Some(other) => {
            let kind = match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "an array",
                _ => "an object",
            };
            return Err(LicenseError::malformed(format!(
                "the {LICENSE_KEY_SETTING} setting is {kind}, not a string"
            )));
        }
    };
    policy.verify(key, plugin_id, instance_id, now)
}

#[cfg(test)]
mod tests;
