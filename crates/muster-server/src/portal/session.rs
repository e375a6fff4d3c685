//! Portal sign-in: sessions kept in memory, the admin password's hash on disk, rights derived
//! from the shared access policy a user signed in with, and a per-address limit on failed
//! sign-ins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The cookie that carries a session id.
pub(crate) const COOKIE: &str = "muster_portal";

/// What a signed-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "four independent rights, as IoT Hub's permissions are"
)]
pub(crate) struct Rights {
    /// See and change the provisioning service (`provisioningserviceowner`).
    pub(crate) dps: bool,
    /// See the hub's registry, twins and telemetry (RegistryRead).
    pub(crate) hub_read: bool,
    /// Create, disable and delete devices (RegistryWrite).
    pub(crate) registry_write: bool,
    /// Change twins, send cloud-to-device messages, call methods (ServiceConnect).
    pub(crate) service: bool,
}

impl Rights {
    /// Every right (the admin password).
    pub(crate) const ALL: Self = Self {
        dps: true,
        hub_read: true,
        registry_write: true,
        service: true,
    };

    /// The rights of a shared access policy, as IoT Hub and DPS grant them.
    pub(crate) fn of_policy(name: &str) -> Option<Self> {
        let (dps, hub_read, registry_write, service) = match name {
            crate::bootstrap::DPS_POLICY => (true, false, false, false),
            "iothubowner" => (false, true, true, true),
            "service" => (false, true, false, true),
            "registryRead" => (false, true, false, false),
            "registryReadWrite" => (false, true, true, false),
            _ => return None,
        };
        Some(Self {
            dps,
            hub_read,
            registry_write,
            service,
        })
    }
}

/// One signed-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Who signed in: `admin` or a policy name.
    pub(crate) principal: String,
    pub(crate) rights: Rights,
    /// The token every state-changing form carries.
    pub(crate) csrf: String,
    created: Instant,
    last: Instant,
}

/// Portal settings (`[portal]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// A session ends after this long without a request.
    pub(crate) idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub(crate) lifetime: Duration,
    /// Failed sign-ins allowed per address per minute.
    pub(crate) attempts_per_minute: u32,
}

/// Sessions, failed sign-ins and where the admin password's hash lives.
#[derive(Debug)]
pub(crate) struct Portal {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    admin_hash: PathBuf,
    pub(crate) settings: Settings,
}

/// Why a sign-in failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SignInError {
    /// Name or key/password wrong (which one is not said).
    Wrong,
    /// Too many failures from this address; retry after this many seconds.
    Throttled(u64),
}

/// PBKDF2-HMAC-SHA256 rounds for the admin password (OWASP's 2023 figure).
const ROUNDS: u32 = 600_000;

/// Random bytes as unpadded base64url.
pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = aws_lc_rs::rand::fill(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// `pbkdf2-sha256$ROUNDS$SALT$HASH` for `password`.
pub(crate) fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut salt);
    let mut out = [0u8; 32];
    let rounds = std::num::NonZeroU32::new(ROUNDS).unwrap_or(std::num::NonZeroU32::MIN);
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "pbkdf2-sha256${ROUNDS}${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

/// Check `password` against a stored hash (constant time).
pub(crate) fn verify_password(stored: &str, password: &str) -> bool {
    let mut parts = stored.trim().split('$');
    let (Some("pbkdf2-sha256"), Some(rounds), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let (Some(rounds), Ok(salt), Ok(hash)) = (
        rounds
            .parse::<u32>()
            .ok()
            .and_then(std::num::NonZeroU32::new),
        b64.decode(salt),
        b64.decode(hash),
    ) else {
        return false;
    };
    aws_lc_rs::pbkdf2::verify(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// Where the admin password's hash is kept in a data directory.
pub fn admin_hash_path(data_dir: &Path) -> PathBuf {
    data_dir.join("portal-admin.hash")
}

/// Create the admin password when the data directory has none; returns it (to be printed once).
///
/// # Errors
/// Writing the hash file.
pub fn ensure_admin_password(data_dir: &Path) -> std::io::Result<Option<String>> {
    let path = admin_hash_path(data_dir);
    if path.exists() {
        return Ok(None);
    }
    set_admin_password(data_dir).map(Some)
}

/// Make a new admin password and store its hash (mode 0600); returns the password.
///
/// # Errors
/// Writing the hash file.
pub fn set_admin_password(data_dir: &Path) -> std::io::Result<String> {
    let password = random_token(18);
    let path = admin_hash_path(data_dir);
    let tmp = path.with_extension("hash.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    {
        use std::io::Write as _;
        let mut f = options.open(&tmp)?;
        f.write_all(hash_password(&password).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(password)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

impl Portal {
    pub(crate) fn new(data_dir: &Path, settings: Settings) -> Self {
        Self {
            sessions: Mutex::default(),
            failures: Mutex::default(),
            admin_hash: admin_hash_path(data_dir),
            settings,
        }
    }

    /// Refuse at once when `peer` failed too often in the last minute.
    pub(crate) fn throttled(&self, peer: Option<IpAddr>) -> Option<u64> {
        let peer = peer?;
        let mut failures = self.failures.lock().ok()?;
        let now = Instant::now();
        let list = failures.entry(peer).or_default();
        list.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        let limit = usize::try_from(self.settings.attempts_per_minute).unwrap_or(usize::MAX);
        if list.len() >= limit {
            let oldest = list.first().copied().unwrap_or(now);
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
            return Some(wait.as_secs().max(1));
        }
        None
    }

    fn failed(&self, peer: Option<IpAddr>) {
        if let (Some(peer), Ok(mut failures)) = (peer, self.failures.lock()) {
            failures.entry(peer).or_default().push(Instant::now());
            // Bound the table: forget addresses whose failures are all old.
            if failures.len() > 10_000 {
                let now = Instant::now();
                failures.retain(|_, v| {
                    v.iter()
                        .any(|t| now.duration_since(*t) < Duration::from_secs(60))
                });
            }
        }
    }

    /// Check a user name and secret: `admin` with the admin password, or a policy name with
    /// one of its keys. Returns the new session id.
    pub(crate) async fn sign_in(
        &self,
        state: &crate::bootstrap::State,
        name: &str,
        secret: &str,
        peer: Option<IpAddr>,
    ) -> Result<(String, Session), SignInError> {
        if let Some(wait) = self.throttled(peer) {
            return Err(SignInError::Throttled(wait));
        }
        let rights = if name == "admin" {
            let stored = tokio::fs::read_to_string(&self.admin_hash)
                .await
                .unwrap_or_default();
            let secret = secret.to_owned();
            let ok = tokio::task::spawn_blocking(move || verify_password(&stored, &secret))
                .await
                .unwrap_or(false);
            ok.then_some(Rights::ALL)
        } else {
            state.policy(name).and_then(|p| {
                (same(secret, &p.primary_key) || same(secret, &p.secondary_key))
                    .then(|| Rights::of_policy(name))
                    .flatten()
            })
        };
        let Some(rights) = rights else {
            self.failed(peer);
            return Err(SignInError::Wrong);
        };
        let id = random_token(32);
        let now = Instant::now();
        let session = Session {
            principal: name.to_owned(),
            rights,
            csrf: random_token(24),
            created: now,
            last: now,
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, s| !self.expired(s, now));
            sessions.insert(id.clone(), session.clone());
        }
        Ok((id, session))
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last) >= self.settings.idle
            || now.duration_since(s.created) >= self.settings.lifetime
    }

    /// The live session with this id (its idle clock restarts), or `None`.
    pub(crate) fn session(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        let s = sessions.get_mut(id)?;
        if self.expired(s, now) {
            sessions.remove(id);
            return None;
        }
        s.last = now;
        Some(s.clone())
    }

    /// Whether the session with this id is alive, without restarting its idle clock (a live
    /// stream must not keep its session alive on its own).
    pub(crate) fn is_live(&self, id: &str) -> bool {
        let now = Instant::now();
        self.sessions
            .lock()
            .is_ok_and(|s| s.get(id).is_some_and(|s| !self.expired(s, now)))
    }

    /// End a session.
    pub(crate) fn sign_out(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(id);
        }
    }

    /// Whether `token` is the session's CSRF token.
    pub(crate) fn csrf_ok(session: &Session, token: &str) -> bool {
        same(&session.csrf, token)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::{hash_password, verify_password};

    #[test]
    fn password_hashes_verify_and_refuse() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("pbkdf2-sha256$600000$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsf"));
        assert!(!verify_password("", "x"));
        assert!(!verify_password("pbkdf2-sha256$0$AAAA$AAAA", "x"));
        assert_ne!(h, hash_password("correct horse"), "salted");
    }
}
