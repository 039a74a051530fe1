use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer as _;
use hmac::Mac as _;
use serde_json::{Value, json};
use toru_test_support::{Mutation, Rng, mutate};

use super::*;

const PLUGIN: &str = "weather";
const INSTANCE: &str = "6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f";
const OTHER_INSTANCE: &str = "0b7e1f7a-0d7c-4b61-8a3c-9f2e4d5c6b7a";
/// 2026-01-01T00:00:00Z
const T0: Timestamp = Timestamp::from_unix(1_767_225_600);
const ED_SEED: [u8; 32] = [7; 32];
const HMAC_SECRET: [u8; 32] = [9; 32];

fn issuer(scheme: Scheme, key_id: &str) -> Issuer {
    match scheme {
        Scheme::Ed25519 => Issuer::ed25519_from_seed(key_id, ED_SEED).unwrap(),
        Scheme::Hmac => Issuer::hmac(key_id, &HMAC_SECRET).unwrap(),
    }
}

fn policy_for(issuer: &Issuer) -> LicensePolicy {
    LicensePolicy::new()
        .with_key(issuer.verifying_key())
        .unwrap()
}

fn claims() -> LicenseClaims {
    let mut claims = LicenseClaims::new(PLUGIN, INSTANCE, T0);
    claims.expires_at = Some(T0.add_days(365));
    claims.features = vec!["pdf".into(), "sso".into()];
    claims
}

/// A key whose payload is exactly `payload`, properly signed with the test key of `scheme`.
fn sign_raw(scheme: Scheme, key_id: &str, payload: &[u8]) -> String {
    let signed = format!("toru1.{scheme}.{key_id}.{}", B64.encode(payload));
    let signature = match scheme {
        Scheme::Ed25519 => ed25519_dalek::SigningKey::from_bytes(&ED_SEED)
            .sign(signed.as_bytes())
            .to_bytes()
            .to_vec(),
        Scheme::Hmac => {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&HMAC_SECRET).unwrap();
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    format!("{signed}.{}", B64.encode(signature))
}

const SCHEMES: [Scheme; 2] = [Scheme::Ed25519, Scheme::Hmac];

#[test]
fn t24_valid_key_accepted() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let key = issuer.issue(&claims());
        assert!(key.starts_with(&format!("toru1.{scheme}.v1.")), "{key}");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{key}"
        );
        let got = policy_for(&issuer)
            .verify(&key, PLUGIN, INSTANCE, T0)
            .unwrap();
        assert_eq!(got, claims(), "{scheme}");
        assert!(got.has_feature("sso") && !got.has_feature("other"));
        // Up to the last second before expiry.
        let last = T0.add_days(365).as_unix() - 1;
        let at_last =
            policy_for(&issuer).verify(&key, PLUGIN, INSTANCE, Timestamp::from_unix(last));
        assert!(at_last.is_ok(), "{scheme}: {at_last:?}");
    }
}

#[test]
fn t25_bad_signature_refused() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let policy = policy_for(&issuer);
        let key = issuer.issue(&claims());
        let parts: Vec<&str> = key.split('.').collect();

        // The claims changed (another instance written in), the signature kept.
        let mut forged = claims();
        forged.instance_id = OTHER_INSTANCE.into();
        let payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("toru1.{scheme}.v1.{payload}.{}", parts[4]);
        let err = policy
            .verify(&tampered, PLUGIN, OTHER_INSTANCE, T0)
            .unwrap_err();
        assert!(
            matches!(err, LicenseError::BadSignature { .. }),
            "{scheme}: {err}"
        );
        assert!(err.to_string().contains("altered"), "{err}");

        // The signature changed: one byte flipped, re-encoded canonically.
        let mut sig = B64.decode(parts[4]).unwrap();
        sig[10] ^= 0x01;
        let flipped = format!("{}.{}", parts[..4].join("."), B64.encode(&sig));
        let err = policy.verify(&flipped, PLUGIN, INSTANCE, T0).unwrap_err();
        assert!(
            matches!(err, LicenseError::BadSignature { .. }),
            "{scheme}: {err}"
        );

        // Signed by another key that uses the same key id.
        let stranger = match scheme {
            Scheme::Ed25519 => Issuer::ed25519_from_seed("v1", [8; 32]).unwrap(),
            _ => Issuer::hmac("v1", &[8; 32]).unwrap(),
        };
        let err = policy
            .verify(&stranger.issue(&claims()), PLUGIN, INSTANCE, T0)
            .unwrap_err();
        assert!(
            matches!(err, LicenseError::BadSignature { .. }),
            "{scheme}: {err}"
        );
    }
}

#[test]
fn t26_other_instance_refused() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let key = issuer.issue(&claims());
        let err = policy_for(&issuer)
            .verify(&key, PLUGIN, OTHER_INSTANCE, T0)
            .unwrap_err();
        assert_eq!(
            err,
            LicenseError::OtherInstance {
                expected: OTHER_INSTANCE.into(),
                found: INSTANCE.into()
            }
        );
        assert_eq!(
            err.to_string(),
            format!("license key is for instance {INSTANCE}, not this instance ({OTHER_INSTANCE})")
        );
    }
}

#[test]
fn t27_expired_key_refused() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let key = issuer.issue(&claims());
        let expiry = T0.add_days(365);
        for now in [expiry, expiry.add_secs(1), expiry.add_days(1000)] {
            let err = policy_for(&issuer)
                .verify(&key, PLUGIN, INSTANCE, now)
                .unwrap_err();
            assert_eq!(
                err,
                LicenseError::Expired {
                    expires_at: expiry,
                    now
                }
            );
            assert_eq!(
                err.to_string(),
                "license key expired on 2027-01-01T00:00:00Z"
            );
        }
        // A key without expiry never expires.
        let forever = issuer.issue(&LicenseClaims::new(PLUGIN, INSTANCE, T0));
        let far = Timestamp::from_unix(u64::MAX);
        assert!(
            policy_for(&issuer)
                .verify(&forever, PLUGIN, INSTANCE, far)
                .is_ok()
        );
    }
}

#[test]
fn other_plugin_refused() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let key = issuer.issue(&claims());
        let err = policy_for(&issuer)
            .verify(&key, "maps", INSTANCE, T0)
            .unwrap_err();
        assert_eq!(
            err,
            LicenseError::OtherPlugin {
                expected: "maps".into(),
                found: PLUGIN.into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#"license key is for plugin "weather", not "maps""#
        );
    }
}

#[test]
fn issued_in_the_future_refused_beyond_a_day() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let key = issuer.issue(&claims());
        let policy = policy_for(&issuer);
        let day_before = Timestamp::from_unix(T0.as_unix() - ISSUED_AT_TOLERANCE_SECS);
        assert!(policy.verify(&key, PLUGIN, INSTANCE, day_before).is_ok());
        let too_early = Timestamp::from_unix(day_before.as_unix() - 1);
        let err = policy
            .verify(&key, PLUGIN, INSTANCE, too_early)
            .unwrap_err();
        assert!(matches!(err, LicenseError::NotYetValid { .. }), "{err}");
        assert!(err.to_string().contains("check its clock"), "{err}");
    }
}

#[test]
fn unknown_key_id_refused() {
    for scheme in SCHEMES {
        let key = issuer(scheme, "v2").issue(&claims());
        let policy = policy_for(&issuer(scheme, "v1"));
        let err = policy.verify(&key, PLUGIN, INSTANCE, T0).unwrap_err();
        assert_eq!(
            err,
            LicenseError::UnknownKeyId {
                scheme,
                key_id: "v2".into()
            }
        );
        assert!(
            LicensePolicy::new()
                .verify(&key, PLUGIN, INSTANCE, T0)
                .is_err()
        );
    }
    // The same key id under the other scheme is another key.
    let hmac_key = issuer(Scheme::Hmac, "v1").issue(&claims());
    let ed_policy = policy_for(&issuer(Scheme::Ed25519, "v1"));
    let err = ed_policy
        .verify(&hmac_key, PLUGIN, INSTANCE, T0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LicenseError::UnknownKeyId {
                scheme: Scheme::Hmac,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rotation_accepts_old_and_new_keys() {
    for scheme in SCHEMES {
        let old = issuer(scheme, "2025");
        let new = match scheme {
            Scheme::Ed25519 => Issuer::ed25519_from_seed("2026", [1; 32]).unwrap(),
            _ => Issuer::hmac("2026", &[1; 32]).unwrap(),
        };
        let texts = [old.verifying_key().to_text(), new.verifying_key().to_text()];
        let policy = LicensePolicy::from_keys(&texts).unwrap();
        assert_eq!(policy.keys().count(), 2);
        for issuer in [&old, &new] {
            let key = issuer.issue(&claims());
            assert!(
                policy.verify(&key, PLUGIN, INSTANCE, T0).is_ok(),
                "{}",
                issuer.key_id()
            );
        }
        // Retiring the old key refuses its licenses by key id.
        let retired = LicensePolicy::from_keys(&texts[1..]).unwrap();
        let err = retired
            .verify(&old.issue(&claims()), PLUGIN, INSTANCE, T0)
            .unwrap_err();
        assert!(matches!(err, LicenseError::UnknownKeyId { .. }), "{err}");
    }
}

#[test]
fn mixed_schemes_in_one_policy() {
    let ed = issuer(Scheme::Ed25519, "k");
    let hm = issuer(Scheme::Hmac, "k");
    let policy = LicensePolicy::new()
        .with_key(ed.verifying_key())
        .unwrap()
        .with_key(hm.verifying_key())
        .unwrap();
    for issuer in [&ed, &hm] {
        assert!(
            policy
                .verify(&issuer.issue(&claims()), PLUGIN, INSTANCE, T0)
                .is_ok()
        );
    }
    let err = policy.clone().with_key(ed.verifying_key()).unwrap_err();
    assert!(matches!(err, KeyError::DuplicateKeyId { .. }), "{err}");
}

#[test]
fn whitespace_and_line_wrapping_are_ignored() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let key = issuer.issue(&claims());
        let wrapped: String = key
            .as_bytes()
            .chunks(40)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n  ");
        let pasted = format!("  \t{wrapped}\n");
        assert!(
            policy_for(&issuer)
                .verify(&pasted, PLUGIN, INSTANCE, T0)
                .is_ok()
        );
    }
}

fn assert_malformed(policy: &LicensePolicy, key: &str, what: &str) -> LicenseError {
    let err = policy.verify(key, PLUGIN, INSTANCE, T0).unwrap_err();
    assert!(
        matches!(
            err,
            LicenseError::Malformed { .. }
                | LicenseError::UnsupportedVersion { .. }
                | LicenseError::UnknownScheme { .. }
        ),
        "{what}: {key:?} gave {err:?}"
    );
    err
}

#[test]
fn malformed_keys_refused() {
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let policy = policy_for(&issuer);
        let key = issuer.issue(&claims());
        let p: Vec<&str> = key.split('.').collect();

        // Every truncation (including cuts inside the signature, which still decode as base64).
        for len in 0..key.len() {
            assert_malformed(&policy, &key[..len], "truncated");
        }
        for bad in [
            format!("{key}."),
            format!("{key}.x"),
            format!(".{key}"),
            format!("{}.{}", p[..3].join("."), p[3..].join("..")),
            p[..4].join("."),
            p[1..].join("."),
        ] {
            assert_malformed(&policy, &bad, "dots");
        }
        // Bad base64: padding, standard-alphabet characters, stray trailing bits.
        for (i, bad) in [
            format!("{}=", p[3]),
            p[3].replacen(|c: char| c.is_ascii_alphanumeric(), "+", 1),
            p[3].replacen(|c: char| c.is_ascii_alphanumeric(), "/", 1),
            p[3].replacen(|c: char| c.is_ascii_alphanumeric(), "é", 1),
        ]
        .into_iter()
        .enumerate()
        {
            let bad_key = format!("toru1.{scheme}.v1.{bad}.{}", p[4]);
            let err = assert_malformed(&policy, &bad_key, &format!("payload base64 #{i}"));
            assert!(
                err.to_string().contains("payload is not base64url"),
                "{err}"
            );
        }
        // The last character of a signature carries spare bits, zero in the canonical
        // encoding; a key with one set decodes to the same bytes but is refused.
        let b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let (body, last) = p[4].split_at(p[4].len() - 1);
        let sextet = b64.find(last).unwrap();
        assert_eq!(
            sextet & 1,
            0,
            "{scheme}: the canonical encoding has no spare bit set"
        );
        let odd = &b64[sextet | 1..=sextet | 1];
        let bad_key = format!("{}.{body}{odd}", p[..4].join("."));
        let err = assert_malformed(&policy, &bad_key, "non-canonical signature");
        assert!(
            err.to_string().contains("signature is not base64url"),
            "{err}"
        );
        // Wrong signature length.
        let short = format!("{}.{}", p[..4].join("."), B64.encode([0u8; 16]));
        let err = assert_malformed(&policy, &short, "short signature");
        assert!(err.to_string().contains("signature is 16 bytes"), "{err}");
        // Version, scheme and key id.
        let err = assert_malformed(&policy, &key.replacen("toru1", "toru2", 1), "version");
        assert_eq!(
            err,
            LicenseError::UnsupportedVersion {
                found: "toru2".into()
            }
        );
        for bad in [
            key.replacen("toru1", "Toru1", 1),
            key.replacen("toru1", "tor", 1),
        ] {
            let err = assert_malformed(&policy, &bad, "version");
            assert!(
                err.to_string().contains(r#"does not start with "toru1""#),
                "{err}"
            );
        }
        let err = assert_malformed(&policy, &key.replacen(scheme.as_str(), "rsa", 1), "scheme");
        assert_eq!(
            err,
            LicenseError::UnknownScheme {
                found: "rsa".into()
            }
        );
        assert_malformed(&policy, &key.replacen(".v1.", ".v!.", 1), "key id");
        assert_malformed(&policy, &key.replacen(".v1.", "..", 1), "key id");
        assert_malformed(&policy, "", "empty");
        assert_malformed(&policy, &"A".repeat(MAX_KEY_LEN + 1), "too long");
    }
}

#[test]
fn signed_payload_that_is_not_license_json_refused() {
    for scheme in SCHEMES {
        let policy = policy_for(&issuer(scheme, "v1"));
        let mut unknown_field = serde_json::to_value(claims()).unwrap();
        unknown_field["max_users"] = json!(5);
        for (what, payload) in [
            ("not json", b"not json".to_vec()),
            ("empty", Vec::new()),
            ("array", b"[1,2]".to_vec()),
            (
                "missing instance",
                br#"{"plugin_id":"weather","issued_at":1}"#.to_vec(),
            ),
            (
                "string time",
                br#"{"plugin_id":"weather","instance_id":"i","issued_at":"x"}"#.to_vec(),
            ),
            ("unknown field", serde_json::to_vec(&unknown_field).unwrap()),
        ] {
            let key = sign_raw(scheme, "v1", &payload);
            let err = assert_malformed(&policy, &key, what);
            assert!(
                err.to_string().contains("payload is not license JSON"),
                "{what}: {err}"
            );
        }
        // The same helper makes keys that verify when the payload is right.
        let good = sign_raw(scheme, "v1", &serde_json::to_vec(&claims()).unwrap());
        assert!(policy.verify(&good, PLUGIN, INSTANCE, T0).is_ok());
    }
}

#[test]
fn fuzzed_keys_never_panic_and_never_pass_altered() {
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    for scheme in SCHEMES {
        let issuer = issuer(scheme, "v1");
        let policy = policy_for(&issuer);
        let key = issuer.issue(&claims());
        for _ in 0..5_000 {
            let candidate = mutate(&mut rng, &key, &Mutation::BINARY);
            let _ = decode(&candidate);
            if policy.verify(&candidate, PLUGIN, INSTANCE, T0).is_ok() {
                let stripped: String = candidate
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                assert_eq!(stripped, key, "an altered key verified: {candidate:?}");
            }
        }
    }
    // Random strings, mostly from the key alphabet, of random lengths.
    let policy = policy_for(&issuer(Scheme::Ed25519, "v1"));
    for _ in 0..5_000 {
        let len = rng.below(400);
        let text: String = (0..len)
            .map(|_| match rng.below(10) {
                0 => '.',
                1 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?'),
                _ => {
                    let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                    b64[rng.below(64)] as char
                }
            })
            .collect();
        let text = match rng.below(3) {
            0 => format!("toru1.ed25519.v1.{text}"),
            1 => format!("toru1.{text}"),
            _ => text,
        };
        let _ = decode(&text);
        assert!(
            policy.verify(&text, PLUGIN, INSTANCE, T0).is_err(),
            "{text:?}"
        );
    }
}

#[test]
fn decode_reads_without_verifying() {
    let key = issuer(Scheme::Ed25519, "v1").issue(&claims());
    let decoded = decode(&key).unwrap();
    assert_eq!(decoded.scheme, Scheme::Ed25519);
    assert_eq!(decoded.key_id, "v1");
    assert_eq!(decoded.claims, claims());
    // A forged key decodes too: decoding is not verifying.
    let forged = sign_raw(
        Scheme::Hmac,
        "nobody",
        br#"{"plugin_id":"x","instance_id":"y","issued_at":0}"#,
    );
    assert_eq!(decode(&forged).unwrap().claims.plugin_id, "x");
}

#[test]
fn key_format_is_stable() {
    // Pinned so that other implementations (the Python example) and older keys keep working.
    let claims = claims();
    let json = serde_json::to_string(&claims).unwrap();
    assert_eq!(
        json,
        r#"{"plugin_id":"weather","instance_id":"6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f","issued_at":1767225600,"expires_at":1798761600,"features":["pdf","sso"]}"#
    );
    let bare = serde_json::to_string(&LicenseClaims::new("p", "i", T0)).unwrap();
    assert_eq!(
        bare,
        r#"{"plugin_id":"p","instance_id":"i","issued_at":1767225600}"#
    );
    let key = issuer(Scheme::Hmac, "v1").issue(&claims);
    let expected_mac = {
        let signed = &key[..key.rfind('.').unwrap()];
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&HMAC_SECRET).unwrap();
        mac.update(signed.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    };
    assert_eq!(
        key,
        format!(
            "toru1.hmac.v1.{}.{expected_mac}",
            B64.encode(json.as_bytes())
        )
    );
}

#[test]
fn key_texts_round_trip() {
    for scheme in SCHEMES {
        let issuer = Issuer::generate(scheme, "gen_1").unwrap();
        let again = Issuer::parse(&issuer.to_secret_text()).unwrap();
        assert_eq!(again.to_secret_text(), issuer.to_secret_text());
        let verifying = VerifyingKey::parse(&issuer.verifying_key().to_text()).unwrap();
        assert_eq!(verifying.scheme(), scheme);
        assert_eq!(verifying.key_id(), "gen_1");
        let key = again.issue(&claims());
        let policy = LicensePolicy::new().with_key(verifying).unwrap();
        assert!(policy.verify(&key, PLUGIN, INSTANCE, T0).is_ok());
    }
    let ed = issuer(Scheme::Ed25519, "v1");
    assert!(
        ed.verifying_key()
            .to_text()
            .starts_with("toru1.ed25519-public.v1.")
    );
    assert!(ed.to_secret_text().starts_with("toru1.ed25519-secret.v1."));
    let hm = issuer(Scheme::Hmac, "v1");
    assert_eq!(hm.verifying_key().to_text(), hm.to_secret_text());
    assert!(hm.to_secret_text().starts_with("toru1.hmac-secret.v1."));
    // Comments and wrapping in key files.
    let file = format!("# a comment\n\n{}\n# another\n", ed.to_secret_text());
    assert_eq!(Issuer::parse(&file).unwrap().key_id(), "v1");
}

#[test]
fn key_texts_refused_with_reasons() {
    let ed = issuer(Scheme::Ed25519, "v1");
    let err = VerifyingKey::parse(&ed.to_secret_text()).unwrap_err();
    assert!(
        matches!(err, KeyError::SecretWhereVerifyingKey { .. }),
        "{err}"
    );
    let err = Issuer::parse(&ed.verifying_key().to_text()).unwrap_err();
    assert!(
        matches!(err, KeyError::PublicKeyCannotIssue { .. }),
        "{err}"
    );
    let err = VerifyingKey::parse("toru1.rsa-public.v1.AAAA").unwrap_err();
    assert!(matches!(err, KeyError::UnknownKind { .. }), "{err}");
    let err = VerifyingKey::parse("toru1.ed25519-public.v1.AAAA").unwrap_err();
    assert!(
        err.to_string().contains("is 32 bytes, this one is 3"),
        "{err}"
    );
    for bad in [
        "",
        "toru1.ed25519-public.v1",
        "toru2.ed25519-public.v1.AAAA",
        "a.b.c.d.e",
    ] {
        assert!(
            matches!(VerifyingKey::parse(bad), Err(KeyError::Malformed { .. })),
            "{bad}"
        );
    }
    for bad in ["", "a.b", "has space", &"x".repeat(33), "ünï"] {
        let err = Issuer::generate(Scheme::Hmac, bad).unwrap_err();
        assert!(matches!(err, KeyError::BadKeyId { .. }), "{bad:?}: {err}");
    }
    let err = Issuer::hmac("v1", &[1; 31]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"hmac secret "v1" is 31 bytes; it must be at least 32"#
    );
    assert!(VerifyingKey::hmac("v1", &[1; 16]).is_err());
    // Some 32-byte strings are not curve points.
    let invalid = (0..=255u8).find(|&b| VerifyingKey::ed25519("v1", [b; 32]).is_err());
    let err = VerifyingKey::ed25519("v1", [invalid.expect("an invalid point"); 32]).unwrap_err();
    assert!(matches!(err, KeyError::InvalidPublicKey { .. }), "{err}");
}

#[test]
fn debug_never_shows_secrets() {
    let hm = issuer(Scheme::Hmac, "v1");
    let secret_b64 = B64.encode(HMAC_SECRET);
    for debug in [
        format!("{hm:?}"),
        format!("{:?}", hm.verifying_key()),
        format!("{:?}", policy_for(&hm)),
    ] {
        assert!(
            !debug.contains(&secret_b64) && !debug.contains("9, 9, 9"),
            "{debug}"
        );
    }
    let ed = issuer(Scheme::Ed25519, "v1");
    assert!(!format!("{ed:?}").contains("7, 7, 7"));
}

fn settings(value: Option<Value>) -> BTreeMap<String, Value> {
    value
        .map(|v| (LICENSE_KEY_SETTING.to_owned(), v))
        .into_iter()
        .collect()
}

#[test]
fn check_init_reads_the_license_key_setting() {
    let issuer = issuer(Scheme::Ed25519, "v1");
    let policy = policy_for(&issuer);
    let key = issuer.issue(&claims());
    let ok = check_settings(&policy, PLUGIN, INSTANCE, &settings(Some(json!(key))), T0);
    assert_eq!(ok.unwrap(), claims());

    for missing in [
        None,
        Some(Value::Null),
        Some(json!("")),
        Some(json!("  \n")),
    ] {
        let err = check_settings(&policy, PLUGIN, INSTANCE, &settings(missing), T0).unwrap_err();
        assert_eq!(err, LicenseError::Missing);
        assert!(
            err.to_string().starts_with("no license key: paste one"),
            "{err}"
        );
    }
    for (value, kind) in [
        (json!(5), "a number"),
        (json!([key]), "an array"),
        (json!({}), "an object"),
    ] {
        let err =
            check_settings(&policy, PLUGIN, INSTANCE, &settings(Some(value)), T0).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("setting is {kind}, not a string")),
            "{err}"
        );
    }
    let err = check_settings(
        &policy,
        PLUGIN,
        OTHER_INSTANCE,
        &settings(Some(json!(key))),
        T0,
    );
    assert!(matches!(err, Err(LicenseError::OtherInstance { .. })));

    // check_init uses the clock: a key issued now, expiring tomorrow, passes.
    let mut fresh = LicenseClaims::new(PLUGIN, INSTANCE, Timestamp::now());
    fresh.expires_at = Some(Timestamp::now().add_days(1));
    let fresh_settings = settings(Some(json!(issuer.issue(&fresh))));
    assert_eq!(
        check_init(&policy, PLUGIN, INSTANCE, &fresh_settings).unwrap(),
        fresh
    );
}
