//! TLS: one rustls server configuration, built once and shared by both listeners.
//!
//! Client certificates are requested, never required (SAS devices send none), and any chain is
//! accepted *at the handshake* — but the handshake signature is still verified, so a client
//! that presents a certificate has proven it holds its key. Whether the certificate is
//! acceptable (chain to a verified CA, thumbprint, validity, CN) is decided by the DPS and hub
//! code that knows the enrollment, with precise errors.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

/// Accepts any client certificate chain whose handshake signature verifies.
#[derive(Debug)]
struct DeferredClientAuth {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file is unusable.
    #[error("the server certificate or key is unusable")]
    Certificate(#[from] muster_pki::Error),
    /// rustls refused the configuration.
    #[error("rustls refused the TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// Build the server configuration from PEM bytes (certificate chain and key).
///
/// # Errors
/// [`TlsError`] when the files are unusable or do not match.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    alpn_http: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    build(chain_pem, key_pem, alpn_http, true)
}

/// The portal's configuration: HTTP ALPN and *no* client-certificate request, so a browser
/// holding client certificates shows no picker.
///
/// # Errors
/// [`TlsError`] for unusable certificate or key files.
pub fn portal_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    build(chain_pem, key_pem, true, false)
}

fn build(
    chain_pem: &[u8],
    key_pem: &[u8],
    alpn_http: bool,
    request_client_certificate: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = muster_pki::read_certificates(chain_pem)?;
    let key = muster_pki::read_private_key(key_pem, None)?;
    if let Some(leaf) = chain.first() {
        key.check_matches(leaf)?;
    }
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let key_der: PrivateKeyDer<'static> = match key.encoding() {
        muster_pki::KeyEncoding::Pkcs8 => PrivateKeyDer::Pkcs8(key.der().to_vec().into()),
        muster_pki::KeyEncoding::Pkcs1 => PrivateKeyDer::Pkcs1(key.der().to_vec().into()),
        muster_pki::KeyEncoding::Sec1 => PrivateKeyDer::Sec1(key.der().to_vec().into()),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(DeferredClientAuth {
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider) as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = if request_client_certificate {
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key_der)?
    } else {
        builder
            .with_no_client_auth()
            .with_single_cert(certs, key_der)?
    };
    if alpn_http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

/// The peer's certificate chain after the handshake, parsed (leaf first). Unparseable
/// certificates yield an error string for the log.
///
/// # Errors
/// The parse failure, as text.
pub fn peer_chain(
    certs: Option<&[CertificateDer<'_>]>,
) -> Result<Vec<muster_pki::Certificate>, String> {
    certs
        .unwrap_or_default()
        .iter()
        .map(|c| muster_pki::Certificate::from_der(c.as_ref()).map_err(|e| e.to_string()))
        .collect()
}
