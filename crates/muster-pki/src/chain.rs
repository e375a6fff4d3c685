//! Chain validation: does a presented chain (leaf + optional intermediates) reach one of a set
//! of trust anchors at a given time?
//!
//! The path builder tries every candidate issuer (anchors before presented intermediates, so the
//! shortest trusted path wins), checks each link (signature, validity, basicConstraints,
//! pathLenConstraint, keyUsage keyCertSign, extendedKeyUsage clientAuth, unknown critical
//! extensions) and, when nothing validates, reports the most specific reason it met: a chain
//! that fails on an expired intermediate says `Expired`, not `UnknownIssuer`.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSASSAPSS,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::signature_algorithm::RsaSsaPssParams;

use crate::cert::{Certificate, KeyAlgorithm, SignatureAlgorithmId};
use crate::error::{Error, Result};

/// Longest path (leaf to anchor, inclusive) the builder will consider.
pub const MAX_CHAIN_LEN: usize = 8;

/// What the chain is going to be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS client authentication (devices): clientAuth required wherever EKU is present.
    ClientAuth,
    /// No extended key usage requirement (e.g. `muster certs show`).
    Any,
}

/// The options of one validation.
#[derive(Debug, Clone, Copy)]
pub struct ChainOptions {
    /// The time at which every certificate must be valid (injected; never read from a clock here).
    pub at: OffsetDateTime,
    /// The intended usage.
    pub usage: Usage,
}

/// Where a certificate of a validated path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathElement {
    /// The presented chain, by index (0 = leaf).
    Presented(usize),
    /// The trust anchors, by index.
    Anchor(usize),
}

/// A successfully validated path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedPath {
    /// Index of the trust anchor the path ends at.
    pub anchor: usize,
    /// The path from the leaf (first) to the anchor (last).
    pub path: Vec<PathElement>,
}

impl ValidatedPath {
    /// The certificates of the path, leaf first, anchor last.
    #[must_use]
    pub fn certificates<'a>(
        &self,
        presented: &'a [Certificate],
        anchors: &'a [Certificate],
    ) -> Vec<&'a Certificate> {
        self.path
            .iter()
            .filter_map(|e| match *e {
                PathElement::Presented(i) => presented.get(i),
                PathElement::Anchor(i) => anchors.get(i),
            })
            .collect()
    }
}

/// Validate `presented` (leaf first, then any intermediates in any order) against `anchors`.
///
/// # Errors
/// The most specific reason no path validates: [`Error::Expired`], [`Error::NotYetValid`],
/// [`Error::BadSignature`], [`Error::NotACa`], [`Error::PathLenExceeded`],
/// [`Error::KeyCertSignMissing`], [`Error::ClientAuthMissing`],
/// [`Error::UnsupportedCriticalExtension`], [`Error::UnsupportedAlgorithm`],
/// [`Error::ChainTooLong`], or [`Error::UnknownIssuer`] when no candidate issuer exists at all;
/// [`Error::NoCertificate`] when `presented` is empty.
pub fn validate_chain(
    presented: &[Certificate],
    anchors: &[Certificate],
    options: ChainOptions,
) -> Result<ValidatedPath> {
    let leaf = presented.first().ok_or(Error::NoCertificate)?;
    check_common(leaf, options)?;
    check_usage(leaf, options)?;
    let mut builder = Builder {
        presented,
        anchors,
        options,
        best: None,
    };
    let mut path = vec![PathElement::Presented(0)];
    if let Some(anchor) = builder.extend(leaf, &mut path, 0) {
        return Ok(ValidatedPath { anchor, path });
    }
    Err(builder.best.map_or_else(
        || Error::UnknownIssuer {
            subject: leaf.subject().to_owned(),
            issuer: leaf.issuer().to_owned(),
        },
        |(_, e)| e,
    ))
}

struct Builder<'a> {
    presented: &'a [Certificate],
    anchors: &'a [Certificate],
    options: ChainOptions,
    /// The most specific failure so far, with the depth it happened at.
    best: Option<(usize, Error)>,
}

impl Builder<'_> {
    fn fail(&mut self, depth: usize, error: Error) {
        // Deeper failures are more specific ("the intermediate expired" beats "the leaf's issuer
        // did not verify"); on a tie keep the first, which came from the preferred candidate.
        if self.best.as_ref().is_none_or(|(d, _)| depth > *d) {
            self.best = Some((depth, error));
        }
    }

    /// Try to extend `path` (ending in `child`) up to an anchor; returns the anchor's index.
    /// `intermediates` = number of non-self-issued intermediate CAs already in the path.
    fn extend(
        &mut self,
        child: &Certificate,
        path: &mut Vec<PathElement>,
        intermediates: u32,
    ) -> Option<usize> {
        if path.len() >= MAX_CHAIN_LEN {
            self.fail(path.len(), Error::ChainTooLong { max: MAX_CHAIN_LEN });
            return None;
        }
        let depth = path.len();
        for (i, anchor) in self.anchors.iter().enumerate() {
            if !is_candidate_issuer(child, anchor) {
                continue;
            }
            match verify_signed_by(child, anchor)
                .and_then(|()| self.check_issuer(anchor, intermediates))
            {
                Ok(()) => {
                    path.push(PathElement::Anchor(i));
                    return Some(i);
                }
                Err(e) => self.fail(depth, e),
            }
        }
        for (i, candidate) in self.presented.iter().enumerate().skip(1) {
            if path.contains(&PathElement::Presented(i)) || !is_candidate_issuer(child, candidate) {
                continue;
            }
            let checked = verify_signed_by(child, candidate)
                .and_then(|()| self.check_issuer(candidate, intermediates))
                .and_then(|()| check_usage(candidate, self.options));
            match checked {
                Ok(()) => {
                    path.push(PathElement::Presented(i));
                    let next = intermediates + u32::from(!candidate.is_self_issued());
                    if let Some(anchor) = self.extend(candidate, path, next) {
                        return Some(anchor);
                    }
                    path.pop();
                }
                Err(e) => self.fail(depth, e),
            }
        }
        None
    }

    fn check_issuer(&self, issuer: &Certificate, intermediates_below: u32) -> Result<()> {
        check_common(issuer, self.options)?;
        if !issuer.is_ca() {
            return Err(Error::NotACa {
                subject: issuer.subject().to_owned(),
            });
        }
        if let Some(path_len) = issuer.path_len()
            && intermediates_below > path_len
        {
            return Err(Error::PathLenExceeded {
                subject: issuer.subject().to_owned(),
                path_len,
                found: intermediates_below,
            });
        }
        if issuer.extensions.key_cert_sign == Some(false) {
            return Err(Error::KeyCertSignMissing {
                subject: issuer.subject().to_owned(),
            });
        }
        Ok(())
    }
}

/// Name chaining plus, when both sides carry them, key identifier chaining.
fn is_candidate_issuer(child: &Certificate, issuer: &Certificate) -> bool {
    if child.raw_issuer != issuer.raw_subject {
        return false;
    }
    match (
        &child.extensions.authority_key_id,
        &issuer.extensions.subject_key_id,
    ) {
        (Some(aki), Some(ski)) => aki == ski,
        _ => true,
    }
}

/// Checks every certificate of a path gets: validity and critical extensions.
fn check_common(cert: &Certificate, options: ChainOptions) -> Result<()> {
    if options.at < cert.not_before() {
        return Err(Error::NotYetValid {
            subject: cert.subject().to_owned(),
            not_before: cert.not_before(),
        });
    }
    if options.at > cert.not_after() {
        return Err(Error::Expired {
            subject: cert.subject().to_owned(),
            not_after: cert.not_after(),
        });
    }
    if let Some(oid) = cert.extensions.unknown_critical.first() {
        return Err(Error::UnsupportedCriticalExtension {
            subject: cert.subject().to_owned(),
            oid: oid.clone(),
        });
    }
    Ok(())
}

fn check_usage(cert: &Certificate, options: ChainOptions) -> Result<()> {
    if options.usage == Usage::ClientAuth && !cert.allows_client_auth() {
        return Err(Error::ClientAuthMissing {
            subject: cert.subject().to_owned(),
        });
    }
    Ok(())
}

/// Verify that `issuer`'s public key made the signature on `child`.
///
/// # Errors
/// [`Error::UnsupportedAlgorithm`] for algorithms muster refuses (SHA-1, RSA < 2048 bits, ...),
/// [`Error::BadSignature`] when the signature does not verify.
pub fn verify_signed_by(child: &Certificate, issuer: &Certificate) -> Result<()> {
    let alg = verification_algorithm(child.signature_algorithm, issuer.spki.algorithm)?;
    UnparsedPublicKey::new(alg, &issuer.spki.bits)
        .verify(&child.tbs, &child.signature)
        .map_err(|_| Error::BadSignature {
            subject: child.subject().to_owned(),
            issuer: issuer.subject().to_owned(),
        })
}

fn verification_algorithm(
    sig: SignatureAlgorithmId,
    key: KeyAlgorithm,
) -> Result<&'static dyn VerificationAlgorithm> {
    use SignatureAlgorithmId as S;
    let mismatch =
        || Error::UnsupportedAlgorithm(format!("signature algorithm {sig:?} with a {key} key"));
    match key {
        KeyAlgorithm::Rsa(bits) if bits < 2048 => {
            return Err(Error::UnsupportedAlgorithm(format!(
                "RSA {bits}-bit keys (minimum 2048)"
            )));
        }
        KeyAlgorithm::Rsa(bits) if bits > 8192 => {
            return Err(Error::UnsupportedAlgorithm(format!(
                "RSA {bits}-bit keys (maximum 8192)"
            )));
        }
        _ => {}
    }
    Ok(match (sig, key) {
        (S::RsaPkcs1Sha256, KeyAlgorithm::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (S::RsaPkcs1Sha384, KeyAlgorithm::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (S::RsaPkcs1Sha512, KeyAlgorithm::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (S::RsaPssSha256, KeyAlgorithm::Rsa(_)) => &signature::RSA_PSS_2048_8192_SHA256,
        (S::RsaPssSha384, KeyAlgorithm::Rsa(_)) => &signature::RSA_PSS_2048_8192_SHA384,
        (S::RsaPssSha512, KeyAlgorithm::Rsa(_)) => &signature::RSA_PSS_2048_8192_SHA512,
        (S::EcdsaSha256, KeyAlgorithm::EcdsaP256) => &signature::ECDSA_P256_SHA256_ASN1,
        (S::EcdsaSha384, KeyAlgorithm::EcdsaP256) => &signature::ECDSA_P256_SHA384_ASN1,
        (S::EcdsaSha256, KeyAlgorithm::EcdsaP384) => &signature::ECDSA_P384_SHA256_ASN1,
        (S::EcdsaSha384, KeyAlgorithm::EcdsaP384) => &signature::ECDSA_P384_SHA384_ASN1,
        (S::Ed25519, KeyAlgorithm::Ed25519) => &signature::ED25519,
        (S::Unsupported(oid), _) => {
            return Err(Error::UnsupportedAlgorithm(format!(
                "signature algorithm {oid}"
            )));
        }
        _ => return Err(mismatch()),
    })
}

/// Resolve a certificate's signature algorithm (and PSS parameters) to what muster verifies.
pub(crate) fn signature_algorithm_id(x509: &X509Certificate<'_>) -> Result<SignatureAlgorithmId> {
    use SignatureAlgorithmId as S;
    let alg = &x509.signature_algorithm;
    if alg.algorithm != x509.tbs_certificate.signature.algorithm {
        return Err(Error::malformed(
            "certificate",
            "inner and outer signature algorithms differ",
        ));
    }
    let oid = &alg.algorithm;
    Ok(if *oid == OID_PKCS1_SHA256WITHRSA {
        S::RsaPkcs1Sha256
    } else if *oid == OID_PKCS1_SHA384WITHRSA {
        S::RsaPkcs1Sha384
    } else if *oid == OID_PKCS1_SHA512WITHRSA {
        S::RsaPkcs1Sha512
    } else if *oid == OID_SIG_ECDSA_WITH_SHA256 {
        S::EcdsaSha256
    } else if *oid == OID_SIG_ECDSA_WITH_SHA384 {
        S::EcdsaSha384
    } else if *oid == OID_SIG_ED25519 {
        S::Ed25519
    } else if *oid == OID_PKCS1_RSASSAPSS {
        let params = alg
            .parameters
            .as_ref()
            .and_then(|p| RsaSsaPssParams::try_from(p).ok())
            .ok_or_else(|| {
                Error::malformed("certificate", "RSASSA-PSS without valid parameters")
            })?;
        let hash = params.hash_algorithm_oid();
        if *hash == OID_NIST_HASH_SHA256 {
            S::RsaPssSha256
        } else if *hash == OID_NIST_HASH_SHA384 {
            S::RsaPssSha384
        } else if *hash == OID_NIST_HASH_SHA512 {
            S::RsaPssSha512
        } else {
            S::Unsupported("RSASSA-PSS with SHA-1")
        }
    } else {
        S::Unsupported(known_oid_name(&oid.to_id_string()))
    })
}

fn known_oid_name(oid: &str) -> &'static str {
    match oid {
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => "sha1WithRSAEncryption (SHA-1)",
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption (MD5)",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1 (SHA-1)",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.3.101.113" => "Ed448",
        _ => "unrecognised signature algorithm",
    }
}
