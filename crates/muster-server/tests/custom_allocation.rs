//! Custom allocation: a real webhook (HTTP on loopback) picks the hub, supplies the initial
//! twin and a payload for the device; a failing webhook ends the registration as `failed`
//! with error code 400209.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use common::{ServerFixture as _, TestServer, dps_username};
use muster_server::config::Config;
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::{Value, json};

async fn webhook(seen: Arc<Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/allocate",
        post(move |Json(req): Json<Value>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(req.clone());
                let id = req["deviceRuntimeContext"]["registrationId"].as_str().unwrap_or_default().to_owned();
                if id.starts_with("bad") {
                    return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
                }
                if id.starts_with("rogue") {
                    return (StatusCode::OK, Json(json!({"iotHubHostName": "elsewhere.example"})));
                }
                (
                    StatusCode::OK,
                    Json(json!({
                        "iotHubHostName": "hub2.local",
                        "initialTwin": {"tags": {"chosenBy": "webhook"}, "properties": {"desired": {"telemetryDelay": "5"}}},
                        "payload": {"greeting": "hello " }
                    })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/allocate")
}

#[tokio::test]
async fn a_webhook_chooses_the_hub_twin_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        mqtt_port: 0,
        amqp_port: 0,
        https_port: 0,
        portal_port: 0,
        hostnames: vec!["localhost".into(), "hub2.local".into()],
        ..Config::default()
    };
    let running = muster_server::start(config.clone()).await.unwrap();
    let server = TestServer {
        running,
        dir,
        config,
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = webhook(Arc::clone(&seen)).await;
    let pki = Pki::new();
    let rest = server.rest();
    rest.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/custom",
        Some(json!({
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
            "allocationPolicy": "custom",
            "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
            "iotHubs": ["localhost", "hub2.local"],
        })),
        &[],
    )
    .await;
    // Without a webhook URL, custom allocation is refused at creation.
    let (status, _, body) = rest
        .send(
            Method::PUT,
            "/enrollmentGroups/nohook",
            Some(json!({"attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom"})),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let scope = server.id_scope();
    let chain = format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem);
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&scope, "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (_, _, polled) = dev.dps_register("device-1", json!({"fw": "1.0"})).await;
    let (_, state) = polled.unwrap();
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["registrationState"]["assignedHub"], "hub2.local");
    assert_eq!(state["registrationState"]["payload"]["greeting"], "hello ");

    // The webhook saw Azure's request shape, without secrets.
    let req = seen.lock().unwrap()[0].clone();
    assert_eq!(req["deviceRuntimeContext"]["registrationId"], "device-1");
    assert_eq!(req["deviceRuntimeContext"]["payload"]["fw"], "1.0");
    assert!(req["deviceRuntimeContext"]["x509"]["certificateInfo"]["sha1Thumbprint"].is_string());
    assert_eq!(req["linkedHubs"], json!(["localhost", "hub2.local"]));
    assert_eq!(req["enrollmentGroup"]["enrollmentGroupId"], "custom");

    // A webhook that fails, or picks a hub it may not, ends the registration as failed (400209).
    for id in ["bad-device", "rogue-device"] {
        let leaf = pki.intermediate.leaf(id);
        let chain = format!("{}{}", leaf.pem, pki.intermediate.cert.pem);
        let mut dev = server
            .mqtt(
                id,
                &dps_username(&scope, id),
                None,
                Some((&chain, &leaf.key_pem)),
            )
            .await;
        let (topic, _, polled) = dev.dps_register(id, Value::Null).await;
        assert!(topic.starts_with("$dps/registrations/res/202/"), "{topic}");
        let (topic, state) = polled.unwrap();
        assert!(topic.starts_with("$dps/registrations/res/200/"), "{topic}");
        assert_eq!(state["status"], "failed", "{state}");
        assert_eq!(state["registrationState"]["errorCode"], 400_209);
    }
}
