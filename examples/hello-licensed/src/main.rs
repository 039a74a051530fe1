//! Toru's example of a proprietary plugin: it starts only with a license key issued for the
//! Toru instance it runs on, and shows what the license grants.
//!
//! The plugin embeds its vendor's Ed25519 *public* key and checks the `license_key` setting in
//! `init`. Without a valid key it refuses to start: the SDK logs the reason, answers `init` with
//! `init_refused` and exits 78, and the host shows the plugin as failed with that reason and
//! does not restart it. See README.md and docs/licensing.md.

use serde_json::json;
use toru_plugin_api::license::LicensePolicy;
use toru_plugin_api::{
    HttpError, HttpResult, InitError, PluginContext, PluginMetadata, Request, Response, ToruPlugin,
    async_trait,
};

/// The id licenses are issued for. The plugin checks keys against this, not against the id a
/// host gives it, so renaming the file does not change which keys it takes.
const ID: &str = "hello-licensed";

/// The vendor's verifying keys. This one is a DEMO key whose secret half is published in
/// `demo-vendor-key.secret`; a real plugin embeds the public key from its vendor's own
/// `toru-license keygen`. To rotate, add the new key here and keep the old one while licenses
/// signed with it are in use.
const VENDOR_KEYS: &[&str] =
    &["toru1.ed25519-public.demo-2026.QCzk0Bre2aIAO4OkCoywtp3enxBUJVoHMSGx4tvPqNw"];

/// The feature that unlocks `GET /hello-licensed/report`.
const REPORTS: &str = "reports";

struct HelloLicensed {
    /// The keys licenses must be signed with; the SDK checks the key before `init`.
    policy: LicensePolicy,
}

impl Default for HelloLicensed {
    fn default() -> Self {
        HelloLicensed { policy: policy() }
    }
}

fn policy() -> LicensePolicy {
    LicensePolicy::from_keys(VENDOR_KEYS).expect("the embedded vendor keys are valid key texts")
}

#[async_trait]
impl ToruPlugin for HelloLicensed {
    fn metadata(&self) -> PluginMetadata {
        // The SDK fills in `protocol`, and `license_required` since license() is Some.
        PluginMetadata::new(
            ID,
            "Hello (licensed)",
            env!("CARGO_PKG_VERSION"),
            "/hello-licensed",
        )
        .with_author("Toru")
        .with_description(
            "A proprietary plugin example: runs only with a license key for this instance, \
                 and shows what the license grants.",
        )
        .with_icon("🔑")
    }

    fn license(&self) -> Option<&LicensePolicy> {
        Some(&self.policy)
    }

    async fn init(&self, ctx: &PluginContext) -> Result<(), InitError> {
        // The SDK accepted the key before calling init; a refused key never gets here.
        if let Some(claims) = ctx.license() {
            let until = claims
                .expires_at
                .map_or("with no expiry".to_owned(), |t| format!("until {t}"));
            ctx.info(format!("licensed for this instance {until}"));
        }
        Ok(())
    }

    async fn handle_http(&self, ctx: &PluginContext, req: Request) -> HttpResult {
        let Some(license) = ctx.license() else {
            // Unreachable through the SDK, which checks the license before any request.
            return Err(HttpError::new(
                503,
                "the plugin has not checked its license yet",
            ));
        };
        Ok(match (req.method.as_str(), req.subpath()) {
            ("GET", "" | "/") => Response::json(
                200,
                &json!({
                    "message": "Hello from a licensed plugin!",
                    "plugin": ID,
                    "instance_id": ctx.instance_id(),
                    "license": {
                        "issued_at": license.issued_at.to_string(),
                        "expires_at": license.expires_at.map(|t| t.to_string()),
                        "features": license.features,
                    },
                }),
            ),
            ("GET", "/report") if license.has_feature(REPORTS) => Response::json(
                200,
                &json!({ "report": "everything is fine", "feature": REPORTS }),
            ),
            ("GET", "/report") => Response::error(
                403,
                &format!("this license does not include the {REPORTS:?} feature"),
            ),
            (_, "" | "/" | "/report") => Response::error(405, "method not allowed"),
            _ => Response::error(404, "not found"),
        })
    }
}

fn main() {
    toru_plugin_api::run(HelloLicensed::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_keys_parse() {
        assert_eq!(policy().keys().count(), VENDOR_KEYS.len());
    }

    #[test]
    fn metadata_is_valid_and_requires_a_license() {
        let plugin = HelloLicensed::default();
        assert_eq!(plugin.metadata().validate(), Ok(()));
        // What makes the SDK print `"license_required": true` for `--metadata`.
        assert!(plugin.license().is_some());
    }
}
