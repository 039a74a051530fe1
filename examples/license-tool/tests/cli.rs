//! Runs the real `toru-license` binary: keygen, issue, verify and inspect, for both schemes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

const PLUGIN: &str = "hello-licensed";
const INSTANCE: &str = "6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f";
const OTHER_INSTANCE: &str = "0b7e1f7a-0d7c-4b61-8a3c-9f2e4d5c6b7a";

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toru-license"))
        .args(args)
        .output()
        .expect("run toru-license")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

/// Runs the tool, asserts it succeeded, and returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = tool(args);
    assert!(
        out.status.success(),
        "toru-license {args:?} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs the tool, asserts it failed with exit code `code`, and returns its stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = tool(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "toru-license {args:?} should exit {code}; stdout: {}; stderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn ed25519_keygen_issue_verify_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&[
        "keygen",
        "--scheme",
        "ed25519",
        "--key-id",
        "acme-1",
        "--out",
        path(dir.path()),
    ]);
    let secret = dir.path().join("acme-1.secret");
    let public = dir.path().join("acme-1.public");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key file must be private");
    let public_text = std::fs::read_to_string(&public).unwrap();
    let public_line = public_text.lines().find(|l| !l.starts_with('#')).unwrap();
    assert!(
        public_line.starts_with("toru1.ed25519-public.acme-1."),
        "{public_text}"
    );
    assert!(
        out.contains(public_line),
        "keygen prints the key to embed: {out}"
    );
    assert!(
        !out.contains("ed25519-secret"),
        "keygen must not print the secret: {out}"
    );

    let key = ok(&[
        "issue",
        "--key",
        path(&secret),
        "--plugin",
        PLUGIN,
        "--instance",
        INSTANCE,
        "--expires",
        "2099-01-01",
        "--feature",
        "reports",
        "--feature",
        "export",
    ]);
    let key = key.trim();
    assert!(
        key.starts_with("toru1.ed25519.acme-1."),
        "issue prints the key alone: {key}"
    );
    assert!(!key.contains(char::is_whitespace));

    let verified = ok(&[
        "verify",
        key,
        "--public-key",
        path(&public),
        "--plugin",
        PLUGIN,
        "--instance",
        INSTANCE,
    ]);
    assert!(verified.starts_with("valid: ed25519 license"), "{verified}");
    assert!(
        verified.contains("valid until 2099-01-01T00:00:00Z"),
        "{verified}"
    );
    assert!(verified.contains("features: reports, export"), "{verified}");

    let inspected = ok(&["inspect", key]);
    assert!(inspected.starts_with("NOT VERIFIED"), "{inspected}");
    for line in [
        "scheme:   ed25519",
        "key id:   acme-1",
        &format!("plugin:   {PLUGIN}"),
        &format!("instance: {INSTANCE}"),
        "expires:  2099-01-01T00:00:00Z",
        "features: reports, export",
    ] {
        assert!(
            inspected.lines().any(|l| l == line),
            "missing {line:?} in {inspected}"
        );
    }

    // Another instance, another plugin, a later date, a forged key: refused, exit 1.
    let refused = fails(
        &[
            "verify",
            key,
            "--public-key",
            path(&public),
            "--plugin",
            PLUGIN,
            "--instance",
            OTHER_INSTANCE,
        ],
        1,
    );
    assert_eq!(
        refused.trim(),
        format!(
            "refused: license key is for instance {INSTANCE}, not this instance ({OTHER_INSTANCE})"
        )
    );
    let refused = fails(
        &[
            "verify",
            key,
            "--public-key",
            path(&public),
            "--plugin",
            "other",
            "--instance",
            INSTANCE,
        ],
        1,
    );
    assert!(
        refused.contains(r#"is for plugin "hello-licensed", not "other""#),
        "{refused}"
    );
    let refused = fails(
        &[
            "verify",
            key,
            "--secret",
            path(&secret),
            "--plugin",
            PLUGIN,
            "--instance",
            INSTANCE,
            "--at",
            "2099-01-01",
        ],
        1,
    );
    assert!(
        refused.contains("expired on 2099-01-01T00:00:00Z"),
        "{refused}"
    );
    let mut forged = key.to_owned();
    forged.replace_range(30..31, if &key[30..31] == "A" { "B" } else { "A" });
    let refused = fails(
        &[
            "verify",
            &forged,
            "--public-key",
            path(&public),
            "--plugin",
            PLUGIN,
            "--instance",
            INSTANCE,
        ],
        1,
    );
    assert!(refused.starts_with("refused: license key"), "{refused}");
}

#[test]
fn hmac_keygen_issue_verify() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&[
        "keygen",
        "--scheme",
        "hmac",
        "--key-id",
        "h1",
        "--out",
        path(dir.path()),
    ]);
    assert!(
        out.contains("Prefer --scheme ed25519"),
        "keygen warns about hmac: {out}"
    );
    assert!(out.contains("toru1.hmac-secret.h1."), "{out}");
    assert!(
        !dir.path().join("h1.public").exists(),
        "hmac has no public key"
    );
    let secret = dir.path().join("h1.secret");

    let key = ok(&[
        "issue",
        "--key",
        path(&secret),
        "--plugin",
        PLUGIN,
        "--instance",
        INSTANCE,
        "--days",
        "30",
    ]);
    let key = key.trim();
    assert!(key.starts_with("toru1.hmac.h1."), "{key}");
    let verified = ok(&[
        "verify",
        key,
        "--secret",
        path(&secret),
        "--plugin",
        PLUGIN,
        "--instance",
        INSTANCE,
    ]);
    assert!(verified.starts_with("valid: hmac license"), "{verified}");
    assert!(verified.contains("features: none"), "{verified}");
    fails(
        &[
            "verify",
            key,
            "--secret",
            path(&secret),
            "--plugin",
            PLUGIN,
            "--instance",
            OTHER_INSTANCE,
        ],
        1,
    );
    // An hmac secret can be given as --public-key too: it is what the plugin embeds.
    ok(&[
        "verify",
        key,
        "--public-key",
        path(&secret),
        "--plugin",
        PLUGIN,
        "--instance",
        INSTANCE,
    ]);
}

#[test]
fn refuses_bad_input_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let d = path(dir.path());
    ok(&["keygen", "--scheme", "ed25519", "--key-id", "k", "--out", d]);
    let again = fails(
        &["keygen", "--scheme", "ed25519", "--key-id", "k", "--out", d],
        1,
    );
    assert!(
        again.contains("already exists (--force overwrites it)"),
        "{again}"
    );
    ok(&[
        "keygen", "--scheme", "ed25519", "--key-id", "k", "--out", d, "--force",
    ]);
    let bad_id = fails(
        &["keygen", "--scheme", "hmac", "--key-id", "a.b", "--out", d],
        1,
    );
    assert!(bad_id.contains(r#"key id "a.b" must be"#), "{bad_id}");

    let secret = dir.path().join("k.secret");
    let public = dir.path().join("k.public");
    let issue = |extra: &[&str]| {
        let mut args = vec!["issue", "--key", path(&secret), "--plugin", PLUGIN];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), 1);
    let e = run(issue(&["--instance", "not-a-uuid"]));
    assert!(
        e.contains(r#"instance id "not-a-uuid" is not a UUID"#),
        "{e}"
    );
    let e = run(issue(&["--instance", INSTANCE, "--expires", "2001-01-01"]));
    assert!(
        e.contains("expiry 2001-01-01T00:00:00Z is not after now"),
        "{e}"
    );
    let e = fails(
        &[
            "issue",
            "--key",
            path(&public),
            "--plugin",
            PLUGIN,
            "--instance",
            INSTANCE,
        ],
        1,
    );
    assert!(
        e.contains("can only verify; issuing needs its secret key"),
        "{e}"
    );
    let e = fails(
        &[
            "issue",
            "--key",
            path(&secret),
            "--plugin",
            "Bad_Id",
            "--instance",
            INSTANCE,
        ],
        1,
    );
    assert!(e.contains(r#"plugin id "Bad_Id" is not valid"#), "{e}");
    // Usage errors exit 2 (clap): a date that is not one, both --expires and --days.
    fails(
        &[
            "issue",
            "--key",
            path(&secret),
            "--plugin",
            PLUGIN,
            "--instance",
            INSTANCE,
            "--expires",
            "soon",
        ],
        2,
    );
    fails(
        &[
            "issue",
            "--key",
            path(&secret),
            "--plugin",
            PLUGIN,
            "--instance",
            INSTANCE,
            "--expires",
            "2099-01-01",
            "--days",
            "3",
        ],
        2,
    );
    let e = fails(&["inspect", "toru1.nope"], 1);
    assert!(e.contains("this is not a license key"), "{e}");
    // An uppercase UUID is normalised, so the key matches the host's lowercase instance id.
    let key = ok(&[
        "issue",
        "--key",
        path(&secret),
        "--plugin",
        PLUGIN,
        "--instance",
        &INSTANCE.to_uppercase(),
    ]);
    ok(&[
        "verify",
        key.trim(),
        "--public-key",
        path(&public),
        "--plugin",
        PLUGIN,
        "--instance",
        INSTANCE,
    ]);
}
