//! # muster-pki
//!
//! X.509 for muster, shared by the `muster certs` tool and the server: reading certificates and
//! keys, identifying them, validating device chains, checking proof of possession, issuing
//! certificates and packing PKCS#12. Pure: no file, network or clock access — callers pass bytes
//! and the time.
//!
//! # Layout
//! - [`error`]: the one [`Error`] type, with a client-facing [`error::Category`].
//! - [`cert`]: [`Certificate`], a parsed certificate with its identity (subject, CN, SANs,
//!   serial, validity, key algorithm, SHA-1/SHA-256 thumbprints, CA and path length).
//! - [`decode`]: PEM (many blocks, any order), DER and PKCS#12 detection; private keys
//!   (PKCS#8, PKCS#1, SEC1, encrypted PKCS#8).
//! - [`chain`]: path building and validation against trust anchors at an injected time.
//! - [`pop`]: proof of possession of a CA by a verification certificate.
//! - [`issue`]: key generation and certificate issuing (root, intermediate, client, server,
//!   verification) on top of `rcgen`.
//! - [`pkcs12`]: reading and writing PFX archives.
//!
//! Parsing uses `x509-parser`, signatures `aws-lc-rs` (the same provider rustls uses in the
//! server), generation `rcgen`, PKCS#12 `p12-keystore`; see ARCHITECTURE.md for why.

pub mod cert;
pub mod chain;
pub mod decode;
pub mod error;
pub mod issue;
pub mod pkcs12;
pub mod pop;

pub use cert::{Certificate, KeyAlgorithm, hex_upper};
pub use chain::{
    ChainOptions, PathElement, Usage, ValidatedPath, validate_chain, verify_signed_by,
};
pub use decode::{
    Bundle, Format, KeyEncoding, PrivateKey, read_bundle, read_certificate, read_certificates,
    read_private_key,
};
pub use error::{Category, Error, Result};
pub use issue::{Algorithm, Issued, Issuer, Profile, Request, generate_key, self_signed};
pub use pop::verify_proof_of_possession;
