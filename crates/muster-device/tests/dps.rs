//! Provisioning against a real muster server: X.509 and symmetric-key groups, over MQTT and
//! HTTPS; `retry-after` and throttling honoured; refusals typed with Azure's error codes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::time::{Duration, Instant};

use common::{DeviceFixture as _, TestServer, identity};
use muster_device::dps::derive_device_key;
use muster_device::{
    DpsCredentials, Error, Identity, ProvisioningClient, Secret, Transport, TrustRoots,
};
use muster_test_support::Pki;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_devices_register_over_every_transport() {
    // Azure's flow (202 assigning, then poll): the server's retry-after (1 s) is honoured
    // between register and poll.
    let server = TestServer::start_with(|c| c.dps.immediate_result = false).await;
    let pki = Pki::new();
    server.x509_group(&pki).await;

    // MQTT, certificate and key in one PEM file, with a registration payload.
    let dir = tempfile::tempdir().unwrap();
    let combined = dir.path().join("device-1.pem");
    std::fs::write(
        &combined,
        format!(
            "{}{}{}",
            pki.leaf.pem, pki.intermediate.cert.pem, pki.leaf.key_pem
        ),
    )
    .unwrap();
    let id = Identity::from_pem_files(&combined, None).unwrap();
    assert_eq!(id.common_name(), Some("device-1"));
    assert_eq!(id.registration_id().unwrap(), "device-1");
    assert_eq!(id.thumbprint().len(), 40);
    assert_eq!(id.chain().len(), 2);
    let mut options = server.provisioning(DpsCredentials::X509(id), Transport::Mqtt);
    options.payload = Some(json!({"modelId": "dtmi:lab;1"}));
    let started = Instant::now();
    let reg = ProvisioningClient::new(options)
        .unwrap()
        .register()
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "polled after retry-after"
    );
    assert_eq!(reg.status, "assigned");
    assert_eq!(reg.assigned_hub, "localhost");
    assert_eq!(reg.device_id, "device-1");
    assert_eq!(reg.registration_id, "device-1");
    assert_eq!(reg.substatus.as_deref(), Some("initialAssignment"));
    assert!(reg.operation_id.starts_with("4."), "{}", reg.operation_id);
    assert!(reg.created.as_deref().is_some_and(|c| c.ends_with('Z')));
    assert_eq!(reg.payload, Some(json!({"modelId": "dtmi:lab;1"})));
    assert_eq!(
        reg.registration_state["x509"]["enrollmentGroupId"], "lab",
        "{}",
        reg.registration_state
    );

    // HTTPS, separate certificate and key files.
    let leaf2 = pki.intermediate.leaf("device-2");
    let cert = dir.path().join("device-2.pem");
    let key = dir.path().join("device-2.key.pem");
    std::fs::write(&cert, format!("{}{}", leaf2.pem, pki.intermediate.cert.pem)).unwrap();
    std::fs::write(&key, &leaf2.key_pem).unwrap();
    let id = Identity::from_pem_files(&cert, Some(&key)).unwrap();
    let started = Instant::now();
    let reg = server
        .register(DpsCredentials::X509(id), Transport::Https)
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        (reg.assigned_hub.as_str(), reg.device_id.as_str()),
        ("localhost", "device-2")
    );
    // muster's default answers an assigned registration at once: no retry-after (1 s) wait.
    let fast = TestServer::start_with(|_| {}).await;
    fast.x509_group(&pki).await;
    let id = Identity::from_pem_files(&cert, Some(&key)).unwrap();
    for transport in [
        Transport::Mqtt,
        Transport::Https,
        Transport::Amqp,
        Transport::MqttWs,
        Transport::AmqpWs,
    ] {
        let started = Instant::now();
        let reg = fast
            .register(DpsCredentials::X509(id.clone()), transport)
            .await
            .unwrap();
        assert_eq!(reg.device_id, "device-2");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{transport:?} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(reg.payload, None);

    // PKCS#12, over HTTPS.
    let leaf3 = pki.intermediate.leaf("device-3");
    let chain = muster_pki::read_certificates(
        format!("{}{}", leaf3.pem, pki.intermediate.cert.pem).as_bytes(),
    )
    .unwrap();
    let key = muster_pki::read_private_key(leaf3.key_pem.as_bytes(), None).unwrap();
    let pfx = dir.path().join("device-3.pfx");
    std::fs::write(
        &pfx,
        muster_pki::pkcs12::write(&key, &chain, "pfx-secret", "device-3").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        Identity::from_pkcs12(&pfx, "wrong"),
        Err(Error::Certificate { .. })
    ));
    let id = Identity::from_pkcs12(&pfx, "pfx-secret").unwrap();
    assert_eq!(id.registration_id().unwrap(), "device-3");
    let reg = server
        .register(DpsCredentials::X509(id), Transport::Https)
        .await
        .unwrap();
    assert_eq!(reg.device_id, "device-3");

    // A key that belongs to another certificate is refused before anything is sent.
    let err =
        Identity::from_pem(pki.leaf.pem.as_bytes(), Some(leaf2.key_pem.as_bytes())).unwrap_err();
    assert!(matches!(err, Error::Certificate { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_key_group_devices_register_with_derived_keys() {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let group_key = server.symmetric_group().await;

    let credentials = DpsCredentials::from_group_key("sensor-1", &group_key).unwrap();
    let reg = server.register(credentials, Transport::Mqtt).await.unwrap();
    assert_eq!(reg.device_id, "sensor-1");
    assert_eq!(reg.assigned_hub, "localhost");
    assert_eq!(
        reg.registration_state["symmetricKey"]["enrollmentGroupId"],
        "sensors"
    );

    let credentials = DpsCredentials::SymmetricKey {
        registration_id: "sensor-2".into(),
        key: derive_device_key(&group_key, "sensor-2").unwrap(),
    };
    let reg = server
        .register(credentials, Transport::Https)
        .await
        .unwrap();
    assert_eq!(reg.device_id, "sensor-2");

    // A key derived for another registration id, and a key of no group: 401002 both ways.
    for transport in [
        Transport::Mqtt,
        Transport::Https,
        Transport::Amqp,
        Transport::MqttWs,
        Transport::AmqpWs,
    ] {
        let credentials = DpsCredentials::SymmetricKey {
            registration_id: "sensor-3".into(),
            key: derive_device_key(&group_key, "sensor-1").unwrap(),
        };
        let err = server.register(credentials, transport).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Provisioning {
                    status: 401,
                    error_code: 401_002,
                    ..
                }
            ),
            "{transport:?}: {err}"
        );
        let other = Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let credentials = DpsCredentials::from_group_key("sensor-4", &other).unwrap();
        let err = server.register(credentials, transport).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "provisioning refused: 401002 Unauthorized",
            "{transport:?}"
        );
    }
    assert!(matches!(
        DpsCredentials::from_group_key("x", &Secret::new("not base64!")),
        Err(Error::Key(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_devices_get_typed_errors() {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let pki = Pki::new();
    server.x509_group(&pki).await;

    // A certificate from an unknown CA (same names, other keys).
    let wrong = format!("{}{}", pki.wrong_leaf.pem, pki.wrong_intermediate.cert.pem);
    let wrong =
        Identity::from_pem(wrong.as_bytes(), Some(pki.wrong_leaf.key_pem.as_bytes())).unwrap();
    for transport in [
        Transport::Mqtt,
        Transport::Https,
        Transport::Amqp,
        Transport::MqttWs,
        Transport::AmqpWs,
    ] {
        let err = server
            .register(DpsCredentials::X509(wrong.clone()), transport)
            .await
            .unwrap_err();
        let Error::Provisioning {
            status,
            error_code,
            message,
        } = &err
        else {
            panic!("{transport:?}: {err}")
        };
        assert_eq!((*status, *error_code), (401, 401_002));
        assert_eq!(message, "Unauthorized");
        assert!(!err.is_transient());
    }

    // A disabled group refuses its devices.
    server.set_group_status("disabled").await;
    for transport in [
        Transport::Mqtt,
        Transport::Https,
        Transport::Amqp,
        Transport::MqttWs,
        Transport::AmqpWs,
    ] {
        let err = server
            .register(DpsCredentials::X509(identity(&pki.leaf, &pki)), transport)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Provisioning {
                    error_code: 401_002,
                    ..
                }
            ),
            "{transport:?}: {err}"
        );
    }
    server.set_group_status("enabled").await;
    server
        .register(
            DpsCredentials::X509(identity(&pki.leaf, &pki)),
            Transport::Mqtt,
        )
        .await
        .unwrap();

    // An unknown ID scope is refused with 401002 and a message naming it, over both transports.
    let mut options = server.provisioning(
        DpsCredentials::X509(identity(&pki.leaf, &pki)),
        Transport::Mqtt,
    );
    options.id_scope = "0neFFFFFFFF".into();
    for transport in [
        Transport::Mqtt,
        Transport::Https,
        Transport::Amqp,
        Transport::MqttWs,
        Transport::AmqpWs,
    ] {
        options.transport = transport;
        options.port = Some(match transport {
            Transport::Mqtt => server.mqtt_port(),
            Transport::Https => server.https_port(),
            Transport::Amqp => server.amqp_port(),
            Transport::MqttWs | Transport::AmqpWs => server.https_port(),
        });
        let err = ProvisioningClient::new(options.clone())
            .unwrap()
            .register()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Provisioning { status: 401, error_code: 401_002, message } if message.contains("unknown ID scope '0neFFFFFFFF'")),
            "{transport:?}: {err}"
        );
    }

    // A server certificate outside the trusted roots fails the TLS handshake.
    let mut options = server.provisioning(
        DpsCredentials::X509(identity(&pki.leaf, &pki)),
        Transport::Mqtt,
    );
    options.trust = TrustRoots::webpki();
    let err = ProvisioningClient::new(options)
        .unwrap()
        .register()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("TLS handshake with localhost failed"),
        "{err}"
    );

    // Nothing listening: a connection error, not a hang.
    let mut options = server.provisioning(
        DpsCredentials::X509(identity(&pki.leaf, &pki)),
        Transport::Mqtt,
    );
    options.port = Some(1);
    let err = ProvisioningClient::new(options)
        .unwrap()
        .register()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_registrations_wait_and_retry() {
    // One registration per second: of three at once, two are told 429 + retry-after.
    let server = TestServer::start_with(|c| {
        c.dps.retry_after = 0;
        c.dps.rate_limit = 1;
    })
    .await;
    let group_key = server.symmetric_group().await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, transport) in [Transport::Mqtt, Transport::Https, Transport::Mqtt]
        .into_iter()
        .enumerate()
    {
        let options = server.provisioning(
            DpsCredentials::from_group_key(&format!("burst-{i}"), &group_key).unwrap(),
            transport,
        );
        tasks.spawn(async move { ProvisioningClient::new(options)?.register().await });
    }
    let mut devices = Vec::new();
    while let Some(result) = tasks.join_next().await {
        devices.push(result.unwrap().unwrap().device_id);
    }
    devices.sort();
    assert_eq!(devices, ["burst-0", "burst-1", "burst-2"]);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "throttled devices waited: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_a_registration() {
    // A server that never answers the poll within the deadline: retry-after 5 s vs 1 s.
    let server = TestServer::start_with(|c| {
        c.dps.retry_after = 5;
        c.dps.immediate_result = false;
    })
    .await;
    let group_key = server.symmetric_group().await;
    let mut options = server.provisioning(
        DpsCredentials::from_group_key("slow-1", &group_key).unwrap(),
        Transport::Mqtt,
    );
    options.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = ProvisioningClient::new(options)
        .unwrap()
        .register()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "provisioning",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
