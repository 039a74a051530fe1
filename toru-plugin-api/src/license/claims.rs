//! [`LicenseClaims`]: what a license key grants.

use serde::{Deserialize, Serialize};

use super::error::LicenseError;
use super::time::Timestamp;

/// How far in the future a key's issue time may lie before the key is refused as
/// [`NotYetValid`](LicenseError::NotYetValid): a day, so clocks that are a little off (or a
/// vendor issuing in another time zone's "today") do not lock anyone out.
pub const ISSUED_AT_TOLERANCE_SECS: u64 = 86_400;

/// What a license key grants: one plugin on one Toru instance, from its issue time until its
/// expiry (if any), with optional feature names for the plugin to interpret.
///
/// In a key it is JSON with exactly these fields (unknown fields make the key malformed, so a
/// restriction added by a newer issuer is never silently ignored):
///
/// ```json
/// {"plugin_id":"hello-licensed","instance_id":"6f0c0e8e-…","issued_at":1767225600,
///  "expires_at":1798761600,"features":["reports"]}
/// ```
///
/// `expires_at` is left out when the key never expires, and `features` when there are none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LicenseClaims {
    /// The plugin the key is for.
    pub plugin_id: String,
    /// The Toru instance the key is for (the host's instance id, a UUID).
    pub instance_id: String,
    /// When the key was issued.
    pub issued_at: Timestamp,
    /// When the key stops working; `None` for never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Feature names the key unlocks, for the plugin to interpret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl LicenseClaims {
    /// Claims for `plugin_id` on `instance_id`, issued at `issued_at`, never expiring, with no
    /// features. Set [`expires_at`](Self::expires_at) and [`features`](Self::features) after.
    pub fn new(
        plugin_id: impl Into<String>,
        instance_id: impl Into<String>,
        issued_at: Timestamp,
    ) -> Self {
        LicenseClaims {
            plugin_id: plugin_id.into(),
            instance_id: instance_id.into(),
            issued_at,
            expires_at: None,
            features: Vec::new(),
        }
    }

    /// Whether the key unlocks the feature `name`.
    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }

    /// Checks the claims against this plugin, this instance and the time `now`, in that order.
    pub(crate) fn check(
        &self,
        plugin_id: &str,
        instance_id: &str,
        now: Timestamp,
    ) -> Result<(), LicenseError> {
        if self.plugin_id != plugin_id {
            return Err(LicenseError::OtherPlugin {
                expected: plugin_id.to_owned(),
                found: self.plugin_id.clone(),
            });
        }
        if self.instance_id != instance_id {
            return Err(LicenseError::OtherInstance {
                expected: instance_id.to_owned(),
                found: self.instance_id.clone(),
            });
        }
        if self.issued_at > now.add_secs(ISSUED_AT_TOLERANCE_SECS) {
            return Err(LicenseError::NotYetValid {
                issued_at: self.issued_at,
                now,
            });
        }
        match self.expires_at {
            Some(expires_at) if now >= expires_at => Err(LicenseError::Expired { expires_at, now }),
            _ => Ok(()),
        }
    }
}
