//! The admin secret: made on first start, shown once, kept only as an argon2id hash in the
//! host's `settings` table.

use anyhow::Context as _;
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use toru_host::Store;

/// The setting holding the admin secret's PHC string (`$argon2id$v=19$...`).
pub(crate) const HASH_SETTING: &str = "admin_secret_hash";

/// The environment variable that, when set, is the admin secret instead of the stored one.
pub(crate) const ENV_SECRET: &str = "TORU_ADMIN_SECRET";

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
    /// Its argon2id hash.
    pub(crate) hash: String,
    /// The secret itself when it was made just now (to be shown once).
    pub(crate) new_secret: Option<String>,
    /// Where it came from, for the start-up message.
    pub(crate) source: SecretSource,
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

/// The admin secret from `TORU_ADMIN_SECRET` when set, else the stored hash, else a new secret
/// (stored as a hash). `fresh` makes a new one even when a hash is stored (the demo does, so
/// that it can print the secret).
///
/// # Errors
/// When the database cannot be read or written.
pub(crate) async fn load_or_create(store: &Store, fresh: bool) -> anyhow::Result<AdminSecret> {
    if let Some(secret) = std::env::var(ENV_SECRET).ok().filter(|s| !s.is_empty()) {
        let hash = blocking(move || hash(&secret)).await?;
        return Ok(AdminSecret {
            hash,
            new_secret: None,
            source: SecretSource::Env,
        });
    }
    if !fresh
        && let Some(hash) = store
            .setting(HASH_SETTING)
            .context("cannot read the admin secret hash")?
    {
        return Ok(AdminSecret {
            hash,
            new_secret: None,
            source: SecretSource::Stored,
        });
    }
    let (secret, hash) = make_and_store(store).await?;
    Ok(AdminSecret {
        hash,
        new_secret: Some(secret),
        source: SecretSource::Generated,
    })
}

/// Makes a new secret, stores its hash, and returns both.
///
/// # Errors
/// When the database cannot be written.
pub(crate) async fn make_and_store(store: &Store) -> anyhow::Result<(String, String)> {
    let secret = generate()?;
    let for_hash = secret.clone();
    let hash = blocking(move || hash(&for_hash)).await?;
    store
        .set_setting(HASH_SETTING, &hash)
        .await
        .context("cannot store the admin secret hash")?;
    Ok((secret, hash))
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
    fn generated_secrets_differ() {
        assert_ne!(generate().unwrap(), generate().unwrap());
    }
}
