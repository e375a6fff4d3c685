//! Authentication of a device or module from what a transport saw: a SAS token and the
//! resource it claims, or the client certificate chain TLS presented.
//!
//! The rules (IoT Hub's):
//! - **SAS**: the token's resource is `{host}/devices/{id}` (or `…/modules/{mid}`) for one of this
//!   server's host names, it has not expired, and it is signed with the identity's primary or
//!   secondary key. Only identities of type `sas` accept tokens.
//! - **`selfSigned`**: the leaf's SHA-1 or SHA-256 thumbprint is one of the identity's, and the
//!   leaf is within its validity period.
//! - **`certificateAuthority`**: the leaf's CN is the device id and the chain validates, for
//!   client authentication, against a *verified* CA certificate. The CAs come from a
//!   [`CaSource`] (the DPS's CA store, through the server's wiring), so this crate needs no
//!   provisioning code.
//! - Unknown and disabled identities are refused before any credential is looked at.

use std::sync::Arc;

use async_trait::async_trait;
use muster_auth::sas::{SasError, SasToken};
use muster_pki::{Certificate, ChainOptions, Usage, validate_chain};
use serde_json::Value;

use crate::docs::DeviceAuth;
use crate::identity::Identity;
use crate::registry::HubError;

/// What a transport saw of a device's credentials.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A SAS token's text (MQTT password, AMQP CBS `put-token`, HTTPS `Authorization`).
    Sas(&'a str),
    /// The client certificate chain, leaf first, as TLS presented it (may be empty).
    X509(&'a [Certificate]),
}

/// Where verified CA certificates come from.
#[async_trait]
pub trait CaSource: Send + Sync + std::fmt::Debug {
    /// Every CA certificate whose proof of possession has been verified.
    ///
    /// # Errors
    /// The source could not be read.
    async fn verified_cas(
        &self,
    ) -> Result<Vec<Certificate>, Box<dyn std::error::Error + Send + Sync>>;
}

/// A source with no CAs (tests, and hubs without certificate-authority devices).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCas;

#[async_trait]
impl CaSource for NoCas {
    async fn verified_cas(
        &self,
    ) -> Result<Vec<Certificate>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Vec::new())
    }
}

/// A successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who connected.
    pub identity: Identity,
    /// When a SAS-authenticated session must end (Unix seconds): the token's expiry.
    pub expires: Option<u64>,
}

/// Why a device was not let in. The message describes this layer; a cause (a SAS or chain
/// failure) is reachable through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The connection names an id that breaks the id rules.
    #[error("the connection names an invalid identity")]
    InvalidId(#[source] muster_types::IdError),
    /// No such device in this hub.
    #[error("unknown device '{0}'")]
    UnknownDevice(String),
    /// No such module on the device.
    #[error("unknown module '{0}'")]
    UnknownModule(String),
    /// The device is disabled.
    #[error("device '{0}' is disabled")]
    Disabled(String),
    /// Neither a token nor a client certificate.
    #[error("no password and no client certificate")]
    NoCredential,
    /// The credential kind does not match the identity's authentication type.
    #[error("the identity authenticates with {expected}, not {presented}")]
    WrongMechanism {
        /// The identity's type.
        expected: String,
        /// What was presented.
        presented: &'static str,
    },
    /// The SAS token was refused.
    #[error("the SAS token was refused")]
    Token(#[source] SasError),
    /// The leaf's thumbprint is not the identity's.
    #[error("the client certificate's thumbprint is not the device's")]
    Thumbprint,
    /// The leaf is expired or not yet valid.
    #[error("the client certificate is outside its validity period")]
    Validity,
    /// The leaf's CN is not the device id.
    #[error("the client certificate's CN is not the device id '{0}'")]
    CommonName(String),
    /// The chain does not validate against a verified CA.
    #[error("the client certificate chain does not lead to a verified CA")]
    Chain(#[source] muster_pki::Error),
    /// The registry or the CA source could not be read.
    #[error("cannot check the credentials now")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AuthError {
    /// A failure of the server, not of the device's credentials (MQTT answers "server
    /// unavailable" rather than "not authorized").
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<HubError> for AuthError {
    fn from(e: HubError) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

/// Check `credential` against the identity document `doc` of `identity`.
pub(crate) async fn check(
    identity: &Identity,
    doc: &Value,
    credential: Credential<'_>,
    resource_hosts: &[String],
    cas: &Arc<dyn CaSource>,
    now: time::OffsetDateTime,
) -> Result<Option<u64>, AuthError> {
    let auth = DeviceAuth::from_json(doc.get("authentication").unwrap_or(&Value::Null));
    match credential {
        Credential::Sas(text) => {
            let DeviceAuth::Sas { primary, secondary } = &auth else {
                return Err(AuthError::WrongMechanism {
                    expected: auth.kind().to_owned(),
                    presented: "a SAS token",
                });
            };
            let token = SasToken::parse(text).map_err(AuthError::Token)?;
            let path = match &identity.module_id {
                Some(m) => format!("devices/{}/modules/{m}", identity.device_id),
                None => format!("devices/{}", identity.device_id),
            };
            let unix = u64::try_from(now.unix_timestamp()).unwrap_or(0);
            token
                .check_hosted(resource_hosts, Some(&path), unix)
                .map_err(AuthError::Token)?;
            token
                .verify_signature(&[primary, secondary])
                .map_err(AuthError::Token)?;
            Ok(Some(token.expiry()))
        }
        Credential::X509(chain) => {
            let leaf = chain.first().ok_or(AuthError::NoCredential)?;
            match &auth {
                DeviceAuth::SelfSigned { primary, secondary } => {
                    let matches = [primary, secondary].into_iter().flatten().any(|t| {
                        t.eq_ignore_ascii_case(&leaf.sha1_thumbprint())
                            || t.eq_ignore_ascii_case(&leaf.sha256_thumbprint())
                    });
                    if !matches {
                        return Err(AuthError::Thumbprint);
                    }
                    if !leaf.is_valid_at(now) {
                        return Err(AuthError::Validity);
                    }
                    Ok(None)
                }
                DeviceAuth::CertificateAuthority => {
                    if leaf
                        .common_name()
                        .is_none_or(|cn| cn != identity.device_id.as_str())
                    {
                        return Err(AuthError::CommonName(identity.device_id.to_string()));
                    }
                    let anchors = cas.verified_cas().await.map_err(AuthError::Unavailable)?;
                    let options = ChainOptions {
                        at: now,
                        usage: Usage::ClientAuth,
                    };
                    validate_chain(chain, &anchors, options).map_err(AuthError::Chain)?;
                    Ok(None)
                }
                other => Err(AuthError::WrongMechanism {
                    expected: other.kind().to_owned(),
                    presented: "a client certificate",
                }),
            }
        }
    }
}
