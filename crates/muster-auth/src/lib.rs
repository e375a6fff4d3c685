//! # muster-auth
//!
//! Shared access signatures (SAS) the way every Azure IoT client makes them, and the
//! connection strings that carry policy keys.
//!
//! # Layout
//! - [`sas`]: parsing and verifying `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]` tokens
//!   (any field order; the signature covers the raw, undecoded `sr` text), making tokens, and
//!   deriving a device key from an enrollment-group key.
//! - [`connection_string`]: `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` strings.
//! - [`Secret`]: a key that never prints itself.

pub mod connection_string;
pub mod sas;

use std::fmt;

/// A base64 shared access key. `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a base64 key.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// A new random 256-bit key, base64.
    ///
    /// # Errors
    /// When the system has no randomness.
    pub fn generate() -> Result<Self, sas::SasError> {
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| sas::SasError::Crypto)?;
        Ok(Self(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ))
    }

    /// The base64 text, for storing or sending to the key's owner.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
