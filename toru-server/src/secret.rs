//! The admin secret: made on first start, shown once, kept in the host's `settings` table only as
//! an argon2id hash and a SHA-256 digest.
//!
//! The digest is what the server checks against: it takes microseconds, so a correct secret can
//! be accepted at once however many wrong ones arrive (see `auth`). A SHA-256 is as strong as the
//! argon2 hash here, since every stored secret is generated with 192 random bits (nothing can be
//! guessed offline from either); argon2 stays for databases written before the digest existed,
//! which get it on the first login with the right secret. `TORU_ADMIN_SECRET`, which a person may
//! choose, is never stored, and must be at least [`MIN_ENV_SECRET_CHARS`] long.

use anyhow::Context as _;
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use toru_host::AppSettings;

/// The setting holding the admin secret's PHC string (`$argon2id$v=19$...`).
pub(crate) const HASH_SETTING: &str = "admin_secret_hash";

/// The setting holding the admin secret's SHA-256 digest, in lowercase hex.
pub(crate) const DIGEST_SETTING: &str = "admin_secret_sha256";

/// The environment variable that, when set, is the admin secret instead of the stored one.
pub(crate) const ENV_SECRET: &str = "TORU_ADMIN_SECRET";

/// The shortest `TORU_ADMIN_SECRET` accepted, in characters: a correct secret is always accepted,
/// so the secret's length, not a lockout, is what stops guessing.
pub(crate) const MIN_ENV_SECRET_CHARS: usize = 16;

/// A SHA-256 digest.
pub(crate) type Digest32 = [u8; 32];

/// The SHA-256 of `secret`.
pub(crate) fn digest(secret: &str) -> Digest32 {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// Compares two digests in constant time.
pub(crate) fn same_digest(a: &Digest32, b: &Digest32) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A digest as lowercase hex.
pub(crate) fn to_hex(digest: &Digest32) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest from 64 hex digits.
pub(crate) fn from_hex(text: &str) -> Option<Digest32> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// Random bytes in a generated secret (192 bits; 32 characters of base64url).
const SECRET_BYTES: usize = 24;

/// Random bytes, base64url without padding.
pub(crate) fn random_token(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A new admin secret.
pub(crate) fn generate() -> anyhow::Result<String> {
    random_token(SECRET_BYTES)
}

/// The argon2id PHC string of `secret`, with a random salt. Slow on purpose (tens of ms).
pub(crate) fn hash(secret: &str) -> anyhow::Result<String> {
    let hash = Argon2::default()
        .hash_password(secret.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot hash the admin secret: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `secret` matches the PHC string `hash`. Slow on purpose (tens of ms): call it off
/// the async threads.
pub(crate) fn verify(hash: &str, secret: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "the stored admin secret hash cannot be read");
            false
        }
    }
}

/// The admin secret the server checks against.
#[derive(Debug)]
pub(crate) struct AdminSecret {
    /// How to check it.
    pub(crate) check: SecretCheck,
    /// The secret itself when it was made just now (to be shown once).
    pub(crate) new_secret: Option<String>,
    /// Where it came from, for the start-up message.
    pub(crate) source: SecretSource,
}

/// What a secret is checked against: its digest when known, else its argon2id hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretCheck {
    /// The SHA-256 of the secret.
    pub(crate) digest: Option<Digest32>,
    /// The argon2id PHC string, for a stored secret with no digest yet.
    pub(crate) hash: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// `TORU_ADMIN_SECRET`.
    Env,
    /// The hash stored on an earlier start.
    Stored,
    /// Made now and stored.
    Generated,
}

/// The admin secret from `TORU_ADMIN_SECRET` when set, else the stored one, else a new secret
/// (stored as a hash and a digest). `fresh` makes a new one even when one is stored (the demo
/// does, so that it can print the secret).
///
/// # Errors
/// When the database cannot be read or written, or `TORU_ADMIN_SECRET` is too short.
pub(crate) async fn load_or_create(
    settings: &AppSettings,
    fresh: bool,
) -> anyhow::Result<AdminSecret> {
    if let Some(secret) = std::env::var(ENV_SECRET).ok().filter(|s| !s.is_empty()) {
        let chars = secret.chars().count();
        anyhow::ensure!(
            chars >= MIN_ENV_SECRET_CHARS,
            "{ENV_SECRET} is {chars} characters long; it must be at least {MIN_ENV_SECRET_CHARS} \
             (for example the output of `openssl rand -base64 24`)"
        );
        return Ok(AdminSecret {
            check: SecretCheck {
                digest: Some(digest(&secret)),
                hash: None,
            },
            new_secret: None,
            source: SecretSource::Env,
        });
    }
    if !fresh
        && let Some(hash) = settings
            .get(HASH_SETTING)
            .context("cannot read the admin secret hash")?
    {
        let stored = settings
            .get(DIGEST_SETTING)
            .context("cannot read the admin secret digest")?;
        let digest = stored.as_deref().and_then(|text| {
            let digest = from_hex(text);
            if digest.is_none() {
                tracing::warn!("the stored admin secret digest is not 64 hex digits; ignoring it");
            }
            digest
        });
        if digest.is_none() {
            tracing::info!(
                "the admin secret has no digest yet: the first login with it stores one"
            );
        }
        return Ok(AdminSecret {
            check: SecretCheck {
                digest,
                hash: Some(hash),
            },
            new_secret: None,
            source: SecretSource::Stored,
        });
    }
    let (secret, check) = make_and_store(settings).await?;
    Ok(AdminSecret {
        check,
        new_secret: Some(secret),
        source: SecretSource::Generated,
    })
}

/// Makes a new secret, stores its digest and its hash, and returns the secret and how to check it.
///
/// # Errors
/// When the database cannot be written.
pub(crate) async fn make_and_store(
    settings: &AppSettings,
) -> anyhow::Result<(String, SecretCheck)> {
    let secret = generate()?;
    let for_hash = secret.clone();
    let hash = blocking(move || hash(&for_hash)).await?;
    let digest = digest(&secret);
    store_digest(settings, &digest).await?;
    settings
        .set(HASH_SETTING, &hash)
        .await
        .context("cannot store the admin secret hash")?;
    Ok((
        secret,
        SecretCheck {
            digest: Some(digest),
            hash: Some(hash),
        },
    ))
}

/// Stores the admin secret's digest.
///
/// # Errors
/// When the database cannot be written.
pub(crate) async fn store_digest(settings: &AppSettings, digest: &Digest32) -> anyhow::Result<()> {
    settings
        .set(DIGEST_SETTING, &to_hex(digest))
        .await
        .context("cannot store the admin secret digest")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the hashing task failed")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_secret_only() {
        let secret = generate().unwrap();
        assert_eq!(secret.len(), 32);
        let hash = hash(&secret).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(&hash, &secret));
        assert!(!verify(&hash, "wrong"));
        assert!(!verify("not a hash", &secret));
    }

    #[test]
    fn digests_round_trip_through_hex_and_compare() {
        let d = digest("s3cret");
        let hex = to_hex(&d);
        assert_eq!(hex.len(), 64);
        assert_eq!(from_hex(&hex), Some(d));
        assert_eq!(from_hex(&hex[..62]), None);
        assert_eq!(from_hex(&"zz".repeat(32)), None);
        assert_eq!(from_hex(&"é".repeat(32)), None);
        assert!(same_digest(&d, &digest("s3cret")));
        assert!(!same_digest(&d, &digest("s3cres")));
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(generate().unwrap(), generate().unwrap());
    }
}
