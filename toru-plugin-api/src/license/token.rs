//! The license key text: `toru1.<scheme>.<key id>.<payload>.<signature>`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::claims::LicenseClaims;
use super::error::LicenseError;
use super::keys::{Scheme, is_key_id};
use super::{MAX_KEY_LEN, VERSION};

/// `toru1.<scheme>.<key id>.<base64url payload JSON>`: the part a signature covers, so the
/// scheme and key id are signed along with the claims.
pub(crate) fn signed_part(scheme: Scheme, key_id: &str, claims: &LicenseClaims) -> String {
    let json = serde_json::to_vec(claims).expect("claims serialize to JSON");
    format!("{VERSION}.{scheme}.{key_id}.{}", B64.encode(json))
}

/// A license key taken apart, its signature not yet checked.
#[derive(Debug)]
pub(crate) struct Token {
    pub(crate) scheme: Scheme,
    pub(crate) key_id: String,
    /// The text the signature covers.
    pub(crate) signed: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

impl Token {
    /// Takes a key apart. Whitespace anywhere is ignored (a key never contains any, and mail
    /// clients like to wrap long lines); everything else must be exact: base64url without
    /// padding and with no stray bits, so each key has one spelling.
    pub(crate) fn parse(text: &str) -> Result<Token, LicenseError> {
        let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if text.len() > MAX_KEY_LEN {
            return Err(LicenseError::malformed(format!(
                "it is {} characters long; a license key has at most {MAX_KEY_LEN}",
                text.len()
            )));
        }
        let version = text.split('.').next().unwrap_or_default();
        if version != VERSION {
            return Err(version_error(version));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [_, scheme, key_id, payload, signature] = parts[..] else {
            return Err(LicenseError::malformed(format!(
                "expected 5 parts separated by dots \
                 (toru1.<scheme>.<key id>.<payload>.<signature>), found {}",
                parts.len()
            )));
        };
        let scheme = Scheme::from_name(scheme).ok_or_else(|| LicenseError::UnknownScheme {
            found: scheme.to_owned(),
        })?;
        if !is_key_id(key_id) {
            return Err(LicenseError::malformed(
                "the key id must be 1 to 32 ASCII letters, digits, '-' or '_'",
            ));
        }
        let payload_bytes = B64
            .decode(payload)
            .map_err(|_| LicenseError::malformed("the payload is not base64url"))?;
        let signature = B64
            .decode(signature)
            .map_err(|_| LicenseError::malformed("the signature is not base64url"))?;
        if signature.len() != scheme.signature_len() {
            return Err(LicenseError::malformed(format!(
                "the signature is {} bytes; an {scheme} signature is {}",
                signature.len(),
                scheme.signature_len()
            )));
        }
        let signed_len = text.len() - parts[4].len() - 1;
        Ok(Token {
            scheme,
            key_id: key_id.to_owned(),
            payload: payload_bytes,
            signature,
            signed: text[..signed_len].to_owned(),
        })
    }

    /// The payload's claims. Call only after checking the signature, unless the caller says
    /// the claims are unverified.
    pub(crate) fn claims(&self) -> Result<LicenseClaims, LicenseError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| LicenseError::malformed(format!("the payload is not license JSON: {e}")))
    }
}

fn version_error(version: &str) -> LicenseError {
    let digits = version.strip_prefix("toru").unwrap_or_default();
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        LicenseError::UnsupportedVersion {
            found: version.to_owned(),
        }
    } else {
        LicenseError::malformed(format!("it does not start with {VERSION:?}"))
    }
}

/// A license key's contents read without checking its signature: for showing what a key says
/// (`toru-license inspect`), never for deciding whether to run. See [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodedLicense {
    /// The scheme the key names.
    pub scheme: Scheme,
    /// The id of the key it says it was signed with.
    pub key_id: String,
    /// The claims, unverified.
    pub claims: LicenseClaims,
}

/// Reads a license key without checking its signature, the plugin or the instance. Anyone can
/// write a key that decodes: use [`LicensePolicy::verify`](super::LicensePolicy::verify) to
/// decide whether to trust it.
///
/// # Errors
/// [`LicenseError::Malformed`], [`LicenseError::UnsupportedVersion`] or
/// [`LicenseError::UnknownScheme`].
pub fn decode(key: &str) -> Result<DecodedLicense, LicenseError> {
    let token = Token::parse(key)?;
    let claims = token.claims()?;
    Ok(DecodedLicense {
        scheme: token.scheme,
        key_id: token.key_id,
        claims,
    })
}
