//! [`LicensePolicy`]: the keys a plugin accepts, and the check itself.

use std::collections::BTreeMap;

use super::claims::LicenseClaims;
use super::error::{KeyError, LicenseError};
use super::keys::{Scheme, VerifyingKey};
use super::time::Timestamp;
use super::token::Token;

/// The verifying keys a plugin accepts, by scheme and key id. Accept several to rotate: keep
/// the old key while licenses signed with it are in use, add the new one, and issue with the
/// new one.
///
/// ```
/// use toru_plugin_api::license::{Issuer, LicenseClaims, LicenseError, LicensePolicy, Scheme, Timestamp};
///
/// let old = Issuer::generate(Scheme::Ed25519, "2025")?;
/// let new = Issuer::generate(Scheme::Ed25519, "2026")?;
/// // A plugin embeds the public key texts: `toru1.ed25519-public.2026.…`.
/// let policy = LicensePolicy::from_keys([
///     old.verifying_key().to_text(),
///     new.verifying_key().to_text(),
/// ])?;
///
/// let now = Timestamp::now();
/// let instance = "6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f";
/// for issuer in [&old, &new] {
///     let key = issuer.issue(&LicenseClaims::new("weather", instance, now));
///     assert_eq!(policy.verify(&key, "weather", instance, now)?.plugin_id, "weather");
/// }
/// let key = new.issue(&LicenseClaims::new("weather", "another-instance", now));
/// assert!(matches!(
///     policy.verify(&key, "weather", instance, now),
///     Err(LicenseError::OtherInstance { .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct LicensePolicy {
    keys: BTreeMap<(Scheme, String), VerifyingKey>,
}

impl LicensePolicy {
    /// A policy that accepts no key yet.
    pub fn new() -> Self {
        LicensePolicy::default()
    }

    /// A policy accepting the keys in `texts` (see [`VerifyingKey::parse`]).
    ///
    /// # Errors
    /// The first text that is not a verifying key, or [`KeyError::DuplicateKeyId`].
    pub fn from_keys<I>(texts: I) -> Result<Self, KeyError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        texts
            .into_iter()
            .try_fold(LicensePolicy::new(), |policy, text| {
                policy.with_key(VerifyingKey::parse(text.as_ref())?)
            })
    }

    /// Adds a key.
    ///
    /// # Errors
    /// [`KeyError::DuplicateKeyId`] when the policy already has a key with that scheme and id.
    pub fn with_key(mut self, key: VerifyingKey) -> Result<Self, KeyError> {
        self.add(key)?;
        Ok(self)
    }

    /// Adds a key.
    ///
    /// # Errors
    /// [`KeyError::DuplicateKeyId`] when the policy already has a key with that scheme and id.
    pub fn add(&mut self, key: VerifyingKey) -> Result<(), KeyError> {
        let slot = (key.scheme(), key.key_id().to_owned());
        if self.keys.contains_key(&slot) {
            return Err(KeyError::DuplicateKeyId {
                scheme: slot.0,
                key_id: slot.1,
            });
        }
        self.keys.insert(slot, key);
        Ok(())
    }

    /// The accepted keys, ordered by scheme and key id.
    pub fn keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }

    /// Checks a license key: its format, that an accepted key signed it, then that it is for
    /// `plugin_id` on `instance_id`, issued no later than a day after `now`, and not expired at
    /// `now`. Nothing in the payload is read before the signature checks out.
    ///
    /// # Errors
    /// A [`LicenseError`] saying why the key is refused.
    pub fn verify(
        &self,
        key: &str,
        plugin_id: &str,
        instance_id: &str,
        now: Timestamp,
    ) -> Result<LicenseClaims, LicenseError> {
        let token = Token::parse(key)?;
        let Some(accepted) = self.keys.get(&(token.scheme, token.key_id.clone())) else {
            return Err(LicenseError::UnknownKeyId {
                scheme: token.scheme,
                key_id: token.key_id,
            });
        };
        if !accepted.verifies(token.signed.as_bytes(), &token.signature) {
            return Err(LicenseError::BadSignature {
                scheme: token.scheme,
                key_id: token.key_id,
            });
        }
        let claims = token.claims()?;
        claims.check(plugin_id, instance_id, now)?;
        Ok(claims)
    }
}
