//! The hub client against a real muster server: a provisioned X.509 device uses its twin,
//! telemetry, desired patches, C2D and direct methods; reconnects after a takeover; SAS
//! devices renew their token; refusals are typed and not retried.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::time::{Duration, Instant};

use common::{DeviceFixture as _, TestServer, identity, next_event, wait_for};
use muster_device::{
    ConnectReturnCode, DpsCredentials, Error, HubClient, HubCredentials, HubEvent, HubOptions,
    Identity, Message, ReconnectPolicy, Secret, Transport, TrustRoots,
};
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::json;

/// Provision `device-1` (X.509 group with an initial twin) through the library itself.
async fn provisioned(server: &TestServer, pki: &Pki) -> (HubOptions, Identity) {
    server.x509_group(pki).await;
    let id = identity(&pki.leaf, pki);
    let reg = server
        .register(DpsCredentials::X509(id.clone()), Transport::Mqtt)
        .await
        .unwrap();
    let mut options = HubOptions::for_registration(&reg, HubCredentials::X509(id.clone()));
    options.port = server.mqtt_port();
    options.trust = server.trust();
    (options, id)
}

fn fast_reconnect() -> ReconnectPolicy {
    let mut policy = ReconnectPolicy::default();
    policy.initial_delay = Duration::from_millis(200);
    policy.max_delay = Duration::from_secs(1);
    policy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_device_uses_twin_telemetry_c2d_and_methods() {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let pki = Pki::new();
    let (options, _) = provisioned(&server, &pki).await;
    assert_eq!(
        (options.host.as_str(), options.device_id.as_str()),
        ("localhost", "device-1")
    );
    let (client, mut events) = HubClient::connect(options.clone()).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        HubEvent::Connected {
            session_present: false
        }
    );
    let rest = server.hub_rest();

    // Twin: the enrollment's initial desired properties.
    let twin = client.get_twin().await.unwrap();
    assert_eq!(twin.desired["telemetryDelay"], "1", "{twin:?}");
    assert_eq!(twin.desired_version(), Some(1));
    let reported_before = twin.reported_version().unwrap();

    // Reported patch: the new version, visible to the operator.
    let version = client
        .patch_reported(&json!({"firmware": "1.0", "telemetryDelay": 1}))
        .await
        .unwrap();
    assert_eq!(version, reported_before + 1);
    let service_twin = rest.ok(Method::GET, "/twins/device-1", None, &[]).await;
    assert_eq!(service_twin["properties"]["reported"]["firmware"], "1.0");
    assert_eq!(
        service_twin["properties"]["reported"]["$version"].as_u64(),
        Some(version)
    );
    // A patch the hub refuses: a typed error with its status and code.
    let err = client
        .patch_reported(&json!({"$bad": 1}))
        .await
        .unwrap_err();
    let Error::Hub {
        status, error_code, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*status, 400);
    assert!(error_code.is_some(), "{err}");

    // Telemetry: many in flight at once, each acknowledged, all in the event stream.
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..20 {
        let client = client.clone();
        sends.spawn(async move {
            client
                .send_telemetry(
                    Message::json(&json!({"temperature": 20 + i}))
                        .with_message_id(format!("m-{i}"))
                        .with_correlation_id("batch-1")
                        .with_property("seq", i.to_string())
                        .with_property("sp ace", "a/b&c"),
                )
                .await
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap().unwrap();
    }
    let stored = rest.read_events("device-1", 20).await;
    assert_eq!(stored.len(), 20);
    let mut temperatures: Vec<i64> = stored
        .iter()
        .map(|e| e["body"]["temperature"].as_i64().unwrap())
        .collect();
    temperatures.sort_unstable();
    assert_eq!(temperatures, (20..40).collect::<Vec<_>>());
    let first = stored
        .iter()
        .find(|e| e["systemProperties"]["message-id"] == "m-0")
        .unwrap();
    assert_eq!(first["properties"], json!({"seq": "0", "sp ace": "a/b&c"}));
    assert_eq!(first["systemProperties"]["correlation-id"], "batch-1");
    assert_eq!(
        first["systemProperties"]["content-type"],
        "application/json"
    );
    assert_eq!(first["systemProperties"]["content-encoding"], "utf-8");
    assert_eq!(first["deviceId"], "device-1");
    let err = client
        .send_telemetry(Message::new(vec![0u8; 256 * 1024 + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessageTooLarge { .. }), "{err}");

    // A desired patch made by the operator arrives with its version.
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    assert_eq!(
        next_event(&mut events).await,
        HubEvent::DesiredPatch(json!({"telemetryDelay": "2", "$version": 2}))
    );

    // Cloud-to-device: body, system and application properties.
    assert_eq!(
        rest.send_c2d(
            "device-1",
            b"reboot please",
            &[
                ("iothub-messageid", "c2d-1"),
                ("iothub-correlationid", "corr-1"),
                ("iothub-app-priority", "high"),
            ],
        )
        .await,
        204
    );
    let HubEvent::C2d(message) = next_event(&mut events).await else {
        panic!("expected a C2D message")
    };
    assert_eq!(message.body, b"reboot please");
    assert_eq!(message.message_id.as_deref(), Some("c2d-1"));
    assert_eq!(message.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(message.property("priority"), Some("high"));

    // A direct method: the device's answer reaches the caller.
    let caller = {
        let rest = server.hub_rest();
        tokio::spawn(async move {
            rest.send(
                Method::POST,
                "/twins/device-1/methods",
                Some(json!({"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 10})),
                &[],
            )
            .await
        })
    };
    let HubEvent::MethodCall { name, rid, payload } = next_event(&mut events).await else {
        panic!("expected a method call")
    };
    assert_eq!(name, "reboot");
    assert_eq!(payload, json!({"delay": 1}));
    client
        .respond_method(&rid, 200, &json!({"rebooted": true}))
        .await
        .unwrap();
    let (status, _, body) = caller.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": 200, "payload": {"rebooted": true}}));

    // Close: the stream ends, calls fail, the hub sees the device go.
    client.close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap();
    assert_eq!(end, None, "the event stream ends after close");
    assert!(client.is_closed());
    assert!(matches!(client.get_twin().await, Err(Error::Closed)));
    client.close().await.unwrap();

    // The C2D message was acknowledged: a new session gets only the next one.
    let (client, mut events) = HubClient::connect(options).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        HubEvent::Connected {
            session_present: true
        },
        "the persistent session survived"
    );
    assert_eq!(rest.send_c2d("device-1", b"second", &[]).await, 204);
    let HubEvent::C2d(message) = next_event(&mut events).await else {
        panic!("expected a C2D message")
    };
    assert_eq!(message.body, b"second", "the first one is not redelivered");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_takeover_and_keeps_receiving() {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let pki = Pki::new();
    let (mut options, _) = provisioned(&server, &pki).await;
    options.reconnect = fast_reconnect();
    let (client, mut events) = HubClient::connect(options.clone()).await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        HubEvent::Connected { .. }
    ));

    // A second connection with the same id takes the session over; the first reconnects
    // (taking it back), and the second, which does not reconnect, ends.
    let mut intruder_options = options.clone();
    intruder_options.reconnect = ReconnectPolicy::disabled();
    let (intruder, mut intruder_events) = HubClient::connect(intruder_options).await.unwrap();
    assert_eq!(
        next_event(&mut intruder_events).await,
        HubEvent::Connected {
            session_present: true
        }
    );
    assert!(matches!(
        next_event(&mut events).await,
        HubEvent::Disconnected { .. }
    ));
    let reconnected = wait_for(&mut events, |e| matches!(e, HubEvent::Connected { .. })).await;
    assert_eq!(
        reconnected,
        HubEvent::Connected {
            session_present: true
        }
    );
    assert!(matches!(
        next_event(&mut intruder_events).await,
        HubEvent::Disconnected { .. }
    ));
    let end = tokio::time::timeout(Duration::from_secs(5), intruder_events.recv())
        .await
        .unwrap();
    assert_eq!(end, None, "without reconnect the client stops");
    assert!(matches!(
        intruder.send_telemetry(Message::new("late")).await,
        Err(Error::Closed)
    ));

    // The persistent session kept the subscriptions: a desired patch still arrives.
    let rest = server.hub_rest();
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"mode": "eco"}}})),
        &[],
    )
    .await;
    let patch = wait_for(&mut events, |e| matches!(e, HubEvent::DesiredPatch(_))).await;
    let HubEvent::DesiredPatch(patch) = patch else {
        unreachable!()
    };
    assert_eq!(patch["mode"], "eco");
    client
        .send_telemetry(Message::new("after the takeover").with_message_id("after"))
        .await
        .unwrap();
    let stored = rest.read_events("device-1", 1).await;
    assert_eq!(stored[0]["systemProperties"]["message-id"], "after");
    assert_eq!(client.get_twin().await.unwrap().desired["mode"], "eco");

    // Disabling the device: reconnecting fails (refused) until it is enabled again.
    let mut device = rest.ok(Method::GET, "/devices/device-1", None, &[]).await;
    device["status"] = json!("disabled");
    rest.ok(
        Method::PUT,
        "/devices/device-1",
        Some(device.clone()),
        &[("if-match", "*")],
    )
    .await;
    let failed = wait_for(&mut events, |e| {
        matches!(e, HubEvent::Disconnected { reason } if reason.starts_with("reconnecting failed"))
    })
    .await;
    assert!(
        matches!(&failed, HubEvent::Disconnected { reason } if reason.contains("not authorized")),
        "{failed:?}"
    );
    assert!(matches!(client.get_twin().await, Err(Error::NotConnected)));
    // A desired change while the device is away is not queued; the client reads its twin
    // again after reconnecting and reports it.
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"mode": "away"}}})),
        &[],
    )
    .await;
    device["status"] = json!("enabled");
    rest.ok(
        Method::PUT,
        "/devices/device-1",
        Some(device),
        &[("if-match", "*")],
    )
    .await;
    wait_for(&mut events, |e| matches!(e, HubEvent::Connected { .. })).await;
    let twin = wait_for(&mut events, |e| matches!(e, HubEvent::Twin(_))).await;
    let HubEvent::Twin(twin) = twin else {
        unreachable!()
    };
    assert_eq!(twin.desired["mode"], "away");
    assert_eq!(client.get_twin().await.unwrap().desired["mode"], "away");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_device_renews_its_token() {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let rest = server.hub_rest();
    let device = rest
        .ok(
            Method::PUT,
            "/devices/sas-1",
            Some(json!({"deviceId": "sas-1", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}})),
            &[],
        )
        .await;
    let key = Secret::new(
        device["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap(),
    );
    // The server ends a SAS session when its token expires; a 5 s token is renewed after 3 s.
    let mut options = HubOptions::new(
        "localhost",
        "sas-1",
        HubCredentials::Sas {
            key,
            token_ttl: Duration::from_secs(5),
        },
    );
    options.port = server.mqtt_port();
    options.trust = server.trust();
    options.reconnect = ReconnectPolicy::disabled();
    let started = Instant::now();
    let (client, mut events) = HubClient::connect(options).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        HubEvent::Connected {
            session_present: false
        }
    );
    assert_eq!(
        next_event(&mut events).await,
        HubEvent::Disconnected {
            reason: "renewing the SAS token".into()
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert_eq!(
        next_event(&mut events).await,
        HubEvent::Connected {
            session_present: true
        }
    );
    // Past the first token's expiry (at most 5 s after connecting) and before the second
    // renewal (about 6 s), still connected and working.
    tokio::time::sleep_until(tokio::time::Instant::from_std(started) + Duration::from_millis(5200))
        .await;
    let twin = client.get_twin().await.unwrap();
    assert!(twin.desired.is_object());
    client
        .send_telemetry(Message::new("still here"))
        .await
        .unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_first_connect_are_typed_and_not_retried() {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let pki = Pki::new();
    let (options, _) = provisioned(&server, &pki).await;

    // Another certificate under the same CA: the thumbprint is not the device's.
    let other = pki.intermediate.leaf("device-1");
    let mut wrong = options.clone();
    wrong.credentials = HubCredentials::X509(identity(&other, &pki));
    let started = Instant::now();
    let err = HubClient::connect(wrong).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                code: ConnectReturnCode::NotAuthorized
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    assert_eq!(
        err.to_string(),
        "connection refused by the server: not authorized (CONNACK 5)"
    );

    // An unknown device, and a SAS key that is not the device's.
    let mut unknown = options.clone();
    unknown.device_id = "ghost".into();
    assert!(matches!(
        HubClient::connect(unknown).await,
        Err(Error::Refused { .. })
    ));
    let mut sas = options.clone();
    sas.credentials = HubCredentials::sas(Secret::new("AAAAAAAAAAAAAAAAAAAAAA=="));
    assert!(matches!(
        HubClient::connect(sas).await,
        Err(Error::Refused { .. })
    ));

    // An untrusted server certificate.
    let mut untrusted = options.clone();
    untrusted.trust = TrustRoots::webpki();
    assert!(matches!(
        HubClient::connect(untrusted).await,
        Err(Error::Tls { .. })
    ));

    // Without reconnect, losing the connection ends the client and fails what is pending.
    let mut once = options;
    once.reconnect = ReconnectPolicy::disabled();
    let (client, mut events) = HubClient::connect(once).await.unwrap();
    next_event(&mut events).await;
    let rest = server.hub_rest();
    let (status, _, _) = rest
        .send(
            Method::DELETE,
            "/devices/device-1",
            None,
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(status, 204);
    assert!(matches!(
        next_event(&mut events).await,
        HubEvent::Disconnected { .. }
    ));
    let end = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap();
    assert_eq!(end, None);
    let sent: Result<(), Error> = client.send_telemetry(Message::new("x")).await;
    assert!(matches!(sent, Err(Error::Closed)), "{sent:?}");
}
