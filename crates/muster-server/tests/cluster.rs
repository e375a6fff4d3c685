//! Three nodes as one hub: a shared PostgreSQL store and a NATS bus, each node on its own
//! loopback address (127.0.0.2–4). A device on one node is reached by service calls made
//! through the others; when it reconnects to another node, the first lets it go, and its
//! persistent subscriptions and unacknowledged cloud-to-device messages follow it.
//!
//! Needs PostgreSQL and NATS with JetStream, as CI runs them:
//! `MUSTER_TEST_POSTGRES=postgres://postgres@127.0.0.1/postgres` and
//! `MUSTER_TEST_NATS=nats://127.0.0.1:4222`. Without both, the tests say so and pass.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::time::Duration;

use common::{Mqtt, TestServer};
use muster_mqtt::{ConnectReturnCode, Packet, QoS};
use muster_store_pg::testing::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};

/// The database and the NATS URL, or `None` (with a line) when either is not configured.
async fn services(label: &str) -> Option<(TestDatabase, String)> {
    let Ok(nats) = std::env::var("MUSTER_TEST_NATS") else {
        eprintln!("skipped: set MUSTER_TEST_NATS=nats://127.0.0.1:4222 to run the cluster tests");
        return None;
    };
    let db = TestDatabase::create(label).await?;
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    Some((db, nats))
}

async fn node(db: &TestDatabase, nats: &str, n: u8) -> TestServer {
    let url = db.url.clone();
    let bus = nats.to_owned();
    TestServer::start_with(move |c| {
        c.bind = std::net::IpAddr::from([127, 0, 0, n + 1]);
        c.store = url;
        c.bus = Some(bus);
        c.node_id = Some(format!("n{n}"));
    })
    .await
}

fn user(id: &str) -> String {
    format!("localhost/{id}/?api-version=2021-04-12")
}

async fn connect(node: &TestServer, id: &str, token: &str) -> Mqtt {
    let dev = Mqtt::connect_opts(
        node.running.mqtt_addr,
        &node.ca_pem(),
        id,
        &user(id),
        Some(token),
        None,
        false,
    )
    .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
    dev
}

/// The next PUBLISH, within 10 s.
async fn next(dev: &mut Mqtt) -> muster_mqtt::Publish {
    tokio::time::timeout(Duration::from_secs(10), dev.next_publish())
        .await
        .expect("a PUBLISH within 10 s")
}

/// The server closes the connection within 10 s (packets still in flight are read past).
async fn closes(dev: &mut Mqtt, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(packet) = dev.recv().await {
            assert!(
                matches!(packet, Packet::PubAck(_) | Packet::Publish(_)),
                "{what}: unexpected {packet:?}"
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 10 s"));
}

/// Call `method` through `node` while `dev` answers it with `{"on": answer}`.
async fn method_round_trip(node: &TestServer, dev: &mut Mqtt, id: &str, answer: &str) -> Value {
    let rest = node.hub_rest();
    let path = format!("/twins/{id}/methods");
    let caller = tokio::spawn(async move {
        rest.send(
            Method::POST,
            &path,
            Some(json!({"methodName": "where", "payload": {}, "responseTimeoutInSeconds": 10})),
            &[],
        )
        .await
    });
    let request = next(dev).await;
    assert!(
        request
            .topic
            .starts_with("$iothub/methods/POST/where/?$rid="),
        "{}",
        request.topic
    );
    let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
    dev.publish(
        &format!("$iothub/methods/res/200/?$rid={rid}"),
        json!({"on": answer}).to_string().as_bytes(),
        7,
    )
    .await;
    let (status, _, body) = caller.await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_calls_through_any_node_reach_the_device_and_follow_it_to_another_node() {
    let Some((db, nats)) = services("cluster").await else {
        return;
    };
    let n1 = node(&db, &nats, 1).await;
    let n2 = node(&db, &nats, 2).await;
    let n3 = node(&db, &nats, 3).await;
    let token = n3.hub_rest().sas_device("roamer").await;

    // On node 1, with a persistent session.
    let mut dev = connect(&n1, "roamer", &token).await;
    dev.subscribe("$iothub/twin/PATCH/properties/desired/#")
        .await;
    dev.subscribe("$iothub/methods/POST/#").await;
    dev.subscribe("devices/roamer/messages/devicebound/#").await;

    // A desired patch through node 3 reaches it on node 1.
    n3.hub_rest()
        .ok(
            Method::PATCH,
            "/twins/roamer",
            Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
            &[],
        )
        .await;
    let patch = next(&mut dev).await;
    assert!(
        patch
            .topic
            .starts_with("$iothub/twin/PATCH/properties/desired/"),
        "{}",
        patch.topic
    );
    let body: Value = serde_json::from_slice(&patch.payload).unwrap();
    assert_eq!(body["telemetryDelay"], "2");

    // A direct method through node 2 is answered from node 1.
    let answer = method_round_trip(&n2, &mut dev, "roamer", "n1").await;
    assert_eq!(answer, json!({"status": 200, "payload": {"on": "n1"}}));

    // A cloud-to-device message through node 3 arrives; the device does not acknowledge it.
    assert_eq!(
        n3.hub_rest().send_c2d("roamer", b"follow me", &[]).await,
        204
    );
    let c2d = next(&mut dev).await;
    assert_eq!(&c2d.payload[..], b"follow me");
    assert_eq!(c2d.qos, QoS::AtLeastOnce);

    // Every node reports it connected.
    for n in [&n1, &n2, &n3] {
        let device = n
            .hub_rest()
            .ok(Method::GET, "/devices/roamer", None, &[])
            .await;
        assert_eq!(device["connectionState"], "Connected", "{device}");
    }

    // The device moves to node 2 without subscribing again: node 1 closes its old connection,
    // the session is present, the unacknowledged message comes again, and service calls
    // through node 1 and 3 now reach it on node 2.
    let mut moved = connect(&n2, "roamer", &token).await;
    assert!(
        moved.connack.session_present,
        "the session followed the device"
    );
    closes(&mut dev, "node 1 closes the old connection").await;
    let again = next(&mut moved).await;
    assert_eq!(&again.payload[..], b"follow me");
    moved.send(&Packet::PubAck(again.packet_id.unwrap())).await;

    n1.hub_rest()
        .ok(
            Method::PATCH,
            "/twins/roamer",
            Some(json!({"properties": {"desired": {"telemetryDelay": "5"}}})),
            &[],
        )
        .await;
    let patch = next(&mut moved).await;
    let body: Value = serde_json::from_slice(&patch.payload).unwrap();
    assert_eq!(body["telemetryDelay"], "5");
    let answer = method_round_trip(&n3, &mut moved, "roamer", "n2").await;
    assert_eq!(answer["payload"]["on"], "n2");

    // Disabled through node 3: node 2 closes the connection.
    let mut device = n3
        .hub_rest()
        .ok(Method::GET, "/devices/roamer", None, &[])
        .await;
    device["status"] = json!("disabled");
    n3.hub_rest()
        .ok(
            Method::PUT,
            "/devices/roamer",
            Some(device),
            &[("If-Match", "*")],
        )
        .await;
    closes(&mut moved, "node 2 closes the disabled device's connection").await;

    // Not connected anywhere: a method through any node is 404 DeviceNotOnline at once.
    let began = std::time::Instant::now();
    let (status, _, body) = n1
        .hub_rest()
        .send(
            Method::POST,
            "/twins/roamer/methods",
            Some(json!({"methodName": "where", "responseTimeoutInSeconds": 10})),
            &[],
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(began.elapsed() < Duration::from_secs(5));

    for n in [n1, n2, n3] {
        n.stop().await;
    }
    db.drop().await;
}

/// Telemetry from devices on nodes 1 and 2 is read from node 3, each device's in the order it
/// was sent: the event log is the cluster's, on JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telemetry_from_every_node_is_read_from_any_node_in_order() {
    const EACH: u16 = 40;
    let Some((db, nats)) = services("events").await else {
        return;
    };
    let n1 = node(&db, &nats, 1).await;
    let n2 = node(&db, &nats, 2).await;
    let n3 = node(&db, &nats, 3).await;
    let rest = n3.hub_rest();
    // A webhook route, made through node 3: every node routes, each event is delivered once.
    let (hook_url, hooked) = hook().await;
    rest.ok(
        Method::PUT,
        "/routing/endpoints/hook",
        Some(json!({"type": "webhook", "url": hook_url})),
        &[],
    )
    .await;
    rest.ok(
        Method::PUT,
        "/routing/routes/all",
        Some(json!({"source": "DeviceMessages", "endpointNames": ["hook", "events"]})),
        &[],
    )
    .await;
    let mut senders = Vec::new();
    for (id, on) in [("left", &n1), ("right", &n2)] {
        let token = rest.sas_device(id).await;
        let mut dev = connect(on, id, &token).await;
        senders.push(tokio::spawn(async move {
            for i in 1..=EACH {
                dev.publish(
                    &format!("devices/{id}/messages/events/seq={i}"),
                    json!({"seq": i}).to_string().as_bytes(),
                    i,
                )
                .await;
            }
            // Every PUBACK: all of them are stored.
            let mut acked = 0;
            while acked < EACH {
                match tokio::time::timeout(Duration::from_secs(10), dev.recv()).await {
                    Ok(Some(Packet::PubAck(_))) => acked += 1,
                    other => panic!("{id}: waiting for PUBACKs, got {other:?}"),
                }
            }
            dev
        }));
    }
    let mut devices = Vec::new();
    for s in senders {
        devices.push(s.await.unwrap());
    }
    let events = rest
        .read_events_from("earliest", None, usize::from(EACH) * 2)
        .await;
    for id in ["left", "right"] {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e["deviceId"] == id)
            .map(|e| e["body"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=u64::from(EACH)).collect::<Vec<_>>(),
            "{id}: every acknowledged message once, in order"
        );
    }
    assert_eq!(events[0]["properties"]["seq"], "1", "{}", events[0]);
    // The webhook got each message once, though three nodes read the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while hooked.lock().unwrap().len() < usize::from(EACH) * 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} routed",
            hooked.lock().unwrap().len(),
            EACH * 2
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let routed = hooked.lock().unwrap().clone();
    assert_eq!(routed.len(), usize::from(EACH) * 2, "no event routed twice");
    let distinct: std::collections::BTreeSet<(String, u64)> = routed
        .iter()
        .map(|e| {
            (
                e["systemProperties"]["iothub-connection-device-id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                e["body"]["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(distinct.len(), usize::from(EACH) * 2);
    // One device's messages, read from node 1 (the other device's node).
    let right = n1
        .hub_rest()
        .read_events_from("earliest", Some("right"), usize::from(EACH))
        .await;
    assert!(right.iter().all(|e| e["deviceId"] == "right"));
    drop(devices);
    for n in [n1, n2, n3] {
        n.stop().await;
    }
    db.drop().await;
}

/// A webhook receiver: its URL and what it was sent.
async fn hook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let sink = std::sync::Arc::clone(&sink);
            async move {
                sink.lock()
                    .unwrap()
                    .extend(body.0.as_array().cloned().unwrap_or_default());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

/// A second node under a name that is live on the bus is refused with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_node_id_cannot_be_taken_twice() {
    let Some((db, nats)) = services("nodeid").await else {
        return;
    };
    let first = node(&db, &nats, 1).await;
    // The first announcement is written when the node starts serving the bus.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut config = first.config.clone();
    config.data_dir = tempfile::tempdir().unwrap().keep().join("data");
    config.bind = std::net::IpAddr::from([127, 0, 0, 3]);
    let err = muster_server::start(config).await.unwrap_err().to_string();
    assert!(err.contains("node id 'n1' is in use"), "{err}");
    assert!(err.contains("--node-id"), "{err}");
    first.stop().await;
    db.drop().await;
}
