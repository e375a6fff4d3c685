//! [`Certificate`]: one parsed X.509 certificate, owned, with everything muster needs from it
//! extracted once (identity for display and thumbprint matching, and the fields chain
//! validation reads on every handshake).

use std::fmt;

use aws_lc_rs::digest;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::{Error, Result};

/// The public key algorithm of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA with the given modulus size in bits.
    Rsa(usize),
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// ECDSA on NIST P-521 (parsed and shown; not accepted for signatures).
    EcdsaP521,
    /// Ed25519.
    Ed25519,
    /// Anything else (shown by OID).
    Other,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa(bits) => write!(f, "RSA {bits}"),
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::EcdsaP521 => f.write_str("ECDSA P-521"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Other => f.write_str("unknown"),
        }
    }
}

/// An X.509 extension that chain validation must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// basicConstraints: `Some((ca, path_len))` when present.
    pub(crate) basic_constraints: Option<(bool, Option<u32>)>,
    /// keyUsage keyCertSign bit, when keyUsage is present.
    pub(crate) key_cert_sign: Option<bool>,
    /// extendedKeyUsage: `Some(allows client auth)` when present.
    pub(crate) client_auth: Option<bool>,
    pub(crate) subject_key_id: Option<Vec<u8>>,
    pub(crate) authority_key_id: Option<Vec<u8>>,
    /// OIDs of critical extensions muster does not process.
    pub(crate) unknown_critical: Vec<String>,
}

/// A parsed X.509 certificate.
///
/// Construction parses and checks the whole structure, so holding a `Certificate` means the DER
/// is well-formed; the original bytes are kept for signature checks and re-encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    subject: String,
    issuer: String,
    common_name: Option<String>,
    subject_alt_names: Vec<String>,
    serial_hex: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    key_algorithm: KeyAlgorithm,
    sha1: [u8; 20],
    sha256: [u8; 32],
    // Raw pieces used by chain validation (byte ranges are cheap to keep owned).
    pub(crate) raw_subject: Vec<u8>,
    pub(crate) raw_issuer: Vec<u8>,
    pub(crate) tbs: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) signature_algorithm: SignatureAlgorithmId,
    pub(crate) spki: PublicKeyBits,
    pub(crate) extensions: Extensions,
    pub(crate) self_issued: bool,
}

/// The signature algorithm of a certificate, resolved to what muster can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignatureAlgorithmId {
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPkcs1Sha512,
    RsaPssSha256,
    RsaPssSha384,
    RsaPssSha512,
    EcdsaSha256,
    EcdsaSha384,
    Ed25519,
    /// Anything else, by dotted OID (refused when verified).
    Unsupported(&'static str),
}

/// A subject public key: its algorithm and the raw key bits from the SPKI BIT STRING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKeyBits {
    pub(crate) algorithm: KeyAlgorithm,
    pub(crate) bits: Vec<u8>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("sha256", &self.sha256_thumbprint())
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parse one DER-encoded certificate.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the bytes are not exactly one well-formed X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (rest, x509) = X509Certificate::from_der(der).map_err(|e| {
            Error::malformed("certificate", format!("not a DER X.509 certificate ({e})"))
        })?;
        if !rest.is_empty() {
            return Err(Error::malformed(
                "certificate",
                format!("{} unexpected bytes after the certificate", rest.len()),
            ));
        }
        Self::from_parsed(der, &x509)
    }

    fn from_parsed(der: &[u8], x509: &X509Certificate<'_>) -> Result<Self> {
        let subject = x509.subject().to_string();
        let issuer = x509.issuer().to_string();
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut extensions = Extensions {
            basic_constraints: None,
            key_cert_sign: None,
            client_auth: None,
            subject_key_id: None,
            authority_key_id: None,
            unknown_critical: Vec::new(),
        };
        let mut subject_alt_names = Vec::new();
        let mut seen = Vec::new();
        for ext in x509.extensions() {
            let oid = ext.oid.to_id_string();
            if seen.contains(&oid) {
                return Err(Error::malformed(
                    "certificate",
                    format!("extension {oid} appears twice"),
                ));
            }
            seen.push(oid.clone());
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    extensions.basic_constraints = Some((bc.ca, bc.path_len_constraint));
                }
                ParsedExtension::KeyUsage(ku) => {
                    extensions.key_cert_sign = Some(ku.key_cert_sign());
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    extensions.client_auth = Some(eku.client_auth || eku.any);
                }
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    extensions.subject_key_id = Some(id.0.to_vec());
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    extensions.authority_key_id =
                        aki.key_identifier.as_ref().map(|id| id.0.to_vec());
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    subject_alt_names.extend(san.general_names.iter().map(general_name_to_string));
                }
                ParsedExtension::ParseError { error } => {
                    return Err(Error::malformed(
                        "certificate",
                        format!("extension {oid}: {error}"),
                    ));
                }
                // Extensions whose content does not change whether muster accepts a client chain.
                // Name constraints, policy constraints and policy mappings are deliberately not in
                // this list: muster does not enforce them, so when critical they refuse the chain.
                ParsedExtension::CertificatePolicies(_)
                | ParsedExtension::IssuerAlternativeName(_)
                | ParsedExtension::CRLDistributionPoints(_)
                | ParsedExtension::AuthorityInfoAccess(_)
                | ParsedExtension::SubjectInfoAccess(_)
                | ParsedExtension::NSCertType(_)
                | ParsedExtension::NsCertComment(_)
                | ParsedExtension::SCT(_) => {}
                _ => {
                    if ext.critical {
                        extensions.unknown_critical.push(oid);
                    }
                }
            }
        }

        let spki = x509.public_key();
        let key_algorithm = key_algorithm(x509)?;
        let signature_algorithm = crate::chain::signature_algorithm_id(x509)?;
        let validity = x509.validity();
        let raw_subject = x509.subject().as_raw().to_vec();
        let raw_issuer = x509.issuer().as_raw().to_vec();
        let self_issued = raw_subject == raw_issuer;
        let mut sha1 = [0u8; 20];
        sha1.copy_from_slice(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Ok(Self {
            der: der.to_vec(),
            subject,
            issuer,
            common_name,
            subject_alt_names,
            serial_hex: hex_upper(x509.raw_serial()),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            key_algorithm,
            sha1,
            sha256,
            raw_subject,
            raw_issuer,
            tbs: x509.tbs_certificate.as_ref().to_vec(),
            signature: x509.signature_value.data.to_vec(),
            signature_algorithm,
            spki: PublicKeyBits {
                algorithm: key_algorithm,
                bits: spki.subject_public_key.data.to_vec(),
            },
            extensions,
            self_issued,
        })
    }

    /// The DER encoding.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding (one `CERTIFICATE` block).
    #[must_use]
    pub fn to_pem(&self) -> String {
        crate::decode::encode_pem("CERTIFICATE", &self.der)
    }

    /// The subject distinguished name, RFC 4514 style (`CN=device1, O=Contoso`).
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The issuer distinguished name.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The first common name of the subject, if any. For a device this is its registration id.
    #[must_use]
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// Subject alternative names, as `DNS:host`, `IP:1.2.3.4`, `email:x`, `URI:u`.
    #[must_use]
    pub fn subject_alt_names(&self) -> &[String] {
        &self.subject_alt_names
    }

    /// Serial number, upper-case hex.
    #[must_use]
    pub fn serial(&self) -> &str {
        &self.serial_hex
    }

    /// Start of validity.
    #[must_use]
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of validity.
    #[must_use]
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether `at` lies within the validity period.
    #[must_use]
    pub fn is_valid_at(&self, at: OffsetDateTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// The subject public key algorithm.
    #[must_use]
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// SHA-1 thumbprint, upper-case hex without separators (as Azure shows it).
    #[must_use]
    pub fn sha1_thumbprint(&self) -> String {
        hex_upper(&self.sha1)
    }

    /// SHA-256 thumbprint, upper-case hex without separators.
    #[must_use]
    pub fn sha256_thumbprint(&self) -> String {
        hex_upper(&self.sha256)
    }

    /// Whether basicConstraints marks this certificate as a CA.
    #[must_use]
    pub fn is_ca(&self) -> bool {
        matches!(self.extensions.basic_constraints, Some((true, _)))
    }

    /// The pathLenConstraint of a CA, if it has one.
    #[must_use]
    pub fn path_len(&self) -> Option<u32> {
        match self.extensions.basic_constraints {
            Some((true, path_len)) => path_len,
            _ => None,
        }
    }

    /// The raw SHA-1 digest of the DER (the conventional PKCS#12 localKeyId).
    pub(crate) fn sha1_digest(&self) -> &[u8; 20] {
        &self.sha1
    }

    /// Whether subject and issuer are the same name (a root, or a self-issued certificate).
    #[must_use]
    pub fn is_self_issued(&self) -> bool {
        self.self_issued
    }

    /// Whether the certificate's own key verifies its signature (a self-signed root).
    #[must_use]
    pub fn is_self_signed(&self) -> bool {
        self.self_issued && crate::chain::verify_signed_by(self, self).is_ok()
    }

    /// Whether an extendedKeyUsage extension, when present, allows client authentication.
    #[must_use]
    pub fn allows_client_auth(&self) -> bool {
        self.extensions.client_auth.unwrap_or(true)
    }
}

fn key_algorithm(x509: &X509Certificate<'_>) -> Result<KeyAlgorithm> {
    let spki = x509.public_key();
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => Ok(KeyAlgorithm::Rsa(rsa.key_size())),
            _ => Err(Error::malformed(
                "certificate",
                "RSA public key cannot be read",
            )),
        };
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| {
                Error::malformed("certificate", "EC public key without a named curve")
            })?;
        return Ok(if curve == OID_EC_P256 {
            KeyAlgorithm::EcdsaP256
        } else if curve == OID_NIST_EC_P384 {
            KeyAlgorithm::EcdsaP384
        } else if curve == OID_NIST_EC_P521 {
            KeyAlgorithm::EcdsaP521
        } else {
            KeyAlgorithm::Other
        });
    }
    if *oid == OID_SIG_ED25519 {
        return Ok(KeyAlgorithm::Ed25519);
    }
    Ok(KeyAlgorithm::Other)
}

fn general_name_to_string(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(ip) => match ip.len() {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(ip);
                format!("IP:{}", std::net::Ipv4Addr::from(a))
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(ip);
                format!("IP:{}", std::net::Ipv6Addr::from(a))
            }
            _ => format!("IP:{}", hex_upper(ip)),
        },
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        other => format!("{other:?}"),
    }
}

/// Upper-case hex without separators.
#[must_use]
pub fn hex_upper(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02X}");
    }
    out
}
