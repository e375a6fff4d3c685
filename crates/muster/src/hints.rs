//! The likely fix for an error, where one is known: what the user should check or run next.
//! The error itself says what failed (each cause once, `muster_types::report`); the fix ends
//! the line.

/// A server the CLI could not reach (no connection at all).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the server at {base} ({reason})")]
pub(crate) struct Unreachable {
    /// `https://host:port`.
    pub(crate) base: String,
    /// The innermost cause, e.g. "Connection refused (os error 111)".
    pub(crate) reason: String,
}

impl Unreachable {
    /// From a request error that never reached the server; `None` for other errors.
    pub(crate) fn from_request(base: &str, e: &reqwest::Error) -> Option<Self> {
        if !e.is_connect() {
            return None;
        }
        let mut reason = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            reason = c.to_string();
            cause = c.source();
        }
        Some(Self {
            base: base.to_owned(),
            reason,
        })
    }
}

/// The fix for `e`, judged from the kinds of error in its chain and its text.
pub(crate) fn fix(e: &anyhow::Error) -> Option<String> {
    let text = muster_types::report(&**e);
    if e.chain().any(|c| c.is::<Unreachable>()) {
        return Some(
            "is `muster serve` running? Start it, or point --data-dir or --connection-string at the running server".into(),
        );
    }
    if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        return Some("the server's certificate is not trusted: pass its trust bundle with --trust (the server's data dir holds it as tls/ca.pem; `muster info` prints the path)".into());
    }
    if text.contains("ID scope") && text.contains("401002") {
        return Some("check --id-scope: `muster info` prints the server's".into());
    }
    if text.contains("provisioning refused: 401002") {
        return Some("no enabled enrollment accepts this device: check `muster dps enrollment-group list` and `muster dps enrollment list`, and that its CA is verified".into());
    }
    if text.contains("(CONNACK 5)") {
        return Some("the hub does not accept this device: it was deleted or disabled, or its credentials changed (`muster hub device-identity show -d <ID>`)".into());
    }
    if text.contains("wrong password for the PKCS#12 file") {
        return Some("give the PFX's password in the environment variable --cert-password-env names (or --password-env for `certs show`)".into());
    }
    if text.contains("Address already in use") {
        return Some("another process uses that port: stop it, or choose another with --mqtt-port / --https-port".into());
    }
    let denied = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if denied {
        return Some("this user may not use that file or directory: check its owner and permissions, or choose another path".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_follow_the_cause() {
        let e = anyhow::Error::new(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "Permission denied (os error 13)",
        ))
        .context("cannot write certs/root-ca.pem");
        assert!(fix(&e).unwrap_or_default().contains("permissions"));
        let e = anyhow::anyhow!(
            "TLS handshake with localhost failed: invalid peer certificate: UnknownIssuer"
        );
        assert!(fix(&e).unwrap_or_default().contains("--trust"));
        let e = anyhow::Error::new(Unreachable {
            base: "https://localhost:8443".into(),
            reason: "Connection refused (os error 111)".into(),
        });
        assert!(fix(&e).unwrap_or_default().contains("muster serve"));
        assert!(fix(&anyhow::anyhow!("something else")).is_none());
    }
}
