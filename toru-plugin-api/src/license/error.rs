//! Why a license key was refused ([`LicenseError`]), and why a signing or verifying key could
//! not be used ([`KeyError`]).

use super::Scheme;
use super::time::Timestamp;

/// Why a license key was refused. The message is meant for the operator: it says what is wrong
/// with the key they installed and, where it can, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LicenseError {
    /// The plugin's settings have no `license_key` (or an empty one).
    #[error("no license key: paste one in the plugin's details panel (the `license_key` setting)")]
    Missing,
    /// The text is not a license key: wrong shape, bad base64, bad JSON, wrong lengths.
    #[error("license key is malformed: {reason}")]
    Malformed {
        /// What is wrong, naming the part of the key.
        reason: String,
    },
    /// The key starts with a format version this crate does not read (`toru2.`).
    #[error("license key format {found:?} is not supported; this plugin reads toru1 keys")]
    UnsupportedVersion {
        /// The key's first part.
        found: String,
    },
    /// The key names a signature scheme this crate does not know.
    #[error("license key scheme {found:?} is not supported (expected ed25519 or hmac)")]
    UnknownScheme {
        /// The key's second part.
        found: String,
    },
    /// The key was signed with a key this plugin does not accept: another vendor's, or one the
    /// vendor has retired.
    #[error(
        "license key is signed with {scheme} key {key_id:?}, which this plugin does not accept"
    )]
    UnknownKeyId {
        /// The scheme the key names.
        scheme: Scheme,
        /// The key id the key names.
        key_id: String,
    },
    /// The signature does not match the key's contents: the key was altered, or was not issued
    /// by the holder of the signing key it names.
    #[error(
        "license key signature does not match ({scheme} key {key_id:?}): the key was altered or \
         not issued by this plugin's vendor"
    )]
    BadSignature {
        /// The scheme the key names.
        scheme: Scheme,
        /// The key id the key names.
        key_id: String,
    },
    /// A genuine key for another plugin.
    #[error("license key is for plugin {found:?}, not {expected:?}")]
    OtherPlugin {
        /// This plugin's id.
        expected: String,
        /// The plugin id in the key.
        found: String,
    },
    /// A genuine key for another Toru instance.
    #[error("license key is for instance {found}, not this instance ({expected})")]
    OtherInstance {
        /// This instance's id.
        expected: String,
        /// The instance id in the key.
        found: String,
    },
    /// A genuine key past its expiry.
    #[error("license key expired on {expires_at}")]
    Expired {
        /// When the key expired.
        expires_at: Timestamp,
        /// The time it was checked at.
        now: Timestamp,
    },
    /// A genuine key issued more than a day after the time it was checked at: usually a wrong
    /// clock on this machine.
    #[error(
        "license key is issued on {issued_at}, after this machine's time {now}; check its clock"
    )]
    NotYetValid {
        /// When the key was issued.
        issued_at: Timestamp,
        /// The time it was checked at.
        now: Timestamp,
    },
}

impl LicenseError {
    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        LicenseError::Malformed {
            reason: reason.into(),
        }
    }
}

/// Why a signing key, a verifying key or a key text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not a key: wrong shape or bad base64.
    #[error("key text is malformed: {reason}")]
    Malformed {
        /// What is wrong, naming the part of the text.
        reason: String,
    },
    /// The text names a kind of key this crate does not know.
    #[error("key kind {found:?} is not one of ed25519-public, ed25519-secret, hmac-secret")]
    UnknownKind {
        /// The text's second part.
        found: String,
    },
    /// A key id must be 1 to 32 ASCII letters, digits, `-` or `_`.
    #[error("key id {key_id:?} must be 1 to 32 ASCII letters, digits, '-' or '_'")]
    BadKeyId {
        /// The refused key id.
        key_id: String,
    },
    /// 32 bytes that are not an Ed25519 public key.
    #[error("ed25519 public key {key_id:?} is not a valid curve point")]
    InvalidPublicKey {
        /// The key's id.
        key_id: String,
    },
    /// An HMAC secret shorter than [`MIN_HMAC_SECRET_LEN`](super::MIN_HMAC_SECRET_LEN).
    #[error("hmac secret {key_id:?} is {len} bytes; it must be at least 32")]
    ShortSecret {
        /// The key's id.
        key_id: String,
        /// Its length in bytes.
        len: usize,
    },
    /// An Ed25519 secret key where a verifying key was expected.
    #[error(
        "ed25519 secret key {key_id:?} must not be given to a plugin: embed its public key \
         (`toru-license keygen` prints it); the secret stays with the vendor"
    )]
    SecretWhereVerifyingKey {
        /// The key's id.
        key_id: String,
    },
    /// An Ed25519 public key where a signing key was expected.
    #[error("ed25519 public key {key_id:?} can only verify; issuing needs its secret key")]
    PublicKeyCannotIssue {
        /// The key's id.
        key_id: String,
    },
    /// A [`LicensePolicy`](super::LicensePolicy) already accepts a key with this scheme and id.
    #[error("the policy already accepts a {scheme} key {key_id:?}")]
    DuplicateKeyId {
        /// The scheme.
        scheme: Scheme,
        /// The key id.
        key_id: String,
    },
    /// The operating system's random number generator failed.
    #[error("the system's random number generator failed: {reason}")]
    Random {
        /// The generator's error.
        reason: String,
    },
}

impl KeyError {
    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        KeyError::Malformed {
            reason: reason.into(),
        }
    }
}
