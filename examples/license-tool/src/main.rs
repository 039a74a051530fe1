//! `toru-license`: the vendor's tool for Toru plugin licenses. It makes signing keys, issues
//! license keys bound to a plugin id and an instance id, and inspects and verifies them.
//!
//! ```text
//! toru-license keygen --scheme ed25519 --key-id acme-2026 --out keys/
//! toru-license issue --key keys/acme-2026.secret --plugin reports \
//!     --instance 6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f --days 365 --feature pdf
//! toru-license inspect toru1.ed25519.acme-2026.eyJw….
//! toru-license verify toru1.ed25519.acme-2026.eyJw…. --public-key keys/acme-2026.public \
//!     --plugin reports --instance 6f0c0e8e-5b9e-4c55-9d0e-6c1b2a3d4e5f
//! ```
//!
//! See `docs/licensing.md`. Exit status: 0 on success, 1 when a key is refused or a command
//! fails, 2 for a usage error.

mod cli;

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use cli::{Cli, Command};
use toru_plugin_api::license::{
    self, DecodedLicense, Issuer, LicenseClaims, LicensePolicy, Scheme, Timestamp, VerifyingKey,
};

/// A key was checked and refused: exit 1 with the reason, no "error" prefix.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Refused>() => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("toru-license: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen {
            scheme,
            key_id,
            out,
            force,
        } => keygen(scheme.into(), key_id, &out, force),
        Command::Issue {
            key,
            plugin,
            instance,
            expires,
            days,
            features,
        } => {
            let now = Timestamp::now();
            let expires = expires.or(days.map(|d| now.add_days(d)));
            issue(&key, &plugin, &instance, now, expires, features)
        }
        Command::Inspect { key } => inspect(&read_key_arg(&key)?),
        Command::Verify {
            key,
            public_key,
            secret,
            plugin,
            instance,
            at,
        } => {
            let verifying = match (public_key, secret) {
                (Some(path), _) => VerifyingKey::parse(&read(&path)?)
                    .with_context(|| format!("{} is not a verifying key", path.display()))?,
                (None, Some(path)) => read_issuer(&path)?.verifying_key(),
                (None, None) => bail!("give --public-key or --secret"),
            };
            let now = at.unwrap_or_else(Timestamp::now);
            verify(&read_key_arg(&key)?, verifying, &plugin, &instance, now)
        }
    }
}

fn keygen(scheme: Scheme, key_id: Option<String>, out: &Path, force: bool) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let key_id = key_id.unwrap_or_else(|| now.to_string()[..10].to_owned());
    let issuer = Issuer::generate(scheme, &key_id)?;
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let secret_path = out.join(format!("{key_id}.secret"));
    let verifying = issuer.verifying_key().to_text();
    let secret_note = match scheme {
        Scheme::Ed25519 => "Keep this file secret: anyone who has it can issue licenses.",
        _ => {
            "This one secret both issues and verifies licenses: a plugin that checks licenses \
             must embed it,\n# so anyone who extracts it from the plugin can issue licenses. \
             Prefer ed25519."
        }
    };
    let secret_file = format!(
        "# Toru license signing key ({scheme}, key id {key_id:?}), made {now} by toru-license.\n\
         # {secret_note}\n{}\n",
        issuer.to_secret_text()
    );
    write_new(&secret_path, &secret_file, 0o600, force)?;
    let mut stdout = io::stdout().lock();
    if scheme == Scheme::Ed25519 {
        let public_path = out.join(format!("{key_id}.public"));
        let public_file = format!(
            "# Toru license verifying key ({scheme}, key id {key_id:?}), made {now} by \
             toru-license.\n# Embed it in the plugin: it checks licenses but cannot make them.\n\
             {verifying}\n"
        );
        write_new(&public_path, &public_file, 0o644, force)?;
        writeln!(stdout, "Created an ed25519 key pair, key id {key_id:?}:")?;
        writeln!(
            stdout,
            "  secret key: {} (keep it secret)",
            secret_path.display()
        )?;
        writeln!(stdout, "  public key: {}", public_path.display())?;
        writeln!(stdout, "\nEmbed the public key in the plugin:\n")?;
    } else {
        writeln!(stdout, "Created an HMAC-SHA256 secret, key id {key_id:?}:")?;
        writeln!(
            stdout,
            "  secret: {} (keep it secret)",
            secret_path.display()
        )?;
        writeln!(
            stdout,
            "\nA plugin checks HMAC licenses with this same secret, so it must embed it, and\n\
             anyone who extracts it from the plugin can issue licenses: HMAC only shows that a\n\
             key was altered. Prefer --scheme ed25519. The plugin embeds:\n"
        )?;
    }
    writeln!(stdout, "{verifying}\n")?;
    writeln!(
        stdout,
        "In Rust: toru_plugin_api::license::LicensePolicy::from_keys([\"{verifying}\"])"
    )?;
    Ok(())
}

fn issue(
    key: &Path,
    plugin: &str,
    instance: &str,
    now: Timestamp,
    expires: Option<Timestamp>,
    features: Vec<String>,
) -> anyhow::Result<()> {
    let issuer = read_issuer(key)?;
    check_plugin_id(plugin)?;
    let instance = uuid::Uuid::parse_str(instance)
        .with_context(|| format!("instance id {instance:?} is not a UUID"))?
        .hyphenated()
        .to_string();
    if let Some(expires) = expires
        && expires <= now
    {
        bail!("expiry {expires} is not after now ({now})");
    }
    if let Some(bad) = features.iter().find(|f| f.trim().is_empty()) {
        bail!("feature name {bad:?} is blank");
    }
    let mut claims = LicenseClaims::new(plugin, instance, now);
    claims.expires_at = expires;
    claims.features = features;
    let key = issuer.issue(&claims);
    // The summary goes to stderr so that `KEY=$(toru-license issue …)` captures the key alone.
    eprintln!(
        "Issued an {} license (key id {:?}) for plugin {plugin:?} on instance {}, {}.",
        issuer.scheme(),
        issuer.key_id(),
        claims.instance_id,
        describe_validity(&claims)
    );
    println!("{key}");
    Ok(())
}

fn inspect(key: &str) -> anyhow::Result<()> {
    let decoded = license::decode(key).context("this is not a license key")?;
    let DecodedLicense {
        scheme,
        key_id,
        claims,
        ..
    } = decoded;
    let now = Timestamp::now();
    let expires = match claims.expires_at {
        None => "never".to_owned(),
        Some(t) if t <= now => format!("{t} (expired)"),
        Some(t) => t.to_string(),
    };
    println!("NOT VERIFIED: this shows what the key says; `toru-license verify` checks it.");
    println!("scheme:   {scheme}");
    println!("key id:   {key_id}");
    println!("plugin:   {}", claims.plugin_id);
    println!("instance: {}", claims.instance_id);
    println!("issued:   {}", claims.issued_at);
    println!("expires:  {expires}");
    println!("features: {}", list(&claims.features));
    Ok(())
}

fn verify(
    key: &str,
    verifying: VerifyingKey,
    plugin: &str,
    instance: &str,
    now: Timestamp,
) -> anyhow::Result<()> {
    let policy = LicensePolicy::new().with_key(verifying)?;
    let claims = policy
        .verify(key, plugin, instance, now)
        .map_err(|e| Refused(e.to_string()))?;
    println!(
        "valid: {} license for plugin {:?} on instance {}, issued {}, {}; features: {}",
        license::decode(key)?.scheme,
        claims.plugin_id,
        claims.instance_id,
        claims.issued_at,
        describe_validity(&claims),
        list(&claims.features)
    );
    Ok(())
}

fn describe_validity(claims: &LicenseClaims) -> String {
    match claims.expires_at {
        Some(t) => format!("valid until {t}"),
        None => "never expiring".to_owned(),
    }
}

fn list(features: &[String]) -> String {
    if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(", ")
    }
}

/// The plugin id pattern from the protocol: 1 to 63 of `a-z 0-9 -`, not starting with `-`.
fn check_plugin_id(id: &str) -> anyhow::Result<()> {
    let ok = (1..=63).contains(&id.len())
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("plugin id {id:?} is not valid: use 1 to 63 characters of a-z, 0-9 and '-'");
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_issuer(path: &Path) -> anyhow::Result<Issuer> {
    Issuer::parse(&read(path)?).with_context(|| format!("{} is not a secret key", path.display()))
}

/// The key argument, or stdin for `-`.
fn read_key_arg(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the key from stdin")?;
    Ok(text)
}

/// Writes `text` to a new file with `mode`; an existing file is an error unless `force`.
fn write_new(path: &Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} already exists (--force overwrites it)", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` applies only to a file this call created; an overwritten one keeps its own.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the permissions of {}", path.display()))
}
