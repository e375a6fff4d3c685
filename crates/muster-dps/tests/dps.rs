//! The provisioning rules over a real (in-memory SQLite) store with fixture certificates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::sync::Arc;

use muster_auth::Secret;
use muster_auth::sas::{derive_device_key, make_token};
use muster_dps::registration::{Credential, RegistrationRequest};
use muster_dps::{Dps, DpsConfig, DpsError, Hub};
use muster_pki::{Algorithm, Certificate, Issuer, Profile, Request};
use muster_store::sqlite::SqliteStore;
use muster_store::{Collection, Store};
use muster_test_support::{Duration, OffsetDateTime, Pki};
use serde_json::{Value, json};

const SCOPE: &str = "0ne00ABCDEF";

fn dps_with(hubs: &[(&str, u32)]) -> (Dps, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let config = DpsConfig {
        id_scope: SCOPE.into(),
        hubs: hubs
            .iter()
            .map(|(h, w)| Hub {
                hostname: (*h).into(),
                weight: *w,
            })
            .collect(),
    };
    // Assigned devices go into the hub's registry over the same store, as in the server.
    let hubs =
        muster_server::wiring::HubAssigner(muster_hub::registry::Registry::new(store.clone()));
    (Dps::new(store.clone(), config, Arc::new(hubs)), store)
}

fn cert(der: &[u8]) -> Certificate {
    Certificate::from_der(der).unwrap()
}

/// Upload a CA and complete proof of possession with a verification certificate signed by its key.
async fn upload_and_verify(dps: &Dps, name: &str, ca_pem: &str, ca_key_pem: &str) {
    let up = dps
        .put_certificate(name, &json!({"properties": {"certificate": ca_pem}}), None)
        .await
        .unwrap();
    assert!(!up.is_verified);
    let coded = dps
        .generate_verification_code(name, Some(&up.etag))
        .await
        .unwrap();
    let code = coded.verification_code.clone().unwrap();
    let issuer = Issuer::new(
        muster_pki::read_certificate(ca_pem.as_bytes()).unwrap(),
        muster_pki::read_private_key(ca_key_pem.as_bytes(), None).unwrap(),
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let proof = issuer
        .issue(
            &Request {
                common_name: code,
                organization: None,
                profile: Profile::Verification,
                not_before: now - Duration::minutes(1),
                not_after: now + Duration::days(1),
            },
            Algorithm::EcdsaP256,
        )
        .unwrap();
    let verified = dps
        .verify_certificate(
            name,
            Some(&coded.etag),
            &json!({"certificate": proof.certificate.to_pem()}),
        )
        .await
        .unwrap();
    assert!(verified.is_verified);
    assert!(verified.verification_code.is_none(), "codes are single use");
}

fn x509_group(ca: &str, twin: &Value) -> Value {
    json!({
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": ca}}},
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
        "allocationPolicy": "hashed",
        "initialTwin": twin,
        "capabilities": {"iotEdge": false},
    })
}

async fn register_x509(
    dps: &Dps,
    id: &str,
    chain: &[Certificate],
) -> Result<muster_dps::model::RegistrationState, DpsError> {
    dps.register(RegistrationRequest {
        registration_id: id,
        credential: Credential::X509(chain),
        payload: None,
    })
    .await
}

fn unauthorized(r: Result<muster_dps::model::RegistrationState, DpsError>) -> String {
    match r {
        Err(DpsError::Unauthorized { reason }) => reason,
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn proof_of_possession_flow_and_its_refusals() {
    let (dps, _) = dps_with(&[("hub.local", 1)]);
    let pki = Pki::new();
    // A leaf is not a CA.
    let err = dps
        .put_certificate(
            "leaf",
            &json!({"properties": {"certificate": pki.leaf.pem}}),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DpsError::InvalidInput(ref m) if m.contains("not a CA")),
        "{err}"
    );
    // Garbage.
    let err = dps
        .put_certificate(
            "bad",
            &json!({"properties": {"certificate": "hello"}}),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DpsError::InvalidInput(_)));
    // Verify without a code; with a certificate from another key; stale etag.
    let up = dps
        .put_certificate(
            "root",
            &json!({"properties": {"certificate": pki.root.cert.pem}}),
            None,
        )
        .await
        .unwrap();
    let err = dps
        .verify_certificate("root", None, &json!({"certificate": pki.leaf.pem}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no verification code"), "{err}");
    let coded = dps
        .generate_verification_code("root", Some(&up.etag))
        .await
        .unwrap();
    let err = dps
        .generate_verification_code("root", Some(&up.etag))
        .await
        .unwrap_err();
    assert!(matches!(err, DpsError::PreconditionFailed));
    let wrong = muster_test_support::TestCa::root("muster test root").issue(
        &muster_test_support::Spec::new(
            coded.verification_code.as_deref().unwrap(),
            muster_test_support::Kind::Client,
        ),
    );
    let err = dps
        .verify_certificate("root", Some("*"), &json!({"certificate": wrong.pem}))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("proof of possession failed"),
        "{err}"
    );
    assert!(!dps.get_certificate("root").await.unwrap().is_verified);
    // Re-uploading a different certificate under the name clears the code.
    let other = muster_test_support::TestCa::root("another root");
    let replaced = dps
        .put_certificate(
            "root",
            &json!({"properties": {"certificate": other.cert.pem}}),
            Some("*"),
        )
        .await
        .unwrap();
    assert!(replaced.verification_code.is_none() && !replaced.is_verified);
    // The whole flow with the right key.
    upload_and_verify(&dps, "root2", &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    let listed: Vec<_> = dps
        .list_certificates()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(listed, ["root", "root2"]);
    let resp = dps
        .get_certificate("root2")
        .await
        .unwrap()
        .to_response(true);
    assert_eq!(resp["properties"]["isVerified"], true);
    assert_eq!(resp["properties"]["thumbprint"].as_str().unwrap().len(), 40);
    // Delete needs If-Match.
    assert!(matches!(
        dps.delete_certificate("root2", None).await,
        Err(DpsError::InvalidInput(_))
    ));
    dps.delete_certificate("root2", Some("*")).await.unwrap();
    assert!(matches!(
        dps.get_certificate("root2").await,
        Err(DpsError::NotFound { .. })
    ));
}

#[tokio::test]
async fn x509_group_registration_writes_device_twin_and_record() {
    let (dps, store) = dps_with(&[("hub.local", 1)]);
    let pki = Pki::new();
    // Unverified CAs cannot anchor a group.
    dps.put_certificate(
        "unverified",
        &json!({"properties": {"certificate": pki.wrong_root.cert.pem}}),
        None,
    )
    .await
    .unwrap();
    let err = dps
        .put_enrollment_group("g0", &x509_group("unverified", &json!({})), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not verified"), "{err}");

    upload_and_verify(&dps, "root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    let twin = json!({"tags": {"site": "lab"}, "properties": {"desired": {"telemetryDelay": "1"}}});
    let group = dps
        .put_enrollment_group("simulated-devices", &x509_group("root-ca", &twin), None)
        .await
        .unwrap();
    assert!(group.etag.is_some());

    let chain = [cert(&pki.leaf.der), cert(&pki.intermediate.cert.der)];
    let state = register_x509(&dps, "device-1", &chain).await.unwrap();
    assert_eq!(state.status, "assigned");
    assert_eq!(state.assigned_hub.as_deref(), Some("hub.local"));
    assert_eq!(state.device_id.as_deref(), Some("device-1"));
    assert_eq!(state.substatus.as_deref(), Some("initialAssignment"));
    assert_eq!(
        state.x509.as_ref().unwrap()["enrollmentGroupId"],
        "simulated-devices"
    );

    let device = store
        .get(Collection::Devices, "hub.local/device-1")
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(device["authentication"]["type"], "selfSigned");
    assert_eq!(
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        chain[0].sha1_thumbprint()
    );
    assert_eq!(device["status"], "enabled");
    let twin = store
        .get(Collection::Twins, "hub.local/device-1")
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(twin["properties"]["desired"]["telemetryDelay"], "1");
    assert_eq!(twin["properties"]["desired"]["$version"], 1);
    assert_eq!(
        twin["properties"]["desired"]["$metadata"]["telemetryDelay"]["$lastUpdatedVersion"],
        1
    );
    assert_eq!(twin["tags"]["site"], "lab");

    // A device signed by the root directly.
    register_x509(&dps, "device-direct", &[cert(&pki.leaf_from_root.der)])
        .await
        .unwrap();
    // Records are queryable by group; deleting one lets the device start afresh.
    let page = dps
        .query_registrations("simulated-devices", Some(1), None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let next = dps
        .query_registrations("simulated-devices", Some(1), page.continuation.as_deref())
        .await
        .unwrap();
    assert_eq!(next.items.len(), 1);
    assert!(
        next.continuation.is_none(),
        "no continuation on the last page"
    );
    dps.delete_registration("device-1", None).await.unwrap();
    assert!(matches!(
        dps.get_registration("device-1").await,
        Err(DpsError::NotFound { .. })
    ));
    let again = register_x509(&dps, "device-1", &chain).await.unwrap();
    assert_eq!(again.substatus.as_deref(), Some("initialAssignment"));
}

#[tokio::test]
async fn x509_refusals() {
    let (dps, _) = dps_with(&[("hub.local", 1)]);
    let pki = Pki::new();
    upload_and_verify(&dps, "root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    dps.put_enrollment_group("g", &x509_group("root-ca", &json!({})), None)
        .await
        .unwrap();
    let inter = cert(&pki.intermediate.cert.der);

    let r = unauthorized(
        register_x509(&dps, "someone-else", &[cert(&pki.leaf.der), inter.clone()]).await,
    );
    assert!(r.contains("does not match registration id"), "{r}");
    let r = unauthorized(
        register_x509(
            &dps,
            "device-1",
            &[
                cert(&pki.wrong_leaf.der),
                cert(&pki.wrong_intermediate.cert.der),
            ],
        )
        .await,
    );
    assert!(r.contains("does not reach"), "{r}");
    let r = unauthorized(
        register_x509(
            &dps,
            "device-expired",
            &[cert(&pki.expired_leaf.der), inter.clone()],
        )
        .await,
    );
    assert!(r.contains("expired"), "{r}");
    let r = unauthorized(
        register_x509(
            &dps,
            "device-future",
            &[cert(&pki.not_yet_valid_leaf.der), inter.clone()],
        )
        .await,
    );
    assert!(r.contains("not valid before"), "{r}");
    let r = unauthorized(register_x509(&dps, "device-1", &[cert(&pki.leaf.der)]).await);
    assert!(r.contains("no trusted issuer"), "missing intermediate: {r}");
    let r = unauthorized(
        dps.register(RegistrationRequest {
            registration_id: "device-1",
            credential: Credential::None,
            payload: None,
        })
        .await,
    );
    assert!(r.contains("no client certificate"), "{r}");

    // Disabled group, then a deleted CA, then a deleted group.
    let chain = [cert(&pki.leaf.der), inter];
    let mut g = serde_json::to_value(dps.get_enrollment_group("g").await.unwrap()).unwrap();
    g["provisioningStatus"] = json!("disabled");
    dps.put_enrollment_group("g", &g, None).await.unwrap();
    let r = unauthorized(register_x509(&dps, "device-1", &chain).await);
    assert!(r.contains("disabled"), "{r}");
    g["provisioningStatus"] = json!("enabled");
    g.as_object_mut().unwrap().remove("etag");
    dps.put_enrollment_group("g", &g, None).await.unwrap();
    register_x509(&dps, "device-1", &chain).await.unwrap();
    dps.delete_certificate("root-ca", Some("*")).await.unwrap();
    let r = unauthorized(register_x509(&dps, "device-1", &chain).await);
    assert!(r.contains("no longer exists"), "{r}");
    dps.delete_enrollment_group("g", None).await.unwrap();
    let r = unauthorized(register_x509(&dps, "device-1", &chain).await);
    assert!(r.contains("no X.509 enrollment group"), "{r}");
}

#[tokio::test]
async fn individual_enrollment_takes_precedence() {
    let (dps, _) = dps_with(&[("hub.local", 1)]);
    let pki = Pki::new();
    upload_and_verify(&dps, "root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    dps.put_enrollment_group("g", &x509_group("root-ca", &json!({})), None)
        .await
        .unwrap();
    let chain = [cert(&pki.leaf.der), cert(&pki.intermediate.cert.der)];
    let body = json!({
        "registrationId": "device-1",
        "deviceId": "custom-device-id",
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pki.leaf.pem}}}},
        "provisioningStatus": "disabled",
    });
    dps.put_enrollment("device-1", &body, None).await.unwrap();
    let r = unauthorized(register_x509(&dps, "device-1", &chain).await);
    assert!(
        r.contains("individual enrollment 'device-1' is disabled"),
        "{r}"
    );
    let mut enabled = body.clone();
    enabled["provisioningStatus"] = json!("enabled");
    dps.put_enrollment("device-1", &enabled, None)
        .await
        .unwrap();
    let state = register_x509(&dps, "device-1", &chain).await.unwrap();
    assert_eq!(state.device_id.as_deref(), Some("custom-device-id"));
    assert!(state.x509.unwrap().get("enrollmentGroupId").is_none());
    // The individual enrollment pins the certificate: another valid chain for the id is refused.
    let other = pki.intermediate.leaf("device-1");
    let r = unauthorized(
        register_x509(
            &dps,
            "device-1",
            &[cert(&other.der), cert(&pki.intermediate.cert.der)],
        )
        .await,
    );
    assert!(r.contains("not the one enrolled"), "{r}");
}

#[tokio::test]
async fn symmetric_key_group_and_refusals() {
    let (dps, store) = dps_with(&[("hub.local", 1)]);
    let g = dps
        .put_enrollment_group(
            "sas-group",
            &json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}}),
            None,
        )
        .await
        .unwrap();
    let keys = dps
        .enrollment_group_attestation("sas-group")
        .await
        .unwrap()
        .symmetric_key
        .unwrap();
    let group_key = Secret::new(keys.primary_key.unwrap());
    assert!(
        g.attestation.symmetric_key.is_some(),
        "generated keys are returned"
    );
    let device_key = derive_device_key(&group_key, "sensor-7").unwrap();
    let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let token = make_token(
        &format!("{SCOPE}/registrations/sensor-7"),
        &device_key,
        None,
        now + 3600,
    )
    .unwrap();
    let state = dps
        .register(RegistrationRequest {
            registration_id: "sensor-7",
            credential: Credential::Sas(&token),
            payload: Some(json!({"modelId": "dtmi:x;1"})),
        })
        .await
        .unwrap();
    assert_eq!(state.status, "assigned");
    assert_eq!(state.payload, Some(json!({"modelId": "dtmi:x;1"})));
    let device = store
        .get(Collection::Devices, "hub.local/sensor-7")
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(device["authentication"]["type"], "sas");
    assert_eq!(
        device["authentication"]["symmetricKey"]["primaryKey"],
        device_key.expose()
    );

    // Token for another device, expired token, wrong key.
    for (id, token, needle) in [
        ("sensor-8", token.clone(), "expected"),
        (
            "sensor-7",
            make_token(
                &format!("{SCOPE}/registrations/sensor-7"),
                &device_key,
                None,
                now - 10,
            )
            .unwrap(),
            "expired",
        ),
        (
            "sensor-7",
            make_token(
                &format!("{SCOPE}/registrations/sensor-7"),
                &group_key,
                None,
                now + 60,
            )
            .unwrap(),
            "matches no",
        ),
    ] {
        let r = unauthorized(
            dps.register(RegistrationRequest {
                registration_id: id,
                credential: Credential::Sas(&token),
                payload: None,
            })
            .await,
        );
        assert!(r.contains(needle), "{id}: {r}");
        assert!(
            !r.contains(device_key.expose()) && !r.contains(group_key.expose()),
            "no secrets in reasons"
        );
    }
}

#[tokio::test]
async fn reprovisioning_policies_across_hubs() {
    let (dps, store) = dps_with(&[("hub-a.local", 1), ("hub-b.local", 1)]);
    let pki = Pki::new();
    upload_and_verify(&dps, "root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    let twin = json!({"properties": {"desired": {"telemetryDelay": "1"}}});
    let mut group = x509_group("root-ca", &twin);
    group["iotHubs"] = json!(["hub-a.local"]);
    group["allocationPolicy"] = json!("static");
    dps.put_enrollment_group("g", &group, None).await.unwrap();
    let chain = [cert(&pki.leaf.der), cert(&pki.intermediate.cert.der)];
    let first = register_x509(&dps, "device-1", &chain).await.unwrap();
    assert_eq!(first.assigned_hub.as_deref(), Some("hub-a.local"));
    // The device's twin changes in hub A.
    let mut t = store
        .get(Collection::Twins, "hub-a.local/device-1")
        .await
        .unwrap()
        .unwrap()
        .body;
    t["properties"]["desired"]["telemetryDelay"] = json!("5");
    store
        .put(
            Collection::Twins,
            "hub-a.local/device-1",
            Some("hub-a.local"),
            &t,
            muster_store::Precondition::None,
        )
        .await
        .unwrap();

    // Move to hub B, migrating data.
    group["iotHubs"] = json!(["hub-b.local"]);
    dps.put_enrollment_group("g", &group, None).await.unwrap();
    let moved = register_x509(&dps, "device-1", &chain).await.unwrap();
    assert_eq!(moved.assigned_hub.as_deref(), Some("hub-b.local"));
    assert_eq!(moved.substatus.as_deref(), Some("deviceDataMigrated"));
    assert_eq!(moved.created_date_time_utc, first.created_date_time_utc);
    let t = store
        .get(Collection::Twins, "hub-b.local/device-1")
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(
        t["properties"]["desired"]["telemetryDelay"], "5",
        "twin migrated"
    );
    assert!(
        store
            .get(Collection::Devices, "hub-a.local/device-1")
            .await
            .unwrap()
            .is_none(),
        "left hub A"
    );

    // Back to hub A, resetting to the initial twin.
    group["iotHubs"] = json!(["hub-a.local"]);
    group["reprovisionPolicy"] = json!({"updateHubAssignment": true, "migrateDeviceData": false});
    dps.put_enrollment_group("g", &group, None).await.unwrap();
    let reset = register_x509(&dps, "device-1", &chain).await.unwrap();
    assert_eq!(reset.assigned_hub.as_deref(), Some("hub-a.local"));
    assert_eq!(reset.substatus.as_deref(), Some("deviceDataReset"));
    let t = store
        .get(Collection::Twins, "hub-a.local/device-1")
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(
        t["properties"]["desired"]["telemetryDelay"], "1",
        "twin reset"
    );

    // Never re-provision: the hub assignment stays even though the group now lists hub B.
    group["iotHubs"] = json!(["hub-b.local"]);
    group["reprovisionPolicy"] = json!({"updateHubAssignment": false, "migrateDeviceData": true});
    dps.put_enrollment_group("g", &group, None).await.unwrap();
    let kept = register_x509(&dps, "device-1", &chain).await.unwrap();
    assert_eq!(kept.assigned_hub.as_deref(), Some("hub-a.local"));
    assert_eq!(
        kept.substatus.as_deref(),
        Some("reprovisionedToInitialAssignment")
    );
    // Registration ids are case-insensitive: the same device in upper case is the same record.
    let upper = register_x509(&dps, "DEVICE-1", &chain).await.unwrap();
    assert_eq!(upper.registration_id, "device-1");
    assert_eq!(upper.created_date_time_utc, first.created_date_time_utc);
}

#[tokio::test]
async fn enrollment_validation() {
    let (dps, _) = dps_with(&[("hub.local", 1)]);
    let bad = [
        (json!({"attestation": {"type": "tpm"}}), "support"),
        (
            json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "not base64!"}}}),
            "base64",
        ),
        (
            json!({"attestation": {"type": "symmetricKey"}, "iotHubs": ["elsewhere.example"]}),
            "unknown IoT hub",
        ),
        (
            json!({"attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom"}),
            "custom allocation",
        ),
        (
            json!({"attestation": {"type": "symmetricKey"}, "initialTwin": {"tags": 5}}),
            "tags",
        ),
        (
            json!({"attestation": {"type": "x509", "x509": {}}}),
            "exactly one",
        ),
        (
            json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "missing"}}}}),
            "does not exist",
        ),
        (
            json!({"enrollmentGroupId": "other", "attestation": {"type": "symmetricKey"}}),
            "differs",
        ),
        (json!({"attestation": 5}), "invalid enrollment group"),
    ];
    for (body, needle) in bad {
        let err = dps
            .put_enrollment_group("g1", &body, None)
            .await
            .unwrap_err();
        assert!(matches!(err, DpsError::InvalidInput(_)), "{body}: {err:?}");
        assert!(err.to_string().contains(needle), "{body}: {err}");
    }
    assert!(matches!(
        dps.put_enrollment_group("bad/id", &json!({}), None).await,
        Err(DpsError::InvalidInput(_))
    ));
    // signingCertificates: an uploaded intermediate anchors the group without a CA upload.
    let pki = Pki::new();
    let body = json!({"attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pki.intermediate.cert.pem}}}}});
    let g = dps
        .put_enrollment_group("inter", &body, None)
        .await
        .unwrap();
    let info = g
        .attestation
        .x509
        .unwrap()
        .signing_certificates
        .unwrap()
        .primary
        .unwrap();
    assert!(info.certificate.is_none(), "certificate text is not echoed");
    assert!(info.info.unwrap().subject_name.contains("intermediate"));
    let state = register_x509(&dps, "device-1", &[cert(&pki.leaf.der)])
        .await
        .unwrap();
    assert_eq!(state.status, "assigned");
    // A GET echoed back by PUT (the SDKs' update flow) keeps the stored certificate and keys.
    let mut echoed =
        serde_json::to_value(dps.get_enrollment_group("inter").await.unwrap()).unwrap();
    echoed["provisioningStatus"] = json!("disabled");
    echoed.as_object_mut().unwrap().remove("etag");
    let updated = dps
        .put_enrollment_group("inter", &echoed, None)
        .await
        .unwrap();
    assert_eq!(
        updated.provisioning_status,
        muster_dps::model::ProvisioningStatus::Disabled
    );
    dps.put_enrollment_group(
        "keys",
        &json!({"attestation": {"type": "symmetricKey"}}),
        None,
    )
    .await
    .unwrap();
    let before = dps.enrollment_group_attestation("keys").await.unwrap();
    let shown = serde_json::to_value(dps.get_enrollment_group("keys").await.unwrap()).unwrap();
    assert!(
        shown["attestation"]["symmetricKey"]
            .get("primaryKey")
            .is_none(),
        "GET does not reveal keys: {shown}"
    );
    let mut echoed = shown.clone();
    echoed["provisioningStatus"] = json!("disabled");
    echoed.as_object_mut().unwrap().remove("etag");
    dps.put_enrollment_group("keys", &echoed, None)
        .await
        .unwrap();
    assert_eq!(
        dps.enrollment_group_attestation("keys").await.unwrap(),
        before,
        "keys survive an echoed update"
    );
    // Etags guard updates; paging works.
    let stale = dps
        .put_enrollment_group("inter", &body, Some("\"0000\""))
        .await
        .unwrap_err();
    assert!(matches!(stale, DpsError::PreconditionFailed));
    for i in 0..3 {
        dps.put_enrollment_group(
            &format!("k{i}"),
            &json!({"attestation": {"type": "symmetricKey"}}),
            None,
        )
        .await
        .unwrap();
    }
    // Five groups in pages of two: 2, 2, 1, and no continuation after the last.
    let mut sizes = Vec::new();
    let mut cont: Option<String> = None;
    loop {
        let page = dps
            .query_enrollment_groups(Some(2), cont.as_deref())
            .await
            .unwrap();
        sizes.push(page.items.len());
        cont = page.continuation;
        if cont.is_none() {
            break;
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    // Bulk.
    let res = dps
        .bulk_enrollments(&json!({"mode": "create", "enrollments": [
            {"registrationId": "b1", "attestation": {"type": "symmetricKey"}},
            {"registrationId": "b1", "attestation": {"type": "symmetricKey"}},
        ]}))
        .await
        .unwrap();
    assert_eq!(res["isSuccessful"], false);
    assert_eq!(res["errors"].as_array().unwrap().len(), 1);
    assert_eq!(res["errors"][0]["errorCode"], 409_201);
}
