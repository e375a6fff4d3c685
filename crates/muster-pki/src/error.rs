//! The one error type of `muster-pki`.
//!
//! Every variant says exactly why an input was refused, in terms an operator can act on. Callers
//! map [`Error::category`] to their own responses (HTTP status, MQTT return code, exit code).

use time::OffsetDateTime;

/// What went wrong with a certificate, key, file or chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not what they claim to be (bad PEM, bad DER, truncated input, ...).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being read ("PEM", "certificate", "private key", "PKCS#12").
        what: &'static str,
        /// Why it could not be read.
        reason: String,
    },
    /// The input holds no certificate at all.
    #[error("no certificate found (expected PEM 'CERTIFICATE' blocks, DER or PKCS#12)")]
    NoCertificate,
    /// The input holds no private key where one was required.
    #[error(
        "no private key found (expected PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY')"
    )]
    NoPrivateKey,
    /// A certificate was expected but something else was found.
    #[error("expected a certificate but found a PEM '{found}' block")]
    NotACertificate {
        /// The PEM label that was found instead.
        found: String,
    },
    /// The private key is encrypted and no password was given.
    #[error("the private key is encrypted and no password was given")]
    EncryptedKeyNeedsPassword,
    /// A PKCS#12 file could not be opened with the given password.
    #[error("wrong password for the PKCS#12 file, or the file is corrupted")]
    WrongPassword,
    /// A password is needed to open this PKCS#12 file.
    #[error("this is a PKCS#12 (PFX) file; a password is required to open it")]
    Pkcs12NeedsPassword,
    /// An algorithm muster does not accept (SHA-1 signatures, RSA < 2048 bits, unknown curves, ...).
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A certificate in the chain is past its `notAfter`.
    #[error("certificate '{subject}' expired at {not_after}")]
    Expired {
        /// Subject of the expired certificate.
        subject: String,
        /// When it expired.
        not_after: OffsetDateTime,
    },
    /// A certificate in the chain is not valid yet.
    #[error("certificate '{subject}' is not valid before {not_before}")]
    NotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// When it becomes valid.
        not_before: OffsetDateTime,
    },
    /// No trust anchor (or presented intermediate) issued this certificate.
    #[error("no trusted issuer found for '{subject}' (its issuer is '{issuer}')")]
    UnknownIssuer {
        /// Subject of the certificate whose issuer is unknown.
        subject: String,
        /// The issuer named in it.
        issuer: String,
    },
    /// The signature does not verify with the issuer's public key.
    #[error("the signature on '{subject}' does not verify with the public key of '{issuer}'")]
    BadSignature {
        /// Subject of the signed certificate.
        subject: String,
        /// Subject of the would-be issuer.
        issuer: String,
    },
    /// A certificate acts as an issuer but is not a CA (basicConstraints cA is not true).
    #[error("'{subject}' issued another certificate but is not a CA (basicConstraints)")]
    NotACa {
        /// Subject of the certificate.
        subject: String,
    },
    /// More intermediate CAs follow a CA than its pathLenConstraint allows.
    #[error(
        "path length constraint of '{subject}' is {path_len} but {found} intermediate CA(s) follow it"
    )]
    PathLenExceeded {
        /// Subject of the constrained CA.
        subject: String,
        /// Its pathLenConstraint.
        path_len: u32,
        /// How many intermediate CAs follow it in the path.
        found: u32,
    },
    /// An issuer has a keyUsage extension without keyCertSign.
    #[error("'{subject}' may not sign certificates (its keyUsage lacks keyCertSign)")]
    KeyCertSignMissing {
        /// Subject of the issuer.
        subject: String,
    },
    /// A certificate has an extendedKeyUsage extension without clientAuth.
    #[error(
        "'{subject}' is not valid for client authentication (its extendedKeyUsage lacks clientAuth)"
    )]
    ClientAuthMissing {
        /// Subject of the certificate.
        subject: String,
    },
    /// A critical extension muster does not understand.
    #[error("'{subject}' has an unsupported critical extension {oid}")]
    UnsupportedCriticalExtension {
        /// Subject of the certificate.
        subject: String,
        /// The extension's OID in dotted form.
        oid: String,
    },
    /// No path was found within the depth limit.
    #[error("the chain is longer than {max} certificates")]
    ChainTooLong {
        /// The limit.
        max: usize,
    },
    /// A verification certificate's CN is not the verification code.
    #[error(
        "the verification certificate's common name '{found}' does not match the verification code"
    )]
    VerificationCodeMismatch {
        /// The CN that was found.
        found: String,
    },
    /// A private key does not belong to the certificate it was paired with.
    #[error("the private key does not match the certificate '{subject}'")]
    KeyMismatch {
        /// Subject of the certificate.
        subject: String,
    },
    /// Building or signing a certificate failed.
    #[error("could not issue the certificate: {0}")]
    Issue(String),
}

/// Coarse, client-facing class of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The input could not be read or is not acceptable as such.
    InvalidInput,
    /// The input was read but does not prove what it should (chain, proof of possession).
    Unauthorized,
    /// Something failed inside muster.
    Internal,
}

impl Error {
    /// The client-facing class of this error.
    #[must_use]
    pub fn category(&self) -> Category {
        match self {
            Self::Malformed { .. }
            | Self::NoCertificate
            | Self::NoPrivateKey
            | Self::NotACertificate { .. }
            | Self::EncryptedKeyNeedsPassword
            | Self::WrongPassword
            | Self::Pkcs12NeedsPassword
            | Self::UnsupportedAlgorithm(_)
            | Self::KeyMismatch { .. } => Category::InvalidInput,
            Self::Issue(_) => Category::Internal,
            _ => Category::Unauthorized,
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
