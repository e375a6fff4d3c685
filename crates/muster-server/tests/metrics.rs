//! `GET /metrics`: the counters move when devices connect, register, send and are called, on
//! the plain `metrics_bind` listener and on the HTTPS port for a policy's token. One test in
//! this binary: the metrics are process-wide.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use common::{ServerFixture as _, TestServer, dps_username};
use muster_mqtt::{ConnectReturnCode, Packet};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

/// The value of one series (`name{labels}` exactly as encoded), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.split(' ').next().unwrap().parse().unwrap())
}

async fn scrape(url: &str) -> String {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn counters_move_when_devices_connect_send_and_are_called() {
    let server = TestServer::start_with(|c| {
        c.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let url = format!(
        "http://{}/metrics",
        server.running.metrics_addr.expect("metrics listener")
    );
    let before = scrape(&url).await;
    let telemetry = "muster_telemetry_messages_total";
    let batches = "muster_event_log_batch_size_count";
    let mqtt_open = r#"muster_connections{transport="tls",protocol="mqtt"}"#;
    let mqtt_opened = r#"muster_connections_opened_total{transport="tls",protocol="mqtt"}"#;
    let not_tls = r#"muster_tls_handshake_failures_total{listener="mqtt",reason="protocol_error"}"#;
    let refused = r#"muster_dps_registrations_total{outcome="unauthorized"}"#;
    let offline = r#"muster_method_call_seconds_count{outcome="offline"}"#;

    // A device connects and sends three messages, each acknowledged.
    let rest = server.hub_rest();
    let token = rest.sas_device("m1").await;
    let mut dev = server
        .mqtt(
            "m1",
            "localhost/m1/?api-version=2021-04-12",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
    for id in 1..=3 {
        dev.publish("devices/m1/messages/events/", b"{\"t\":1}", id)
            .await;
        assert!(matches!(dev.recv().await, Some(Packet::PubAck(_))));
    }
    // Not TLS at all on the MQTT port.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", server.mqtt_port()))
        .await
        .unwrap();
    raw.write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0])
        .await
        .unwrap();
    // A registration nobody enrolled.
    let mut stranger = server
        .mqtt(
            "nobody",
            &dps_username(&server.id_scope(), "nobody"),
            None,
            None,
        )
        .await;
    let (_, _, outcome) = stranger.dps_register("nobody", Value::Null).await;
    assert!(outcome.is_none_or(|(_, v)| v["status"] != "assigned"));
    // A message waits for a device that is not connected, and a method call finds it offline.
    rest.sas_device("m2").await;
    assert_eq!(rest.send_c2d("m2", b"hello", &[]).await, 204);
    let (status, _, _) = rest
        .send(
            Method::POST,
            "/twins/m2/methods",
            Some(json!({"methodName": "reboot", "responseTimeoutInSeconds": 5, "payload": {}})),
            &[],
        )
        .await;
    assert_eq!(status, 404);

    // The handshake failure is counted when the server gives up on the connection.
    let mut after = scrape(&url).await;
    for _ in 0..50 {
        if value(&after, not_tls) > value(&before, not_tls) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = scrape(&url).await;
    }
    assert!(
        value(&after, telemetry) >= value(&before, telemetry) + 3.0,
        "{after}"
    );
    assert!(value(&after, batches) > value(&before, batches), "{after}");
    assert!(value(&after, mqtt_open) >= 1.0, "{after}");
    assert!(
        value(&after, mqtt_opened) >= value(&before, mqtt_opened) + 2.0,
        "{after}"
    );
    assert!(value(&after, not_tls) > value(&before, not_tls), "{after}");
    assert!(value(&after, refused) > value(&before, refused), "{after}");
    assert!(value(&after, offline) > value(&before, offline), "{after}");
    assert!(value(&after, "muster_c2d_queue_depth") >= 1.0, "{after}");
    assert!(value(&after, "muster_devices_connected") >= 1.0, "{after}");

    // When the device leaves, its connection is no longer counted as open.
    let open = value(&after, mqtt_open);
    drop(dev);
    drop(stranger);
    let mut now = scrape(&url).await;
    for _ in 0..50 {
        if value(&now, mqtt_open) < open {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        now = scrape(&url).await;
    }
    assert!(value(&now, mqtt_open) < open, "{now}");

    // On the HTTPS port: a policy's token, or 401.
    let (status, _, _) = rest.send(Method::GET, "/metrics", None, &[]).await;
    assert_eq!(status, 200);
    let (status, _, _) = server
        .policy_rest("registryRead")
        .send(Method::GET, "/metrics", None, &[])
        .await;
    assert_eq!(status, 200);
    let anonymous = rest
        .client
        .get(format!("{}/metrics", rest.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // The API reference needs no sign-in.
    let doc: Value = rest
        .client
        .get(format!("{}/openapi.json", rest.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/metrics"]["get"].is_object());
    // Only /metrics is served on the plain listener.
    let other = reqwest::get(url.replace("/metrics", "/devices"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}
