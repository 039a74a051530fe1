//! The command line: `keygen`, `issue`, `inspect` and `verify`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use toru_plugin_api::license::{Scheme, Timestamp};

#[derive(Debug, Parser)]
#[command(
    name = "toru-license",
    version,
    about = "Make and check Toru plugin license keys"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a signing key: an Ed25519 key pair (recommended) or an HMAC secret.
    ///
    /// Writes DIR/KEY_ID.secret (mode 0600) and, for Ed25519, DIR/KEY_ID.public, and prints
    /// the key text a plugin embeds.
    Keygen {
        /// ed25519: the plugin holds only a public key. hmac: the plugin holds the secret
        /// itself, so anyone who extracts it can issue keys (tamper-evident only).
        #[arg(long, value_enum)]
        scheme: SchemeArg,
        /// A name for this key, carried in every license it signs (1 to 32 of A-Z a-z 0-9 - _).
        /// Defaults to today's date, which suits yearly rotation.
        #[arg(long)]
        key_id: Option<String>,
        /// The directory to write the key files to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Overwrite key files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Issue a license key for one plugin on one Toru instance. Prints the key alone on stdout.
    Issue {
        /// The secret key file from `keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The plugin id the license is for (its metadata `id`).
        #[arg(long, value_name = "ID")]
        plugin: String,
        /// The customer's instance id (a UUID, shown in their Toru settings).
        #[arg(long, value_name = "UUID")]
        instance: String,
        /// Expiry date, UTC: 2027-01-01 or 2027-01-01T12:00:00Z. Default: never.
        #[arg(long, value_name = "DATE", conflicts_with = "days")]
        expires: Option<Timestamp>,
        /// Expire this many days from now.
        #[arg(long, value_name = "N")]
        days: Option<u64>,
        /// A feature the license unlocks (repeat for several).
        #[arg(long = "feature", value_name = "NAME")]
        features: Vec<String>,
    },
    /// Show what a license key says, WITHOUT checking its signature.
    Inspect {
        /// The license key, or - to read it from stdin.
        key: String,
    },
    /// Check a license key as the plugin would: signature, plugin, instance and expiry.
    Verify {
        /// The license key, or - to read it from stdin.
        key: String,
        /// An Ed25519 public key file (what the plugin embeds).
        #[arg(long, value_name = "FILE", required_unless_present = "secret")]
        public_key: Option<PathBuf>,
        /// A secret key file (HMAC, or an Ed25519 secret whose public half is used).
        #[arg(long, value_name = "FILE", conflicts_with = "public_key")]
        secret: Option<PathBuf>,
        /// The plugin id to check against.
        #[arg(long, value_name = "ID")]
        plugin: String,
        /// The instance id to check against.
        #[arg(long, value_name = "UUID")]
        instance: String,
        /// Check at this time instead of now (UTC date or date-time).
        #[arg(long, value_name = "DATE")]
        at: Option<Timestamp>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SchemeArg {
    Ed25519,
    Hmac,
}

impl From<SchemeArg> for Scheme {
    fn from(arg: SchemeArg) -> Self {
        match arg {
            SchemeArg::Ed25519 => Scheme::Ed25519,
            SchemeArg::Hmac => Scheme::Hmac,
        }
    }
}
