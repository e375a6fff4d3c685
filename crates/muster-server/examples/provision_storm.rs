//! Registrations per second over real TLS on loopback, side by side with the bare mutual-TLS
//! handshake rate measured in the same run.
//!
//! ```text
//! cargo run --release -p muster-server --example provision_storm -- [DEVICES] [CONCURRENCY]
//! ```
//! Starts a server in-process (temporary data dir, ephemeral ports), uploads and verifies a CA,
//! creates an X.509 enrollment group, mints one P-256 leaf per device (before the clock starts),
//! then registers every device concurrently: TLS with client certificate → CONNECT →
//! SUBSCRIBE → register → poll → DISCONNECT. Then it runs the same number of bare TLS
//! handshakes (client certificate included, no MQTT) against the same listener's TLS
//! configuration for the ratio.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "a benchmark harness fails loudly and prints its figures"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Mqtt, ServerFixture as _, TestServer, dps_username};
use muster_test_support::{Kind, Spec, TestCa};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index from a percentile"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let concurrency: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);

    let server = TestServer::start().await;
    let root = TestCa::root("storm root");
    let inter = root.intermediate("storm intermediate");
    let rest = server.rest();
    rest.upload_verified_ca("root-ca", &root.cert.pem, &root.cert.key_pem)
        .await;
    rest.ok(
        reqwest::Method::PUT,
        "/enrollmentGroups/storm",
        Some(json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
                    "initialTwin": {"properties": {"desired": {"telemetryDelay": "1"}}}})),
        &[],
    )
    .await;
    let identities: Vec<(String, String, String)> = (0..devices)
        .map(|i| {
            let id = format!("storm-{i:06}");
            let leaf = inter.issue(&Spec::new(&id, Kind::Client));
            (id, format!("{}{}", leaf.pem, inter.cert.pem), leaf.key_pem)
        })
        .collect();
    let identities = Arc::new(identities);
    let scope = server.id_scope();
    let ca = Arc::new(server.ca_pem());
    let addr = server.running.mqtt_addr;

    // Phase 1: registrations.
    let permits = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(devices);
    for i in 0..devices {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let (identities, scope, ca) = (Arc::clone(&identities), scope.clone(), Arc::clone(&ca));
        tasks.push(tokio::spawn(async move {
            let (id, chain, key) = &identities[i];
            let t = Instant::now();
            let mut dev = Mqtt::connect(
                addr,
                &ca,
                id,
                &dps_username(&scope, id),
                None,
                Some((chain, key)),
            )
            .await;
            let (_, _, polled) = dev.dps_register(id, Value::Null).await;
            let ok = polled.is_some_and(|(_, s)| s["status"] == "assigned");
            dev.send(&muster_mqtt::Packet::Disconnect).await;
            drop(permit);
            (ok, t.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(devices);
    let mut failed = 0;
    for t in tasks {
        let (ok, d) = t.await.unwrap();
        if !ok {
            failed += 1;
        }
        latencies.push(d);
    }
    let reg_elapsed = start.elapsed();
    latencies.sort();

    // Phase 2: bare mutual-TLS handshakes against the same server (no MQTT, no DPS work).
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(devices);
    for i in 0..devices {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let (identities, ca) = (Arc::clone(&identities), Arc::clone(&ca));
        tasks.push(tokio::spawn(async move {
            let (_, chain, key) = &identities[i];
            let s = Mqtt::tls(addr, &ca, Some((chain, key))).await;
            drop(s);
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let hs_elapsed = start.elapsed();

    #[allow(clippy::cast_precision_loss, reason = "rates for display")]
    let (reg_rate, hs_rate) = (
        devices as f64 / reg_elapsed.as_secs_f64(),
        devices as f64 / hs_elapsed.as_secs_f64(),
    );
    println!(
        "{}",
        json!({
            "devices": devices,
            "concurrency": concurrency,
            "failed": failed,
            "registrationsPerSec": (reg_rate * 10.0).round() / 10.0,
            "registrationLatencyMs": {"p50": percentile(&latencies, 0.5), "p90": percentile(&latencies, 0.9), "p99": percentile(&latencies, 0.99), "max": percentile(&latencies, 1.0)},
            "tlsHandshakesPerSec": (hs_rate * 10.0).round() / 10.0,
            "efficiency": ((reg_rate / hs_rate) * 1000.0).round() / 1000.0,
        })
    );
    server.stop().await;
}
