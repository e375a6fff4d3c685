//! CA certificates and proof of possession.
//!
//! Stored document (collection `ca_certificates`, key = name): the PEM, its identity, whether
//! it is verified, and the outstanding verification code. A code is single use: a successful
//! verification clears it, generating a new one replaces it, and uploading a different
//! certificate under the same name clears it together with the verified flag.

use base64::Engine as _;
use muster_pki::Certificate;
use muster_store::{Collection, Precondition, Record};
use serde_json::{Value, json};
use tracing::info;

use crate::time_fmt;
use crate::{Dps, DpsError};

/// A CA certificate as stored.
#[derive(Debug, Clone)]
pub struct CaCertificate {
    /// Name (what enrollment groups refer to).
    pub name: String,
    /// The certificate.
    pub certificate: Certificate,
    /// Proof of possession done (or asserted at upload).
    pub is_verified: bool,
    /// Outstanding verification code.
    pub verification_code: Option<String>,
    /// Created.
    pub created: String,
    /// Updated.
    pub updated: String,
    /// Version tag.
    pub etag: String,
}

impl CaCertificate {
    fn from_record(r: &Record) -> Result<Self, DpsError> {
        let body = &r.body;
        let pem = body["certificate"].as_str().unwrap_or_default();
        let certificate = muster_pki::read_certificate(pem.as_bytes()).map_err(|e| {
            DpsError::InvalidInput(format!(
                "stored CA certificate '{}' is unreadable: {e}",
                r.key
            ))
        })?;
        Ok(Self {
            name: r.key.clone(),
            certificate,
            is_verified: body["isVerified"].as_bool().unwrap_or(false),
            verification_code: body["verificationCode"].as_str().map(str::to_owned),
            created: body["created"].as_str().unwrap_or_default().to_owned(),
            updated: body["updated"].as_str().unwrap_or_default().to_owned(),
            etag: r.etag.clone(),
        })
    }

    fn to_document(&self) -> Value {
        json!({
            "certificate": self.certificate.to_pem(),
            "isVerified": self.is_verified,
            "verificationCode": self.verification_code,
            "created": self.created,
            "updated": self.updated,
        })
    }

    /// The response shape (`CertificateResponse`, ARM envelope without the subscription prefix).
    #[must_use]
    pub fn to_response(&self, include_code: bool) -> Value {
        let mut properties = json!({
            "certificate": base64::engine::general_purpose::STANDARD.encode(self.certificate.der()),
            "subject": self.certificate.subject(),
            "thumbprint": self.certificate.sha1_thumbprint(),
            "sha256Thumbprint": self.certificate.sha256_thumbprint(),
            "isVerified": self.is_verified,
            "expiry": time_fmt::azure(self.certificate.not_after()),
            "created": self.created,
            "updated": self.updated,
        });
        if include_code
            && let (Some(code), Some(p)) = (&self.verification_code, properties.as_object_mut())
        {
            p.insert("verificationCode".into(), json!(code));
        }
        json!({
            "id": format!("/certificates/{}", self.name),
            "name": self.name,
            "type": "Microsoft.Devices/ProvisioningServices/Certificates",
            "etag": self.etag,
            "properties": properties,
        })
    }
}

/// Turn an `If-Match` header into a store precondition (`*` and `"*"` mean "exists").
#[must_use]
pub fn if_match(header: Option<&str>) -> Precondition {
    match header.map(|h| h.trim().trim_matches('"')) {
        None | Some("") => Precondition::None,
        Some("*") => Precondition::Exists,
        Some(etag) => Precondition::IfMatch(etag.to_owned()),
    }
}

/// The write-back precondition for an update made from a read: the caller's `If-Match` must
/// match what was read, and the write is conditioned on the read's etag (even for `*`), so a
/// concurrent replacement is never overwritten with stale content.
fn read_precondition(header: Option<&str>, read_etag: &str) -> Result<Precondition, DpsError> {
    match if_match(header) {
        Precondition::IfMatch(e) if e != read_etag => Err(DpsError::PreconditionFailed),
        _ => Ok(Precondition::IfMatch(read_etag.to_owned())),
    }
}

/// Read a certificate given as PEM text or base64 DER.
///
/// # Errors
/// [`DpsError::InvalidInput`] naming what is wrong.
pub fn parse_certificate_text(text: &str) -> Result<Certificate, DpsError> {
    let bytes = if text.contains("-----BEGIN") {
        text.as_bytes().to_vec()
    } else {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| {
                DpsError::InvalidInput("the certificate is neither PEM nor base64 DER".into())
            })?
    };
    let mut certs = muster_pki::read_certificates(&bytes)
        .map_err(|e| DpsError::InvalidInput(format!("the certificate cannot be read: {e}")))?;
    if certs.len() != 1 {
        return Err(DpsError::InvalidInput(format!(
            "expected one certificate, found {}",
            certs.len()
        )));
    }
    certs
        .pop()
        .ok_or_else(|| DpsError::InvalidInput("no certificate".into()))
}

impl Dps {
    /// Upload or replace a CA certificate. `body` is `{"properties":{"certificate":…,"isVerified":…}}`
    /// (a bare `{"certificate":…}` is accepted too).
    ///
    /// # Errors
    /// [`DpsError::InvalidInput`] for an unreadable or non-CA certificate,
    /// [`DpsError::PreconditionFailed`] for a stale `If-Match`.
    pub async fn put_certificate(
        &self,
        name: &str,
        body: &Value,
        if_match_header: Option<&str>,
    ) -> Result<CaCertificate, DpsError> {
        crate::check_id("certificate name", name)?;
        let props = body.get("properties").unwrap_or(body);
        let text = props["certificate"]
            .as_str()
            .ok_or_else(|| DpsError::InvalidInput("properties.certificate is required".into()))?;
        let certificate = parse_certificate_text(text)?;
        if !certificate.is_ca() {
            return Err(DpsError::InvalidInput(format!(
                "'{}' is not a CA certificate (basicConstraints CA:true is required)",
                certificate.subject()
            )));
        }
        let asserted = props["isVerified"].as_bool().unwrap_or(false);
        let now = time_fmt::azure(self.now());
        let existing = self.store.get(Collection::CaCertificates, name).await?;
        let existing = existing
            .as_ref()
            .map(CaCertificate::from_record)
            .transpose()?;
        let same = existing
            .as_ref()
            .is_some_and(|e| e.certificate == certificate);
        let cert = CaCertificate {
            name: name.to_owned(),
            is_verified: asserted || (same && existing.as_ref().is_some_and(|e| e.is_verified)),
            verification_code: if same {
                existing.as_ref().and_then(|e| e.verification_code.clone())
            } else {
                None
            },
            created: existing
                .as_ref()
                .map_or_else(|| now.clone(), |e| e.created.clone()),
            updated: now,
            etag: String::new(),
            certificate,
        };
        let record = self
            .store
            .put(
                Collection::CaCertificates,
                name,
                None,
                &cert.to_document(),
                if_match(if_match_header),
            )
            .await?;
        info!(
            name,
            subject = cert.certificate.subject(),
            verified = cert.is_verified,
            "CA certificate stored"
        );
        Ok(CaCertificate {
            etag: record.etag,
            ..cert
        })
    }

    /// One CA certificate.
    ///
    /// # Errors
    /// [`DpsError::NotFound`].
    pub async fn get_certificate(&self, name: &str) -> Result<CaCertificate, DpsError> {
        let record = self
            .store
            .get(Collection::CaCertificates, name)
            .await?
            .ok_or_else(|| DpsError::NotFound {
                what: "certificate",
                id: name.to_owned(),
            })?;
        CaCertificate::from_record(&record)
    }

    /// All CA certificates, by name.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_certificates(&self) -> Result<Vec<CaCertificate>, DpsError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(Collection::CaCertificates, None, after.as_deref(), 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for r in &page {
                out.push(CaCertificate::from_record(r)?);
            }
        }
        Ok(out)
    }

    /// Delete a CA certificate. Azure requires `If-Match`; `*` is accepted.
    ///
    /// # Errors
    /// [`DpsError::InvalidInput`] without `If-Match`, [`DpsError::NotFound`],
    /// [`DpsError::PreconditionFailed`].
    pub async fn delete_certificate(
        &self,
        name: &str,
        if_match_header: Option<&str>,
    ) -> Result<(), DpsError> {
        let pre = if_match(if_match_header);
        if pre == Precondition::None {
            return Err(DpsError::InvalidInput(
                "If-Match is required to delete a certificate (use '*' for any)".into(),
            ));
        }
        self.get_certificate(name).await?;
        self.store
            .delete(Collection::CaCertificates, name, pre)
            .await?;
        info!(name, "CA certificate deleted");
        Ok(())
    }

    /// Issue a new verification code (replacing any outstanding one).
    ///
    /// # Errors
    /// [`DpsError::NotFound`], [`DpsError::PreconditionFailed`].
    pub async fn generate_verification_code(
        &self,
        name: &str,
        if_match_header: Option<&str>,
    ) -> Result<CaCertificate, DpsError> {
        let mut cert = self.get_certificate(name).await?;
        let mut bytes = [0u8; 24];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| DpsError::Conflict("no randomness available".into()))?;
        cert.verification_code = Some(muster_pki::hex_upper(&bytes));
        cert.updated = time_fmt::azure(self.now());
        let pre = read_precondition(if_match_header, &cert.etag)?;
        let record = self
            .store
            .put(
                Collection::CaCertificates,
                name,
                None,
                &cert.to_document(),
                pre,
            )
            .await?;
        info!(name, "verification code generated");
        Ok(CaCertificate {
            etag: record.etag,
            ..cert
        })
    }

    /// Complete proof of possession with a verification certificate (PEM or base64 DER) whose
    /// CN is the outstanding code and which the CA's key signed.
    ///
    /// # Errors
    /// [`DpsError::InvalidInput`] when there is no outstanding code or the proof fails,
    /// [`DpsError::NotFound`], [`DpsError::PreconditionFailed`].
    pub async fn verify_certificate(
        &self,
        name: &str,
        if_match_header: Option<&str>,
        body: &Value,
    ) -> Result<CaCertificate, DpsError> {
        let mut cert = self.get_certificate(name).await?;
        let text = body["certificate"].as_str().ok_or_else(|| {
            DpsError::InvalidInput(
                "'certificate' (the verification certificate) is required".into(),
            )
        })?;
        let proof = parse_certificate_text(text)?;
        let code = cert.verification_code.clone().ok_or_else(|| {
            DpsError::InvalidInput("no verification code is outstanding: generate one first".into())
        })?;
        muster_pki::verify_proof_of_possession(&cert.certificate, &proof, &code, self.now())
            .map_err(|e| DpsError::InvalidInput(format!("proof of possession failed: {e}")))?;
        cert.is_verified = true;
        cert.verification_code = None;
        cert.updated = time_fmt::azure(self.now());
        let pre = read_precondition(if_match_header, &cert.etag)?;
        let record = self
            .store
            .put(
                Collection::CaCertificates,
                name,
                None,
                &cert.to_document(),
                pre,
            )
            .await?;
        info!(
            name,
            subject = cert.certificate.subject(),
            "CA certificate verified by proof of possession"
        );
        Ok(CaCertificate {
            etag: record.etag,
            ..cert
        })
    }
}
