//! Issuing certificates: roots, intermediates, device (client) leaves, server certificates and
//! proof-of-possession verification certificates, with the extensions a strict verifier expects
//! (basicConstraints, keyUsage, extendedKeyUsage, subject and authority key identifiers).
//!
//! Validity is always given by the caller (no clock is read here), and serials are 128-bit random.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::cert::Certificate;
use crate::decode::{KeyEncoding, PrivateKey};
use crate::error::{Error, Result};

/// The key algorithm of a new certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256 (the default: small, fast, accepted everywhere).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
    /// RSA 3072 with PKCS#1 v1.5 SHA-256.
    Rsa3072,
    /// RSA 4096 with PKCS#1 v1.5 SHA-256.
    Rsa4096,
    /// Ed25519.
    Ed25519,
}

impl Algorithm {
    /// Every algorithm with its command-line name.
    pub const ALL: [(Self, &'static str); 6] = [
        (Self::EcdsaP256, "ecdsa-p256"),
        (Self::EcdsaP384, "ecdsa-p384"),
        (Self::Rsa2048, "rsa-2048"),
        (Self::Rsa3072, "rsa-3072"),
        (Self::Rsa4096, "rsa-4096"),
        (Self::Ed25519, "ed25519"),
    ];

    /// The command-line name (`ecdsa-p256`, `rsa-2048`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("ecdsa-p256", |(_, n)| n)
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(a, _)| *a)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|(_, n)| *n).collect();
                Error::UnsupportedAlgorithm(format!("'{s}' (choose one of {})", names.join(", ")))
            })
    }
}

/// Generate a new private key (PKCS#8).
///
/// # Errors
/// [`Error::Issue`] when the crypto library fails.
pub fn generate_key(algorithm: Algorithm) -> Result<PrivateKey> {
    let pair = match algorithm {
        Algorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        Algorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        Algorithm::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        Algorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        Algorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
        }
        Algorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
        }
    }
    .map_err(|e| Error::Issue(format!("key generation failed ({e})")))?;
    Ok(PrivateKey::from_der(
        pair.serialize_der(),
        KeyEncoding::Pkcs8,
    ))
}

/// What kind of certificate to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// A CA (root when self-signed, intermediate when issued): basicConstraints cA=true with the
    /// given pathLenConstraint, keyUsage keyCertSign + cRLSign.
    Ca {
        /// pathLenConstraint; `None` = unconstrained.
        path_len: Option<u8>,
    },
    /// A device (TLS client) leaf: keyUsage digitalSignature (+ keyEncipherment for RSA), EKU
    /// clientAuth.
    Client,
    /// A TLS server leaf for the given DNS names and IP addresses: EKU serverAuth.
    Server {
        /// Host names and IP addresses, as strings.
        names: Vec<String>,
    },
    /// A proof-of-possession verification certificate (CN = the code): keyUsage
    /// digitalSignature, no EKU.
    Verification,
}

/// Everything needed to make one certificate.
#[derive(Debug, Clone)]
pub struct Request {
    /// Subject common name.
    pub common_name: String,
    /// Optional subject organization.
    pub organization: Option<String>,
    /// What the certificate is for.
    pub profile: Profile,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A freshly issued certificate with its private key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub certificate: Certificate,
    /// Its private key (PKCS#8).
    pub key: PrivateKey,
}

/// A CA certificate with its private key, able to sign.
#[derive(Debug, Clone)]
pub struct Issuer {
    certificate: Certificate,
    key: PrivateKey,
}

impl Issuer {
    /// Pair a CA certificate with its key.
    ///
    /// # Errors
    /// [`Error::NotACa`] when the certificate is not a CA, [`Error::KeyMismatch`] when the key
    /// is not the certificate's.
    pub fn new(certificate: Certificate, key: PrivateKey) -> Result<Self> {
        if !certificate.is_ca() {
            return Err(Error::NotACa {
                subject: certificate.subject().to_owned(),
            });
        }
        key.check_matches(&certificate)?;
        Ok(Self { certificate, key })
    }

    /// The CA certificate.
    #[must_use]
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The CA's private key.
    #[must_use]
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// Issue a certificate for `request` with a new key of `algorithm`.
    ///
    /// # Errors
    /// [`Error::Issue`] when the request is invalid or signing fails.
    pub fn issue(&self, request: &Request, algorithm: Algorithm) -> Result<Issued> {
        let key = generate_key(algorithm)?;
        let certificate = self.issue_for_key(request, &key, algorithm)?;
        Ok(Issued { certificate, key })
    }

    /// Issue a certificate for `request` binding an existing key (e.g. from a CSR or a fleet
    /// simulator's pre-generated pool).
    ///
    /// # Errors
    /// [`Error::Issue`] when the request is invalid or signing fails.
    pub fn issue_for_key(
        &self,
        request: &Request,
        key: &PrivateKey,
        algorithm: Algorithm,
    ) -> Result<Certificate> {
        let params = params_for(request, algorithm)?;
        let subject_key = key.key_pair()?;
        let signer = self.key.key_pair()?;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(self.certificate.der()), signer)
                .map_err(|e| Error::Issue(format!("the issuing CA cannot be used ({e})")))?;
        let cert = params
            .signed_by(&subject_key, &issuer)
            .map_err(|e| Error::Issue(e.to_string()))?;
        Certificate::from_der(cert.der())
    }
}

/// Make a self-signed certificate (a root CA when `request.profile` is [`Profile::Ca`]).
///
/// # Errors
/// [`Error::Issue`] when the request is invalid or signing fails.
pub fn self_signed(request: &Request, algorithm: Algorithm) -> Result<Issued> {
    let key = generate_key(algorithm)?;
    let pair = key.key_pair()?;
    let params = params_for(request, algorithm)?;
    let cert = params
        .self_signed(&pair)
        .map_err(|e| Error::Issue(e.to_string()))?;
    Ok(Issued {
        certificate: Certificate::from_der(cert.der())?,
        key,
    })
}

fn params_for(request: &Request, algorithm: Algorithm) -> Result<CertificateParams> {
    if request.common_name.is_empty() || request.common_name.len() > 64 {
        return Err(Error::Issue(
            "the common name must be 1 to 64 characters long".into(),
        ));
    }
    if request.not_after <= request.not_before {
        return Err(Error::Issue("notAfter must be later than notBefore".into()));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(org) = &request.organization {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn.push(DnType::CommonName, request.common_name.as_str());
    params.distinguished_name = dn;
    params.not_before = request.not_before;
    params.not_after = request.not_after;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    match &request.profile {
        Profile::Ca { path_len } => {
            params.is_ca = IsCa::Ca(path_len.map_or(
                BasicConstraints::Unconstrained,
                BasicConstraints::Constrained,
            ));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        Profile::Client => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = leaf_key_usages(algorithm);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        Profile::Server { names } => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = leaf_key_usages(algorithm);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.subject_alt_names =
                names
                    .iter()
                    .map(|n| match IpAddr::from_str(n) {
                        Ok(ip) => Ok(SanType::IpAddress(ip)),
                        Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|e| {
                            Error::Issue(format!("'{n}' is not a valid DNS name ({e})"))
                        }),
                    })
                    .collect::<Result<_>>()?;
        }
        Profile::Verification => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
    }
    Ok(params)
}

fn leaf_key_usages(algorithm: Algorithm) -> Vec<KeyUsagePurpose> {
    if algorithm.is_rsa() {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    }
}

fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Issue("no randomness available".into()))?;
    // Positive and of fixed length: clear the sign bit, and keep the first byte non-zero so DER
    // does not shorten it.
    if let Some(first) = bytes.first_mut() {
        *first = (*first & 0x7f) | 0x10;
    }
    Ok(SerialNumber::from_slice(&bytes))
}
