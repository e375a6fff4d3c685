//! Reading certificates and keys from bytes: PEM (any number of blocks, any order), DER and
//! PKCS#12, with the format detected from the content rather than the file name.

use std::fmt;

use pkcs8::EncryptedPrivateKeyInfoRef;

use crate::cert::Certificate;
use crate::error::{Error, Result};

/// The encoding a bundle was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text PEM blocks.
    Pem,
    /// One binary DER certificate or key.
    Der,
    /// A PKCS#12 (PFX) archive.
    Pkcs12,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pem => "PEM",
            Self::Der => "DER",
            Self::Pkcs12 => "PKCS#12",
        })
    }
}

/// How a private key is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncoding {
    /// PKCS#8 `PrivateKeyInfo` (PEM `PRIVATE KEY`).
    Pkcs8,
    /// PKCS#1 `RSAPrivateKey` (PEM `RSA PRIVATE KEY`).
    Pkcs1,
    /// SEC1 `ECPrivateKey` (PEM `EC PRIVATE KEY`).
    Sec1,
}

/// A private key, in plaintext DER. `Debug` never prints the key material.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    der: Vec<u8>,
    encoding: KeyEncoding,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("encoding", &self.encoding)
            .field("der", &"<redacted>")
            .finish()
    }
}

impl PrivateKey {
    /// Wrap plaintext DER of a known encoding.
    #[must_use]
    pub fn from_der(der: Vec<u8>, encoding: KeyEncoding) -> Self {
        Self { der, encoding }
    }

    /// The plaintext DER.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The encoding of [`Self::der`].
    #[must_use]
    pub fn encoding(&self) -> KeyEncoding {
        self.encoding
    }

    /// PEM with the label matching the encoding.
    #[must_use]
    pub fn to_pem(&self) -> String {
        let label = match self.encoding {
            KeyEncoding::Pkcs8 => "PRIVATE KEY",
            KeyEncoding::Pkcs1 => "RSA PRIVATE KEY",
            KeyEncoding::Sec1 => "EC PRIVATE KEY",
        };
        encode_pem(label, &self.der)
    }

    /// The key as an rcgen key pair (for signing).
    pub(crate) fn key_pair(&self) -> Result<rcgen::KeyPair> {
        rcgen::KeyPair::try_from(self.der.as_slice()).map_err(|e| {
            Error::malformed("private key", format!("cannot be used for signing ({e})"))
        })
    }

    /// Check that this key belongs to `cert`.
    ///
    /// # Errors
    /// [`Error::KeyMismatch`] when the public halves differ; [`Error::Malformed`] when the key
    /// cannot be loaded.
    pub fn check_matches(&self, cert: &Certificate) -> Result<()> {
        let pair = self.key_pair()?;
        if pair.public_key_raw() == cert.spki.bits.as_slice() {
            Ok(())
        } else {
            Err(Error::KeyMismatch {
                subject: cert.subject().to_owned(),
            })
        }
    }
}

/// Everything read from one file.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The certificates, in file order (for PKCS#12: the key's certificate first).
    pub certificates: Vec<Certificate>,
    /// The private key, if the file holds one.
    pub key: Option<PrivateKey>,
    /// The encoding the file used.
    pub format: Format,
}

/// Read certificates and at most one private key from PEM, DER or PKCS#12 bytes.
///
/// `password` opens PKCS#12 files and encrypted PKCS#8 keys.
///
/// # Errors
/// [`Error::Malformed`] for unreadable input (truncated PEM, DER junk, bad base64),
/// [`Error::Pkcs12NeedsPassword`] / [`Error::WrongPassword`] for PKCS#12,
/// [`Error::EncryptedKeyNeedsPassword`] for an encrypted key without password.
pub fn read_bundle(bytes: &[u8], password: Option<&str>) -> Result<Bundle> {
    if looks_like_pem(bytes) {
        return read_pem(bytes, password);
    }
    if bytes.is_empty() {
        return Err(Error::malformed("input", "the file is empty"));
    }
    match der_kind(bytes) {
        DerKind::Certificate => Ok(Bundle {
            certificates: vec![Certificate::from_der(bytes)?],
            key: None,
            format: Format::Der,
        }),
        DerKind::Pkcs12 => {
            let password = password.ok_or(Error::Pkcs12NeedsPassword)?;
            crate::pkcs12::read(bytes, password)
        }
        DerKind::Pkcs8 => Ok(Bundle {
            certificates: Vec::new(),
            key: Some(PrivateKey::from_der(bytes.to_vec(), KeyEncoding::Pkcs8)),
            format: Format::Der,
        }),
        DerKind::Unknown => Err(Error::malformed(
            "input",
            "neither PEM text nor a DER certificate, PKCS#8 key or PKCS#12 archive",
        )),
    }
}

/// Read one or more certificates (PEM or DER); keys in the same file are ignored.
///
/// # Errors
/// As [`read_bundle`], plus [`Error::NoCertificate`] when there is none.
pub fn read_certificates(bytes: &[u8]) -> Result<Vec<Certificate>> {
    let bundle = read_bundle(bytes, None)?;
    if bundle.certificates.is_empty() {
        return Err(Error::NoCertificate);
    }
    Ok(bundle.certificates)
}

/// Read exactly one certificate.
///
/// # Errors
/// As [`read_certificates`]; also [`Error::Malformed`] when there are several.
pub fn read_certificate(bytes: &[u8]) -> Result<Certificate> {
    let mut certs = read_certificates(bytes)?;
    if certs.len() > 1 {
        return Err(Error::malformed(
            "input",
            format!("expected one certificate, found {}", certs.len()),
        ));
    }
    certs.pop().ok_or(Error::NoCertificate)
}

/// Read a private key (PEM or DER), decrypting an encrypted PKCS#8 key with `password`.
///
/// # Errors
/// [`Error::NoPrivateKey`] when the input holds none; [`Error::EncryptedKeyNeedsPassword`];
/// [`Error::WrongPassword`]; [`Error::Malformed`].
pub fn read_private_key(bytes: &[u8], password: Option<&str>) -> Result<PrivateKey> {
    read_bundle(bytes, password)?.key.ok_or(Error::NoPrivateKey)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn read_pem(bytes: &[u8], password: Option<&str>) -> Result<Bundle> {
    let blocks = pem::parse_many(bytes).map_err(|e| Error::malformed("PEM", e))?;
    let begins = bytes.windows(11).filter(|w| *w == b"-----BEGIN ").count();
    if blocks.len() != begins {
        return Err(Error::malformed(
            "PEM",
            format!(
                "{begins} BEGIN line(s) but {} complete block(s): the file is truncated or damaged",
                blocks.len()
            ),
        ));
    }
    let mut certificates = Vec::new();
    let mut key = None;
    for (n, block) in blocks.iter().enumerate() {
        let number = n + 1;
        let parsed_key = match block.tag() {
            "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => {
                let cert = Certificate::from_der(block.contents()).map_err(|e| match e {
                    Error::Malformed { what, reason } => Error::Malformed {
                        what,
                        reason: format!("PEM block {number}: {reason}"),
                    },
                    other => other,
                })?;
                certificates.push(cert);
                None
            }
            "PRIVATE KEY" => Some(PrivateKey::from_der(
                block.contents().to_vec(),
                KeyEncoding::Pkcs8,
            )),
            "RSA PRIVATE KEY" | "EC PRIVATE KEY" if block.headers().get("Proc-Type").is_some() => {
                return Err(Error::UnsupportedAlgorithm(
                    "legacy OpenSSL-encrypted PEM key; convert it with `openssl pkcs8 -topk8`"
                        .into(),
                ));
            }
            "RSA PRIVATE KEY" => Some(PrivateKey::from_der(
                block.contents().to_vec(),
                KeyEncoding::Pkcs1,
            )),
            "EC PRIVATE KEY" => Some(PrivateKey::from_der(
                block.contents().to_vec(),
                KeyEncoding::Sec1,
            )),
            "ENCRYPTED PRIVATE KEY" => {
                let password = password.ok_or(Error::EncryptedKeyNeedsPassword)?;
                Some(decrypt_pkcs8(block.contents(), password)?)
            }
            // Parameters and public keys travel in the same files; they carry nothing we need.
            "EC PARAMETERS" | "PUBLIC KEY" | "DH PARAMETERS" => None,
            _ => None,
        };
        if let Some(k) = parsed_key {
            if key.is_some() {
                return Err(Error::malformed(
                    "PEM",
                    "more than one private key in the file",
                ));
            }
            key = Some(k);
        }
    }
    if certificates.is_empty() && key.is_none() {
        let found = blocks
            .first()
            .map(|b| b.tag().to_owned())
            .unwrap_or_default();
        return Err(Error::NotACertificate { found });
    }
    Ok(Bundle {
        certificates,
        key,
        format: Format::Pem,
    })
}

fn decrypt_pkcs8(der: &[u8], password: &str) -> Result<PrivateKey> {
    let info = EncryptedPrivateKeyInfoRef::try_from(der).map_err(|e| {
        Error::malformed(
            "private key",
            format!("encrypted PKCS#8 cannot be read ({e})"),
        )
    })?;
    let plain = info
        .decrypt(password.as_bytes())
        .map_err(|_| Error::WrongPassword)?;
    Ok(PrivateKey::from_der(
        plain.as_bytes().to_vec(),
        KeyEncoding::Pkcs8,
    ))
}

enum DerKind {
    Certificate,
    Pkcs12,
    Pkcs8,
    Unknown,
}

/// Tell a DER certificate from a PKCS#12 archive or a PKCS#8 key by the first element of the
/// outer SEQUENCE: a certificate starts with the TBS SEQUENCE, the other two with an INTEGER
/// version (3 for PFX, 0 or 1 for PKCS#8).
fn der_kind(bytes: &[u8]) -> DerKind {
    let Some((&0x30, rest)) = bytes.split_first() else {
        return DerKind::Unknown;
    };
    let Some(inner) = skip_length(rest) else {
        return DerKind::Unknown;
    };
    match inner {
        [0x30, ..] => DerKind::Certificate,
        [0x02, 0x01, 3, ..] => DerKind::Pkcs12,
        [0x02, 0x01, 0 | 1, ..] => DerKind::Pkcs8,
        _ => DerKind::Unknown,
    }
}

fn skip_length(bytes: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = bytes.split_first()?;
    if first < 0x80 {
        return Some(rest);
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    rest.get(n..)
}

/// Encode DER as one PEM block with `\n` line endings.
#[must_use]
pub fn encode_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
