//! SAS tokens.
//!
//! Clients differ in how they encode `sr` (raw, `quote`, `quote_plus`, lower-case escapes) and
//! in field order; the HMAC always covers `sr` exactly as it appears in the token. Verification
//! therefore signs the raw text and compares the *decoded* resource with what is expected.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::Secret;

/// Why a token was refused. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// Not of the form `SharedAccessSignature k=v&k=v…`.
    #[error("malformed shared access signature: {0}")]
    Malformed(&'static str),
    /// `se` is in the past.
    #[error("shared access signature expired at {expiry} (now {now})")]
    Expired {
        /// The token's expiry (Unix seconds).
        expiry: u64,
        /// The time of the check.
        now: u64,
    },
    /// The token is for another resource.
    #[error("shared access signature is for resource '{found}', expected '{expected}'")]
    WrongResource {
        /// The decoded `sr`.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// The signature does not match any key.
    #[error("shared access signature does not match the key")]
    BadSignature,
    /// A key is not valid base64.
    #[error("the shared access key is not valid base64")]
    BadKey,
    /// The crypto library failed.
    #[error("cryptographic failure")]
    Crypto,
}

/// A parsed token. `sig` stays private; `Debug` omits it.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    raw_sr: String,
    resource: String,
    signature: Vec<u8>,
    expiry: u64,
    key_name: Option<String>,
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasToken {
    /// Parse `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]` (the prefix is optional).
    ///
    /// # Errors
    /// [`SasError::Malformed`] when a required field is missing or unreadable.
    pub fn parse(text: &str) -> Result<Self, SasError> {
        let text = text.trim();
        let body = text
            .strip_prefix("SharedAccessSignature")
            .map_or(text, str::trim_start);
        let mut raw_sr = None;
        let mut sig = None;
        let mut se = None;
        let mut skn = None;
        for field in body.split('&') {
            let (k, v) = field
                .split_once('=')
                .ok_or(SasError::Malformed("field without '='"))?;
            match k {
                "sr" => raw_sr = Some(v),
                "sig" => sig = Some(v),
                "se" => se = Some(v),
                "skn" => skn = Some(v),
                _ => {}
            }
        }
        let raw_sr = raw_sr.ok_or(SasError::Malformed("missing sr"))?;
        let sig = sig.ok_or(SasError::Malformed("missing sig"))?;
        let se = se.ok_or(SasError::Malformed("missing se"))?;
        let expiry = se
            .parse::<u64>()
            .map_err(|_| SasError::Malformed("se is not a number"))?;
        let signature = B64
            .decode(percent_decode(sig).as_bytes())
            .map_err(|_| SasError::Malformed("sig is not base64"))?;
        Ok(Self {
            raw_sr: raw_sr.to_owned(),
            resource: percent_decode(raw_sr),
            signature,
            expiry,
            key_name: skn.map(percent_decode),
        })
    }

    /// The decoded resource URI (`sr`).
    #[must_use]
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The policy name (`skn`), if any.
    #[must_use]
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// Expiry, Unix seconds.
    #[must_use]
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// Check expiry and resource: `expected` must equal the decoded `sr` case-insensitively
    /// (ignoring a trailing `/`).
    ///
    /// # Errors
    /// [`SasError::Expired`], [`SasError::WrongResource`].
    pub fn check_scope(&self, expected: &str, now: u64) -> Result<(), SasError> {
        if self.expiry < now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        let found = self.resource.trim_end_matches('/').to_ascii_lowercase();
        let want = expected.trim_end_matches('/').to_ascii_lowercase();
        if found == want {
            return Ok(());
        }
        Err(SasError::WrongResource {
            found: self.resource.clone(),
            expected: expected.to_owned(),
        })
    }

    /// Check a token addressed to one of this server's host names: not expired, its resource's
    /// host (port and IPv6 brackets ignored) one of `hosts` (lower case), and — when `path` is
    /// given — the rest of the resource equal to `path` (case-insensitive, trailing `/`
    /// ignored). Returns the host the token names. The signature is checked separately, with
    /// [`SasToken::verify_signature`], once the caller knows which keys apply.
    ///
    /// # Errors
    /// [`SasError::Expired`], [`SasError::WrongResource`].
    pub fn check_hosted(
        &self,
        hosts: &[String],
        path: Option<&str>,
        now: u64,
    ) -> Result<String, SasError> {
        if self.expiry < now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        let resource = self.resource.to_ascii_lowercase();
        let (host, rest) = resource.split_once('/').unwrap_or((resource.as_str(), ""));
        let host = host
            .rsplit_once(':')
            .filter(|(h, p)| {
                !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':')
            })
            .map_or(host, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let path_ok = path.is_none_or(|p| {
            rest.trim_end_matches('/') == p.trim_end_matches('/').to_ascii_lowercase()
        });
        if hosts.iter().any(|h| h == host) && path_ok {
            return Ok(host.to_owned());
        }
        let expected = match path {
            Some(p) => format!("{{this server}}/{p}"),
            None => "one of this server's host names".to_owned(),
        };
        Err(SasError::WrongResource {
            found: self.resource.clone(),
            expected,
        })
    }

    /// Verify the signature with any of `keys` (constant-time per key); returns the index of the
    /// key that matched.
    ///
    /// # Errors
    /// [`SasError::BadSignature`] when none matches, [`SasError::BadKey`] for an unreadable key.
    pub fn verify_signature(&self, keys: &[&Secret]) -> Result<usize, SasError> {
        let message = format!("{}\n{}", self.raw_sr, self.expiry);
        let mut usable = false;
        for (i, key) in keys.iter().enumerate() {
            // An empty or unreadable key never verifies anything (an empty HMAC key would be
            // forgeable); the other keys are still tried.
            let Ok(key_bytes) = B64.decode(key.expose().as_bytes()) else {
                continue;
            };
            if key_bytes.is_empty() {
                continue;
            }
            usable = true;
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes);
            if aws_lc_rs::hmac::verify(&key, message.as_bytes(), &self.signature).is_ok() {
                return Ok(i);
            }
        }
        Err(if usable {
            SasError::BadSignature
        } else {
            SasError::BadKey
        })
    }
}

impl SasToken {
    /// Verify the signature the Service Bus way (Event Hubs clients): HMAC-SHA256 keyed with
    /// the UTF-8 bytes of the key *text*, not its base64-decoded bytes. Returns the index of
    /// the key that matched.
    ///
    /// # Errors
    /// [`SasError::BadSignature`] when none matches, [`SasError::BadKey`] when every key is
    /// empty.
    pub fn verify_text_key_signature(&self, keys: &[&Secret]) -> Result<usize, SasError> {
        let message = format!("{}\n{}", self.raw_sr, self.expiry);
        let mut usable = false;
        for (i, key) in keys.iter().enumerate() {
            let key_bytes = key.expose().as_bytes();
            if key_bytes.is_empty() {
                continue;
            }
            usable = true;
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key_bytes);
            if aws_lc_rs::hmac::verify(&key, message.as_bytes(), &self.signature).is_ok() {
                return Ok(i);
            }
        }
        Err(if usable {
            SasError::BadSignature
        } else {
            SasError::BadKey
        })
    }
}

/// Make a token for `resource` (encoded like the Python SDK: `sr` percent-encoded).
///
/// # Errors
/// [`SasError::BadKey`] when the key is not base64.
pub fn make_token(
    resource: &str,
    key: &Secret,
    key_name: Option<&str>,
    expiry: u64,
) -> Result<String, SasError> {
    let sr = percent_encode(resource);
    let sig = sign(key, &format!("{sr}\n{expiry}"))?;
    let mut token = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}",
        percent_encode(&sig)
    );
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(&percent_encode(name));
    }
    Ok(token)
}

/// The device key for `registration_id` in a symmetric-key enrollment group:
/// `base64(HMAC-SHA256(base64decode(group_key), registration_id))`.
///
/// # Errors
/// [`SasError::BadKey`] when the group key is not base64.
pub fn derive_device_key(group_key: &Secret, registration_id: &str) -> Result<Secret, SasError> {
    Ok(Secret::new(sign(group_key, registration_id)?))
}

fn sign(key: &Secret, message: &str) -> Result<String, SasError> {
    let key_bytes = B64
        .decode(key.expose().as_bytes())
        .map_err(|_| SasError::BadKey)?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes);
    Ok(B64.encode(aws_lc_rs::hmac::sign(&key, message.as_bytes()).as_ref()))
}

/// Every byte but the unreserved characters `A-Za-z0-9-._~` (RFC 3986) is escaped.
pub const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-decode (`+` stays `+`); invalid escapes are kept literally, and bytes that are not
/// UTF-8 become U+FFFD.
#[must_use]
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Percent-encode everything but the unreserved characters `A-Za-z0-9-._~`.
#[must_use]
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn hosted_tokens_name_a_host_of_this_server() {
        let key = Secret::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        let hosts = vec!["hub.local".to_owned(), "::1".to_owned()];
        let t =
            |sr: &str, se: u64| SasToken::parse(&make_token(sr, &key, None, se).unwrap()).unwrap();
        assert_eq!(
            t("Hub.Local:8883/devices/d1/", 100).check_hosted(&hosts, Some("devices/D1"), 50),
            Ok("hub.local".to_owned())
        );
        assert_eq!(
            t("[::1]:443", 100).check_hosted(&hosts, None, 50),
            Ok("::1".to_owned())
        );
        assert!(matches!(
            t("hub.local/devices/d1", 100).check_hosted(&hosts, Some("devices/d2"), 50),
            Err(SasError::WrongResource { .. })
        ));
        assert!(matches!(
            t("other.host/devices/d1", 100).check_hosted(&hosts, Some("devices/d1"), 50),
            Err(SasError::WrongResource { .. })
        ));
        assert!(matches!(
            t("hub.local/devices/d1", 100).check_hosted(&hosts, None, 101),
            Err(SasError::Expired { .. })
        ));
    }

    const KEY: &str = "dGhpcyBpcyBhIHRlc3Qga2V5IGZvciBtdXN0ZXIgc2FzIQ==";

    fn sig_for(sr: &str, se: u64) -> String {
        sign(&Secret::new(KEY), &format!("{sr}\n{se}")).unwrap()
    }

    #[test]
    fn python_shape_quoted_sr_no_skn() {
        let sr = "0ne00ABCDEF%2Fregistrations%2Fdev-sas-1";
        let token = format!(
            "SharedAccessSignature sr={sr}&sig={}&se=2000000000",
            percent_encode(&sig_for(sr, 2_000_000_000))
        );
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(t.resource(), "0ne00ABCDEF/registrations/dev-sas-1");
        t.check_scope("0ne00abcdef/registrations/dev-sas-1", 1_900_000_000)
            .unwrap();
        assert_eq!(t.verify_signature(&[&Secret::new(KEY)]).unwrap(), 0);
        assert!(!format!("{t:?}").contains("sig"));
    }

    #[test]
    fn node_shape_raw_sr_any_order_with_skn() {
        let sr = "0ne00ABCDEF/registrations/dev node";
        let token = format!(
            "SharedAccessSignature sr={sr}&sig={}&skn=registration&se=2000000000",
            percent_encode(&sig_for(sr, 2_000_000_000))
                .replace("%2B", "%2b")
                .replace("%2F", "%2f")
                .replace("%3D", "%3d")
        );
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(t.key_name(), Some("registration"));
        let other = Secret::new("b3RoZXIga2V5");
        assert_eq!(t.verify_signature(&[&other, &Secret::new(KEY)]).unwrap(), 1);
    }

    #[test]
    fn refusals() {
        let sr = "hub.local";
        let token = format!(
            "SharedAccessSignature se=100&sr={sr}&sig={}",
            percent_encode(&sig_for(sr, 100))
        );
        let t = SasToken::parse(&token).unwrap();
        assert!(matches!(
            t.check_scope("hub.local", 200),
            Err(SasError::Expired { .. })
        ));
        assert!(matches!(
            t.check_scope("other.local", 50),
            Err(SasError::WrongResource { .. })
        ));
        assert_eq!(
            t.verify_signature(&[&Secret::new("b3RoZXIga2V5")]),
            Err(SasError::BadSignature)
        );
        assert!(SasToken::parse("SharedAccessSignature sr=a&se=1").is_err());
        assert!(SasToken::parse("SharedAccessSignature sr=a&sig=@@@&se=1").is_err());
        assert!(SasToken::parse("SharedAccessSignature sr=a&sig=AA==&se=soon").is_err());
        assert!(SasToken::parse("garbage").is_err());
    }

    #[test]
    fn make_and_verify_round_trip_and_derivation() {
        let key = Secret::new(KEY);
        let token = make_token(
            "hub.local/devices/d1",
            &key,
            Some("iothubowner"),
            2_000_000_000,
        )
        .unwrap();
        let t = SasToken::parse(&token).unwrap();
        t.check_scope("hub.local/devices/d1", 1).unwrap();
        t.verify_signature(&[&key]).unwrap();
        // Known answer computed with Python: base64(hmac_sha256(b64decode(KEY), b"device-1")).
        let derived = derive_device_key(&key, "device-1").unwrap();
        assert_eq!(
            derived.expose(),
            "B+vkEI9+krF3NSF3IV7kRUAISQVbUNx3+Jh+7KHXv4o="
        );
        assert_ne!(derive_device_key(&key, "device-2").unwrap(), derived);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod service_bus_tests {
    use super::*;

    #[test]
    fn event_hubs_tokens_are_signed_with_the_key_text() {
        // Known answer from Python: base64(hmac_sha256(b"a2V5LXRleHQ=", b"sb%3A%2F%2Fh%2Fe\n1700000000")).
        let key = Secret::new("a2V5LXRleHQ=".to_owned());
        let sig = "x/TAKUAFhhFW4YgyzjoN+uvpdeDTK15ERmvd9MAnor8=";
        let token = SasToken::parse(&format!(
            "SharedAccessSignature sr=sb%3A%2F%2Fh%2Fe&sig={}&se=1700000000&skn=service",
            percent_encode(sig)
        ))
        .unwrap();
        assert_eq!(token.resource(), "sb://h/e");
        assert_eq!(token.verify_text_key_signature(&[&key]).unwrap(), 0);
        // The IoT Hub way (decoded key) does not verify it, and another key fails.
        assert!(token.verify_signature(&[&key]).is_err());
        let other = Secret::new("b3RoZXI=".to_owned());
        assert!(matches!(
            token.verify_text_key_signature(&[&other]),
            Err(SasError::BadSignature)
        ));
    }
}
