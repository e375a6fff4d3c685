//! Registering a device: attestation, allocation, re-provisioning and the atomic write of
//! device identity, twin and registration record.
//!
//! Precedence follows Azure: an individual enrollment for the registration id decides alone
//! (a disabled one refuses the device even when a group would accept it); otherwise the enabled
//! group whose CA (X.509) or derived key (SAS) matches. Every refusal is
//! [`DpsError::Unauthorized`] with a reason for the log; the device only sees "Unauthorized".

use muster_auth::Secret;
use muster_auth::sas::{SasToken, derive_device_key};
use muster_pki::{Certificate, ChainOptions, Usage, validate_chain};
use muster_store::{Collection, Precondition};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::assign::{Assignment, DeviceCredential};
use crate::enrollment::{certificate_info, group_from};
use crate::model::{
    AllocationPolicy, AttestationType, EnrollmentGroup, IndividualEnrollment, InitialTwin,
    ProvisioningStatus, RegistrationState, ReprovisionPolicy,
};
use crate::{Dps, DpsError, Hub, Page, check_id, time_fmt};

/// The record's `x509` or `symmetricKey` part: how the device attested, and its group.
fn describe_attestation(
    state: &mut RegistrationState,
    attested: &Attested,
    group_id: Option<&str>,
) {
    match &attested.auth {
        DeviceCredential::X509 { .. } => {
            let mut x = json!({"certificateInfo": attested.leaf_info});
            if let (Some(g), Some(o)) = (group_id, x.as_object_mut()) {
                o.insert("enrollmentGroupId".into(), json!(g));
            }
            state.x509 = Some(x);
        }
        DeviceCredential::SymmetricKey { .. } => {
            state.symmetric_key =
                Some(group_id.map_or_else(|| json!({}), |g| json!({"enrollmentGroupId": g})));
        }
    }
}

/// How the device proved who it is.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// The certificate chain presented in the TLS handshake, leaf first.
    X509(&'a [Certificate]),
    /// A SAS token (`SharedAccessSignature sr=…`).
    Sas(&'a str),
    /// Nothing.
    None,
}

/// A registration request, whatever the transport.
#[derive(Debug, Clone)]
pub struct RegistrationRequest<'a> {
    /// The registration id from the MQTT username or the HTTPS path.
    pub registration_id: &'a str,
    /// The proof.
    pub credential: Credential<'a>,
    /// The device's optional `payload`, echoed in the record.
    pub payload: Option<Value>,
}

/// What attestation found.
struct Attested {
    source: Source,
    auth: DeviceCredential,
    leaf_info: Option<Value>,
}

enum Source {
    Group(Box<EnrollmentGroup>),
    Individual(Box<IndividualEnrollment>),
}

struct Rules<'a> {
    policy: ReprovisionPolicy,
    allocation: AllocationPolicy,
    hubs: &'a [String],
    legacy_hub: Option<&'a str>,
    twin: Option<&'a InitialTwin>,
    iot_edge: bool,
    device_id: String,
    group_id: Option<&'a str>,
    custom: Option<&'a Value>,
}

/// How many times one registration request provisions when it keeps losing races to other
/// requests of the same id (each lost race means another request succeeded meanwhile).
const PROVISION_ATTEMPTS: usize = 8;

impl Source {
    /// The enrollment as a custom-allocation webhook sees it: keys and certificate text removed.
    fn webhook_view(&self) -> (&'static str, Value) {
        let (kind, mut v) = match self {
            Self::Group(g) => (
                "enrollmentGroup",
                serde_json::to_value(g.as_ref()).unwrap_or(Value::Null),
            ),
            Self::Individual(e) => (
                "individualEnrollment",
                serde_json::to_value(e.as_ref()).unwrap_or(Value::Null),
            ),
        };
        if let Some(a) = v.get_mut("attestation").and_then(Value::as_object_mut) {
            a.remove("symmetricKey");
            if let Some(x) = a.get_mut("x509").and_then(Value::as_object_mut) {
                for set in ["clientCertificates", "signingCertificates"] {
                    if let Some(c) = x.get_mut(set).and_then(Value::as_object_mut) {
                        for slot in ["primary", "secondary"] {
                            if let Some(s) = c.get_mut(slot).and_then(Value::as_object_mut) {
                                s.remove("certificate");
                            }
                        }
                    }
                }
            }
        }
        (kind, v)
    }

    fn rules(&self, registration_id: &str) -> Rules<'_> {
        match self {
            Self::Group(g) => Rules {
                policy: g.reprovision_policy,
                allocation: g.allocation_policy,
                hubs: &g.iot_hubs,
                legacy_hub: g.iot_hub_host_name.as_deref(),
                twin: g.initial_twin.as_ref(),
                iot_edge: g.capabilities.iot_edge,
                device_id: registration_id.to_owned(),
                group_id: Some(&g.enrollment_group_id),
                custom: g.custom_allocation_definition.as_ref(),
            },
            Self::Individual(e) => Rules {
                policy: e.reprovision_policy,
                allocation: e.allocation_policy,
                hubs: &e.iot_hubs,
                legacy_hub: e.iot_hub_host_name.as_deref(),
                twin: e.initial_twin.as_ref(),
                iot_edge: e.capabilities.iot_edge,
                device_id: e
                    .device_id
                    .clone()
                    .unwrap_or_else(|| registration_id.to_owned()),
                group_id: None,
                custom: e.custom_allocation_definition.as_ref(),
            },
        }
    }
}

fn refuse(reason: impl Into<String>) -> DpsError {
    DpsError::Unauthorized {
        reason: reason.into(),
    }
}

/// Pick a hub: static → the listed one; hashed/geoLatency → weighted by a hash of the
/// registration id, so the same device keeps landing on the same hub while the set is stable.
#[must_use]
pub fn allocate<'a>(
    policy: AllocationPolicy,
    candidates: &[&'a Hub],
    registration_id: &str,
) -> Option<&'a Hub> {
    match policy {
        AllocationPolicy::Static => candidates.first().copied(),
        _ => {
            let total: u64 = candidates.iter().map(|h| u64::from(h.weight.max(1))).sum();
            if total == 0 {
                return None;
            }
            let digest = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                registration_id.to_ascii_lowercase().as_bytes(),
            );
            let mut first = [0u8; 8];
            first.copy_from_slice(digest.as_ref().get(..8)?);
            let mut point = u64::from_be_bytes(first) % total;
            for hub in candidates {
                let w = u64::from(hub.weight.max(1));
                if point < w {
                    return Some(hub);
                }
                point -= w;
            }
            candidates.last().copied()
        }
    }
}

impl Dps {
    /// Register a device: attest, allocate, write, and return the registration state.
    ///
    /// # Errors
    /// [`DpsError::Unauthorized`] for every attestation failure (the reason is logged here),
    /// [`DpsError::InvalidInput`] for a malformed registration id.
    pub async fn register(
        &self,
        request: RegistrationRequest<'_>,
    ) -> Result<RegistrationState, DpsError> {
        let result = self.register_inner(request).await;
        let outcome = match &result {
            Ok(state) => match state.status.as_str() {
                "assigned" => "assigned",
                "disabled" => "disabled",
                _ => "failed",
            },
            Err(DpsError::Unauthorized { .. }) => "unauthorized",
            Err(DpsError::InvalidInput(_)) => "invalid",
            Err(_) => "failed",
        };
        muster_metrics::metrics().registration(outcome);
        result
    }

    async fn register_inner(
        &self,
        request: RegistrationRequest<'_>,
    ) -> Result<RegistrationState, DpsError> {
        check_id("registration id", request.registration_id)?;
        // Registration ids are case-insensitive (as in Azure): one lower-case form keys every
        // lookup and record, so `DEV1` cannot sidestep an enrollment made for `dev1`. The SAS
        // check still signs the id exactly as the device sent it.
        let as_sent = request.registration_id;
        let lower = as_sent.to_ascii_lowercase();
        let request = RegistrationRequest {
            registration_id: &lower,
            ..request
        };
        let attested = match self.attest(&request, as_sent).await {
            Ok(a) => a,
            Err(e) => {
                warn!(registration_id = as_sent, error = %e, "registration refused");
                return Err(e);
            }
        };
        let mut result = self.provision(&request, &attested).await;
        for attempt in 1..PROVISION_ATTEMPTS {
            if !matches!(result, Err(DpsError::Conflict(_))) {
                break;
            }
            muster_store::race_backoff(attempt - 1).await;
            // Another registration of the same id (on this node or another sharing the store)
            // won a race between our read and write: the state has moved on, so provision
            // again from it instead of failing the device.
            result = self.provision(&request, &attested).await;
        }
        let state = result?;
        info!(
            registration_id = as_sent,
            hub = state.assigned_hub.as_deref().unwrap_or_default(),
            substatus = state.substatus.as_deref().unwrap_or_default(),
            "device registered"
        );
        Ok(state)
    }

    async fn attest(
        &self,
        request: &RegistrationRequest<'_>,
        as_sent: &str,
    ) -> Result<Attested, DpsError> {
        match request.credential {
            Credential::X509(chain) => self.attest_x509(request.registration_id, chain).await,
            Credential::Sas(token) => {
                self.attest_sas(request.registration_id, as_sent, token)
                    .await
            }
            Credential::None => Err(refuse("no client certificate and no SAS token")),
        }
    }

    async fn all_groups(&self) -> Result<Vec<EnrollmentGroup>, DpsError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(Collection::EnrollmentGroups, None, after.as_deref(), 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for r in &page {
                out.push(group_from(r)?);
            }
        }
        Ok(out)
    }

    async fn attest_x509(
        &self,
        registration_id: &str,
        chain: &[Certificate],
    ) -> Result<Attested, DpsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| refuse("no client certificate"))?;
        let cn = leaf.common_name().unwrap_or_default();
        if !cn.eq_ignore_ascii_case(registration_id) {
            return Err(refuse(format!(
                "certificate CN '{cn}' does not match registration id '{registration_id}'"
            )));
        }
        let now = self.now();
        let auth = DeviceCredential::X509 {
            sha1: leaf.sha1_thumbprint(),
            sha256: leaf.sha256_thumbprint(),
        };
        let leaf_info = serde_json::to_value(certificate_info(leaf)).ok();

        if let Some(e) = self.load_enrollment(registration_id).await? {
            if e.attestation.kind != AttestationType::X509 {
                return Err(refuse(format!(
                    "the individual enrollment '{registration_id}' does not use X.509"
                )));
            }
            if e.provisioning_status == ProvisioningStatus::Disabled {
                return Err(refuse(format!(
                    "the individual enrollment '{registration_id}' is disabled"
                )));
            }
            let slots = e
                .attestation
                .x509
                .as_ref()
                .and_then(|x| x.client_certificates.as_ref());
            let matches = slots
                .into_iter()
                .flat_map(|c| [c.primary.as_ref(), c.secondary.as_ref()])
                .flatten()
                .any(|slot| {
                    slot.info
                        .as_ref()
                        .is_some_and(|i| i.sha256_thumbprint == leaf.sha256_thumbprint())
                });
            if !matches {
                return Err(refuse(format!(
                    "the certificate is not the one enrolled for '{registration_id}'"
                )));
            }
            if !leaf.is_valid_at(now) {
                return Err(refuse(format!(
                    "the certificate of '{registration_id}' is outside its validity period"
                )));
            }
            return Ok(Attested {
                source: Source::Individual(Box::new(e)),
                auth,
                leaf_info,
            });
        }

        // Groups: gather their trust anchors, enabled groups first.
        let mut groups = self.all_groups().await?;
        groups.retain(|g| g.attestation.kind == AttestationType::X509);
        if groups.is_empty() {
            return Err(refuse(
                "no X.509 enrollment group or individual enrollment exists",
            ));
        }
        groups.sort_by_key(|g| g.provisioning_status == ProvisioningStatus::Disabled);
        let mut anchors: Vec<Certificate> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let Some(x) = g.attestation.x509.as_ref() else {
                continue;
            };
            if let Some(refs) = &x.ca_references {
                for name in [refs.primary.as_deref(), refs.secondary.as_deref()]
                    .into_iter()
                    .flatten()
                {
                    match self.get_certificate(name).await {
                        Ok(ca) if ca.is_verified => {
                            anchors.push(ca.certificate);
                            owner.push(gi);
                        }
                        Ok(_) => skipped.push(format!(
                            "CA '{name}' of group '{}' is not verified",
                            g.enrollment_group_id
                        )),
                        Err(_) => skipped.push(format!(
                            "CA '{name}' of group '{}' no longer exists",
                            g.enrollment_group_id
                        )),
                    }
                }
            }
            if let Some(certs) = &x.signing_certificates {
                for slot in [certs.primary.as_ref(), certs.secondary.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(c) = slot
                        .certificate
                        .as_deref()
                        .and_then(|pem| muster_pki::read_certificate(pem.as_bytes()).ok())
                    {
                        anchors.push(c);
                        owner.push(gi);
                    }
                }
            }
        }
        let options = ChainOptions {
            at: now,
            usage: Usage::ClientAuth,
        };
        match validate_chain(chain, &anchors, options) {
            Ok(path) => {
                let group = owner
                    .get(path.anchor)
                    .and_then(|gi| groups.get(*gi))
                    .cloned()
                    .ok_or_else(|| refuse("internal: anchor without group"))?;
                if group.provisioning_status == ProvisioningStatus::Disabled {
                    return Err(refuse(format!(
                        "enrollment group '{}' is disabled",
                        group.enrollment_group_id
                    )));
                }
                Ok(Attested {
                    source: Source::Group(Box::new(group)),
                    auth,
                    leaf_info,
                })
            }
            Err(e) => {
                let mut reason = format!(
                    "certificate chain of '{registration_id}' does not reach an enrollment group's CA: {e}"
                );
                if !skipped.is_empty() {
                    reason.push_str(&format!(" ({})", skipped.join("; ")));
                }
                Err(refuse(reason))
            }
        }
    }

    async fn attest_sas(
        &self,
        registration_id: &str,
        as_sent: &str,
        text: &str,
    ) -> Result<Attested, DpsError> {
        let token = SasToken::parse(text).map_err(|e| refuse(e.to_string()))?;
        let now = u64::try_from(self.now().unix_timestamp()).unwrap_or(0);
        let resource = format!("{}/registrations/{registration_id}", self.config.id_scope);
        token
            .check_scope(&resource, now)
            .map_err(|e| refuse(e.to_string()))?;

        if let Some(e) = self.load_enrollment(registration_id).await? {
            if e.attestation.kind != AttestationType::SymmetricKey {
                return Err(refuse(format!(
                    "the individual enrollment '{registration_id}' does not use symmetric keys"
                )));
            }
            if e.provisioning_status == ProvisioningStatus::Disabled {
                return Err(refuse(format!(
                    "the individual enrollment '{registration_id}' is disabled"
                )));
            }
            let keys = e.attestation.symmetric_key.clone().unwrap_or_default();
            let primary = Secret::new(keys.primary_key.unwrap_or_default());
            let secondary = Secret::new(keys.secondary_key.unwrap_or_default());
            token
                .verify_signature(&[&primary, &secondary])
                .map_err(|err| refuse(format!("SAS for '{registration_id}': {err}")))?;
            return Ok(Attested {
                source: Source::Individual(Box::new(e)),
                auth: DeviceCredential::SymmetricKey { primary, secondary },
                leaf_info: None,
            });
        }

        let mut groups = self.all_groups().await?;
        groups.retain(|g| g.attestation.kind == AttestationType::SymmetricKey);
        groups.sort_by_key(|g| g.provisioning_status == ProvisioningStatus::Disabled);
        for g in groups {
            let keys = g.attestation.symmetric_key.clone().unwrap_or_default();
            let derive =
                |k: Option<String>| derive_device_key(&Secret::new(k.unwrap_or_default()), as_sent);
            let (Ok(primary), Ok(secondary)) =
                (derive(keys.primary_key), derive(keys.secondary_key))
            else {
                continue;
            };
            if token.verify_signature(&[&primary, &secondary]).is_ok() {
                if g.provisioning_status == ProvisioningStatus::Disabled {
                    return Err(refuse(format!(
                        "enrollment group '{}' is disabled",
                        g.enrollment_group_id
                    )));
                }
                return Ok(Attested {
                    source: Source::Group(Box::new(g)),
                    auth: DeviceCredential::SymmetricKey { primary, secondary },
                    leaf_info: None,
                });
            }
        }
        Err(refuse(format!(
            "the SAS of '{registration_id}' matches no individual enrollment and no enabled group key"
        )))
    }

    async fn provision(
        &self,
        request: &RegistrationRequest<'_>,
        attested: &Attested,
    ) -> Result<RegistrationState, DpsError> {
        let registration_id = request.registration_id;
        let rules = attested.source.rules(registration_id);
        crate::check_device_id(&rules.device_id)?;
        let existing = self
            .store
            .get(Collection::Registrations, registration_id)
            .await?;
        let previous: Option<RegistrationState> = existing
            .as_ref()
            .and_then(|r| serde_json::from_value(r.body.clone()).ok());
        let previous_hub = previous
            .as_ref()
            .and_then(|p| p.assigned_hub.as_deref())
            .and_then(|h| self.hub(h))
            .cloned();

        let (hub, decision) = self
            .choose_hub(
                attested,
                &rules,
                request,
                previous.as_ref(),
                previous_hub.as_ref(),
            )
            .await?;
        let moved_from = previous_hub
            .as_ref()
            .filter(|p| !p.hostname.eq_ignore_ascii_case(&hub.hostname));
        let reset = previous.is_some()
            && rules.policy.update_hub_assignment
            && !rules.policy.migrate_device_data;
        // Azure's substatus: first assignment; moved with data; moved and reset to the initial
        // twin; or back on the hub it already had.
        let substatus = match (&previous, moved_from, reset) {
            (None, _, _) => "initialAssignment",
            (Some(_), Some(_), false) => "deviceDataMigrated",
            (Some(_), Some(_), true) => "deviceDataReset",
            (Some(_), None, _) => "reprovisionedToInitialAssignment",
        }
        .to_owned();

        let now = self.now();
        // The data to migrate lives under the device id the previous registration created.
        let previous_device_id = previous
            .as_ref()
            .and_then(|p| p.device_id.clone())
            .unwrap_or_else(|| rules.device_id.clone());
        let webhook_twin = decision.as_ref().and_then(|d| d.initial_twin.as_ref());
        let (initial_tags, initial_desired) = match webhook_twin {
            Some(t) => (
                t.get("tags"),
                t.get("properties").and_then(|p| p.get("desired")),
            ),
            None => (
                rules.twin.and_then(|t| t.tags.as_ref()),
                rules
                    .twin
                    .and_then(|t| t.properties.as_ref())
                    .and_then(|p| p.desired.as_ref()),
            ),
        };
        self.hubs
            .assign(&Assignment {
                hub: &hub.hostname,
                device_id: &rules.device_id,
                credential: &attested.auth,
                iot_edge: rules.iot_edge,
                initial_tags,
                initial_desired,
                reset_twin: reset,
                moved_from: moved_from.map(|p| (p.hostname.as_str(), previous_device_id.as_str())),
            })
            .await?;

        let stamp = time_fmt::azure(now);
        let mut state = RegistrationState {
            registration_id: registration_id.to_owned(),
            created_date_time_utc: Some(
                previous
                    .as_ref()
                    .and_then(|p| p.created_date_time_utc.clone())
                    .unwrap_or_else(|| stamp.clone()),
            ),
            assigned_hub: Some(hub.hostname.clone()),
            device_id: Some(rules.device_id.clone()),
            status: "assigned".to_owned(),
            substatus: Some(substatus),
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: Some(stamp),
            etag: None,
            // A webhook's payload is what Azure returns to the device; otherwise the device's own
            // payload is echoed so operators can see what it sent.
            payload: match decision.as_ref() {
                Some(d) => d.payload.clone(),
                None => request.payload.clone().filter(|p| !p.is_null()),
            },
            x509: None,
            symmetric_key: None,
        };
        describe_attestation(&mut state, attested, rules.group_id);
        self.write_record(state, rules.group_id, existing.as_ref())
            .await
    }

    /// Which hub: the one the device has when the policy keeps assignments, the webhook's for
    /// custom allocation, otherwise the allocation policy's choice among the enrollment's hubs.
    async fn choose_hub(
        &self,
        attested: &Attested,
        rules: &Rules<'_>,
        request: &RegistrationRequest<'_>,
        previous: Option<&RegistrationState>,
        previous_hub: Option<&Hub>,
    ) -> Result<(Hub, Option<crate::custom::Decision>), DpsError> {
        if let (Some(prev), false) = (previous_hub, rules.policy.update_hub_assignment) {
            return Ok((prev.clone(), None));
        }
        let candidates: Vec<&Hub> = if rules.hubs.is_empty() {
            match rules.legacy_hub.and_then(|h| self.hub(h)) {
                Some(h) => vec![h],
                None => self.config.hubs.iter().collect(),
            }
        } else {
            rules.hubs.iter().filter_map(|h| self.hub(h)).collect()
        };
        if rules.allocation == AllocationPolicy::Custom {
            let d = self
                .custom_allocate(attested, rules, request, previous, &candidates)
                .await?;
            let hub = self
                .hub(&d.hub)
                .cloned()
                .ok_or_else(|| DpsError::AllocationFailed {
                    reason: format!("hub '{}' is not hosted here", d.hub),
                })?;
            return Ok((hub, Some(d)));
        }
        let hub = allocate(rules.allocation, &candidates, request.registration_id)
            .cloned()
            .ok_or_else(|| {
                DpsError::InvalidInput("no IoT hub is available for this enrollment".into())
            })?;
        Ok((hub, None))
    }

    /// Store the registration record unless another registration of the same id changed it
    /// since it was read ([`DpsError::Conflict`]: `register` provisions once more).
    async fn write_record(
        &self,
        mut state: RegistrationState,
        group_id: Option<&str>,
        existing: Option<&muster_store::Record>,
    ) -> Result<RegistrationState, DpsError> {
        let body =
            serde_json::to_value(&state).map_err(|e| DpsError::InvalidInput(e.to_string()))?;
        let precondition = existing.map_or(Precondition::IfNoneMatch, |r| {
            Precondition::IfMatch(r.etag.clone())
        });
        let written = self
            .store
            .put(
                Collection::Registrations,
                &state.registration_id,
                group_id,
                &body,
                precondition,
            )
            .await;
        match written {
            Ok(record) => {
                state.etag = Some(record.etag);
                Ok(state)
            }
            Err(
                muster_store::StoreError::Conflict { .. }
                | muster_store::StoreError::PreconditionFailed { .. },
            ) => Err(DpsError::Conflict(format!(
                "registration '{}' changed concurrently",
                state.registration_id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn custom_allocate(
        &self,
        attested: &Attested,
        rules: &Rules<'_>,
        request: &RegistrationRequest<'_>,
        previous: Option<&RegistrationState>,
        candidates: &[&Hub],
    ) -> Result<crate::custom::Decision, DpsError> {
        let failed = |reason: String| {
            warn!(
                registration_id = request.registration_id,
                reason, "custom allocation failed"
            );
            DpsError::AllocationFailed { reason }
        };
        let allocator = self
            .allocator
            .as_ref()
            .ok_or_else(|| failed("custom allocation is not enabled".into()))?;
        let url = rules
            .custom
            .and_then(|c| c.get("webhookUrl"))
            .and_then(Value::as_str)
            .ok_or_else(|| failed("the enrollment has no webhookUrl".into()))?;
        let api_version = rules
            .custom
            .and_then(|c| c.get("apiVersion"))
            .and_then(Value::as_str);
        let linked: Vec<String> = candidates.iter().map(|h| h.hostname.clone()).collect();
        let (kind, enrollment) = attested.source.webhook_view();
        let mut context = json!({
            "registrationId": request.registration_id,
            "currentIotHubHostName": previous.and_then(|p| p.assigned_hub.clone()),
            "currentDeviceId": previous.and_then(|p| p.device_id.clone()),
            "payload": request.payload.clone().unwrap_or(Value::Null),
        });
        if let Some(o) = context.as_object_mut() {
            match &attested.auth {
                DeviceCredential::X509 { .. } => {
                    o.insert(
                        "x509".into(),
                        json!({"certificateInfo": attested.leaf_info}),
                    );
                }
                DeviceCredential::SymmetricKey { .. } => {
                    o.insert("symmetricKey".into(), json!({}));
                }
            }
        }
        let body = json!({kind: enrollment, "deviceRuntimeContext": context, "linkedHubs": linked});
        let reply = allocator
            .call(url, api_version, &body, crate::custom::WEBHOOK_TIMEOUT)
            .await
            .map_err(|e| failed(e.0))?;
        crate::custom::decision(&reply, &linked).map_err(|e| failed(e.0))
    }

    /// One registration record.
    ///
    /// # Errors
    /// [`DpsError::NotFound`].
    pub async fn get_registration(
        &self,
        registration_id: &str,
    ) -> Result<RegistrationState, DpsError> {
        // Registration ids are case-insensitive; records are keyed by the lower-case form.
        let registration_id = &registration_id.to_ascii_lowercase();
        let r = self
            .store
            .get(Collection::Registrations, registration_id)
            .await?
            .ok_or_else(|| DpsError::NotFound {
                what: "registration",
                id: registration_id.to_owned(),
            })?;
        let mut s: RegistrationState =
            serde_json::from_value(r.body).map_err(|e| DpsError::InvalidInput(e.to_string()))?;
        s.etag = Some(r.etag);
        Ok(s)
    }

    /// Delete a registration record so the device provisions afresh next time (its hub
    /// identity stays).
    ///
    /// # Errors
    /// [`DpsError::NotFound`], [`DpsError::PreconditionFailed`].
    pub async fn delete_registration(
        &self,
        registration_id: &str,
        if_match_header: Option<&str>,
    ) -> Result<(), DpsError> {
        // Registration ids are case-insensitive; records are keyed by the lower-case form.
        let registration_id = &registration_id.to_ascii_lowercase();
        check_id("registration id", registration_id)?;
        if !self
            .store
            .delete(
                Collection::Registrations,
                registration_id,
                crate::ca::if_match(if_match_header),
            )
            .await?
        {
            return Err(DpsError::NotFound {
                what: "registration",
                id: registration_id.to_owned(),
            });
        }
        info!(registration_id, "registration record deleted");
        Ok(())
    }

    /// A page of the registration records made through one enrollment group.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn query_registrations(
        &self,
        group_id: &str,
        max_items: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<Page<RegistrationState>, DpsError> {
        self.page(
            Collection::Registrations,
            Some(group_id),
            max_items,
            continuation,
            |r| {
                let mut s: RegistrationState = serde_json::from_value(r.body.clone())
                    .map_err(|e| DpsError::InvalidInput(e.to_string()))?;
                s.etag = Some(r.etag.clone());
                Ok(s)
            },
        )
        .await
    }
}
