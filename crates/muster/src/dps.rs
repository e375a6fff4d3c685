//! `muster dps …`: CA certificates, enrollment groups, individual enrollments and registration
//! records over the REST API.

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use muster_pki::{Issuer, Profile, Request};
use reqwest::Method;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::api::{Api, if_match, print, print_list, s, seg, set};
use crate::cli::{
    CertificateCommand, DpsCommand, EnrollmentCommand, EnrollmentSettings, GroupCommand, Output,
    RegistrationCommand,
};

pub(crate) fn run(
    api_args: &crate::cli::ApiArgs,
    command: DpsCommand,
    output: Output,
) -> Result<()> {
    let runtime = crate::api::runtime()?;
    runtime.block_on(async {
        let api = Api::new(api_args, "MUSTER_DPS_CONNECTION_STRING")?;
        match command {
            DpsCommand::Certificate(c) => certificate(&api, c, output).await,
            DpsCommand::EnrollmentGroup(c) => group(&api, c, output).await,
            DpsCommand::Enrollment(c) => enrollment(&api, c, output).await,
            DpsCommand::Registration(c) => registration(&api, c, output).await,
        }
    })
}

const CERT_HEADER: (&str, &str) = (
    "CA certificates",
    "NAME                     STATUS    THUMBPRINT (SHA-1)                         SUBJECT",
);

fn cert_row(c: &Value) {
    out!(
        "{:<24} {:<9} {:<42} {}",
        s(c, "/name"),
        if c.pointer("/properties/isVerified")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            "verified"
        } else {
            "unverified"
        },
        s(c, "/properties/thumbprint"),
        s(c, "/properties/subject"),
    );
}

fn read_text(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Validate locally so a wrong file is reported with its name.
    let certs =
        muster_pki::read_certificates(&bytes).with_context(|| path.display().to_string())?;
    let first = certs.first().context("no certificate")?;
    Ok(first.to_pem())
}

async fn certificate(api: &Api, cmd: CertificateCommand, output: Output) -> Result<()> {
    match cmd {
        CertificateCommand::Create {
            name,
            path,
            verified,
        } => {
            let pem = read_text(&path)?;
            let body = json!({"properties": {"certificate": pem, "isVerified": verified}});
            let r = api
                .call(
                    Method::PUT,
                    &format!("/certificates/{}", seg(&name)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            print(output, &r, |r| {
                cert_row(r);
                if !verified {
                    out!(
                        "\nNext: prove possession of its key:\n  muster dps certificate verify --name {name} --ca-key <KEY FILE>\nor in two steps with `generate-verification-code` and `muster certs create-verification-cert <CODE>`."
                    );
                }
            });
        }
        CertificateCommand::Update { name, path, etag } => {
            let pem = read_text(&path)?;
            let body = json!({"properties": {"certificate": pem}});
            let r = api
                .call(
                    Method::PUT,
                    &format!("/certificates/{}", seg(&name)),
                    Some(&body),
                    &if_match(etag),
                )
                .await?
                .body;
            print(output, &r, cert_row);
        }
        CertificateCommand::List => {
            let r = api.get("/certificates").await?;
            let items = r
                .get("value")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            print_list(output, &r, &items, CERT_HEADER, cert_row);
        }
        CertificateCommand::Show { name } => {
            let r = api.get(&format!("/certificates/{}", seg(&name))).await?;
            print(output, &r, |r| {
                cert_row(r);
                out!(
                    "  expires {}  etag {}",
                    s(r, "/properties/expiry"),
                    s(r, "/etag")
                );
                if let Some(code) = r
                    .pointer("/properties/verificationCode")
                    .and_then(Value::as_str)
                {
                    out!("  verification code {code}");
                }
            });
        }
        CertificateCommand::Delete { name, etag } => {
            api.call(
                Method::DELETE,
                &format!("/certificates/{}", seg(&name)),
                None,
                &if_match(etag),
            )
            .await?;
            if output == Output::Table {
                out!("Deleted CA certificate '{name}'.");
            }
        }
        CertificateCommand::GenerateVerificationCode { name, etag } => {
            let r = generate_code(api, &name, etag).await?;
            print(output, &r, |r| {
                out!(
                    "verification code  {}",
                    s(r, "/properties/verificationCode")
                );
                out!("etag               {}", s(r, "/etag"));
                out!(
                    "\nNext: sign it with the CA's key and upload the result:\n  muster certs create-verification-cert {}\n  muster dps certificate verify --name {name} --path certs/verification-code.pem",
                    s(r, "/properties/verificationCode")
                );
            });
        }
        CertificateCommand::Verify {
            name,
            path,
            ca_key,
            ca_key_password_env,
            etag,
        } => {
            let (proof_pem, etag) = match (path, ca_key) {
                (Some(p), _) => (read_text(&p)?, etag),
                (None, Some(key_path)) => {
                    sign_proof(api, &name, etag, &key_path, ca_key_password_env).await?
                }
                (None, None) => bail!("give --path or --ca-key"),
            };
            let body = json!({"certificate": proof_pem});
            let r = api
                .call(
                    Method::POST,
                    &format!("/certificates/{}/verify", seg(&name)),
                    Some(&body),
                    &if_match(etag),
                )
                .await?
                .body;
            print(output, &r, |r| {
                cert_row(r);
                out!(
                    "\nNext: create an enrollment group that trusts it:\n  muster dps enrollment-group create --enrollment-id <GROUP> --ca-name {name}"
                );
            });
        }
    }
    Ok(())
}

/// Proof of possession in one step: fetch a verification code and sign a verification
/// certificate for it with the CA's key (which never leaves this machine). Returns the proof
/// and the etag to verify with.
async fn sign_proof(
    api: &Api,
    name: &str,
    etag: Option<String>,
    key_path: &std::path::Path,
    password_env: Option<String>,
) -> Result<(String, Option<String>)> {
    let coded = generate_code(api, name, etag).await?;
    let code = s(&coded, "/properties/verificationCode").to_owned();
    let der = base64::engine::general_purpose::STANDARD
        .decode(s(&coded, "/properties/certificate"))
        .context("the server returned an unreadable certificate")?;
    let ca = muster_pki::Certificate::from_der(&der)?;
    let password = match password_env {
        Some(var) => Some(
            std::env::var(&var)
                .with_context(|| format!("environment variable {var} is not set"))?,
        ),
        None => None,
    };
    let key_bytes =
        std::fs::read(key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    let key = muster_pki::read_private_key(&key_bytes, password.as_deref())
        .with_context(|| key_path.display().to_string())?;
    let issuer = Issuer::new(ca, key).with_context(|| {
        format!(
            "{} is not the key of CA certificate '{name}'",
            key_path.display()
        )
    })?;
    let now = OffsetDateTime::now_utc();
    let proof = issuer.issue(
        &Request {
            common_name: code,
            organization: None,
            profile: Profile::Verification,
            not_before: now - Duration::minutes(5),
            not_after: (now + Duration::days(1)).min(issuer.certificate().not_after()),
        },
        muster_pki::Algorithm::EcdsaP256,
    )?;
    Ok((
        proof.certificate.to_pem(),
        Some(s(&coded, "/etag").to_owned()),
    ))
}

async fn generate_code(api: &Api, name: &str, etag: Option<String>) -> Result<Value> {
    let etag = match etag {
        Some(e) => e,
        None => s(
            &api.get(&format!("/certificates/{}", seg(name))).await?,
            "/etag",
        )
        .to_owned(),
    };
    Ok(api
        .call(
            Method::POST,
            &format!("/certificates/{}/generateVerificationCode", seg(name)),
            None,
            &if_match(Some(etag)),
        )
        .await?
        .body)
}

fn reprovision(policy: &str) -> Result<Value> {
    Ok(match policy.to_ascii_lowercase().as_str() {
        "reprovisionandmigratedata" => {
            json!({"updateHubAssignment": true, "migrateDeviceData": true})
        }
        "reprovisionandresetdata" => {
            json!({"updateHubAssignment": true, "migrateDeviceData": false})
        }
        "never" => json!({"updateHubAssignment": false, "migrateDeviceData": true}),
        other => bail!(
            "unknown --reprovision-policy '{other}' (reprovisionandmigratedata, reprovisionandresetdata, never)"
        ),
    })
}

fn parse_json(flag: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{flag} is not valid JSON"))
}

/// Apply settings flags to an enrollment document.
fn apply(doc: &mut Value, s: &EnrollmentSettings) -> Result<()> {
    let Some(o) = doc.as_object_mut() else {
        bail!("unexpected enrollment document")
    };
    if let Some(t) = &s.initial_twin {
        o.insert("initialTwin".into(), parse_json("--initial-twin", t)?);
    }
    if let Some(t) = &s.initial_twin_properties {
        let desired = parse_json("--initial-twin-properties", t)?;
        let mut twin = o.get("initialTwin").cloned().unwrap_or_else(|| json!({}));
        set(&mut twin, "properties", json!({"desired": desired}));
        o.insert("initialTwin".into(), twin);
    }
    if let Some(h) = &s.iot_hubs {
        o.insert("iotHubs".into(), json!(h));
    }
    if let Some(p) = &s.allocation_policy {
        o.insert("allocationPolicy".into(), json!(p));
    }
    if let Some(p) = &s.reprovision_policy {
        o.insert("reprovisionPolicy".into(), reprovision(p)?);
    }
    if let Some(p) = &s.provisioning_status {
        o.insert("provisioningStatus".into(), json!(p));
    }
    if let Some(e) = s.edge_enabled {
        o.insert("capabilities".into(), json!({"iotEdge": e}));
    }
    Ok(())
}

const GROUP_HEADER: (&str, &str) = (
    "enrollment groups",
    "ENROLLMENT GROUP         STATUS    ATTESTATION   POLICY   TRUSTS",
);

fn group_row(g: &Value) {
    let kind = s(g, "/attestation/type");
    let anchor = if kind == "x509" {
        g.pointer("/attestation/x509/caReferences/primary")
            .and_then(Value::as_str)
            .map_or_else(
                || {
                    format!(
                        "signing cert {}",
                        s(
                            g,
                            "/attestation/x509/signingCertificates/primary/info/subjectName"
                        )
                    )
                },
                |n| format!("CA {n}"),
            )
    } else {
        "group key".to_owned()
    };
    out!(
        "{:<24} {:<9} {:<13} {:<8} {}",
        s(g, "/enrollmentGroupId"),
        s(g, "/provisioningStatus"),
        kind,
        s(g, "/allocationPolicy"),
        anchor
    );
}

/// `enrollment-group show`: the group, with its keys when asked.
async fn show_group(api: &Api, enrollment_id: &str, show_keys: bool, output: Output) -> Result<()> {
    let path = format!("/enrollmentGroups/{}", seg(enrollment_id));
    let mut r = api.get(&path).await?;
    if show_keys {
        set(
            &mut r,
            "attestation",
            api.call(
                Method::POST,
                &format!("{path}/attestationmechanism"),
                None,
                &[],
            )
            .await?
            .body,
        );
    }
    print(output, &r, |r| {
        group_row(r);
        out!(
            "  initial twin  {}",
            r.get("initialTwin")
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        out!(
            "  reprovision   {}",
            r.get("reprovisionPolicy")
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        out!(
            "  hubs          {}",
            r.get("iotHubs")
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        if show_keys
            && let Some(k) = r
                .pointer("/attestation/symmetricKey/primaryKey")
                .and_then(Value::as_str)
        {
            out!("  primary key   {k}");
        }
    });
    Ok(())
}

async fn group(api: &Api, cmd: GroupCommand, output: Output) -> Result<()> {
    match cmd {
        GroupCommand::Create {
            enrollment_id,
            ca_name,
            secondary_ca_name,
            certificate_path,
            symmetric_key,
            primary_key,
            secondary_key,
            settings,
        } => {
            let attestation = match (ca_name, certificate_path, symmetric_key) {
                (Some(ca), None, false) => {
                    json!({"type": "x509", "x509": {"caReferences": {"primary": ca, "secondary": secondary_ca_name}}})
                }
                (None, Some(p), false) => {
                    json!({"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": read_text(&p)?}}}})
                }
                (None, None, true) => {
                    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": primary_key.unwrap_or_default(), "secondaryKey": secondary_key.unwrap_or_default()}})
                }
                _ => bail!(
                    "choose one attestation: --ca-name, --certificate-path or --symmetric-key"
                ),
            };
            let mut doc = json!({
                "enrollmentGroupId": enrollment_id,
                "attestation": attestation,
                "provisioningStatus": "enabled",
                "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
                "allocationPolicy": "hashed",
                "capabilities": {"iotEdge": false},
            });
            apply(&mut doc, &settings)?;
            let r = api
                .call(
                    Method::PUT,
                    &format!("/enrollmentGroups/{}", seg(&enrollment_id)),
                    Some(&doc),
                    &[],
                )
                .await?
                .body;
            print(output, &r, |r| {
                group_row(r);
                if s(r, "/attestation/type") == "x509" {
                    out!(
                        "\nNext: create a device certificate under its CA and run the device:\n  muster certs create-device-cert <DEVICE_ID>"
                    );
                } else {
                    out!(
                        "\nNext: read the group key with `muster dps enrollment-group show --enrollment-id {} --show-keys`;\neach device signs with base64(HMAC-SHA256(groupKey, registrationId)).",
                        s(r, "/enrollmentGroupId")
                    );
                }
            });
        }
        GroupCommand::Update {
            enrollment_id,
            settings,
            etag,
        } => {
            let path = format!("/enrollmentGroups/{}", seg(&enrollment_id));
            let mut doc = api.get(&path).await?;
            let current_etag = s(&doc, "/etag").to_owned();
            // Keep the group's keys and certificates: fetch the attestation with its secrets.
            let attestation = api
                .call(
                    Method::POST,
                    &format!("{path}/attestationmechanism"),
                    None,
                    &[],
                )
                .await?
                .body;
            set(&mut doc, "attestation", attestation);
            if doc
                .pointer("/attestation/x509/signingCertificates")
                .is_some()
            {
                bail!(
                    "groups with signingCertificates are updated with `enrollment-group create` semantics; delete and recreate"
                );
            }
            apply(&mut doc, &settings)?;
            let r = api
                .call(
                    Method::PUT,
                    &path,
                    Some(&doc),
                    &if_match(Some(etag.unwrap_or(current_etag))),
                )
                .await?
                .body;
            print(output, &r, group_row);
        }
        GroupCommand::List => {
            let items = api.query_all("/enrollmentGroups/query").await?;
            print_list(output, &json!(items), &items, GROUP_HEADER, group_row);
        }
        GroupCommand::Show {
            enrollment_id,
            show_keys,
        } => show_group(api, &enrollment_id, show_keys, output).await?,
        GroupCommand::Delete {
            enrollment_id,
            etag,
        } => {
            let headers = etag.map(|e| if_match(Some(e))).unwrap_or_default();
            api.call(
                Method::DELETE,
                &format!("/enrollmentGroups/{}", seg(&enrollment_id)),
                None,
                &headers,
            )
            .await?;
            if output == Output::Table {
                out!("Deleted enrollment group '{enrollment_id}'.");
            }
        }
    }
    Ok(())
}

const ENROLLMENT_HEADER: (&str, &str) = (
    "individual enrollments",
    "REGISTRATION ID          STATUS    ATTESTATION   DEVICE",
);

fn enrollment_row(e: &Value) {
    out!(
        "{:<24} {:<9} {:<13} {}",
        s(e, "/registrationId"),
        s(e, "/provisioningStatus"),
        s(e, "/attestation/type"),
        e.get("deviceId")
            .and_then(Value::as_str)
            .unwrap_or_else(|| s(e, "/registrationId"))
    );
}

async fn enrollment(api: &Api, cmd: EnrollmentCommand, output: Output) -> Result<()> {
    match cmd {
        EnrollmentCommand::Create {
            registration_id,
            device_id,
            certificate_path,
            symmetric_key,
            primary_key,
            settings,
        } => {
            let attestation = match (certificate_path, symmetric_key) {
                (Some(p), false) => {
                    json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": read_text(&p)?}}}})
                }
                (None, true) => {
                    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": primary_key.unwrap_or_default()}})
                }
                _ => bail!("choose one attestation: --certificate-path or --symmetric-key"),
            };
            let mut doc = json!({"registrationId": registration_id, "attestation": attestation, "provisioningStatus": "enabled"});
            if let Some(d) = device_id {
                set(&mut doc, "deviceId", json!(d));
            }
            apply(&mut doc, &settings)?;
            let r = api
                .call(
                    Method::PUT,
                    &format!("/enrollments/{}", seg(&registration_id)),
                    Some(&doc),
                    &[],
                )
                .await?
                .body;
            print(output, &r, enrollment_row);
        }
        EnrollmentCommand::Update {
            registration_id,
            settings,
            etag,
        } => {
            let path = format!("/enrollments/{}", seg(&registration_id));
            let mut doc = api.get(&path).await?;
            let current_etag = s(&doc, "/etag").to_owned();

            set(
                &mut doc,
                "attestation",
                api.call(
                    Method::POST,
                    &format!("{path}/attestationmechanism"),
                    None,
                    &[],
                )
                .await?
                .body,
            );
            apply(&mut doc, &settings)?;
            let r = api
                .call(
                    Method::PUT,
                    &path,
                    Some(&doc),
                    &if_match(Some(etag.unwrap_or(current_etag))),
                )
                .await?
                .body;
            print(output, &r, enrollment_row);
        }
        EnrollmentCommand::List => {
            let items = api.query_all("/enrollments/query").await?;
            print_list(
                output,
                &json!(items),
                &items,
                ENROLLMENT_HEADER,
                enrollment_row,
            );
        }
        EnrollmentCommand::Show { registration_id } => {
            let r = api
                .get(&format!("/enrollments/{}", seg(&registration_id)))
                .await?;
            print(output, &r, enrollment_row);
        }
        EnrollmentCommand::Delete {
            registration_id,
            etag,
        } => {
            let headers = etag.map(|e| if_match(Some(e))).unwrap_or_default();
            api.call(
                Method::DELETE,
                &format!("/enrollments/{}", seg(&registration_id)),
                None,
                &headers,
            )
            .await?;
            if output == Output::Table {
                out!("Deleted enrollment '{registration_id}'.");
            }
        }
    }
    Ok(())
}

const REGISTRATION_HEADER: (&str, &str) = (
    "registrations",
    "REGISTRATION ID          STATUS    SUBSTATUS                  ASSIGNED HUB             LAST UPDATED",
);

fn registration_row(r: &Value) {
    out!(
        "{:<24} {:<9} {:<26} {:<24} {}",
        s(r, "/registrationId"),
        s(r, "/status"),
        s(r, "/substatus"),
        s(r, "/assignedHub"),
        s(r, "/lastUpdatedDateTimeUtc")
    );
}

async fn registration(api: &Api, cmd: RegistrationCommand, output: Output) -> Result<()> {
    match cmd {
        RegistrationCommand::List { enrollment_id } => {
            let items = api
                .query_all(&format!("/registrations/{}/query", seg(&enrollment_id)))
                .await?;
            print_list(
                output,
                &json!(items),
                &items,
                REGISTRATION_HEADER,
                registration_row,
            );
        }
        RegistrationCommand::Show { registration_id } => {
            let r = api
                .get(&format!("/registrations/{}", seg(&registration_id)))
                .await?;
            print(output, &r, registration_row);
        }
        RegistrationCommand::Delete {
            registration_id,
            etag,
        } => {
            let headers = etag.map(|e| if_match(Some(e))).unwrap_or_default();
            api.call(
                Method::DELETE,
                &format!("/registrations/{}", seg(&registration_id)),
                None,
                &headers,
            )
            .await?;
            if output == Output::Table {
                out!("Deleted registration record '{registration_id}'.");
            }
        }
    }
    Ok(())
}
