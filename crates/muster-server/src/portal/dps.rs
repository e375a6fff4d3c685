//! Provisioning pages: overview, Certificates, Manage enrollments (enrollment groups and
//! individual enrollments) and Registration Records, in the Azure portal's words.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::view::{self, Nav};
use super::{Fields, PageError, PageResult, Session, url_encode};
use crate::Context;

type Ctx = State<Arc<Context>>;
type Sess = Extension<Session>;

pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new()
        .route("/portal/dps", get(overview))
        .route("/portal/dps/trust-bundle.pem", get(trust_bundle))
        .route(
            "/portal/certificates",
            get(certificates).post(add_certificate),
        )
        .route("/portal/certificates/{name}", get(certificate))
        .route("/portal/certificates/{name}/code", post(generate_code))
        .route("/portal/certificates/{name}/verify", post(verify))
        .route(
            "/portal/certificates/{name}/delete",
            post(delete_certificate),
        )
        .route("/portal/enrollments", get(enrollments))
        .route("/portal/enrollments/add-group", get(new_group))
        .route("/portal/enrollments/groups", post(save_group))
        .route("/portal/enrollments/groups/{id}", get(edit_group))
        .route("/portal/enrollments/groups/{id}/delete", post(delete_group))
        .route(
            "/portal/enrollments/groups/{id}/registrations",
            get(registrations),
        )
        .route(
            "/portal/registrations/{id}/delete",
            post(delete_registration),
        )
        .route("/portal/enrollments/add-individual", get(new_individual))
        .route("/portal/enrollments/individual", post(save_individual))
        .route("/portal/enrollments/individual/{id}", get(edit_individual))
        .route(
            "/portal/enrollments/individual/{id}/delete",
            post(delete_individual),
        )
}

fn need(session: &Session) -> Result<(), PageError> {
    if session.rights.dps {
        Ok(())
    } else {
        Err(PageError::forbidden(
            "use the provisioning service (sign in with provisioningserviceowner or as admin)",
        ))
    }
}

fn info_field(ctx: &Context, key: &str) -> Value {
    ctx.info
        .get()
        .and_then(|i| i.get(key))
        .cloned()
        .unwrap_or(Value::Null)
}

fn done(q: Option<&str>) -> Option<&'static str> {
    let map = super::query_map(q);
    view::done_message(map.get("done").map(String::as_str))
}

async fn overview(State(ctx): Ctx, Extension(session): Sess) -> PageResult {
    need(&session)?;
    let host = info_field(&ctx, "hostname");
    let host = host.as_str().unwrap_or("localhost");
    let body = html! {
        h1 { "Device Provisioning Service" }
        dl class="facts" {
            dt { "ID Scope" } dd { code id="id-scope" { (ctx.id_scope) } " " (copy_button("id-scope")) }
            dt { "Service endpoint" } dd { code { (host) ":" (info_field(&ctx, "httpsPort")) } }
            dt { "Global device endpoint" } dd {
                code { (host) } " — MQTT " (info_field(&ctx, "mqttPort"))
                ", AMQP " (info_field(&ctx, "amqpPort"))
                ", HTTPS " (info_field(&ctx, "httpsPort"))
                ", WebSocket on the HTTPS port"
            }
            dt { "Trust bundle" } dd {
                a href="/portal/dps/trust-bundle.pem" download="muster-ca.pem" { "Download the trust bundle (PEM)" }
                " — devices and service clients trust the server with it."
            }
        }
        p { a href="/portal/certificates" { "Certificates" } " · " a href="/portal/enrollments" { "Manage enrollments" } }
    };
    Ok(view::page("Overview", &session, Nav::DpsOverview, body).into_response())
}

/// A button that copies the text of element `id`.
pub(crate) fn copy_button(id: &str) -> Markup {
    html! { button type="button" class="copy" data-copy=(id) aria-label="Copy to clipboard" { "Copy" } }
}

async fn trust_bundle(State(ctx): Ctx, Extension(session): Sess) -> PageResult {
    need(&session).or_else(|_| {
        if session.rights.hub_read {
            Ok(())
        } else {
            Err(PageError::forbidden("download the trust bundle"))
        }
    })?;
    let path = info_field(&ctx, "trustBundle");
    let pem = tokio::fs::read(path.as_str().unwrap_or_default())
        .await
        .map_err(|e| PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the trust bundle cannot be read: {e}"),
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"muster-ca.pem\"",
            ),
        ],
        pem,
    )
        .into_response())
}

fn status_badge(verified: bool) -> Markup {
    if verified {
        html! { span class="badge ok" { "Verified" } }
    } else {
        html! { span class="badge warn" { "Unverified" } }
    }
}

async fn certificates(
    State(ctx): Ctx,
    Extension(session): Sess,
    uri: axum::http::Uri,
) -> PageResult {
    need(&session)?;
    let certs = ctx.dps.list_certificates().await?;
    Ok(certificates_page(&session, &certs, done(uri.query()), None).into_response())
}

fn certificates_page(
    session: &Session,
    certs: &[muster_dps::ca::CaCertificate],
    done: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let body = html! {
        h1 { "Certificates" }
        @if let Some(d) = done { (view::notice(d)) }
        @if let Some(e) = error { (view::alert(e)) }
        table {
            caption { "CA certificates uploaded to this provisioning service" }
            thead { tr { th scope="col" { "Name" } th scope="col" { "Status" } th scope="col" { "Subject" } th scope="col" { "Thumbprint" } th scope="col" { "Expiry" } } }
            tbody {
                @for c in certs {
                    @let r = c.to_response(false);
                    tr {
                        td { a href={ "/portal/certificates/" (url_encode(&c.name)) } { (c.name) } }
                        td { (status_badge(c.is_verified)) }
                        td { (r.pointer("/properties/subject").and_then(Value::as_str).unwrap_or_default()) }
                        td { code { (r.pointer("/properties/thumbprint").and_then(Value::as_str).unwrap_or_default()) } }
                        td { (r.pointer("/properties/expiry").and_then(Value::as_str).unwrap_or_default()) }
                    }
                }
                @if certs.is_empty() { tr { td colspan="5" { "No certificates yet." } } }
            }
        }
        section class="card" {
            h2 { "Add certificate" }
            form method="post" action="/portal/certificates" enctype="multipart/form-data" {
                (view::csrf(session))
                label for="cert-name" { "Certificate name" }
                input id="cert-name" name="name" required pattern="[A-Za-z0-9_.\\-]{1,128}";
                label for="cert-file" { "Certificate .pem or .cer file" }
                input id="cert-file" name="file" type="file" accept=".pem,.cer,.crt,.der" required;
                label class="check" {
                    input type="checkbox" name="verified" value="true";
                    " Set certificate status to verified on upload"
                }
                button type="submit" { "Save" }
            }
        }
    };
    view::page("Certificates", session, Nav::Certificates, body)
}

/// PEM text as is, anything else (a `.cer`) as base64 DER.
fn certificate_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(t) if t.contains("-----BEGIN") => t.to_owned(),
        _ => base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

async fn add_certificate(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
) -> PageResult {
    need(&session)?;
    let name = fields.text("name").trim().to_owned();
    let result = match fields.file("file") {
        None => Err(PageError {
            status: StatusCode::BAD_REQUEST,
            message: "Choose a certificate file.".into(),
        }),
        Some(bytes) => {
            let body = json!({"properties": {
                "certificate": certificate_text(bytes),
                "isVerified": fields.text("verified") == "true",
            }});
            ctx.dps
                .put_certificate(&name, &body, None)
                .await
                .map_err(PageError::from)
        }
    };
    match result {
        Ok(_) => Ok(Redirect::to("/portal/certificates?done=uploaded").into_response()),
        Err(e) => {
            let certs = ctx.dps.list_certificates().await?;
            Ok((
                e.status,
                certificates_page(&session, &certs, None, Some(&e.message)),
            )
                .into_response())
        }
    }
}

async fn certificate(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(name): Path<String>,
    uri: axum::http::Uri,
) -> PageResult {
    need(&session)?;
    let c = ctx.dps.get_certificate(&name).await?;
    Ok(certificate_page(&session, &c, done(uri.query()), None).into_response())
}

fn certificate_page(
    session: &Session,
    c: &muster_dps::ca::CaCertificate,
    done: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let r = c.to_response(true);
    let prop = |k: &str| {
        r.pointer(&format!("/properties/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let base = format!("/portal/certificates/{}", url_encode(&c.name));
    let body = html! {
        p { a href="/portal/certificates" { "← Certificates" } }
        h1 { "Certificate " (c.name) }
        @if let Some(d) = done { (view::notice(d)) }
        @if let Some(e) = error { (view::alert(e)) }
        dl class="facts" {
            dt { "Status" } dd id="cert-status" { (status_badge(c.is_verified)) }
            dt { "Subject" } dd { (prop("subject")) }
            dt { "Thumbprint" } dd { code { (prop("thumbprint")) } }
            dt { "SHA-256 thumbprint" } dd { code { (prop("sha256Thumbprint")) } }
            dt { "Expiry" } dd { (prop("expiry")) }
        }
        @if !c.is_verified {
            section class="card" {
                h2 { "Certificate Details — proof of possession" }
                p { "Generate a verification code, sign a certificate whose subject (CN) is the code with this CA's key (for example "
                    code { "muster certs create-verification-cert --code CODE" } "), and upload it here." }
                (view::button_form(session, &format!("{base}/code"), "Generate Verification Code", "", None))
                @if let Some(code) = c.verification_code.as_deref() {
                    label for="verification-code" { "Verification Code" }
                    div class="row" {
                        input id="verification-code" readonly value=(code);
                        (copy_button("verification-code"))
                    }
                    form method="post" action={ (base) "/verify" } enctype="multipart/form-data" {
                        (view::csrf(session))
                        label for="verification-file" { "Verification Certificate .pem or .cer file" }
                        input id="verification-file" name="file" type="file" accept=".pem,.cer,.crt,.der" required;
                        button type="submit" { "Verify" }
                    }
                }
            }
        }
        section class="danger" {
            (view::button_form(session, &format!("{base}/delete"), "Delete", "danger",
                Some("Delete this certificate? Enrollment groups that use it stop accepting devices.")))
        }
    };
    view::page("Certificate", session, Nav::Certificates, body)
}

async fn generate_code(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(name): Path<String>,
) -> PageResult {
    need(&session)?;
    ctx.dps.generate_verification_code(&name, None).await?;
    Ok(Redirect::to(&format!(
        "/portal/certificates/{}?done=code",
        url_encode(&name)
    ))
    .into_response())
}

async fn verify(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
    Path(name): Path<String>,
) -> PageResult {
    need(&session)?;
    let result = match fields.file("file") {
        None => Err(PageError {
            status: StatusCode::BAD_REQUEST,
            message: "Choose the verification certificate file.".into(),
        }),
        Some(bytes) => ctx
            .dps
            .verify_certificate(
                &name,
                None,
                &json!({"certificate": certificate_text(bytes)}),
            )
            .await
            .map_err(PageError::from),
    };
    match result {
        Ok(_) => Ok(Redirect::to(&format!(
            "/portal/certificates/{}?done=verified",
            url_encode(&name)
        ))
        .into_response()),
        Err(e) => {
            let c = ctx.dps.get_certificate(&name).await?;
            Ok((
                e.status,
                certificate_page(&session, &c, None, Some(&e.message)),
            )
                .into_response())
        }
    }
}

async fn delete_certificate(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(name): Path<String>,
) -> PageResult {
    need(&session)?;
    ctx.dps.delete_certificate(&name, None).await?;
    Ok(Redirect::to("/portal/certificates?done=deleted").into_response())
}

fn status_text(v: &Value) -> &str {
    v.get("provisioningStatus")
        .and_then(Value::as_str)
        .unwrap_or("enabled")
}

fn attestation_text(v: &Value) -> &'static str {
    match v.pointer("/attestation/type").and_then(Value::as_str) {
        Some("symmetricKey") => "Symmetric key",
        Some("x509") => "X.509",
        Some("tpm") => "TPM",
        _ => "—",
    }
}

async fn enrollments(
    State(ctx): Ctx,
    Extension(session): Sess,
    uri: axum::http::Uri,
) -> PageResult {
    need(&session)?;
    let groups = ctx.dps.query_enrollment_groups(Some(1000), None).await?;
    let individuals = ctx.dps.query_enrollments(Some(1000), None).await?;
    let groups: Vec<Value> = groups
        .items
        .iter()
        .filter_map(|g| serde_json::to_value(g).ok())
        .collect();
    let individuals: Vec<Value> = individuals
        .items
        .iter()
        .filter_map(|g| serde_json::to_value(g).ok())
        .collect();
    let body = html! {
        h1 { "Manage enrollments" }
        @if let Some(d) = done(uri.query()) { (view::notice(d)) }
        p class="actions" {
            a class="button" href="/portal/enrollments/add-group" { "Add enrollment group" }
            a class="button" href="/portal/enrollments/add-individual" { "Add individual enrollment" }
        }
        table {
            caption { "Enrollment groups" }
            thead { tr { th scope="col" { "Group name" } th scope="col" { "Attestation" } th scope="col" { "Status" } th scope="col" { "Registration Records" } } }
            tbody {
                @for g in &groups {
                    @let id = g.get("enrollmentGroupId").and_then(Value::as_str).unwrap_or_default();
                    tr {
                        td { a href={ "/portal/enrollments/groups/" (url_encode(id)) } { (id) } }
                        td { (attestation_text(g)) }
                        td { (status_text(g)) }
                        td { a href={ "/portal/enrollments/groups/" (url_encode(id)) "/registrations" } { "Registration Records" } }
                    }
                }
                @if groups.is_empty() { tr { td colspan="4" { "No enrollment groups yet." } } }
            }
        }
        table {
            caption { "Individual enrollments" }
            thead { tr { th scope="col" { "Registration ID" } th scope="col" { "Device ID" } th scope="col" { "Attestation" } th scope="col" { "Status" } } }
            tbody {
                @for e in &individuals {
                    @let id = e.get("registrationId").and_then(Value::as_str).unwrap_or_default();
                    tr {
                        td { a href={ "/portal/enrollments/individual/" (url_encode(id)) } { (id) } }
                        td { (e.get("deviceId").and_then(Value::as_str).unwrap_or(id)) }
                        td { (attestation_text(e)) }
                        td { (status_text(e)) }
                    }
                }
                @if individuals.is_empty() { tr { td colspan="4" { "No individual enrollments yet." } } }
            }
        }
    };
    Ok(view::page("Manage enrollments", &session, Nav::Enrollments, body).into_response())
}

/// The values of an enrollment form, as shown and as submitted.
#[derive(Debug, Default)]
struct Form {
    editing: bool,
    id: String,
    device_id: String,
    etag: String,
    /// `certificate` or `symmetricKey`.
    attestation: String,
    /// Groups: `ca` or `intermediate`.
    cert_type: String,
    primary_ca: String,
    secondary_ca: String,
    auto_keys: bool,
    primary_key: String,
    secondary_key: String,
    allocation: String,
    webhook_url: String,
    api_version: String,
    hubs: Vec<String>,
    reprovision: String,
    initial_twin: String,
    enabled: bool,
}

const DEFAULT_TWIN: &str = "{\n  \"tags\": {},\n  \"properties\": {\n    \"desired\": {}\n  }\n}";

impl Form {
    fn new() -> Self {
        Self {
            attestation: "certificate".into(),
            cert_type: "ca".into(),
            auto_keys: true,
            allocation: "hashed".into(),
            api_version: "2021-10-01".into(),
            reprovision: "migrate".into(),
            initial_twin: DEFAULT_TWIN.into(),
            enabled: true,
            ..Self::default()
        }
    }

    fn from_stored(v: &Value, id_key: &str) -> Self {
        let text = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let symmetric = text("/attestation/type") == "symmetricKey";
        let reprovision = match (
            v.pointer("/reprovisionPolicy/updateHubAssignment")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            v.pointer("/reprovisionPolicy/migrateDeviceData")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        ) {
            (false, _) => "never",
            (true, true) => "migrate",
            (true, false) => "reset",
        };
        Self {
            editing: true,
            id: text(&format!("/{id_key}")),
            device_id: text("/deviceId"),
            etag: text("/etag"),
            attestation: if symmetric {
                "symmetricKey"
            } else {
                "certificate"
            }
            .into(),
            cert_type: if v.pointer("/attestation/x509/caReferences").is_some() {
                "ca"
            } else {
                "intermediate"
            }
            .into(),
            primary_ca: text("/attestation/x509/caReferences/primary"),
            secondary_ca: text("/attestation/x509/caReferences/secondary"),
            auto_keys: false,
            primary_key: text("/attestation/symmetricKey/primaryKey"),
            secondary_key: text("/attestation/symmetricKey/secondaryKey"),
            allocation: text("/allocationPolicy"),
            webhook_url: text("/customAllocationDefinition/webhookUrl"),
            api_version: text("/customAllocationDefinition/apiVersion"),
            hubs: v
                .get("iotHubs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            reprovision: reprovision.into(),
            initial_twin: v
                .get("initialTwin")
                .map(view::pretty)
                .unwrap_or_else(|| DEFAULT_TWIN.into()),
            enabled: status_text(v) == "enabled",
        }
    }

    fn from_fields(f: &Fields) -> Self {
        Self {
            editing: f.text("editing") == "true",
            id: f.text("id").trim().to_owned(),
            device_id: f.text("deviceId").trim().to_owned(),
            etag: f.text("etag"),
            attestation: f.text("attestation"),
            cert_type: f.text("certType"),
            primary_ca: f.text("primaryCa"),
            secondary_ca: f.text("secondaryCa"),
            auto_keys: f.text("autoKeys") == "true",
            primary_key: f.text("primaryKey").trim().to_owned(),
            secondary_key: f.text("secondaryKey").trim().to_owned(),
            allocation: f.text("allocationPolicy"),
            webhook_url: f.text("webhookUrl").trim().to_owned(),
            api_version: f.text("apiVersion").trim().to_owned(),
            hubs: f.all("iotHubs"),
            reprovision: f.text("reprovision"),
            initial_twin: f.text("initialTwin"),
            enabled: f.text("status") != "disabled",
        }
    }

    /// The REST body for this form (`group` = enrollment group, else individual).
    fn body(
        &self,
        group: bool,
        upload: Option<&[u8]>,
        existing: Option<&Value>,
    ) -> Result<Value, String> {
        let twin: Value = if self.initial_twin.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&self.initial_twin)
                .map_err(|e| format!("Initial Device Twin State is not valid JSON: {e}"))?
        };
        if !twin.is_object() {
            return Err("Initial Device Twin State must be a JSON object such as {\"tags\":{},\"properties\":{\"desired\":{}}}".into());
        }
        let attestation = if self.attestation == "symmetricKey" {
            let (p, s) = if self.auto_keys || self.primary_key.is_empty() {
                (
                    super::session::random_token(32),
                    super::session::random_token(32),
                )
            } else {
                (self.primary_key.clone(), self.secondary_key.clone())
            };
            let key = |k: String| {
                // Keys are base64; a generated token is base64url, so re-encode its bytes.
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(k.as_bytes())
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                    .unwrap_or(k)
            };
            let (p, s) = if self.auto_keys || self.primary_key.is_empty() {
                (key(p), key(s))
            } else {
                (
                    p,
                    if s.is_empty() {
                        self.primary_key.clone()
                    } else {
                        s
                    },
                )
            };
            json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": p, "secondaryKey": s}})
        } else if let Some(bytes) = upload {
            let pem = certificate_text(bytes);
            if group {
                json!({"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pem}}}})
            } else {
                json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}})
            }
        } else if group && self.cert_type == "ca" {
            if self.primary_ca.is_empty() {
                return Err("Choose the primary CA certificate (upload and verify one under Certificates first).".into());
            }
            let mut refs = json!({"primary": self.primary_ca});
            if !self.secondary_ca.is_empty()
                && let Some(o) = refs.as_object_mut()
            {
                o.insert("secondary".into(), json!(self.secondary_ca));
            }
            json!({"type": "x509", "x509": {"caReferences": refs}})
        } else if let Some(a) = existing {
            a.clone()
        } else {
            return Err("Upload the certificate file.".into());
        };
        let (update, migrate) = match self.reprovision.as_str() {
            "never" => (false, false),
            "reset" => (true, false),
            _ => (true, true),
        };
        let mut body = json!({
            "attestation": attestation,
            "allocationPolicy": if self.allocation.is_empty() { "hashed" } else { &self.allocation },
            "iotHubs": self.hubs,
            "reprovisionPolicy": {"updateHubAssignment": update, "migrateDeviceData": migrate},
            "initialTwin": twin,
            "provisioningStatus": if self.enabled { "enabled" } else { "disabled" },
        });
        if let Some(o) = body.as_object_mut() {
            if group {
                o.insert("enrollmentGroupId".into(), json!(self.id));
            } else {
                o.insert("registrationId".into(), json!(self.id));
                if !self.device_id.is_empty() {
                    o.insert("deviceId".into(), json!(self.device_id));
                }
            }
            if self.allocation == "custom" {
                o.insert(
                    "customAllocationDefinition".into(),
                    json!({"webhookUrl": self.webhook_url, "apiVersion": self.api_version}),
                );
            }
        }
        Ok(body)
    }
}

fn radio(name: &str, value: &str, current: &str, label: &str) -> Markup {
    html! {
        label class="check" {
            input type="radio" name=(name) value=(value) checked[current == value];
            " " (label)
        }
    }
}

async fn verified_cas(ctx: &Context) -> Result<Vec<String>, PageError> {
    Ok(ctx
        .dps
        .list_certificates()
        .await?
        .into_iter()
        .filter(|c| c.is_verified)
        .map(|c| c.name)
        .collect())
}

fn enrollment_form(
    ctx: &Context,
    session: &Session,
    form: &Form,
    group: bool,
    cas: &[String],
    error: Option<&str>,
) -> Markup {
    let (title, action) = match (group, form.editing) {
        (true, false) => ("Add enrollment group", "/portal/enrollments/groups"),
        (true, true) => ("Enrollment group details", "/portal/enrollments/groups"),
        (false, false) => (
            "Add individual enrollment",
            "/portal/enrollments/individual",
        ),
        (false, true) => ("Enrollment details", "/portal/enrollments/individual"),
    };
    let hubs = ctx.hub.hostnames();
    let body = html! {
        p { a href="/portal/enrollments" { "← Manage enrollments" } }
        h1 { (title) }
        @if let Some(e) = error { (view::alert(e)) }
        form method="post" action=(action) enctype="multipart/form-data" class="card enrollment" {
            (view::csrf(session))
            input type="hidden" name="editing" value=(form.editing);
            input type="hidden" name="etag" value=(form.etag);
            @if group {
                label for="id" { "Group name" }
            } @else {
                label for="id" { "Registration ID" }
            }
            input id="id" name="id" required value=(form.id) readonly[form.editing];
            fieldset data-switch="attestation" {
                legend { "Attestation" }
                (radio("attestation", "certificate", &form.attestation, "Certificates"))
                (radio("attestation", "symmetricKey", &form.attestation, "Symmetric key"))
            }
            fieldset data-when="attestation=certificate" {
                legend { "X.509 certificate settings" }
                @if group {
                    (radio("certType", "ca", &form.cert_type, "CA certificate"))
                    (radio("certType", "intermediate", &form.cert_type, "Intermediate certificate"))
                    label for="primaryCa" { "Primary certificate" }
                    select id="primaryCa" name="primaryCa" {
                        option value="" { "— choose a verified CA certificate —" }
                        @for c in cas { option value=(c) selected[*c == form.primary_ca] { (c) } }
                    }
                    label for="secondaryCa" { "Secondary certificate (optional)" }
                    select id="secondaryCa" name="secondaryCa" {
                        option value="" { "— none —" }
                        @for c in cas { option value=(c) selected[*c == form.secondary_ca] { (c) } }
                    }
                    label for="certificate" { "Intermediate certificate .pem or .cer file (for an intermediate)" }
                } @else {
                    label for="certificate" { "Primary certificate .pem or .cer file (the device's own certificate)" }
                }
                input id="certificate" name="certificate" type="file" accept=".pem,.cer,.crt,.der";
                @if form.editing { p class="hint" { "Leave empty to keep the current certificate." } }
            }
            fieldset data-when="attestation=symmetricKey" {
                legend { "Symmetric key settings" }
                label class="check" { input type="checkbox" name="autoKeys" value="true" checked[form.auto_keys]; " Auto-generate keys" }
                label for="primaryKey" { "Primary key" }
                input id="primaryKey" name="primaryKey" value=(form.primary_key) autocomplete="off";
                label for="secondaryKey" { "Secondary key" }
                input id="secondaryKey" name="secondaryKey" value=(form.secondary_key) autocomplete="off";
            }
            @if !group {
                label for="deviceId" { "IoT Hub Device ID (optional; the registration ID when empty)" }
                input id="deviceId" name="deviceId" value=(form.device_id);
            }
            label for="allocationPolicy" { "Select how you want to assign devices to hubs" }
            select id="allocationPolicy" name="allocationPolicy" {
                @for (v, l) in [("hashed", "Evenly weighted distribution"), ("geoLatency", "Lowest latency"), ("static", "Static configuration"), ("custom", "Custom (use a webhook)")] {
                    option value=(v) selected[form.allocation == v] { (l) }
                }
            }
            fieldset data-when="allocationPolicy=custom" {
                legend { "Custom allocation" }
                label for="webhookUrl" { "Webhook URL" }
                input id="webhookUrl" name="webhookUrl" type="url" value=(form.webhook_url);
                label for="apiVersion" { "API version" }
                input id="apiVersion" name="apiVersion" value=(form.api_version);
            }
            fieldset {
                legend { "Select the IoT hubs this group can be assigned to" }
                @for h in hubs {
                    label class="check" {
                        input type="checkbox" name="iotHubs" value=(h) checked[form.hubs.iter().any(|x| x.eq_ignore_ascii_case(h)) || (!form.editing && form.hubs.is_empty())];
                        " " (h)
                    }
                }
            }
            fieldset {
                legend { "Select how you want device data to be handled on re-provisioning" }
                (radio("reprovision", "migrate", &form.reprovision, "Re-provision and migrate data"))
                (radio("reprovision", "reset", &form.reprovision, "Re-provision and reset to initial config"))
                (radio("reprovision", "never", &form.reprovision, "Never re-provision"))
            }
            label for="initialTwin" { "Initial Device Twin State" }
            textarea id="initialTwin" name="initialTwin" rows="8" data-json="true" aria-describedby="initialTwin-msg" spellcheck="false" { (form.initial_twin) }
            p id="initialTwin-msg" class="hint" aria-live="polite" { "JSON: tags and properties.desired." }
            fieldset {
                legend { "Enable entry" }
                (radio("status", "enabled", if form.enabled { "enabled" } else { "disabled" }, "Enable"))
                (radio("status", "disabled", if form.enabled { "enabled" } else { "disabled" }, "Disable"))
            }
            button type="submit" { "Save" }
        }
        @if form.editing {
            @let kind = if group { "groups" } else { "individual" };
            section class="danger" {
                @if group {
                    p { a href={ "/portal/enrollments/groups/" (url_encode(&form.id)) "/registrations" } { "Registration Records" } }
                }
                (view::button_form(session, &format!("/portal/enrollments/{kind}/{}/delete", url_encode(&form.id)), "Delete", "danger",
                    Some("Delete this enrollment? Devices it provisioned keep their hub identity.")))
            }
        }
    };
    view::page(title, session, Nav::Enrollments, body)
}

async fn new_group(State(ctx): Ctx, Extension(session): Sess) -> PageResult {
    need(&session)?;
    let cas = verified_cas(&ctx).await?;
    Ok(enrollment_form(&ctx, &session, &Form::new(), true, &cas, None).into_response())
}

async fn edit_group(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(id): Path<String>,
) -> PageResult {
    need(&session)?;
    let g = ctx.dps.get_enrollment_group(&id).await?;
    let v = serde_json::to_value(&g).unwrap_or_default();
    let cas = verified_cas(&ctx).await?;
    let form = Form::from_stored(&v, "enrollmentGroupId");
    Ok(enrollment_form(&ctx, &session, &form, true, &cas, None).into_response())
}

async fn save_group(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
) -> PageResult {
    save(&ctx, &session, &fields, true).await
}

/// Create or update an enrollment group (`group`) or an individual enrollment from its form;
/// on a refusal the form comes back with the values entered and the error.
async fn save(ctx: &Context, session: &Session, fields: &Fields, group: bool) -> PageResult {
    need(session)?;
    let form = Form::from_fields(fields);
    let stored = match (form.editing, group) {
        (false, _) => None,
        (true, true) => ctx
            .dps
            .get_enrollment_group(&form.id)
            .await
            .ok()
            .and_then(|g| serde_json::to_value(&g).ok()),
        (true, false) => ctx
            .dps
            .get_enrollment(&form.id)
            .await
            .ok()
            .and_then(|e| serde_json::to_value(&e).ok()),
    };
    // A group takes an uploaded certificate only as its intermediate; an individual
    // enrollment's upload is the device's own certificate.
    let upload = if group && form.cert_type != "intermediate" {
        None
    } else {
        fields.file("certificate")
    };
    let existing = stored.as_ref().and_then(|v| v.get("attestation"));
    let etag = Some(form.etag.as_str()).filter(|e| !e.is_empty());
    let result = match form.body(group, upload, existing) {
        Err(message) => Err(PageError {
            status: StatusCode::BAD_REQUEST,
            message,
        }),
        Ok(body) if group => ctx
            .dps
            .put_enrollment_group(&form.id, &body, etag)
            .await
            .map(drop)
            .map_err(PageError::from),
        Ok(body) => ctx
            .dps
            .put_enrollment(&form.id, &body, etag)
            .await
            .map(drop)
            .map_err(PageError::from),
    };
    match result {
        Ok(()) => Ok(Redirect::to("/portal/enrollments?done=saved").into_response()),
        Err(e) => {
            let cas = if group {
                verified_cas(ctx).await?
            } else {
                Vec::new()
            };
            let page = enrollment_form(ctx, session, &form, group, &cas, Some(&e.message));
            Ok((e.status, page).into_response())
        }
    }
}

async fn delete_group(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(id): Path<String>,
) -> PageResult {
    need(&session)?;
    ctx.dps.delete_enrollment_group(&id, None).await?;
    Ok(Redirect::to("/portal/enrollments?done=deleted").into_response())
}

async fn new_individual(State(ctx): Ctx, Extension(session): Sess) -> PageResult {
    need(&session)?;
    Ok(enrollment_form(&ctx, &session, &Form::new(), false, &[], None).into_response())
}

async fn edit_individual(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(id): Path<String>,
) -> PageResult {
    need(&session)?;
    let e = ctx.dps.get_enrollment(&id).await?;
    let v = serde_json::to_value(&e).unwrap_or_default();
    let form = Form::from_stored(&v, "registrationId");
    Ok(enrollment_form(&ctx, &session, &form, false, &[], None).into_response())
}

async fn save_individual(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
) -> PageResult {
    save(&ctx, &session, &fields, false).await
}

async fn delete_individual(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(id): Path<String>,
) -> PageResult {
    need(&session)?;
    ctx.dps.delete_enrollment(&id, None).await?;
    Ok(Redirect::to("/portal/enrollments?done=deleted").into_response())
}

async fn registrations(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> PageResult {
    need(&session)?;
    let page = ctx.dps.query_registrations(&id, Some(1000), None).await?;
    let records: Vec<Value> = page
        .items
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect();
    let body = html! {
        p { a href={ "/portal/enrollments/groups/" (url_encode(&id)) } { "← Enrollment group " (id) } }
        h1 { "Registration Records" }
        @if let Some(d) = done(uri.query()) { (view::notice(d)) }
        table {
            caption { "Devices registered through enrollment group " (id) }
            thead { tr { th scope="col" { "Registration ID" } th scope="col" { "Device ID" } th scope="col" { "Status" } th scope="col" { "Assigned hub" } th scope="col" { "Last updated" } th scope="col" { span class="sr-only" { "Actions" } } } }
            tbody {
                @for r in &records {
                    @let rid = r.get("registrationId").and_then(Value::as_str).unwrap_or_default();
                    tr {
                        td { (rid) }
                        td { (r.get("deviceId").and_then(Value::as_str).unwrap_or_default()) }
                        td { (r.get("status").and_then(Value::as_str).unwrap_or_default()) }
                        td { (r.get("assignedHub").and_then(Value::as_str).unwrap_or_default()) }
                        td { (r.get("lastUpdatedDateTimeUtc").and_then(Value::as_str).unwrap_or_default()) }
                        td {
                            form method="post" action={ "/portal/registrations/" (url_encode(rid)) "/delete" } class="inline"
                                data-confirm="Delete this registration record? The device registers again on its next attempt." {
                                (view::csrf(&session))
                                input type="hidden" name="group" value=(id);
                                button type="submit" class="danger" aria-label={ "Delete registration " (rid) } { "Delete" }
                            }
                        }
                    }
                }
                @if records.is_empty() { tr { td colspan="6" { "No registrations yet." } } }
            }
        }
    };
    Ok(view::page("Registration Records", &session, Nav::Enrollments, body).into_response())
}

async fn delete_registration(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> PageResult {
    need(&session)?;
    ctx.dps.delete_registration(&id, None).await?;
    let group = fields.text("group");
    Ok(Redirect::to(&format!(
        "/portal/enrollments/groups/{}/registrations?done=deleted",
        url_encode(&group)
    ))
    .into_response())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::Form;
    use serde_json::json;

    #[test]
    fn a_group_form_becomes_the_rest_body() {
        let mut form = Form::new();
        form.id = "simulated-devices".into();
        form.primary_ca = "root".into();
        form.hubs = vec!["localhost".into()];
        form.initial_twin = r#"{"properties":{"desired":{"telemetryDelay":"1"}}}"#.into();
        let body = form.body(true, None, None).unwrap();
        assert_eq!(
            body["attestation"]["x509"]["caReferences"]["primary"],
            "root"
        );
        assert_eq!(
            body["initialTwin"]["properties"]["desired"]["telemetryDelay"],
            "1"
        );
        assert_eq!(
            body["reprovisionPolicy"],
            json!({"updateHubAssignment": true, "migrateDeviceData": true})
        );
        assert_eq!(body["provisioningStatus"], "enabled");
        form.initial_twin = "{not json".into();
        assert!(
            form.body(true, None, None)
                .unwrap_err()
                .contains("not valid JSON")
        );
        form.initial_twin = "[]".into();
        assert!(form.body(true, None, None).is_err());
        form.initial_twin = String::new();
        form.primary_ca = String::new();
        assert!(
            form.body(true, None, None)
                .unwrap_err()
                .contains("primary CA")
        );
    }

    #[test]
    fn generated_symmetric_keys_are_standard_base64() {
        let mut form = Form::new();
        form.attestation = "symmetricKey".into();
        let body = form.body(true, None, None).unwrap();
        let key = body["attestation"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap();
        assert_eq!(key.len(), 44);
        assert!(key.ends_with('='));
    }
}
