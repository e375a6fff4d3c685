//! The official Event Hubs consumers (Python `azure-eventhub`, JS `@azure/event-hubs`),
//! unmodified, read the lab's telemetry from muster's built-in endpoint with the
//! `eventHubsConnectionString` of `muster info`: from the start, from a sequence number, from an
//! enqueued time, with partition properties, with two consumer groups at once and with an epoch
//! takeover; and bad input (a wrong entity, a wrong key, an unknown partition or consumer group,
//! a malformed filter) gets a clear error while the server keeps serving.
//!
//! Python always dials 5671, so each test has a loopback address of its own. `#[ignore]`d like
//! the other SDK tests: `bash tests/sdk/run.sh` installs the SDKs and runs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly"
)]

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use common::TestServer;
use muster_mqtt::Packet;
use reqwest::Method;
use serde_json::Value;

const DEVICE: &str = "lab-device";
const SENT: usize = 6;

fn python() -> String {
    std::env::var("MUSTER_SDK_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("MUSTER_SDK_PYTHON is not set (bash tests/sdk/run.sh sets it)")
}

fn node_harness() -> String {
    std::env::var("MUSTER_SDK_NODE")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("MUSTER_SDK_NODE is not set (bash tests/sdk/run.sh sets it)")
}

/// Which consumer a run uses.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    Node,
}

/// Run the consumer driver with `args`; its one JSON line.
async fn consume(sdk: Sdk, ca: &Path, cs: &str, args: &[&str]) -> Value {
    let mut command = match sdk {
        Sdk::Python => {
            let mut c = Command::new(python());
            c.arg(format!(
                "{}/../../tests/sdk/eventhub_consume.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args(["--trust", &ca.display().to_string()]);
            c
        }
        Sdk::Node => {
            let mut c = Command::new("node");
            c.arg(format!("{}/eventhub_consume.js", node_harness()))
                .env("NODE_EXTRA_CA_CERTS", ca);
            c
        }
    };
    command.args(["--connection-string", cs]).args(args);
    let out = tokio::task::spawn_blocking(move || command.output().expect("the SDK runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "{sdk:?} consumer output: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A server on `127.0.0.{octet}` (AMQP on 5671) and the lab device's telemetry sent over
/// MQTT: `SENT` readings, `temperatureAlert` alternating, with message ids and a JSON content
/// type. Returns the server and its Event Hubs connection string (host = the address).
async fn lab(octet: u8) -> (TestServer, String) {
    let server = TestServer::start_with(|c| {
        c.bind = IpAddr::from([127, 0, 0, octet]);
        c.amqp_port = 5671;
    })
    .await;
    let host = format!("127.0.0.{octet}");
    let cs = server.running.info["eventHubsConnectionString"]
        .as_str()
        .unwrap()
        .replace("sb://localhost/", &format!("sb://{host}/"));
    assert!(cs.ends_with(";EntityPath=localhost"), "{cs}");
    let token = server.hub_rest().sas_device(DEVICE).await;
    let mut device = common::Mqtt::connect(
        server.running.mqtt_addr,
        &server.ca_pem(),
        DEVICE,
        &format!("localhost/{DEVICE}/?api-version=2021-04-12"),
        Some(&token),
        None,
    )
    .await;
    for n in 0..SENT {
        let alert = n % 2 == 0;
        let topic = format!(
            "devices/{DEVICE}/messages/events/%24.mid=m-{n}&%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert={alert}"
        );
        let body = format!(r#"{{"temperature":{},"humidity":{}}}"#, 20 + n, 60 + n);
        let id = u16::try_from(n + 1).unwrap();
        device.publish(&topic, body.as_bytes(), id).await;
        assert!(matches!(device.recv().await, Some(Packet::PubAck(p)) if p == id));
        // Distinct enqueued milliseconds, for the enqueued-time start position.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (server, cs)
}

fn partition() -> String {
    muster_store::events::partition_of(DEVICE, 4).to_string()
}

fn events(v: &Value) -> &Vec<Value> {
    assert_eq!(v["ok"], true, "{v}");
    v["events"].as_array().unwrap()
}

fn check_lab_events(sdk: Sdk, got: &[Value]) {
    assert_eq!(got.len(), SENT, "{sdk:?}: {got:?}");
    for (n, e) in got.iter().enumerate() {
        assert_eq!(e["partition"], partition().as_str(), "{sdk:?}");
        assert_eq!(e["sequenceNumber"], n, "{sdk:?}: in order, numbered from 0");
        assert_eq!(e["messageId"], format!("m-{n}"), "{sdk:?}");
        assert_eq!(e["contentType"], "application/json", "{sdk:?}");
        let body: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["temperature"], 20 + n, "{sdk:?}: the body unchanged");
        assert_eq!(
            e["properties"]["temperatureAlert"],
            if n % 2 == 0 { "true" } else { "false" },
            "{sdk:?}"
        );
        let system = &e["systemProperties"];
        assert_eq!(system["iothub-connection-device-id"], DEVICE, "{sdk:?}");
        assert_eq!(system["iothub-message-source"], "Telemetry", "{sdk:?}");
        assert!(
            system["iothub-enqueuedtime"].as_i64().unwrap() > 0,
            "{sdk:?}"
        );
        assert!(
            system["iothub-connection-auth-method"]
                .as_str()
                .unwrap()
                .contains(r#""type":"sas""#),
            "{sdk:?}: {system}"
        );
        assert!(
            system["iothub-connection-auth-generation-id"].is_string(),
            "{sdk:?}"
        );
    }
}

/// What both consumers must do with the lab's telemetry.
async fn consumers_read_the_labs_telemetry(sdk: Sdk, octet: u8) {
    let (server, cs) = lab(octet).await;
    let ca = server.ca_path();
    let p = partition();

    // Hub and partition properties.
    let props = consume(sdk, &ca, &cs, &["--properties"]).await;
    assert_eq!(props["ok"], true, "{props}");
    let parts = &props["properties"]["partitions"];
    let (last, empty) = match sdk {
        Sdk::Python => ("last_enqueued_sequence_number", "is_empty"),
        Sdk::Node => ("lastEnqueuedSequenceNumber", "isEmpty"),
    };
    for id in ["0", "1", "2", "3"] {
        if id == p {
            assert_eq!(parts[id][last], SENT - 1, "{sdk:?}: {props}");
            assert_eq!(parts[id][empty], false, "{sdk:?}");
        } else {
            assert_eq!(parts[id][last], -1, "{sdk:?}: {props}");
            assert_eq!(parts[id][empty], true, "{sdk:?}");
        }
    }

    // From the start, across every partition.
    let all = consume(sdk, &ca, &cs, &["--count", "6", "--start", "earliest"]).await;
    let all = events(&all).clone();
    check_lab_events(sdk, &all);

    // From a sequence number: after 2, and inclusive of 2.
    let after = consume(
        sdk,
        &ca,
        &cs,
        &["--partition", &p, "--start", "seq:2", "--count", "3"],
    )
    .await;
    assert_eq!(events(&after)[0]["sequenceNumber"], 3, "{sdk:?}: {after}");
    let at = consume(
        sdk,
        &ca,
        &cs,
        &[
            "--partition",
            &p,
            "--start",
            "seq:2",
            "--inclusive",
            "--count",
            "4",
        ],
    )
    .await;
    assert_eq!(events(&at)[0]["sequenceNumber"], 2, "{sdk:?}: {at}");

    // From an enqueued time: events after the fourth one's.
    let fourth = all[3]["enqueuedTime"].as_i64().unwrap();
    let start = format!("time:{fourth}");
    let later = consume(
        sdk,
        &ca,
        &cs,
        &["--partition", &p, "--start", &start, "--count", "2"],
    )
    .await;
    assert_eq!(events(&later)[0]["sequenceNumber"], 4, "{sdk:?}: {later}");

    // Two consumer groups at once: each reads everything.
    let rest = server.hub_rest();
    let created = rest
        .send(
            Method::PUT,
            "/eventHubEndpoints/events/consumerGroups/analytics",
            None,
            &[],
        )
        .await;
    assert_eq!(created.0, 201, "{created:?}");
    let (a, b) = tokio::join!(
        consume(
            sdk,
            &ca,
            &cs,
            &["--count", "6", "--consumer-group", "$Default"]
        ),
        consume(
            sdk,
            &ca,
            &cs,
            &["--count", "6", "--consumer-group", "analytics"]
        ),
    );
    assert_eq!(events(&a).len(), SENT, "{sdk:?}");
    assert_eq!(events(&b).len(), SENT, "{sdk:?}");

    // An epoch receiver takes the partition over; the first one is told why.
    let first_args = [
        "--partition",
        &p,
        "--owner-level",
        "1",
        "--count",
        "6",
        "--hold",
        "8",
    ];
    let first = consume(sdk, &ca, &cs, &first_args);
    let second = async {
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        consume(
            sdk,
            &ca,
            &cs,
            &["--partition", &p, "--owner-level", "2", "--count", "6"],
        )
        .await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(events(&second).len(), SENT, "{sdk:?}");
    let errors = first["errors"].to_string();
    assert!(
        errors.contains("epoch") || errors.contains("stolen"),
        "{sdk:?}: the first receiver learns it was taken over: {first}"
    );

    // A wrong key is refused as unauthorized.
    let bad_key = regex_key(&cs);
    let refused = consume(sdk, &ca, &bad_key, &["--properties"]).await;
    assert_eq!(refused["ok"], false, "{sdk:?}: {refused}");

    // Still serving.
    let again = consume(sdk, &ca, &cs, &["--count", "6"]).await;
    assert_eq!(events(&again).len(), SENT, "{sdk:?}");
    server.stop().await;
}

/// The connection string with another key.
fn regex_key(cs: &str) -> String {
    cs.split(';')
        .map(|part| {
            if part.starts_with("SharedAccessKey=") {
                "SharedAccessKey=bm90IHRoZSBrZXkgYXQgYWxsIG5vdCB0aGUga2V5IGF0IGFsbA=="
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python Event Hubs SDK (MUSTER_SDK_PYTHON) and port 5671; run with: bash tests/sdk/run.sh"]
async fn python_consumer_reads_the_labs_telemetry() {
    consumers_read_the_labs_telemetry(Sdk::Python, 17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official JS Event Hubs SDK (MUSTER_SDK_NODE) and port 5671; run with: bash tests/sdk/run.sh"]
async fn node_consumer_reads_the_labs_telemetry() {
    consumers_read_the_labs_telemetry(Sdk::Node, 18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official JS Event Hubs SDK (MUSTER_SDK_NODE) and port 5671; run with: bash tests/sdk/run.sh"]
async fn bad_input_gets_a_clear_amqp_error() {
    let (server, cs) = lab(19).await;
    let ca = server.ca_path();
    let refusal = |v: &Value| -> String {
        assert!(
            v["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "an error is reported: {v}"
        );
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let stop = ["--stop-on-error", "--timeout", "15"];
    let unknown_partition = consume(
        Sdk::Node,
        &ca,
        &cs,
        &[&["--partition", "9"][..], &stop].concat(),
    )
    .await;
    assert_eq!(refusal(&unknown_partition), "ArgumentOutOfRangeError");
    let unknown_group = consume(
        Sdk::Node,
        &ca,
        &cs,
        &[
            &["--partition", "0", "--consumer-group", "nobody"][..],
            &stop,
        ]
        .concat(),
    )
    .await;
    assert_eq!(refusal(&unknown_group), "MessagingEntityNotFoundError");
    // The JS client quotes an offset as given: a quote inside makes the filter malformed.
    let malformed = consume(
        Sdk::Node,
        &ca,
        &cs,
        &[&["--partition", "0", "--start", "offset:1'2"][..], &stop].concat(),
    )
    .await;
    assert_eq!(refusal(&malformed), "ArgumentError");
    let wrong_entity = cs.replace("EntityPath=localhost", "EntityPath=elsewhere");
    let unknown_entity = consume(Sdk::Python, &ca, &wrong_entity, &["--properties"]).await;
    assert_eq!(unknown_entity["ok"], false, "{unknown_entity}");
    let wrong_key = consume(Sdk::Python, &ca, &regex_key(&cs), &["--properties"]).await;
    assert_eq!(wrong_key["error"], "AuthenticationError", "{wrong_key}");
    // The server kept serving through all of it.
    let fine = consume(Sdk::Node, &ca, &cs, &["--count", "6"]).await;
    assert_eq!(events(&fine).len(), SENT);
    server.stop().await;
}
