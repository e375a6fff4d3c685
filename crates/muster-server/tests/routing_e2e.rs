//! Message routing end to end: routes with conditions deliver device messages to a webhook and
//! a file sink, unmatched messages take the fallback route to the built-in endpoint, a desired
//! change makes a twin change event, an endpoint down for 10 s loses nothing, and bad
//! configurations are refused with a reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "a test fails loudly, and says when it is skipped"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use common::{Mqtt, TestServer};
use muster_mqtt::Packet;
use reqwest::Method;
use serde_json::{Value, json};

/// A webhook receiver that records what it is sent, or answers 503 while `down`.
#[derive(Clone, Default)]
struct Hook {
    received: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    refused: Arc<Mutex<usize>>,
}

impl Hook {
    async fn start(&self) -> String {
        let hook = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::Json<Value>| {
                let hook = hook.clone();
                async move {
                    if hook.down.load(Ordering::SeqCst) {
                        *hook.refused.lock().unwrap() += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let batch = body.0.as_array().cloned().expect("a JSON array");
                    hook.received.lock().unwrap().extend(batch);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} deliveries within {within:?}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn file_lines(dir: &std::path::Path) -> Vec<Value> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn send(device: &mut Mqtt, id: u16, alert: bool, temperature: i32) {
    let topic = format!(
        "devices/router-device/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert={alert}&n={id}"
    );
    let body = format!(r#"{{"temperature":{temperature}}}"#);
    device.publish(&topic, body.as_bytes(), id).await;
    let answer = device.recv().await;
    assert!(
        matches!(answer, Some(Packet::PubAck(p)) if p == id),
        "message {id}: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_deliver_by_condition_and_lose_nothing_while_an_endpoint_is_down() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    let hook = Hook::default();
    let url = hook.start().await;
    let files = tempfile::tempdir().unwrap();

    // Bad configurations are refused, and nothing changes.
    let (status, _, body) = rest
        .send(
            Method::PUT,
            "/routing/routes/broken",
            Some(json!({"source": "DeviceMessages", "condition": "temperatureAlert =", "endpointNames": ["events"]})),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("condition"), "{body}");
    let (status, _, body) = rest
        .send(
            Method::PUT,
            "/routing/routes/nowhere",
            Some(json!({"source": "DeviceMessages", "endpointNames": ["missing"]})),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // A body naming another route than the path is refused.
    let (status, _, body) = rest
        .send(
            Method::PUT,
            "/routing/routes/alerts",
            Some(json!({"name": "other", "source": "DeviceMessages", "endpointNames": ["events"]})),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("the path says 'alerts'"),
        "{body}"
    );
    // Only the owner policy may change routing.
    let (status, _, _) = server
        .policy_rest("registryReadWrite")
        .send(
            Method::PUT,
            "/routing/fallbackRoute",
            Some(json!({"isEnabled": true})),
            &[],
        )
        .await;
    assert_eq!(status, 401);

    for (name, endpoint) in [
        ("hook", json!({"type": "webhook", "url": url})),
        (
            "files",
            json!({"type": "file", "directory": files.path().display().to_string()}),
        ),
    ] {
        rest.ok(
            Method::PUT,
            &format!("/routing/endpoints/{name}"),
            Some(endpoint),
            &[],
        )
        .await;
    }
    for (name, route) in [
        (
            "alerts",
            json!({"source": "DeviceMessages", "condition": "temperatureAlert = 'true'", "endpointNames": ["hook"]}),
        ),
        (
            "hot",
            json!({"source": "DeviceMessages", "condition": "$body.temperature > 30", "endpointNames": ["files"]}),
        ),
        (
            "twins",
            json!({"source": "TwinChangeEvents", "endpointNames": ["hook"]}),
        ),
    ] {
        rest.ok(
            Method::PUT,
            &format!("/routing/routes/{name}"),
            Some(route),
            &[],
        )
        .await;
    }
    let config = rest.ok(Method::GET, "/routing", None, &[]).await;
    assert_eq!(config["routes"].as_array().unwrap().len(), 3, "{config}");
    assert_eq!(config["fallbackRoute"]["isEnabled"], true);
    let tested = rest
        .ok(
            Method::POST,
            "/routing/test",
            Some(json!({"route": "hot", "message": {"body": {"temperature": 31}}})),
            &[],
        )
        .await;
    assert_eq!(tested["result"], "true", "{tested}");

    let token = rest.sas_device("router-device").await;
    let mut device = Mqtt::connect(
        server.running.mqtt_addr,
        &server.ca_pem(),
        "router-device",
        "localhost/router-device/?api-version=2021-04-12",
        Some(&token),
        None,
    )
    .await;
    send(&mut device, 1, true, 25).await; // alerts → hook
    send(&mut device, 2, false, 35).await; // hot → files
    send(&mut device, 3, false, 20).await; // no route → fallback → events

    let got = hook.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["properties"]["n"], "1", "{got:?}");
    assert_eq!(got[0]["body"]["temperature"], 25);
    assert_eq!(
        got[0]["systemProperties"]["iothub-connection-device-id"],
        "router-device"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while file_lines(files.path()).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file sink wrote nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = file_lines(files.path());
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["properties"]["n"], "2");
    // Only the unmatched message reached the built-in endpoint.
    let events = rest.read_events_from("earliest", None, 1).await;
    assert_eq!(events[0]["properties"]["n"], "3", "{events:?}");

    // A desired change is a twin change event.
    rest.ok(
        Method::PATCH,
        "/twins/router-device",
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    let got = hook.wait_for(2, Duration::from_secs(10)).await;
    let change = &got[1];
    assert_eq!(change["properties"]["opType"], "updateTwin", "{change}");
    assert_eq!(
        change["properties"]["iothub-message-schema"],
        "twinChangeNotification"
    );
    assert_eq!(
        change["systemProperties"]["iothub-message-source"],
        "twinChangeEvents"
    );
    assert_eq!(
        change["body"]["properties"]["desired"]["telemetryDelay"], "2",
        "{change}"
    );

    // The webhook is down for 10 s: alerts wait in the log and all arrive, in order, after.
    hook.down.store(true, Ordering::SeqCst);
    for n in 10..15 {
        send(&mut device, n, true, 25).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        *hook.refused.lock().unwrap() > 0,
        "delivery was attempted while down"
    );
    assert_eq!(hook.received().len(), 2, "nothing is delivered while down");
    hook.down.store(false, Ordering::SeqCst);
    let got = hook.wait_for(7, Duration::from_secs(40)).await;
    let numbers: Vec<&str> = got[2..]
        .iter()
        .map(|e| e["properties"]["n"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["10", "11", "12", "13", "14"]);

    // Routing persists across a restart, and delivered positions too: nothing is sent twice.
    drop(device);
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, std::net::IpAddr::from([127, 0, 0, 1]), 0).await;
    let config = server
        .hub_rest()
        .ok(Method::GET, "/routing", None, &[])
        .await;
    assert_eq!(config["endpoints"].as_array().unwrap().len(), 2, "{config}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hook.received().len(),
        7,
        "no delivery repeated after the restart"
    );

    // An endpoint a route uses cannot be deleted; a route can, then the endpoint.
    let (status, _, _) = server
        .hub_rest()
        .send(Method::DELETE, "/routing/endpoints/files", None, &[])
        .await;
    assert_eq!(status, 400);
    server.stop().await;
}

/// NATS runs beside the tests in CI: `MUSTER_TEST_NATS=nats://127.0.0.1:4222` switches this on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_endpoint_publishes_routed_messages_with_their_properties() {
    let Ok(url) = std::env::var("MUSTER_TEST_NATS") else {
        eprintln!(
            "skipped: set MUSTER_TEST_NATS=nats://127.0.0.1:4222 to run against a NATS server"
        );
        return;
    };
    use futures_util::StreamExt as _;
    let subject = format!("muster.test.{}", std::process::id());
    let nats = async_nats::connect(url.as_str())
        .await
        .expect("NATS at MUSTER_TEST_NATS");
    let mut sub = nats.subscribe(subject.clone()).await.unwrap();
    nats.flush().await.unwrap();

    let server = TestServer::start().await;
    let rest = server.hub_rest();
    rest.ok(
        Method::PUT,
        "/routing/endpoints/bus",
        Some(json!({"type": "nats", "url": url, "subject": subject})),
        &[],
    )
    .await;
    rest.ok(
        Method::PUT,
        "/routing/routes/to-bus",
        Some(json!({"source": "DeviceMessages", "condition": "temperatureAlert = 'true'", "endpointNames": ["bus", "events"]})),
        &[],
    )
    .await;
    let token = rest.sas_device("router-device").await;
    let mut device = Mqtt::connect(
        server.running.mqtt_addr,
        &server.ca_pem(),
        "router-device",
        "localhost/router-device/?api-version=2021-04-12",
        Some(&token),
        None,
    )
    .await;
    send(&mut device, 1, false, 20).await;
    send(&mut device, 2, true, 21).await;
    let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a NATS message within 10 s")
        .unwrap();
    assert_eq!(&message.payload[..], br#"{"temperature":21}"#);
    let headers = message.headers.unwrap();
    assert_eq!(headers.get("n").unwrap().as_str(), "2");
    assert_eq!(
        headers.get("iothub-connection-device-id").unwrap().as_str(),
        "router-device"
    );
    // The matching message also reached the built-in endpoint; the other one by the fallback.
    let events = rest.read_events_from("earliest", None, 2).await;
    assert_eq!(events.len(), 2);
    server.stop().await;
}

/// Lifecycle and connection-state events, as IoT Hub makes them: identities created through the
/// API and by DPS, a connection and its end, a deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_and_connection_events_reach_their_routes() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    let hook = Hook::default();
    let url = hook.start().await;
    rest.ok(
        Method::PUT,
        "/routing/endpoints/hook",
        Some(json!({"type": "webhook", "url": url})),
        &[],
    )
    .await;
    for (name, source) in [
        ("lifecycle", "DeviceLifecycleEvents"),
        ("connections", "DeviceConnectionStateEvents"),
    ] {
        rest.ok(
            Method::PUT,
            &format!("/routing/routes/{name}"),
            Some(json!({"source": source, "endpointNames": ["hook"]})),
            &[],
        )
        .await;
    }
    // Created through the API, connected, disconnected.
    let token = rest.sas_device("life-1").await;
    let device = Mqtt::connect(
        server.running.mqtt_addr,
        &server.ca_pem(),
        "life-1",
        "localhost/life-1/?api-version=2021-04-12",
        Some(&token),
        None,
    )
    .await;
    drop(device);
    // Created by DPS (a symmetric-key group).
    let dps = server.dps_rest();
    dps.ok(
        Method::PUT,
        "/enrollmentgroups/life-group",
        Some(json!({"enrollmentGroupId": "life-group", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}})),
        &[],
    )
    .await;
    let attestation = dps
        .ok(
            Method::POST,
            "/enrollmentgroups/life-group/attestationmechanism",
            None,
            &[],
        )
        .await;
    let group_key =
        muster_auth::Secret::new(attestation["symmetricKey"]["primaryKey"].as_str().unwrap());
    let device_key = muster_auth::sas::derive_device_key(&group_key, "life-2").unwrap();
    let scope = server.id_scope();
    let exp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 3600;
    let dps_token = muster_auth::sas::make_token(
        &format!("{scope}/registrations/life-2"),
        &device_key,
        Some("registration"),
        exp,
    )
    .unwrap();
    let mut registering = Mqtt::connect(
        server.running.mqtt_addr,
        &server.ca_pem(),
        "life-2",
        &common::dps_username(&scope, "life-2"),
        Some(&dps_token),
        None,
    )
    .await;
    let (_, _, polled) = registering.dps_register("life-2", Value::Null).await;
    assert_eq!(polled.unwrap().1["status"], "assigned");
    // Deleted.
    rest.ok(
        Method::DELETE,
        "/devices/life-1",
        None,
        &[("if-match", "*")],
    )
    .await;

    let got = hook.wait_for(5, Duration::from_secs(15)).await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            (
                e["properties"]["opType"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["properties"]["deviceId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    for want in [
        ("createDeviceIdentity", "life-1"),
        ("deviceConnected", "life-1"),
        ("deviceDisconnected", "life-1"),
        ("createDeviceIdentity", "life-2"),
        ("deleteDeviceIdentity", "life-1"),
    ] {
        assert!(
            seen.iter().any(|(o, d)| o == want.0 && d == want.1),
            "{want:?} in {seen:?}"
        );
    }
    let connected = got
        .iter()
        .find(|e| e["properties"]["opType"] == "deviceConnected")
        .unwrap();
    assert_eq!(
        connected["systemProperties"]["iothub-message-source"],
        "deviceConnectionStateEvents"
    );
    assert_eq!(
        connected["body"]["sequenceNumber"].as_str().unwrap().len(),
        64
    );
    let created = got
        .iter()
        .find(|e| e["properties"]["opType"] == "createDeviceIdentity")
        .unwrap();
    assert_eq!(
        created["properties"]["iothub-message-schema"],
        "deviceLifecycleNotification"
    );
    assert_eq!(
        created["body"]["deviceId"],
        created["properties"]["deviceId"]
    );
    server.stop().await;
}
