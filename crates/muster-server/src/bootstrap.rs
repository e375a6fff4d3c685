//! The data directory: created on first start, reused afterwards.
//!
//! ```text
//! DIR/tls/ca.pem            trust root for devices and clients
//! DIR/tls/ca.key.pem        its key (0600)
//! DIR/tls/server.pem        server certificate (leaf + CA) for every host name, localhost,
//! DIR/tls/server.key.pem    127.0.0.1, ::1 and the bind address; replaceable by the operator
//! DIR/state.json            ID scope and shared access policy keys (0600)
//! DIR/muster.db             SQLite database (store = "sqlite", the default)
//! ```
//! A server certificate that lacks a configured name, or expires within 30 days, is re-issued
//! from the data-dir CA on start (only if muster made it: an operator's own certificate is kept).

use std::fs;
use std::io::Write as _;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use muster_auth::Secret;
use muster_pki::{Algorithm, Issuer, Profile, Request};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tracing::info;

use crate::config::Config;

/// Shared access policies of the hub and of the provisioning service.
pub const HUB_POLICIES: [&str; 5] = [
    "iothubowner",
    "service",
    "registryRead",
    "registryReadWrite",
    "deviceConnect",
];
/// The provisioning service's policy.
pub const DPS_POLICY: &str = "provisioningserviceowner";
const SERVER_CERT_MARKER: &str = "muster server";

/// Persistent identity of this installation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// ID scope.
    pub id_scope: String,
    /// Policy name → base64 key.
    pub policies: Vec<Policy>,
}

/// One shared access policy.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Name (`skn`).
    pub name: String,
    /// Primary key.
    pub primary_key: String,
    /// Secondary key.
    pub secondary_key: String,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl State {
    /// A policy by name.
    #[must_use]
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
}

impl Paths {
    /// `tls/ca.pem`.
    #[must_use]
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }
    /// `tls/ca.key.pem`.
    #[must_use]
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("tls/ca.key.pem")
    }
    /// `tls/server.pem`.
    #[must_use]
    pub fn server(&self) -> PathBuf {
        self.dir.join("tls/server.pem")
    }
    /// `tls/server.key.pem`.
    #[must_use]
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("tls/server.key.pem")
    }
    /// `state.json`.
    #[must_use]
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// `muster.db`.
    #[must_use]
    pub fn database(&self) -> PathBuf {
        self.dir.join("muster.db")
    }
}

/// Bootstrap failures.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// File system.
    #[error("cannot use {path}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificates.
    #[error("{path} is unusable")]
    Pki {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: muster_pki::Error,
    },
    /// state.json.
    #[error("{path}: {reason}")]
    State {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn pki(path: &Path) -> impl FnOnce(muster_pki::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Pki {
        path: path.display().to_string(),
        source,
    }
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), BootstrapError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Create what is missing in the data directory and load the state.
///
/// # Errors
/// [`BootstrapError`] naming the file.
pub fn prepare(config: &Config) -> Result<(Paths, State), BootstrapError> {
    let paths = Paths {
        dir: config.data_dir.clone(),
    };
    let tls = paths.dir.join("tls");
    let fresh = !paths.dir.exists();
    fs::create_dir_all(&tls).map_err(io(&tls))?;
    #[cfg(unix)]
    if fresh {
        // The directory holds keys and the database (which holds enrollment keys): owner only.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&paths.dir, fs::Permissions::from_mode(0o700))
            .map_err(io(&paths.dir))?;
    }
    if config.store == "sqlite" && !paths.database().exists() {
        // Created here so it starts 0600; SQLite gives its -wal and -shm files the same mode.
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        options
            .open(paths.database())
            .map_err(io(&paths.database()))?;
    }
    let now = OffsetDateTime::now_utc();

    if !paths.ca().exists() {
        let ca = muster_pki::self_signed(
            &Request {
                common_name: "muster local CA".into(),
                organization: Some("muster".into()),
                profile: Profile::Ca { path_len: Some(0) },
                not_before: now - Duration::minutes(5),
                not_after: now + Duration::days(3650),
            },
            Algorithm::EcdsaP256,
        )
        .map_err(pki(&paths.ca()))?;
        write_file(&paths.ca_key(), ca.key.to_pem().as_bytes(), true)?;
        write_file(&paths.ca(), ca.certificate.to_pem().as_bytes(), false)?;
        let _ = fs::remove_file(paths.server());
        info!(path = %paths.ca().display(), "created the trust root");
    }
    ensure_server_certificate(config, &paths, now)?;

    let state = if paths.state().exists() {
        let text = fs::read_to_string(paths.state()).map_err(io(&paths.state()))?;
        serde_json::from_str::<State>(&text).map_err(|e| BootstrapError::State {
            path: paths.state().display().to_string(),
            reason: e.to_string(),
        })?
    } else {
        let state = new_state().map_err(|reason| BootstrapError::State {
            path: paths.state().display().to_string(),
            reason,
        })?;
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        write_file(&paths.state(), text.as_bytes(), true)?;
        info!(
            id_scope = state.id_scope,
            "created the ID scope and shared access policies"
        );
        state
    };
    Ok((paths, state))
}

fn new_state() -> Result<State, String> {
    let mut bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness".to_owned())?;
    let id_scope = format!("0ne{}", muster_pki::hex_upper(&bytes));
    let mut policies = Vec::new();
    for name in HUB_POLICIES.iter().copied().chain([DPS_POLICY]) {
        let primary = Secret::generate().map_err(|e| e.to_string())?;
        let secondary = Secret::generate().map_err(|e| e.to_string())?;
        policies.push(Policy {
            name: name.to_owned(),
            primary_key: primary.expose().to_owned(),
            secondary_key: secondary.expose().to_owned(),
        });
    }
    Ok(State { id_scope, policies })
}

/// The names the server certificate must carry.
#[must_use]
pub fn server_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.hostnames.clone();
    for n in ["localhost", "127.0.0.1", "::1"] {
        names.push(n.to_owned());
    }
    if !config.bind.is_unspecified() {
        names.push(config.bind.to_string());
    }
    let mut seen = Vec::new();
    names.retain(|n| {
        let lower = n.to_ascii_lowercase();
        if seen.contains(&lower) {
            false
        } else {
            seen.push(lower);
            true
        }
    });
    names
}

fn ensure_server_certificate(
    config: &Config,
    paths: &Paths,
    now: OffsetDateTime,
) -> Result<(), BootstrapError> {
    let names = server_names(config);
    if paths.server().exists() && paths.server_key().exists() {
        let bytes = fs::read(paths.server()).map_err(io(&paths.server()))?;
        let current = muster_pki::read_certificates(&bytes).map_err(pki(&paths.server()))?;
        let Some(leaf) = current.first() else {
            return Ok(());
        };
        if !leaf.subject().contains(SERVER_CERT_MARKER) {
            return Ok(()); // the operator's own certificate
        }
        let sans = leaf.subject_alt_names();
        let covers = names.iter().all(|n| {
            let want_ip = format!("IP:{n}");
            let want_dns = format!("DNS:{n}");
            sans.iter()
                .any(|s| s.eq_ignore_ascii_case(&want_ip) || s.eq_ignore_ascii_case(&want_dns))
        });
        if covers && leaf.not_after() > now + Duration::days(30) {
            return Ok(());
        }
        info!("re-issuing the server certificate (host names changed or expiry near)");
    }
    let ca_bytes = fs::read(paths.ca()).map_err(io(&paths.ca()))?;
    let ca = muster_pki::read_certificate(&ca_bytes).map_err(pki(&paths.ca()))?;
    let key_bytes = fs::read(paths.ca_key()).map_err(io(&paths.ca_key()))?;
    let key = muster_pki::read_private_key(&key_bytes, None).map_err(pki(&paths.ca_key()))?;
    let issuer = Issuer::new(ca, key).map_err(pki(&paths.ca()))?;
    let server = issuer
        .issue(
            &Request {
                common_name: config.dps_host().chars().take(64).collect(),
                organization: Some(SERVER_CERT_MARKER.into()),
                profile: Profile::Server { names },
                not_before: now - Duration::minutes(5),
                not_after: (now + Duration::days(825)).min(issuer.certificate().not_after()),
            },
            Algorithm::EcdsaP256,
        )
        .map_err(pki(&paths.server()))?;
    write_file(&paths.server_key(), server.key.to_pem().as_bytes(), true)?;
    let chain = format!(
        "{}{}",
        server.certificate.to_pem(),
        issuer.certificate().to_pem()
    );
    write_file(&paths.server(), chain.as_bytes(), false)?;
    info!(path = %paths.server().display(), "issued the server certificate");
    Ok(())
}
