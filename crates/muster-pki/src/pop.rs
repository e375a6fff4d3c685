//! Proof of possession of a CA certificate, the way Azure DPS and IoT Hub check it: the
//! operator asks for a verification code, signs a certificate whose subject CN is that code
//! with the CA's private key, and uploads it.

use time::OffsetDateTime;

use crate::cert::Certificate;
use crate::chain::verify_signed_by;
use crate::error::{Error, Result};

/// Check that `verification` proves possession of the private key of `ca`.
///
/// The proof holds when the verification certificate's subject CN equals `code` (exactly, as the
/// code is issued), its signature verifies with the CA's public key, and it is within validity
/// at `at`.
///
/// # Errors
/// [`Error::VerificationCodeMismatch`], [`Error::BadSignature`], [`Error::Expired`],
/// [`Error::NotYetValid`] or [`Error::UnsupportedAlgorithm`].
pub fn verify_proof_of_possession(
    ca: &Certificate,
    verification: &Certificate,
    code: &str,
    at: OffsetDateTime,
) -> Result<()> {
    let cn = verification.common_name().unwrap_or_default();
    if code.is_empty() || cn != code {
        return Err(Error::VerificationCodeMismatch {
            found: cn.to_owned(),
        });
    }
    verify_signed_by(verification, ca)?;
    if at < verification.not_before() {
        return Err(Error::NotYetValid {
            subject: verification.subject().to_owned(),
            not_before: verification.not_before(),
        });
    }
    if at > verification.not_after() {
        return Err(Error::Expired {
            subject: verification.subject().to_owned(),
            not_after: verification.not_after(),
        });
    }
    Ok(())
}
