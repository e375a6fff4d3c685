//! Device credentials and server trust: the client certificate chain with its private key
//! ([`Identity`]), the roots the server certificate must chain to ([`TrustRoots`]), and the
//! rustls client configurations built from them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use muster_pki::{Certificate, KeyEncoding, PrivateKey};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// A device's X.509 credentials: its certificate (leaf first, then any intermediates it should
/// present) and the leaf's private key.
///
/// `Debug` shows the subject and thumbprint, never the key. Cheap to clone (shared).
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    /// The leaf (also `chain[0]`), kept apart so that reading it cannot fail.
    leaf: Certificate,
    chain: Vec<Certificate>,
    key: PrivateKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.leaf().subject())
            .field("thumbprint", &self.thumbprint())
            .field("chain_len", &self.inner.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Build an identity from parsed certificates and a key.
    ///
    /// The certificate that matches `key` becomes the leaf (first); the others keep their order
    /// after it, so files that list the CA before the device certificate work too.
    ///
    /// # Errors
    /// [`Error::Certificate`] when `chain` is empty or no certificate matches the key.
    pub fn new(mut chain: Vec<Certificate>, key: PrivateKey) -> Result<Self, Error> {
        let context = || "client certificate".to_owned();
        if chain.is_empty() {
            return Err(Error::Certificate {
                context: context(),
                source: muster_pki::Error::NoCertificate,
            });
        }
        let position = chain.iter().position(|c| key.check_matches(c).is_ok());
        match position {
            Some(i) => {
                let leaf = chain.remove(i);
                chain.insert(0, leaf.clone());
                Ok(Self {
                    inner: Arc::new(Inner { leaf, chain, key }),
                })
            }
            None => {
                // Report the mismatch against the first certificate, the conventional leaf.
                let first = chain.first().ok_or_else(|| Error::Certificate {
                    context: context(),
                    source: muster_pki::Error::NoCertificate,
                })?;
                let source = key
                    .check_matches(first)
                    .err()
                    .unwrap_or(muster_pki::Error::NoCertificate);
                Err(Error::Certificate {
                    context: context(),
                    source,
                })
            }
        }
    }

    /// Read PEM text: certificates (leaf first) and, when `key_pem` is `None`, the private key
    /// from the same text.
    ///
    /// # Errors
    /// [`Error::Certificate`] for unreadable PEM, a missing or encrypted key, or a key that
    /// matches no certificate.
    pub fn from_pem(cert_pem: &[u8], key_pem: Option<&[u8]>) -> Result<Self, Error> {
        Self::read_pem(cert_pem, key_pem, "client certificate", "private key")
    }

    /// Read a PEM certificate file and its key (from `key` when given, else from the
    /// certificate file itself).
    ///
    /// # Errors
    /// [`Error::File`] when a file cannot be read; otherwise as [`Identity::from_pem`], with
    /// the file name in the message.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: Option<&Path>) -> Result<Self, Error> {
        let cert = cert.as_ref();
        let cert_bytes = read_file(cert)?;
        let key_bytes = key.map(read_file).transpose()?;
        let key_context = key.unwrap_or(cert).display().to_string();
        Self::read_pem(
            &cert_bytes,
            key_bytes.as_deref(),
            &cert.display().to_string(),
            &key_context,
        )
    }

    /// Open a PKCS#12 (PFX) file.
    ///
    /// # Errors
    /// [`Error::File`], or [`Error::Certificate`] for a wrong password or an archive without a
    /// key or certificate.
    pub fn from_pkcs12(path: impl AsRef<Path>, password: &str) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Self::pkcs12(&bytes, password, &path.display().to_string())
    }

    /// Open PKCS#12 (PFX) bytes.
    ///
    /// # Errors
    /// As [`Identity::from_pkcs12`].
    pub fn from_pkcs12_bytes(bytes: &[u8], password: &str) -> Result<Self, Error> {
        Self::pkcs12(bytes, password, "PKCS#12 archive")
    }

    fn pkcs12(bytes: &[u8], password: &str, context: &str) -> Result<Self, Error> {
        let bundle = muster_pki::read_bundle(bytes, Some(password)).map_err(|source| {
            Error::Certificate {
                context: context.to_owned(),
                source,
            }
        })?;
        let key = bundle.key.ok_or_else(|| Error::Certificate {
            context: context.to_owned(),
            source: muster_pki::Error::NoPrivateKey,
        })?;
        Self::new(bundle.certificates, key)
    }

    fn read_pem(
        cert_pem: &[u8],
        key_pem: Option<&[u8]>,
        cert_context: &str,
        key_context: &str,
    ) -> Result<Self, Error> {
        let bundle =
            muster_pki::read_bundle(cert_pem, None).map_err(|source| Error::Certificate {
                context: cert_context.to_owned(),
                source,
            })?;
        let key = match key_pem {
            Some(bytes) => muster_pki::read_private_key(bytes, None),
            None => bundle.key.ok_or(muster_pki::Error::NoPrivateKey),
        }
        .map_err(|source| Error::Certificate {
            context: key_context.to_owned(),
            source,
        })?;
        Self::new(bundle.certificates, key)
    }

    /// The device (leaf) certificate.
    #[must_use]
    pub fn leaf(&self) -> &Certificate {
        &self.inner.leaf
    }

    /// The whole chain presented to the server, leaf first.
    #[must_use]
    pub fn chain(&self) -> &[Certificate] {
        &self.inner.chain
    }

    /// The leaf's subject common name (for DPS, the registration id).
    #[must_use]
    pub fn common_name(&self) -> Option<&str> {
        self.leaf().common_name()
    }

    /// The registration id this certificate proves: its common name.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] when the certificate has no common name.
    pub fn registration_id(&self) -> Result<&str, Error> {
        self.common_name()
            .filter(|cn| !cn.is_empty())
            .ok_or_else(|| {
                Error::InvalidOptions(format!(
                    "the client certificate '{}' has no common name to use as registration id",
                    self.leaf().subject()
                ))
            })
    }

    /// SHA-1 thumbprint of the leaf, upper-case hex (as Azure shows it).
    #[must_use]
    pub fn thumbprint(&self) -> String {
        self.leaf().sha1_thumbprint()
    }

    /// SHA-256 thumbprint of the leaf, upper-case hex.
    #[must_use]
    pub fn sha256_thumbprint(&self) -> String {
        self.leaf().sha256_thumbprint()
    }

    fn rustls_chain(&self) -> Vec<CertificateDer<'static>> {
        self.inner
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.der().to_vec()))
            .collect()
    }

    fn rustls_key(&self) -> PrivateKeyDer<'static> {
        let der = self.inner.key.der().to_vec();
        match self.inner.key.encoding() {
            KeyEncoding::Pkcs8 => PrivateKeyDer::Pkcs8(der.into()),
            KeyEncoding::Pkcs1 => PrivateKeyDer::Pkcs1(der.into()),
            KeyEncoding::Sec1 => PrivateKeyDer::Sec1(der.into()),
        }
    }
}

/// The roots a server certificate must chain to. Cheap to clone (shared).
///
/// Give muster's trust bundle (`muster-data/tls/ca.pem`, `muster info`'s `trustBundle`) with
/// [`TrustRoots::from_pem_file`]; [`TrustRoots::default`] trusts the Mozilla root program
/// (`webpki-roots`), which suits Azure itself.
#[derive(Clone)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
    source: &'static str,
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoots")
            .field("source", &self.source)
            .field("roots", &self.store.len())
            .finish()
    }
}

impl Default for TrustRoots {
    fn default() -> Self {
        Self::webpki()
    }
}

impl TrustRoots {
    /// The Mozilla root program, as shipped in `webpki-roots`.
    #[must_use]
    pub fn webpki() -> Self {
        let store = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self {
            store: Arc::new(store),
            source: "webpki-roots",
        }
    }

    /// Every certificate in PEM (or DER) bytes becomes a root.
    ///
    /// # Errors
    /// [`Error::Certificate`] when no certificate can be read or rustls refuses one.
    pub fn from_pem(bytes: &[u8]) -> Result<Self, Error> {
        Self::read(bytes, "trust bundle")
    }

    /// Read a PEM trust bundle file.
    ///
    /// # Errors
    /// [`Error::File`], or as [`TrustRoots::from_pem`] naming the file.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        Self::read(&read_file(path)?, &path.display().to_string())
    }

    /// Use these certificates as roots.
    ///
    /// # Errors
    /// [`Error::Certificate`] when the list is empty or rustls cannot use a certificate.
    pub fn from_certificates(certificates: &[Certificate]) -> Result<Self, Error> {
        let mut store = RootCertStore::empty();
        for c in certificates {
            store
                .add(CertificateDer::from(c.der().to_vec()))
                .map_err(|e| Error::Certificate {
                    context: format!("trust anchor '{}'", c.subject()),
                    source: muster_pki::Error::Malformed {
                        what: "certificate",
                        reason: e.to_string(),
                    },
                })?;
        }
        if store.is_empty() {
            return Err(Error::Certificate {
                context: "trust bundle".to_owned(),
                source: muster_pki::Error::NoCertificate,
            });
        }
        Ok(Self {
            store: Arc::new(store),
            source: "custom",
        })
    }

    fn read(bytes: &[u8], context: &str) -> Result<Self, Error> {
        let certs = muster_pki::read_certificates(bytes).map_err(|source| Error::Certificate {
            context: context.to_owned(),
            source,
        })?;
        Self::from_certificates(&certs)
    }

    /// How many roots are trusted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether no root is trusted (never true for values built by this type).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

/// A rustls client configuration trusting `trust`, presenting `identity` when given, offering
/// `alpn` protocols.
pub(crate) fn client_config(
    trust: &TrustRoots,
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::clone(&trust.store));
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.rustls_chain(), id.rustls_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}
