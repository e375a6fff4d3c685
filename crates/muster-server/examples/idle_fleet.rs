//! Memory per idle connected device and desired-patch → device notification latency, against a
//! real `muster serve` process (so the server's memory is measured alone).
//!
//! ```text
//! cargo build --release -p muster
//! cargo run --release -p muster-server --example idle_fleet -- [DEVICES] [PATCHES] [MUSTER_BIN]
//! ```
//! Starts `MUSTER_BIN serve` (default `target/release/muster`) on ephemeral ports in a temporary
//! data directory, creates DEVICES SAS devices over REST, reads the server's resident memory,
//! connects every device over TLS (each subscribed to its desired-property patches, as the SDKs
//! do), reads it again, then PATCHes the desired properties of PATCHES devices one after another
//! and times each from the REST call to the device receiving the notification. Prints one JSON
//! line.

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

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Mqtt;
use serde_json::{Value, json};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let patches: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    let bin = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "target/release/muster".into());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(&bin)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--portal-port",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (build it with cargo build --release -p muster)")
        });
    let endpoint = data.join("endpoint.json");
    let started = Instant::now();
    while !endpoint.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ep: Value = serde_json::from_slice(&std::fs::read(&endpoint).unwrap()).unwrap();
    let info = Command::new(&bin)
        .args(["info", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let https: SocketAddr = format!("127.0.0.1:{}", ep["httpsPort"]).parse().unwrap();
    let mqtt: SocketAddr = format!("127.0.0.1:{}", ep["mqttPort"]).parse().unwrap();
    let ca = std::fs::read(info["trustBundle"].as_str().unwrap()).unwrap();
    let rest = common::Rest::new(info["hubConnectionString"].as_str().unwrap(), &ca, https);

    let mut tokens = Vec::with_capacity(devices);
    for i in 0..devices {
        let id = format!("idle-{i:05}");
        let token = rest.sas_device(&id).await;
        tokens.push((id, token));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(child.id());
    let mut clients = Vec::with_capacity(devices);
    for (id, token) in &tokens {
        let mut dev = Mqtt::connect(
            mqtt,
            &ca,
            id,
            &format!("localhost/{id}/?api-version=2021-04-12"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(dev.connack.code, muster_mqtt::ConnectReturnCode::Accepted);
        dev.subscribe("$iothub/twin/PATCH/properties/desired/#")
            .await;
        clients.push(dev);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(child.id());

    let mut latencies = Vec::with_capacity(patches);
    for n in 0..patches {
        let i = (n * 7919) % devices;
        let path = format!("/twins/{}", tokens[i].0);
        let dev = &mut clients[i];
        let t = Instant::now();
        let (patched, notified) = tokio::join!(
            rest.send(
                reqwest::Method::PATCH,
                &path,
                Some(json!({"properties": {"desired": {"telemetryDelay": n}}})),
                &[],
            ),
            async {
                let p = dev.next_publish().await;
                let at = t.elapsed();
                assert!(
                    p.topic
                        .starts_with("$iothub/twin/PATCH/properties/desired/")
                );
                at
            }
        );
        assert_eq!(patched.0, 200);
        latencies.push(notified);
    }
    latencies.sort();
    let pct = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a percentile index"
        )]
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        (latencies[i].as_secs_f64() * 1_000_000.0).round() / 1000.0
    };
    #[allow(clippy::cast_precision_loss, reason = "a figure for display")]
    let per_device = (after.saturating_sub(before)) as f64 / devices as f64;
    println!(
        "{}",
        json!({
            "devices": devices,
            "rssBeforeKiB": before,
            "rssAfterKiB": after,
            "kibPerIdleDevice": (per_device * 10.0).round() / 10.0,
            "patches": patches,
            "desiredPatchToDeviceMs": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        })
    );
    drop(clients);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
