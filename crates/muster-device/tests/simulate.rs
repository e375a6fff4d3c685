//! The lab's simulated device against a real server: it provisions, loads its twin, reports
//! and sends readings, follows desired `telemetryDelay` changes (and rejects a bad one), and
//! after losing its connection catches up with a change it missed while away.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::time::Duration;

use common::{DeviceFixture as _, TestServer, identity};
use muster_device::dps::{DpsCredentials, Transport};
use muster_device::hub::{HubClient, HubCredentials, HubOptions, ReconnectPolicy};
use muster_device::simulate::{SimEvent, SimulatorOptions};
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::json;
use tokio::sync::mpsc;

/// The next event matching `what` within 15 s, skipping others.
async fn expect(
    events: &mut mpsc::UnboundedReceiver<SimEvent>,
    what: impl Fn(&SimEvent) -> bool,
) -> SimEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the expected event within 15 s")
            .expect("the simulator ended");
        if what(&event) {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_device_follows_its_twin_and_catches_up_after_a_reconnect() {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let pki = Pki::new();
    server.x509_group(&pki).await;
    let id = identity(&pki.leaf, &pki);
    let options = SimulatorOptions {
        provisioning: server.provisioning(DpsCredentials::X509(id.clone()), Transport::Mqtt),
        hub_credentials: HubCredentials::X509(id.clone()),
        hub_port: server.mqtt_port(),
        hub_transport: muster_device::HubTransport::Mqtt,
        seed: Some(7),
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let device = tokio::spawn(muster_device::simulate::run(
        options,
        move |e| {
            let _ = tx.send(e);
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let registered = expect(&mut events, |e| matches!(e, SimEvent::Registered { .. })).await;
    let SimEvent::Registered { device_id, .. } = registered else {
        unreachable!()
    };
    assert_eq!(device_id, "device-1");
    let loaded = expect(&mut events, |e| matches!(e, SimEvent::TwinLoaded { .. })).await;
    assert!(
        matches!(loaded, SimEvent::TwinLoaded { telemetry_delay, .. } if (telemetry_delay - 1.0).abs() < 1e-9),
        "{loaded:?}"
    );
    let reported = expect(&mut events, |e| matches!(e, SimEvent::Reported { .. })).await;
    assert!(
        matches!(reported, SimEvent::Reported { ref patch, .. } if *patch == json!({"telemetryDelay": 1}))
    );
    let sent = expect(&mut events, |e| matches!(e, SimEvent::TelemetrySent { .. })).await;
    let SimEvent::TelemetrySent {
        body,
        temperature_alert,
        ..
    } = sent
    else {
        unreachable!()
    };
    assert_eq!(
        temperature_alert,
        body["temperature"].as_f64().unwrap() > 30.0
    );

    // A change while connected.
    let rest = server.hub_rest();
    let desired = |v: serde_json::Value| json!({"properties": {"desired": {"telemetryDelay": v}}});
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(desired(json!(2))),
        &[],
    )
    .await;
    let changed = expect(&mut events, |e| matches!(e, SimEvent::DelayChanged { .. })).await;
    assert!(
        matches!(changed, SimEvent::DelayChanged { telemetry_delay, .. } if (telemetry_delay - 2.0).abs() < 1e-9),
        "{changed:?}"
    );
    let reported = expect(&mut events, |e| matches!(e, SimEvent::Reported { .. })).await;
    assert!(
        matches!(reported, SimEvent::Reported { ref patch, .. } if *patch == json!({"telemetryDelay": 2}))
    );
    // A bad value is rejected and the delay kept.
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(desired(json!("-5"))),
        &[],
    )
    .await;
    let rejected = expect(&mut events, |e| matches!(e, SimEvent::DelayRejected { .. })).await;
    assert!(
        matches!(rejected, SimEvent::DelayRejected { telemetry_delay, .. } if (telemetry_delay - 2.0).abs() < 1e-9),
        "{rejected:?}"
    );

    // Another connection takes the device over; while the simulator is away (it reconnects
    // after its backoff), the delay changes. Desired patches are not queued, so the simulator
    // learns of it by reading its twin once back.
    let mut intruder = HubOptions::new("localhost", "device-1", HubCredentials::X509(id));
    intruder.port = server.mqtt_port();
    intruder.trust = server.trust();
    intruder.reconnect = ReconnectPolicy::disabled();
    let (intruder, _intruder_events) = HubClient::connect(intruder).await.unwrap();
    expect(&mut events, |e| matches!(e, SimEvent::Disconnected { .. })).await;
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(desired(json!("3"))),
        &[],
    )
    .await;
    expect(&mut events, |e| matches!(e, SimEvent::Connected { .. })).await;
    let caught_up = expect(&mut events, |e| matches!(e, SimEvent::DelayChanged { .. })).await;
    assert!(
        matches!(caught_up, SimEvent::DelayChanged { telemetry_delay, ref value, .. }
            if (telemetry_delay - 3.0).abs() < 1e-9 && *value == json!("3")),
        "{caught_up:?}"
    );
    let reported = expect(&mut events, |e| matches!(e, SimEvent::Reported { .. })).await;
    assert!(
        matches!(reported, SimEvent::Reported { ref patch, .. } if *patch == json!({"telemetryDelay": 3}))
    );
    let _ = intruder.close().await;

    // Stopping ends the run cleanly with the registration.
    stop.send(()).unwrap();
    let registration = tokio::time::timeout(Duration::from_secs(10), device)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(registration.device_id, "device-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_device_runs_over_amqp_and_is_refused_once_deleted() {
    lab_device_over(Transport::Amqp, muster_device::HubTransport::Amqp, "amqp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_device_runs_over_websockets() {
    lab_device_over(
        Transport::MqttWs,
        muster_device::HubTransport::MqttWs,
        "mqtt-ws",
    )
    .await;
    lab_device_over(
        Transport::AmqpWs,
        muster_device::HubTransport::AmqpWs,
        "amqp-ws",
    )
    .await;
}

/// The lab device over one transport, to the end: twin, telemetry, a desired change reported
/// back, C2D, a method, then refused once deleted.
async fn lab_device_over(
    transport: Transport,
    hub_transport: muster_device::HubTransport,
    name: &str,
) {
    let server = TestServer::start_with(|c| c.dps.retry_after = 0).await;
    let pki = Pki::new();
    server.x509_group(&pki).await;
    let id = identity(&pki.leaf, &pki);
    let mut options = SimulatorOptions {
        provisioning: server.provisioning(DpsCredentials::X509(id.clone()), transport),
        hub_credentials: HubCredentials::X509(id.clone()),
        hub_port: match hub_transport {
            muster_device::HubTransport::Amqp => server.amqp_port(),
            _ => server.https_port(),
        },
        hub_transport,
        seed: Some(7),
    };
    options.provisioning.timeout = Duration::from_secs(20);
    let (tx, mut events) = mpsc::unbounded_channel();
    let device = tokio::spawn(muster_device::simulate::run(
        options,
        move |e| {
            let _ = tx.send(e);
        },
        std::future::pending(),
    ));
    let registering = expect(&mut events, |e| matches!(e, SimEvent::Registering { .. })).await;
    assert!(
        matches!(registering, SimEvent::Registering { ref transport, .. } if transport == name)
    );
    let loaded = expect(&mut events, |e| matches!(e, SimEvent::TwinLoaded { .. })).await;
    assert!(
        matches!(loaded, SimEvent::TwinLoaded { telemetry_delay, .. } if (telemetry_delay - 1.0).abs() < 1e-9),
        "{loaded:?}"
    );
    expect(&mut events, |e| matches!(e, SimEvent::TelemetrySent { .. })).await;
    let rest = server.hub_rest();
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": 2}}})),
        &[],
    )
    .await;
    let changed = expect(&mut events, |e| matches!(e, SimEvent::DelayChanged { .. })).await;
    assert!(
        matches!(changed, SimEvent::DelayChanged { telemetry_delay, .. } if (telemetry_delay - 2.0).abs() < 1e-9),
        "{changed:?}"
    );
    let reported = expect(&mut events, |e| matches!(e, SimEvent::Reported { .. })).await;
    assert!(
        matches!(reported, SimEvent::Reported { ref patch, .. } if *patch == json!({"telemetryDelay": 2}))
    );
    let twin = rest.ok(Method::GET, "/twins/device-1", None, &[]).await;
    assert_eq!(twin["properties"]["reported"]["telemetryDelay"], 2);
    // A cloud-to-device message and a method call reach it.
    assert_eq!(rest.send_c2d("device-1", b"over amqp", &[]).await, 204);
    let got = expect(&mut events, |e| {
        matches!(e, SimEvent::MessageReceived { .. })
    })
    .await;
    assert!(matches!(got, SimEvent::MessageReceived { ref body, .. } if body == "over amqp"));
    let (status, _, answer) = rest
        .send(
            Method::POST,
            "/twins/device-1/methods",
            Some(json!({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 10})),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["status"], 501,
        "the lab device has no methods: {answer}"
    );
    // Its telemetry is in the event stream.
    let stored = rest.read_events("device-1", 1).await;
    assert!(
        stored[0]["properties"]["temperatureAlert"].is_string(),
        "{stored:?}"
    );

    // Deleted: the hub closes its links and the simulator stops, refused.
    rest.send(Method::DELETE, "/devices/device-1", None, &[])
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(20), device)
        .await
        .expect("the simulator stops once refused")
        .unwrap();
    assert!(
        matches!(ended, Err(muster_device::Error::Refused { .. })),
        "{ended:?}"
    );
}
