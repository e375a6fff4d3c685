//! The physical limit for provisioning and connect storms: full mutual-TLS handshakes per
//! second between a bare rustls server and client on loopback, with the certificate profile a
//! fleet uses (an ECDSA P-256 server certificate like `muster serve`'s, P-256 client leaves
//! minted from the fleet's CA, client certificates verified against that CA, no session
//! resumption). Provisioning efficiency = registrations per second / this rate, measured in
//! the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster_pki::{Algorithm, Certificate, Issuer, Profile, Request};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::Error;

/// What to measure.
#[derive(Debug, Clone)]
pub struct HandshakeOptions {
    /// The CA that signs the server and client certificates (the fleet's CA).
    pub issuer: Arc<Issuer>,
    /// How long to run.
    pub duration: Duration,
    /// Handshakes in progress at once.
    pub concurrency: usize,
}

/// The result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeReport {
    /// Completed handshakes.
    pub handshakes: u64,
    /// Failed ones.
    pub failures: u64,
    /// Completed handshakes per second.
    pub handshakes_per_sec: f64,
    /// Seconds measured.
    pub seconds: f64,
    /// Concurrency.
    pub concurrency: usize,
}

fn issue(issuer: &Issuer, name: &str, profile: Profile) -> Result<muster_pki::Issued, Error> {
    let now = time::OffsetDateTime::now_utc();
    issuer
        .issue(
            &Request {
                common_name: name.to_owned(),
                organization: None,
                profile,
                not_before: now - time::Duration::hours(1),
                not_after: now + time::Duration::days(1),
            },
            Algorithm::EcdsaP256,
        )
        .map_err(|source| Error::Certificate {
            context: format!("minting {name}"),
            source,
        })
}

fn der_chain(leaf: &Certificate, issuer: &Issuer) -> Vec<CertificateDer<'static>> {
    vec![
        CertificateDer::from(leaf.der().to_vec()),
        CertificateDer::from(issuer.certificate().der().to_vec()),
    ]
}

fn key_der(key: &muster_pki::PrivateKey) -> PrivateKeyDer<'static> {
    // Freshly generated keys are PKCS#8.
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.der().to_vec()))
}

/// Run the measurement.
///
/// # Errors
/// Certificate or TLS configuration failures, or no loopback socket.
pub async fn run(options: HandshakeOptions) -> Result<HandshakeReport, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let issuer = &options.issuer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(issuer.certificate().der().to_vec()))
        .map_err(Error::TlsConfig)?;
    let roots = Arc::new(roots);

    let server_cert = issue(
        issuer,
        "localhost",
        Profile::Server {
            names: vec!["localhost".into(), "127.0.0.1".into()],
        },
    )?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| Error::InvalidOptions(format!("client verifier: {e}")))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            der_chain(&server_cert.certificate, issuer),
            key_der(&server_cert.key),
        )?;
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                if let Ok(mut tls) = acceptor.accept(socket).await {
                    let mut byte = [0u8; 1];
                    let _ = tls.read(&mut byte).await;
                }
            });
        }
    });

    // A pool of client identities (minting is not part of the handshake rate).
    let mut clients = Vec::new();
    for i in 0..options.concurrency.clamp(1, 64) {
        let leaf = issue(issuer, &format!("handshake-{i}"), Profile::Client)?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(&roots))
            .with_client_auth_cert(der_chain(&leaf.certificate, issuer), key_der(&leaf.key))?;
        config.resumption = rustls::client::Resumption::disabled();
        clients.push(TlsConnector::from(Arc::new(config)));
    }

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + options.duration;
    let mut workers = JoinSet::new();
    for w in 0..options.concurrency.max(1) {
        let connector = clients
            .get(w % clients.len())
            .cloned()
            .ok_or_else(|| Error::InvalidOptions("no client identity".into()))?;
        let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
        workers.spawn(async move {
            let name =
                ServerName::try_from("localhost").unwrap_or_else(|_| unreachable!("a valid name"));
            while Instant::now() < deadline {
                let attempt = async {
                    let tcp = TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    let mut tls = connector.connect(name.clone(), tcp).await?;
                    // TLS 1.3: the server sees the client's certificate with its Finished;
                    // a byte round trip makes sure the server accepted it.
                    tls.write_all(b"x").await?;
                    let _ = tls.shutdown().await;
                    Ok::<_, std::io::Error>(())
                };
                match attempt.await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    serving.abort();
    let handshakes = done.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let per_sec = (handshakes as f64 / seconds * 10.0).round() / 10.0;
    Ok(HandshakeReport {
        handshakes,
        failures: failed.load(Ordering::Relaxed),
        handshakes_per_sec: per_sec,
        seconds: (seconds * 1000.0).round() / 1000.0,
        concurrency: options.concurrency,
    })
}
