//! The command tree. Flags and their defaults are the contract described in DESIGN.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// muster: a self-hosted Device Provisioning Service and IoT hub.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable text.
    Table,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Make and inspect certificates: CAs, proof-of-possession and device certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// Which CA of the directory signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CaChoice {
    /// `root-ca.pem` / `root-ca.key.pem`.
    Root,
    /// `intermediate-ca.pem` / `intermediate-ca.key.pem`.
    Intermediate,
}

/// What a chain is checked for by `show --trust`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Purpose {
    /// TLS client authentication, as a device uses the certificate.
    Client,
    /// Any purpose (no extendedKeyUsage requirement).
    Any,
}

#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// Directory holding the certificates.
    #[arg(long, default_value = "./certs")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a root CA and an intermediate CA signed by it.
    CreateRootAndIntermediate {
        #[command(flatten)]
        dir: DirArg,
        /// Key algorithm: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519.
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: String,
        /// Validity of the root CA in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Validity of the intermediate CA in days (never beyond the root's).
        #[arg(long, default_value_t = 1825, value_parser = clap::value_parser!(u32).range(1..=36500))]
        intermediate_days: u32,
        /// Text the CA common names start with ("<prefix> Root CA", "<prefix> Intermediate CA").
        #[arg(long, default_value = "muster")]
        subject_prefix: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create the proof-of-possession certificate for a verification code.
    CreateVerificationCert {
        /// The verification code the provisioning service generated.
        code: String,
        #[command(flatten)]
        dir: DirArg,
        /// The CA whose possession is proven (the one that was uploaded).
        #[arg(long, value_enum, default_value_t = CaChoice::Root)]
        ca: CaChoice,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a device (client) certificate whose common name is the device/registration id.
    CreateDeviceCert {
        /// Device and registration id; becomes the certificate's CN.
        id: String,
        #[command(flatten)]
        dir: DirArg,
        /// The CA that signs the device certificate.
        #[arg(long, value_enum, default_value_t = CaChoice::Intermediate)]
        ca: CaChoice,
        /// Validity in days (never beyond the issuing CA's).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Key algorithm of the device key.
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: String,
        /// Name of an environment variable holding the password for `<ID>.pfx`; without it no
        /// PFX is written. Passwords are never taken from the command line.
        #[arg(long, value_name = "VAR")]
        pfx_password_env: Option<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Describe every certificate in a PEM, DER or PKCS#12 file.
    Show {
        /// The file.
        file: PathBuf,
        /// A file of trusted CA certificates: also validate the file's chain against it.
        #[arg(long, value_name = "ROOT")]
        trust: Option<PathBuf>,
        /// The purpose the chain is checked for with --trust.
        #[arg(long, value_enum, default_value_t = Purpose::Client)]
        purpose: Purpose,
        /// Name of an environment variable holding the password of a PKCS#12 file or an
        /// encrypted key.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
}
