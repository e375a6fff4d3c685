//! Enrollment groups and individual enrollments: validation, normalisation and storage.
//!
//! Stored documents keep X.509 certificates as PEM; responses describe them in `info` and omit
//! the certificate text, as Azure does. Symmetric keys are generated when absent or empty.

use base64::Engine as _;
use muster_auth::Secret;
use muster_store::{Collection, Record};
use serde_json::Value;
use tracing::info;

use crate::ca::{if_match, parse_certificate_text};
use crate::model::{
    AllocationPolicy, Attestation, AttestationType, EnrollmentGroup, IndividualEnrollment,
    InitialTwin, SymmetricKeyAttestation, X509CertificateInfo, X509CertificateWithInfo,
    X509Certificates,
};
use crate::{Dps, DpsError, Page, check_id, time_fmt};

const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

fn invalid(msg: impl Into<String>) -> DpsError {
    DpsError::InvalidInput(msg.into())
}

/// Describe a certificate as Azure's `X509CertificateInfo`.
#[must_use]
pub fn certificate_info(c: &muster_pki::Certificate) -> X509CertificateInfo {
    X509CertificateInfo {
        subject_name: c.subject().to_owned(),
        sha1_thumbprint: c.sha1_thumbprint(),
        sha256_thumbprint: c.sha256_thumbprint(),
        issuer_name: c.issuer().to_owned(),
        not_before_utc: time_fmt::azure(c.not_before()),
        not_after_utc: time_fmt::azure(c.not_after()),
        serial_number: c.serial().to_owned(),
        version: 3,
    }
}

/// Normalise a certificate slot: parse, require a CA when asked, store PEM, fill `info`.
fn normalize_slot(
    slot: Option<&X509CertificateWithInfo>,
    must_be_ca: bool,
    what: &str,
) -> Result<Option<X509CertificateWithInfo>, DpsError> {
    let Some(slot) = slot else { return Ok(None) };
    let Some(text) = slot.certificate.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Err(invalid(format!("{what}.certificate is required")));
    };
    let cert = parse_certificate_text(text)?;
    if must_be_ca && !cert.is_ca() {
        return Err(invalid(format!(
            "{what} '{}' is not a CA certificate",
            cert.subject()
        )));
    }
    Ok(Some(X509CertificateWithInfo {
        certificate: Some(cert.to_pem()),
        info: Some(certificate_info(&cert)),
    }))
}

fn normalize_certificates(
    c: Option<&X509Certificates>,
    must_be_ca: bool,
    what: &str,
) -> Result<X509Certificates, DpsError> {
    let c = c.ok_or_else(|| invalid(format!("{what} is required")))?;
    let primary = normalize_slot(c.primary.as_ref(), must_be_ca, &format!("{what}.primary"))?;
    if primary.is_none() {
        return Err(invalid(format!("{what}.primary is required")));
    }
    Ok(X509Certificates {
        primary,
        secondary: normalize_slot(
            c.secondary.as_ref(),
            must_be_ca,
            &format!("{what}.secondary"),
        )?,
    })
}

fn normalize_key(key: Option<&str>) -> Result<String, DpsError> {
    match key.filter(|k| !k.is_empty()) {
        None => Secret::generate()
            .map(|s| s.expose().to_owned())
            .map_err(|e| invalid(e.to_string())),
        Some(k) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes())
                .map_err(|_| invalid("symmetric keys must be base64"))?;
            if !(16..=64).contains(&bytes.len()) {
                return Err(invalid(
                    "symmetric keys must be 16 to 64 bytes (base64-encoded)",
                ));
            }
            Ok(k.to_owned())
        }
    }
}

fn normalize_symmetric(
    a: Option<&SymmetricKeyAttestation>,
) -> Result<SymmetricKeyAttestation, DpsError> {
    let a = a.cloned().unwrap_or_default();
    Ok(SymmetricKeyAttestation {
        primary_key: Some(normalize_key(a.primary_key.as_deref())?),
        secondary_key: Some(normalize_key(a.secondary_key.as_deref())?),
    })
}

fn check_twin(twin: Option<&InitialTwin>) -> Result<(), DpsError> {
    let Some(twin) = twin else { return Ok(()) };
    if let Some(tags) = &twin.tags
        && !tags.is_object()
    {
        return Err(invalid("initialTwin.tags must be a JSON object"));
    }
    if let Some(d) = twin.properties.as_ref().and_then(|p| p.desired.as_ref())
        && !d.is_object()
    {
        return Err(invalid(
            "initialTwin.properties.desired must be a JSON object",
        ));
    }
    Ok(())
}

/// Strip certificate text from a stored attestation for responses.
/// Strip certificate text and symmetric keys for ordinary responses (keys are read only
/// through the attestation-mechanism endpoints, as in Azure).
fn redact(a: Attestation) -> Attestation {
    let mut a = redact_certificates(a);
    if let Some(k) = a.symmetric_key.as_mut() {
        k.primary_key = None;
        k.secondary_key = None;
    }
    a
}

/// Strip certificate text only (the attestation-mechanism view, which carries the keys).
fn redact_certificates(mut a: Attestation) -> Attestation {
    if let Some(x) = a.x509.as_mut() {
        for set in [
            x.client_certificates.as_mut(),
            x.signing_certificates.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            for slot in [set.primary.as_mut(), set.secondary.as_mut()]
                .into_iter()
                .flatten()
            {
                slot.certificate = None;
            }
        }
    }
    a
}

/// A PUT that echoes a GET carries neither certificate text nor keys: keep what is stored
/// (certificates matched by thumbprint; keys left empty), instead of refusing the update or
/// silently generating new keys that would lock every device out.
fn inherit(new: &mut Attestation, stored: Option<&Attestation>) {
    let Some(stored) = stored.filter(|s| s.kind == new.kind) else {
        return;
    };
    if let (Some(n), Some(s)) = (new.symmetric_key.as_mut(), stored.symmetric_key.as_ref()) {
        if n.primary_key.as_deref().unwrap_or_default().is_empty() {
            n.primary_key.clone_from(&s.primary_key);
        }
        if n.secondary_key.as_deref().unwrap_or_default().is_empty() {
            n.secondary_key.clone_from(&s.secondary_key);
        }
    }
    if new.kind == AttestationType::SymmetricKey && new.symmetric_key.is_none() {
        new.symmetric_key.clone_from(&stored.symmetric_key);
    }
    if let (Some(n), Some(s)) = (new.x509.as_mut(), stored.x509.as_ref()) {
        let pairs = [
            (
                n.signing_certificates.as_mut(),
                s.signing_certificates.as_ref(),
            ),
            (
                n.client_certificates.as_mut(),
                s.client_certificates.as_ref(),
            ),
        ];
        for (nset, sset) in pairs {
            let (Some(nset), Some(sset)) = (nset, sset) else {
                continue;
            };
            for (nslot, sslot) in [
                (nset.primary.as_mut(), sset.primary.as_ref()),
                (nset.secondary.as_mut(), sset.secondary.as_ref()),
            ] {
                let (Some(nslot), Some(sslot)) = (nslot, sslot) else {
                    continue;
                };
                let missing = nslot
                    .certificate
                    .as_deref()
                    .unwrap_or_default()
                    .trim()
                    .is_empty();
                let same = match (&nslot.info, &sslot.info) {
                    (Some(a), Some(b)) => a.sha256_thumbprint == b.sha256_thumbprint,
                    _ => false,
                };
                if missing && same {
                    nslot.certificate.clone_from(&sslot.certificate);
                }
            }
        }
    }
}

fn stored_attestation(r: Option<&Record>) -> Option<Attestation> {
    r.and_then(|r| r.body.get("attestation"))
        .and_then(|a| serde_json::from_value(a.clone()).ok())
}

fn page_size(max_items: Option<usize>) -> usize {
    max_items.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

impl Dps {
    /// One page of a collection in key order: at most `max_items` (default 100, at most 1000)
    /// converted records after `continuation`; the next continuation is the last key returned,
    /// and is `None` on the last page (the Node SDK stops only when it is absent).
    pub(crate) async fn page<T>(
        &self,
        collection: Collection,
        index: Option<&str>,
        max_items: Option<usize>,
        continuation: Option<&str>,
        mut convert: impl FnMut(&Record) -> Result<T, DpsError>,
    ) -> Result<Page<T>, DpsError> {
        let limit = page_size(max_items);
        let records = self
            .store
            .list(collection, index, continuation, limit + 1)
            .await?;
        let more = records.len() > limit;
        let page: Vec<&Record> = records.iter().take(limit).collect();
        let continuation = if more {
            page.last().map(|r| r.key.clone())
        } else {
            None
        };
        let items = page
            .into_iter()
            .map(&mut convert)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            continuation,
        })
    }
}

impl Dps {
    fn check_allocation(
        &self,
        policy: AllocationPolicy,
        hubs: &[String],
        legacy: Option<&str>,
        custom: Option<&Value>,
    ) -> Result<(), DpsError> {
        for h in hubs.iter().map(String::as_str).chain(legacy) {
            if self.hub(h).is_none() {
                let known: Vec<_> = self
                    .config
                    .hubs
                    .iter()
                    .map(|h| h.hostname.as_str())
                    .collect();
                return Err(invalid(format!(
                    "unknown IoT hub '{h}' (this server hosts: {})",
                    known.join(", ")
                )));
            }
        }
        match policy {
            AllocationPolicy::Custom => {
                if self.allocator.is_none() {
                    return Err(invalid("custom allocation is not enabled on this server"));
                }
                let url = custom
                    .and_then(|c| c.get("webhookUrl"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(
                        "custom allocation needs customAllocationDefinition.webhookUrl (an http or https URL)",
                    ));
                }
                Ok(())
            }
            AllocationPolicy::Static if hubs.len() > 1 => Err(invalid(
                "static allocation needs exactly one hub in iotHubs",
            )),
            _ => Ok(()),
        }
    }

    async fn check_ca_reference(&self, name: &str) -> Result<(), DpsError> {
        let ca = self
            .get_certificate(name)
            .await
            .map_err(|_| invalid(format!("CA certificate '{name}' does not exist")))?;
        if !ca.is_verified {
            return Err(invalid(format!(
                "CA certificate '{name}' is not verified: complete proof of possession first"
            )));
        }
        Ok(())
    }

    async fn normalize_group_attestation(&self, a: &Attestation) -> Result<Attestation, DpsError> {
        match a.kind {
            AttestationType::X509 => {
                let x = a
                    .x509
                    .as_ref()
                    .ok_or_else(|| invalid("attestation.x509 is required for type x509"))?;
                if x.client_certificates.is_some() {
                    return Err(invalid(
                        "enrollment groups use caReferences or signingCertificates, not clientCertificates",
                    ));
                }
                let mut out = x.clone();
                match (&x.ca_references, &x.signing_certificates) {
                    (Some(refs), None) => {
                        let primary = refs
                            .primary
                            .as_deref()
                            .ok_or_else(|| invalid("caReferences.primary is required"))?;
                        self.check_ca_reference(primary).await?;
                        if let Some(s) = refs.secondary.as_deref() {
                            self.check_ca_reference(s).await?;
                        }
                    }
                    (None, Some(_)) => {
                        out.signing_certificates = Some(normalize_certificates(
                            x.signing_certificates.as_ref(),
                            true,
                            "signingCertificates",
                        )?);
                    }
                    _ => {
                        return Err(invalid(
                            "give exactly one of attestation.x509.caReferences and signingCertificates",
                        ));
                    }
                }
                Ok(Attestation {
                    kind: AttestationType::X509,
                    x509: Some(out),
                    symmetric_key: None,
                    tpm: None,
                })
            }
            AttestationType::SymmetricKey => Ok(Attestation {
                kind: AttestationType::SymmetricKey,
                x509: None,
                symmetric_key: Some(normalize_symmetric(a.symmetric_key.as_ref())?),
                tpm: None,
            }),
            AttestationType::Tpm | AttestationType::None => Err(invalid(
                "enrollment groups support x509 and symmetricKey attestation",
            )),
        }
    }

    /// Create or replace an enrollment group.
    ///
    /// # Errors
    /// [`DpsError::InvalidInput`] with the reason, [`DpsError::PreconditionFailed`].
    pub async fn put_enrollment_group(
        &self,
        id: &str,
        body: &Value,
        if_match_header: Option<&str>,
    ) -> Result<EnrollmentGroup, DpsError> {
        check_id("enrollment group id", id)?;
        let mut group: EnrollmentGroup = serde_json::from_value(body.clone())
            .map_err(|e| invalid(format!("invalid enrollment group: {e}")))?;
        if group.enrollment_group_id.is_empty() {
            id.clone_into(&mut group.enrollment_group_id);
        } else if group.enrollment_group_id != id {
            return Err(invalid(
                "enrollmentGroupId in the body differs from the one in the path",
            ));
        }
        let existing = self.store.get(Collection::EnrollmentGroups, id).await?;
        inherit(
            &mut group.attestation,
            stored_attestation(existing.as_ref()).as_ref(),
        );
        group.attestation = self.normalize_group_attestation(&group.attestation).await?;
        self.check_allocation(
            group.allocation_policy,
            &group.iot_hubs,
            group.iot_hub_host_name.as_deref(),
            group.custom_allocation_definition.as_ref(),
        )?;
        check_twin(group.initial_twin.as_ref())?;
        let now = time_fmt::azure(self.now());
        group.created_date_time_utc = Some(
            existing
                .as_ref()
                .and_then(|r| {
                    r.body
                        .get("createdDateTimeUtc")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| now.clone()),
        );
        group.last_updated_date_time_utc = Some(now);
        let pre = if_match(if_match_header.or(group.etag.as_deref()));
        group.etag = None;
        let doc = serde_json::to_value(&group).map_err(|e| invalid(e.to_string()))?;
        let record = self
            .store
            .put(Collection::EnrollmentGroups, id, None, &doc, pre)
            .await?;
        info!(group = id, attestation = ?group.attestation.kind, status = ?group.provisioning_status, "enrollment group stored");
        group.etag = Some(record.etag);
        group.attestation = redact(group.attestation);
        Ok(group)
    }

    pub(crate) async fn load_group(
        &self,
        id: &str,
    ) -> Result<Option<(EnrollmentGroup, String)>, DpsError> {
        let Some(r) = self.store.get(Collection::EnrollmentGroups, id).await? else {
            return Ok(None);
        };
        Ok(Some((group_from(&r)?, r.etag)))
    }

    /// One enrollment group.
    ///
    /// # Errors
    /// [`DpsError::NotFound`].
    pub async fn get_enrollment_group(&self, id: &str) -> Result<EnrollmentGroup, DpsError> {
        let (mut g, etag) = self
            .load_group(id)
            .await?
            .ok_or_else(|| DpsError::NotFound {
                what: "enrollment group",
                id: id.to_owned(),
            })?;
        g.etag = Some(etag);
        g.attestation = redact(g.attestation);
        Ok(g)
    }

    /// The attestation mechanism of a group (with keys).
    ///
    /// # Errors
    /// [`DpsError::NotFound`].
    pub async fn enrollment_group_attestation(&self, id: &str) -> Result<Attestation, DpsError> {
        let (g, _) = self
            .load_group(id)
            .await?
            .ok_or_else(|| DpsError::NotFound {
                what: "enrollment group",
                id: id.to_owned(),
            })?;
        Ok(redact_certificates(g.attestation))
    }

    /// Delete an enrollment group (registrations and hub devices stay, as in Azure).
    ///
    /// # Errors
    /// [`DpsError::NotFound`], [`DpsError::PreconditionFailed`].
    pub async fn delete_enrollment_group(
        &self,
        id: &str,
        if_match_header: Option<&str>,
    ) -> Result<(), DpsError> {
        if !self
            .store
            .delete(Collection::EnrollmentGroups, id, if_match(if_match_header))
            .await?
        {
            return Err(DpsError::NotFound {
                what: "enrollment group",
                id: id.to_owned(),
            });
        }
        info!(group = id, "enrollment group deleted");
        Ok(())
    }

    /// A page of enrollment groups.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn query_enrollment_groups(
        &self,
        max_items: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<Page<EnrollmentGroup>, DpsError> {
        self.page(
            Collection::EnrollmentGroups,
            None,
            max_items,
            continuation,
            |r| {
                let mut g = group_from(r)?;
                g.etag = Some(r.etag.clone());
                g.attestation = redact(g.attestation);
                Ok(g)
            },
        )
        .await
    }

    /// Create or replace an individual enrollment.
    ///
    /// # Errors
    /// [`DpsError::InvalidInput`], [`DpsError::PreconditionFailed`].
    pub async fn put_enrollment(
        &self,
        registration_id: &str,
        body: &Value,
        if_match_header: Option<&str>,
    ) -> Result<IndividualEnrollment, DpsError> {
        // Registration ids are case-insensitive; records are keyed by the lower-case form.
        let registration_id = &registration_id.to_ascii_lowercase();
        check_id("registration id", registration_id)?;
        let mut e: IndividualEnrollment = serde_json::from_value(body.clone())
            .map_err(|e| invalid(format!("invalid enrollment: {e}")))?;
        if e.registration_id.is_empty() {
            registration_id.clone_into(&mut e.registration_id);
        } else if !e.registration_id.eq_ignore_ascii_case(registration_id) {
            return Err(invalid(
                "registrationId in the body differs from the one in the path",
            ));
        }
        if let Some(d) = &e.device_id {
            crate::check_device_id(d)?;
        }
        let stored = self
            .store
            .get(Collection::Enrollments, registration_id)
            .await?;
        inherit(
            &mut e.attestation,
            stored_attestation(stored.as_ref()).as_ref(),
        );
        registration_id.clone_into(&mut e.registration_id);
        e.attestation = match e.attestation.kind {
            AttestationType::X509 => {
                let x = e
                    .attestation
                    .x509
                    .as_ref()
                    .ok_or_else(|| invalid("attestation.x509 is required for type x509"))?;
                let client = normalize_certificates(
                    x.client_certificates.as_ref(),
                    false,
                    "clientCertificates",
                )?;
                Attestation {
                    kind: AttestationType::X509,
                    x509: Some(crate::model::X509Attestation {
                        client_certificates: Some(client),
                        signing_certificates: None,
                        ca_references: None,
                    }),
                    symmetric_key: None,
                    tpm: None,
                }
            }
            AttestationType::SymmetricKey => Attestation {
                kind: AttestationType::SymmetricKey,
                x509: None,
                symmetric_key: Some(normalize_symmetric(e.attestation.symmetric_key.as_ref())?),
                tpm: None,
            },
            AttestationType::Tpm | AttestationType::None => {
                return Err(invalid(
                    "individual enrollments support x509 and symmetricKey attestation",
                ));
            }
        };
        self.check_allocation(
            e.allocation_policy,
            &e.iot_hubs,
            e.iot_hub_host_name.as_deref(),
            e.custom_allocation_definition.as_ref(),
        )?;
        check_twin(e.initial_twin.as_ref())?;
        let existing = self
            .store
            .get(Collection::Enrollments, registration_id)
            .await?;
        let now = time_fmt::azure(self.now());
        e.created_date_time_utc = Some(
            existing
                .as_ref()
                .and_then(|r| {
                    r.body
                        .get("createdDateTimeUtc")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| now.clone()),
        );
        e.last_updated_date_time_utc = Some(now);
        e.registration_state = None;
        let pre = if_match(if_match_header.or(e.etag.as_deref()));
        e.etag = None;
        let doc = serde_json::to_value(&e).map_err(|err| invalid(err.to_string()))?;
        let record = self
            .store
            .put(Collection::Enrollments, registration_id, None, &doc, pre)
            .await?;
        info!(registration_id, attestation = ?e.attestation.kind, "individual enrollment stored");
        e.etag = Some(record.etag);
        e.attestation = redact(e.attestation);
        Ok(e)
    }

    pub(crate) async fn load_enrollment(
        &self,
        registration_id: &str,
    ) -> Result<Option<IndividualEnrollment>, DpsError> {
        // Registration ids are case-insensitive; records are keyed by the lower-case form.
        let registration_id = &registration_id.to_ascii_lowercase();
        let Some(r) = self
            .store
            .get(Collection::Enrollments, registration_id)
            .await?
        else {
            return Ok(None);
        };
        let mut e: IndividualEnrollment =
            serde_json::from_value(r.body).map_err(|err| invalid(err.to_string()))?;
        e.etag = Some(r.etag);
        Ok(Some(e))
    }

    /// One individual enrollment.
    ///
    /// # Errors
    /// [`DpsError::NotFound`].
    pub async fn get_enrollment(
        &self,
        registration_id: &str,
    ) -> Result<IndividualEnrollment, DpsError> {
        // Registration ids are case-insensitive; records are keyed by the lower-case form.
        let registration_id = &registration_id.to_ascii_lowercase();
        let mut e = self
            .load_enrollment(registration_id)
            .await?
            .ok_or_else(|| DpsError::NotFound {
                what: "enrollment",
                id: registration_id.to_owned(),
            })?;
        e.attestation = redact(e.attestation);
        Ok(e)
    }

    /// Delete an individual enrollment.
    ///
    /// # Errors
    /// [`DpsError::NotFound`], [`DpsError::PreconditionFailed`].
    pub async fn delete_enrollment(
        &self,
        registration_id: &str,
        if_match_header: Option<&str>,
    ) -> Result<(), DpsError> {
        // Registration ids are case-insensitive; records are keyed by the lower-case form.
        let registration_id = &registration_id.to_ascii_lowercase();
        if !self
            .store
            .delete(
                Collection::Enrollments,
                registration_id,
                if_match(if_match_header),
            )
            .await?
        {
            return Err(DpsError::NotFound {
                what: "enrollment",
                id: registration_id.to_owned(),
            });
        }
        info!(registration_id, "individual enrollment deleted");
        Ok(())
    }

    /// A page of individual enrollments.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn query_enrollments(
        &self,
        max_items: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<Page<IndividualEnrollment>, DpsError> {
        self.page(
            Collection::Enrollments,
            None,
            max_items,
            continuation,
            |r| {
                let mut e: IndividualEnrollment = serde_json::from_value(r.body.clone())
                    .map_err(|err| invalid(err.to_string()))?;
                e.etag = Some(r.etag.clone());
                e.attestation = redact(e.attestation);
                Ok(e)
            },
        )
        .await
    }

    /// The attestation mechanism of an individual enrollment (with keys).
    ///
    /// # Errors
    /// [`DpsError::NotFound`].
    pub async fn enrollment_attestation(
        &self,
        registration_id: &str,
    ) -> Result<Attestation, DpsError> {
        let registration_id = &registration_id.to_ascii_lowercase();
        let e = self
            .load_enrollment(registration_id)
            .await?
            .ok_or_else(|| DpsError::NotFound {
                what: "enrollment",
                id: registration_id.clone(),
            })?;
        Ok(redact_certificates(e.attestation))
    }

    /// Azure's bulk enrollment operation: `{"mode":"create|update|updateIfMatchETag|delete","enrollments":[…]}`.
    /// Each enrollment is applied on its own; the result lists the failures.
    ///
    /// # Errors
    /// [`DpsError::InvalidInput`] for an unknown mode or malformed body.
    pub async fn bulk_enrollments(&self, body: &Value) -> Result<Value, DpsError> {
        let mode = body["mode"]
            .as_str()
            .ok_or_else(|| invalid("mode is required"))?;
        let list = body["enrollments"]
            .as_array()
            .ok_or_else(|| invalid("enrollments must be an array"))?;
        if !matches!(mode, "create" | "update" | "updateIfMatchETag" | "delete") {
            return Err(invalid(format!(
                "unknown bulk mode '{mode}' (create, update, updateIfMatchETag, delete)"
            )));
        }
        let mut errors = Vec::new();
        for item in list {
            let id = item["registrationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let result = match mode {
                "create" => match self.store.get(Collection::Enrollments, &id).await? {
                    Some(_) => Err(DpsError::Conflict(format!(
                        "enrollment '{id}' already exists"
                    ))),
                    None => self.put_enrollment(&id, item, None).await.map(|_| ()),
                },
                "update" => self
                    .put_enrollment(&id, &strip_etag(item), None)
                    .await
                    .map(|_| ()),
                "updateIfMatchETag" => self
                    .put_enrollment(&id, item, item["etag"].as_str())
                    .await
                    .map(|_| ()),
                "delete" => self.delete_enrollment(&id, None).await,
                other => return Err(invalid(format!("unknown bulk mode '{other}'"))),
            };
            if let Err(e) = result {
                errors.push(serde_json::json!({"registrationId": id, "errorCode": e.code(), "errorStatus": e.public_message()}));
            }
        }
        Ok(serde_json::json!({"isSuccessful": errors.is_empty(), "errors": errors}))
    }
}

fn strip_etag(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("etag");
    }
    v
}

pub(crate) fn group_from(r: &Record) -> Result<EnrollmentGroup, DpsError> {
    serde_json::from_value(r.body.clone()).map_err(|e| {
        invalid(format!(
            "stored enrollment group '{}' is unreadable: {e}",
            r.key
        ))
    })
}
