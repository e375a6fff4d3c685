//! Device-to-cloud QoS 1 messages per second, acknowledged only once durable in the event log.
//!
//! ```text
//! cargo run --release -p muster-server --example telemetry_storm -- [DEVICES] [MESSAGES_PER_DEVICE] [WINDOW]
//! ```
//! Starts a server in-process, creates DEVICES SAS devices through the registry REST API,
//! connects them all over TLS, then each publishes MESSAGES_PER_DEVICE telemetry messages with
//! up to WINDOW unacknowledged at a time, and reports acknowledged messages per second and the
//! publish → PUBACK latency.

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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Mqtt, TestServer};
use muster_mqtt::{Packet, Publish, QoS};
use serde_json::json;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let per_device: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let window: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);

    let server = TestServer::start().await;
    let cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .to_owned();
    let rest = common::Rest::new(&cs, &server.ca_pem(), server.running.https_addr);
    let mut clients = Vec::with_capacity(devices);
    for i in 0..devices {
        let id = format!("tele-{i:05}");
        let token = rest.sas_device(&id).await;
        let dev = Mqtt::connect(
            server.running.mqtt_addr,
            &server.ca_pem(),
            &id,
            &format!("localhost/{id}/?api-version=2021-04-12"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(dev.connack.code, muster_mqtt::ConnectReturnCode::Accepted);
        clients.push((id, dev));
    }
    let payload = br#"{"temperature":25.4,"humidity":70.2,"pressure":1015.3,"latitude":40.1,"longitude":-98.2}"#.to_vec();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (id, mut dev) in clients {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let topic = format!("devices/{id}/messages/events/temperatureAlert=false");
            let mut sent_at: HashMap<u16, Instant> = HashMap::new();
            let mut latencies = Vec::with_capacity(per_device);
            let mut next = 0usize;
            while latencies.len() < per_device {
                while next < per_device && sent_at.len() < window {
                    let pid = u16::try_from(next % 60_000 + 1).unwrap();
                    dev.send(&Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: topic.clone(),
                        packet_id: Some(pid),
                        payload: payload.clone().into(),
                    }))
                    .await;
                    sent_at.insert(pid, Instant::now());
                    next += 1;
                }
                match dev.recv().await {
                    Some(Packet::PubAck(pid)) => {
                        if let Some(t) = sent_at.remove(&pid) {
                            latencies.push(t.elapsed());
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a percentile index"
        )]
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all[i].as_secs_f64() * 1000.0
    };
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{}",
        json!({
            "devices": devices,
            "messages": all.len(),
            "window": window,
            "messagesPerSec": (rate * 10.0).round() / 10.0,
            "publishLatencyMs": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "seconds": elapsed.as_secs_f64(),
        })
    );
    let _ = Duration::ZERO;
    server.stop().await;
}
