//! [`Issuer`]: a vendor's signing key, which issues license keys.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer as _;
use hmac::Mac as _;

use super::claims::LicenseClaims;
use super::error::KeyError;
use super::keys::{
    KeyText, Kind, Scheme, Secret, VerifyingKey, check_key_id, check_secret_len, hmac_sha256,
    key_text,
};
use super::token;

#[derive(Clone)]
enum Sign {
    Ed25519(ed25519_dalek::SigningKey),
    Hmac(Secret),
}

/// A vendor's signing key: it issues license keys. Text forms (what `toru-license keygen`
/// writes, and what [`to_secret_text`](Self::to_secret_text) returns):
///
/// - `toru1.ed25519-secret.<key id>.<32-byte seed, base64url>`
/// - `toru1.hmac-secret.<key id>.<32 or more bytes, base64url>`
///
/// `Debug` never shows the secret.
///
/// ```
/// use toru_plugin_api::license::{Issuer, LicenseClaims, LicensePolicy, Scheme, Timestamp};
///
/// let issuer = Issuer::generate(Scheme::Ed25519, "vendor-2026")?;
/// let now = Timestamp::now();
/// let key = issuer.issue(&LicenseClaims::new("weather", "3f1c…", now));
/// let policy = LicensePolicy::new().with_key(issuer.verifying_key())?;
/// assert!(policy.verify(&key, "weather", "3f1c…", now).is_ok());
/// # Ok::<(), toru_plugin_api::license::KeyError>(())
/// ```
pub struct Issuer {
    key_id: String,
    key: Sign,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("scheme", &self.scheme())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// A fresh key from the operating system's random number generator: an Ed25519 key pair, or
    /// a 32-byte HMAC secret.
    ///
    /// # Errors
    /// [`KeyError::BadKeyId`], or [`KeyError::Random`] if the generator fails.
    pub fn generate(scheme: Scheme, key_id: &str) -> Result<Self, KeyError> {
        check_key_id(key_id)?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random {
            reason: e.to_string(),
        })?;
        match scheme {
            Scheme::Ed25519 => Issuer::ed25519_from_seed(key_id, bytes),
            Scheme::Hmac => Issuer::hmac(key_id, &bytes),
        }
    }

    /// The Ed25519 key whose 32-byte secret seed is `seed`.
    ///
    /// # Errors
    /// [`KeyError::BadKeyId`].
    pub fn ed25519_from_seed(key_id: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        check_key_id(key_id)?;
        Ok(Issuer {
            key_id: key_id.to_owned(),
            key: Sign::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)),
        })
    }

    /// An HMAC-SHA256 secret of at least [`MIN_HMAC_SECRET_LEN`](super::MIN_HMAC_SECRET_LEN) bytes.
    ///
    /// # Errors
    /// [`KeyError::BadKeyId`] or [`KeyError::ShortSecret`].
    pub fn hmac(key_id: &str, secret: &[u8]) -> Result<Self, KeyError> {
        check_key_id(key_id)?;
        check_secret_len(key_id, secret)?;
        Ok(Issuer {
            key_id: key_id.to_owned(),
            key: Sign::Hmac(Secret(secret.to_vec())),
        })
    }

    /// Reads a secret key text (see the type's docs). Whitespace anywhere and lines starting
    /// with `#` are ignored.
    ///
    /// # Errors
    /// [`KeyError`] when the text is not a secret key; a public key is refused with
    /// [`KeyError::PublicKeyCannotIssue`].
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let parsed = KeyText::parse(text)?;
        match parsed.kind {
            Kind::Ed25519Secret => Issuer::ed25519_from_seed(&parsed.key_id, parsed.bytes()?),
            Kind::HmacSecret => Issuer::hmac(&parsed.key_id, &parsed.material),
            Kind::Ed25519Public => Err(KeyError::PublicKeyCannotIssue {
                key_id: parsed.key_id,
            }),
        }
    }

    /// The scheme this key signs with.
    pub fn scheme(&self) -> Scheme {
        match self.key {
            Sign::Ed25519(_) => Scheme::Ed25519,
            Sign::Hmac(_) => Scheme::Hmac,
        }
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret text form, for the vendor's key file. Keep it secret.
    pub fn to_secret_text(&self) -> String {
        match &self.key {
            Sign::Ed25519(key) => key_text(Kind::Ed25519Secret, &self.key_id, key.as_bytes()),
            Sign::Hmac(secret) => key_text(Kind::HmacSecret, &self.key_id, &secret.0),
        }
    }

    /// The key a plugin needs to check this issuer's licenses: the Ed25519 public key, or (for
    /// HMAC) the secret itself.
    pub fn verifying_key(&self) -> VerifyingKey {
        match &self.key {
            Sign::Ed25519(key) => VerifyingKey::from_ed25519(&self.key_id, key.verifying_key()),
            Sign::Hmac(secret) => VerifyingKey::from_hmac(&self.key_id, secret.clone()),
        }
    }

    /// Signs `claims` into a license key: `toru1.<scheme>.<key id>.<payload>.<signature>`.
    pub fn issue(&self, claims: &LicenseClaims) -> String {
        let signed = token::signed_part(self.scheme(), &self.key_id, claims);
        let signature = match &self.key {
            Sign::Ed25519(key) => key.sign(signed.as_bytes()).to_bytes().to_vec(),
            Sign::Hmac(secret) => hmac_sha256(&secret.0, signed.as_bytes())
                .finalize()
                .into_bytes()
                .to_vec(),
        };
        format!("{signed}.{}", B64.encode(signature))
    }
}

impl std::str::FromStr for Issuer {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Issuer::parse(text)
    }
}
