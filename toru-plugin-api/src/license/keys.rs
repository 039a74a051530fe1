//! [`Scheme`] and [`VerifyingKey`] (what a plugin holds), and the key text form
//! `toru1.<kind>.<key id>.<base64url key>` shared with [`Issuer`](super::Issuer).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::error::KeyError;
use super::{MIN_HMAC_SECRET_LEN, VERSION};

/// How a license key is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// Ed25519 signatures: the plugin holds only the vendor's public key, so it can check keys
    /// but not make them. Recommended.
    Ed25519,
    /// HMAC-SHA256: the plugin holds the vendor's secret, so anyone who extracts it from the
    /// plugin can make keys. Tamper-evident only.
    Hmac,
}

impl Scheme {
    /// The name in key texts and license keys: `ed25519` or `hmac`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::Hmac => "hmac",
        }
    }

    /// The scheme named `name`, if any.
    pub fn from_name(name: &str) -> Option<Scheme> {
        match name {
            "ed25519" => Some(Scheme::Ed25519),
            "hmac" => Some(Scheme::Hmac),
            _ => None,
        }
    }

    /// The length of a signature in this scheme, in bytes.
    pub(crate) const fn signature_len(self) -> usize {
        match self {
            Scheme::Ed25519 => ed25519_dalek::SIGNATURE_LENGTH,
            Scheme::Hmac => 32,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `key_id` is 1 to 32 ASCII letters, digits, `-` or `_`: it sits between dots in key
/// texts, so it must survive copy and paste and contain no dot.
pub(crate) fn is_key_id(key_id: &str) -> bool {
    (1..=32).contains(&key_id.len())
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn check_key_id(key_id: &str) -> Result<(), KeyError> {
    if is_key_id(key_id) {
        Ok(())
    } else {
        Err(KeyError::BadKeyId {
            key_id: key_id.to_owned(),
        })
    }
}

/// Secret bytes that never show in `Debug` output.
#[derive(Clone)]
pub(super) struct Secret(pub(super) Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

#[derive(Debug, Clone)]
enum Verify {
    Ed25519(ed25519_dalek::VerifyingKey),
    Hmac(Secret),
}

/// A key that checks license signatures: an Ed25519 public key, or an HMAC secret. A plugin
/// embeds its text form, which `toru-license keygen` prints:
///
/// - `toru1.ed25519-public.<key id>.<32 bytes, base64url>`
/// - `toru1.hmac-secret.<key id>.<32 or more bytes, base64url>`
///
/// `Debug` never shows an HMAC secret.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    key_id: String,
    key: Verify,
}

impl VerifyingKey {
    /// Reads a key text. Whitespace anywhere and lines starting with `#` are ignored, so a key
    /// file with comments or a key wrapped across lines reads as the key alone.
    ///
    /// # Errors
    /// [`KeyError`] when the text is not a verifying key; an Ed25519 secret key is refused with
    /// [`KeyError::SecretWhereVerifyingKey`].
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let parsed = KeyText::parse(text)?;
        match parsed.kind {
            Kind::Ed25519Public => VerifyingKey::ed25519(&parsed.key_id, parsed.bytes()?),
            Kind::HmacSecret => VerifyingKey::hmac(&parsed.key_id, &parsed.material),
            Kind::Ed25519Secret => Err(KeyError::SecretWhereVerifyingKey {
                key_id: parsed.key_id,
            }),
        }
    }

    /// An Ed25519 public key.
    ///
    /// # Errors
    /// [`KeyError::BadKeyId`], or [`KeyError::InvalidPublicKey`] when the bytes are not a point
    /// on the curve.
    pub fn ed25519(key_id: &str, public_key: [u8; 32]) -> Result<Self, KeyError> {
        check_key_id(key_id)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public_key).map_err(|_| {
            KeyError::InvalidPublicKey {
                key_id: key_id.to_owned(),
            }
        })?;
        Ok(VerifyingKey {
            key_id: key_id.to_owned(),
            key: Verify::Ed25519(key),
        })
    }

    /// An HMAC-SHA256 secret of at least [`MIN_HMAC_SECRET_LEN`] bytes.
    ///
    /// # Errors
    /// [`KeyError::BadKeyId`] or [`KeyError::ShortSecret`].
    pub fn hmac(key_id: &str, secret: &[u8]) -> Result<Self, KeyError> {
        check_key_id(key_id)?;
        check_secret_len(key_id, secret)?;
        Ok(VerifyingKey {
            key_id: key_id.to_owned(),
            key: Verify::Hmac(Secret(secret.to_vec())),
        })
    }

    pub(super) fn from_ed25519(key_id: &str, key: ed25519_dalek::VerifyingKey) -> Self {
        VerifyingKey {
            key_id: key_id.to_owned(),
            key: Verify::Ed25519(key),
        }
    }

    pub(super) fn from_hmac(key_id: &str, secret: Secret) -> Self {
        VerifyingKey {
            key_id: key_id.to_owned(),
            key: Verify::Hmac(secret),
        }
    }

    /// The key's scheme.
    pub fn scheme(&self) -> Scheme {
        match self.key {
            Verify::Ed25519(_) => Scheme::Ed25519,
            Verify::Hmac(_) => Scheme::Hmac,
        }
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The text form, as [`parse`](Self::parse) reads it. For an HMAC key this is the secret.
    pub fn to_text(&self) -> String {
        match &self.key {
            Verify::Ed25519(key) => key_text(Kind::Ed25519Public, &self.key_id, key.as_bytes()),
            Verify::Hmac(secret) => key_text(Kind::HmacSecret, &self.key_id, &secret.0),
        }
    }

    /// Whether `signature` signs `message` under this key. HMAC tags are compared in constant
    /// time; Ed25519 signatures are checked strictly (no malleable or small-order forms).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Verify::Ed25519(key) => {
                let Ok(bytes) = <&[u8; 64]>::try_from(signature) else {
                    return false;
                };
                let signature = ed25519_dalek::Signature::from_bytes(bytes);
                key.verify_strict(message, &signature).is_ok()
            }
            // `verify_slice` compares with `subtle`'s constant-time equality.
            Verify::Hmac(secret) => hmac_sha256(&secret.0, message)
                .verify_slice(signature)
                .is_ok(),
        }
    }
}

impl std::str::FromStr for VerifyingKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        VerifyingKey::parse(text)
    }
}

pub(super) fn hmac_sha256(secret: &[u8], message: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this never fails.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(message);
    mac
}

pub(super) fn check_secret_len(key_id: &str, secret: &[u8]) -> Result<(), KeyError> {
    if secret.len() < MIN_HMAC_SECRET_LEN {
        return Err(KeyError::ShortSecret {
            key_id: key_id.to_owned(),
            len: secret.len(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Ed25519Public,
    Ed25519Secret,
    HmacSecret,
}

impl Kind {
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            Kind::Ed25519Public => "ed25519-public",
            Kind::Ed25519Secret => "ed25519-secret",
            Kind::HmacSecret => "hmac-secret",
        }
    }
}

pub(super) fn key_text(kind: Kind, key_id: &str, bytes: &[u8]) -> String {
    format!("{VERSION}.{}.{key_id}.{}", kind.as_str(), B64.encode(bytes))
}

/// A key text taken apart: `toru1.<kind>.<key id>.<base64url bytes>`.
pub(super) struct KeyText {
    pub(super) kind: Kind,
    pub(super) key_id: String,
    pub(super) material: Vec<u8>,
}

impl KeyText {
    pub(super) fn parse(text: &str) -> Result<Self, KeyError> {
        let text: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(str::chars)
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let parts: Vec<&str> = text.split('.').collect();
        let [version, kind, key_id, material] = parts[..] else {
            return Err(KeyError::malformed(format!(
                "expected 4 parts separated by dots (toru1.<kind>.<key id>.<key>), found {}",
                parts.len()
            )));
        };
        if version != VERSION {
            return Err(KeyError::malformed(format!(
                "it starts with {version:?}, not {VERSION:?}"
            )));
        }
        let kind = [Kind::Ed25519Public, Kind::Ed25519Secret, Kind::HmacSecret]
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| KeyError::UnknownKind {
                found: kind.to_owned(),
            })?;
        check_key_id(key_id)?;
        let material = B64
            .decode(material)
            .map_err(|e| KeyError::malformed(format!("the key is not base64url: {e}")))?;
        Ok(KeyText {
            kind,
            key_id: key_id.to_owned(),
            material,
        })
    }

    /// The material as exactly `N` bytes.
    pub(super) fn bytes<const N: usize>(&self) -> Result<[u8; N], KeyError> {
        <[u8; N]>::try_from(self.material.as_slice()).map_err(|_| {
            KeyError::malformed(format!(
                "a {} key is {N} bytes, this one is {}",
                self.kind.as_str(),
                self.material.len()
            ))
        })
    }
}
