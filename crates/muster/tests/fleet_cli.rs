//! `muster device fleet` and `muster bench handshake` as a user runs them, small enough for CI:
//! 50 X.509 devices minted from a CA provision, connect, send QoS 1 telemetry for 2 s and each
//! receive a desired-patch fan-out; a symmetric-key fleet provisions and connects; the bare
//! handshake bench reports a rate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::path::Path;

use common::{Server, muster};
use serde_json::Value;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The last stdout line as JSON.
fn summary(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn a_small_x509_fleet_provisions_connects_sends_and_receives_a_fanout() {
    let server = Server::start();
    let data = path(&server.data());
    let certs = server.dir.path().join("certs");
    server.run(&[
        "certs",
        "create-root-and-intermediate",
        "--dir",
        &path(&certs),
    ]);
    let root = path(&certs.join("root-ca.pem"));
    let root_key = path(&certs.join("root-ca.key.pem"));
    server.run(&[
        "dps",
        "--data-dir",
        &data,
        "certificate",
        "create",
        "--name",
        "fleet-root",
        "--path",
        &root,
        "--verified",
    ]);
    server.run(&[
        "dps",
        "--data-dir",
        &data,
        "enrollment-group",
        "create",
        "--enrollment-id",
        "fleet",
        "--ca-name",
        "fleet-root",
    ]);
    let host = format!("localhost:{}", server.info["mqttPort"]);
    let scope = server.info["idScope"].as_str().unwrap().to_owned();
    let trust = server.info["trustBundle"].as_str().unwrap().to_owned();
    let out = server.run(&[
        "device",
        "fleet",
        "--devices",
        "50",
        "--concurrency",
        "16",
        "--ca-cert",
        &root,
        "--ca-key",
        &root_key,
        "--provisioning-host",
        &host,
        "--id-scope",
        &scope,
        "--trust",
        &trust,
        "--duration",
        "2s",
        "--telemetry-interval",
        "0s",
        "--in-flight",
        "4",
        "--source-addresses",
        "2",
        "--fanout",
        "--data-dir",
        &data,
        "--json",
    ]);
    let r = summary(&out);
    assert_eq!(r["devices"], 50, "{r}");
    assert_eq!(r["provisioned"], 50, "{r}");
    assert_eq!(r["provisionFailed"], 0, "{r}");
    assert_eq!(r["connected"], 50, "{r}");
    assert_eq!(r["connectFailed"], 0, "{r}");
    assert!(r["provisionPerSec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["messagesAcked"].as_u64().unwrap() >= 50, "{r}");
    assert_eq!(r["publishFailed"], 0, "{r}");
    assert!(r["messagesPerSec"].as_f64().unwrap() > 0.0, "{r}");
    let p = &r["publishLatencyMs"];
    assert!(
        p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap(),
        "{r}"
    );
    assert!(
        p["p99"].as_f64().unwrap() <= p["max"].as_f64().unwrap(),
        "{r}"
    );
    assert_eq!(r["twinFanoutReceived"], 50, "{r}");
    assert!(r["twinFanoutMs"]["max"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    // Every device is in the hub, named PREFIX + index.
    let stats = server.run(&[
        "hub",
        "--data-dir",
        &data,
        "query",
        "-q",
        "SELECT COUNT() AS n FROM devices WHERE STARTSWITH(deviceId, 'fleet-device-')",
        "--output",
        "json",
    ]);
    assert!(
        stats.contains("\"n\": 50") || stats.contains("\"n\":50"),
        "{stats}"
    );

    // The bare handshake rate with the same CA.
    let out = server.run(&[
        "bench",
        "handshake",
        "--ca-cert",
        &root,
        "--ca-key",
        &root_key,
        "--seconds",
        "1",
        "--concurrency",
        "8",
        "--json",
    ]);
    let h = summary(&out);
    assert!(h["handshakesPerSec"].as_f64().unwrap() > 10.0, "{h}");
    assert_eq!(h["failures"], 0, "{h}");
}

#[test]
fn a_symmetric_key_fleet_provisions_and_a_refused_one_is_counted() {
    let server = Server::start();
    let data = path(&server.data());
    let group: Value = serde_json::from_str(&server.run(&[
        "dps",
        "--data-dir",
        &data,
        "enrollment-group",
        "create",
        "--enrollment-id",
        "keys",
        "--symmetric-key",
        "--output",
        "json",
    ]))
    .unwrap();
    let shown: Value = serde_json::from_str(&server.run(&[
        "dps",
        "--data-dir",
        &data,
        "enrollment-group",
        "show",
        "--enrollment-id",
        "keys",
        "--show-keys",
        "--output",
        "json",
    ]))
    .unwrap();
    let key = shown["attestation"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap_or_else(|| panic!("no key in {shown} (created {group})"))
        .to_owned();
    let host = format!("localhost:{}", server.info["mqttPort"]);
    let scope = server.info["idScope"].as_str().unwrap().to_owned();
    let trust = server.info["trustBundle"].as_str().unwrap().to_owned();
    let args = |prefix: &'static str| {
        vec![
            "device".to_owned(),
            "fleet".into(),
            "--devices".into(),
            "20".into(),
            "--symmetric-key-env".into(),
            "FLEET_GROUP_KEY".into(),
            "--prefix".into(),
            prefix.into(),
            "--provisioning-host".into(),
            host.clone(),
            "--id-scope".into(),
            scope.clone(),
            "--trust".into(),
            trust.clone(),
            "--duration".into(),
            "0s".into(),
            "--json".into(),
        ]
    };
    let out = muster()
        .args(args("sym-"))
        .env("FLEET_GROUP_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["provisioned"], 20, "{r}");
    assert_eq!(r["connected"], 20, "{r}");
    assert_eq!(r["messagesSent"], 0, "{r}");
    // A wrong group key: every registration is refused, and the summary says so.
    let out = muster()
        .args(args("wrong-"))
        .env(
            "FLEET_GROUP_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["provisioned"], 0, "{r}");
    assert_eq!(r["provisionFailed"], 20, "{r}");
    assert_eq!(r["errors"][0]["phase"], "provision", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("401002"),
        "{r}"
    );
    assert_eq!(r["errors"][0]["count"], 20, "{r}");
}
