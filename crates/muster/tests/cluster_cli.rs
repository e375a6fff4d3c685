//! Two `muster serve` processes as one hub (a shared PostgreSQL store, a NATS bus), each on its
//! own loopback address, behind a TCP relay standing in for a load balancer. The lab's device
//! provisions and streams through the relay to node 1; node 1 is killed with SIGKILL; the relay
//! now leads to node 2, the device gets in there with its own retry, and a desired change made
//! through node 2 reaches it. `muster cluster status` shows the nodes and their connections.
//!
//! Needs PostgreSQL and NATS with JetStream, as CI runs them:
//! `MUSTER_TEST_POSTGRES=postgres://postgres@127.0.0.1/postgres` and
//! `MUSTER_TEST_NATS=nats://127.0.0.1:4222`. Without both, the test says so and passes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Device, Server, muster};
use muster_store_pg::testing::TestDatabase;
use serde_json::Value;

/// A TCP relay on 127.0.0.1: each connection goes to the current target.
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
}

impl Relay {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let current = Arc::clone(&target);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let to = *current.lock().unwrap();
                std::thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(to) else {
                        return;
                    };
                    let (mut c_read, mut s_write) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (mut s_read, mut c_write) = (server, client);
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_read, &mut s_write);
                        let _ = s_write.shutdown(std::net::Shutdown::Both);
                    });
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                });
            }
        });
        Self { addr, target }
    }

    fn point_at(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }
}

fn mqtt_addr(server: &Server) -> SocketAddr {
    let endpoint: Value =
        serde_json::from_slice(&std::fs::read(server.data().join("endpoint.json")).unwrap())
            .unwrap();
    let host = endpoint["bind"].as_str().unwrap_or("127.0.0.1");
    let port = endpoint["mqttPort"].as_u64().unwrap();
    format!("{host}:{port}").parse().unwrap()
}

/// `muster cluster status` for the cluster of `server`, as JSON.
fn status(server: &Server, bus: &str) -> Value {
    let out = muster()
        .args([
            "cluster",
            "status",
            "--output",
            "json",
            "--bus",
            bus,
            "--data-dir",
        ])
        .arg(server.data())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Poll `muster cluster status` until `check` holds (heartbeats come every 5 s).
fn status_until(server: &Server, bus: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(server, bus);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: last status {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn connections_of(status: &Value, node: &str) -> Option<u64> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
        .and_then(|n| n["connections"].as_u64())
}

#[test]
fn a_killed_node_s_devices_get_in_through_another_node() {
    let Ok(bus) = std::env::var("MUSTER_TEST_NATS") else {
        eprintln!("skipped: set MUSTER_TEST_NATS=nats://127.0.0.1:4222 to run the cluster test");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = runtime.block_on(TestDatabase::create("kill")) else {
        return;
    };
    let node = |n: u8| {
        Server::start_with(&[
            "--bind",
            &format!("127.0.0.{}", n + 1),
            "--store",
            &db.url,
            "--bus",
            &bus,
            "--node-id",
            &format!("n{n}"),
        ])
    };
    let mut n1 = node(1);
    let n2 = node(2);
    assert_eq!(
        n1.info["idScope"], n2.info["idScope"],
        "one cluster, one ID scope"
    );
    let relay = Relay::start(mqtt_addr(&n1));

    // The lab's set-up, through node 2's management API (the store is shared).
    n2.certs_cli(&["create-root-and-intermediate"]);
    let certs = n2.certs();
    let root = certs.join("root-ca.pem").display().to_string();
    n2.cli(
        "dps",
        &[
            "certificate",
            "create",
            "--name",
            "lab-root",
            "--path",
            &root,
        ],
    );
    let code: Value = serde_json::from_str(&n2.cli(
        "dps",
        &[
            "certificate",
            "generate-verification-code",
            "--name",
            "lab-root",
            "--output",
            "json",
        ],
    ))
    .unwrap();
    n2.certs_cli(&[
        "create-verification-cert",
        code["properties"]["verificationCode"].as_str().unwrap(),
    ]);
    let proof = certs.join("verification-code.pem").display().to_string();
    n2.cli(
        "dps",
        &[
            "certificate",
            "verify",
            "--name",
            "lab-root",
            "--path",
            &proof,
        ],
    );
    n2.cli(
        "dps",
        &[
            "enrollment-group",
            "create",
            "--enrollment-id",
            "simulated-devices",
            "--ca-name",
            "lab-root",
            "--initial-twin-properties",
            r#"{"telemetryDelay":"1"}"#,
        ],
    );
    n2.certs_cli(&["create-device-cert", "cluster-device"]);

    // The device provisions and connects through the relay: node 1.
    let args: Vec<String> = [
        "device",
        "simulate",
        "--provisioning-host",
        &format!("localhost:{}", relay.addr.port()),
        "--id-scope",
        n1.info["idScope"].as_str().unwrap(),
        "--trust",
        n1.info["trustBundle"].as_str().unwrap(),
        "--cert",
        &certs.join("cluster-device.pem").display().to_string(),
        "--key",
        &certs.join("cluster-device.key.pem").display().to_string(),
        "--output",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut device = Device::spawn(&args, &[]);
    let long = Duration::from_secs(30);
    let (_, registered) = device.next("registered", long);
    assert_eq!(registered["status"], "assigned");
    device.next("telemetrySent", long);
    let s = status_until(&n2, &bus, "node 1 holds the device", |s| {
        connections_of(s, "n1") == Some(1) && connections_of(s, "n2") == Some(0)
    });
    assert_eq!(s["connections"], 1);

    // Node 1 dies; the load balancer now leads to node 2.
    n1.child.kill().unwrap();
    n1.child.wait().unwrap();
    let killed = Instant::now();
    relay.point_at(mqtt_addr(&n2));

    // The device's own retry brings it in through node 2, and it streams again.
    loop {
        let (at, _) = device.next("telemetrySent", long);
        if at > killed + Duration::from_millis(200) {
            break;
        }
    }
    eprintln!(
        "the device streams through node 2 {:.1} s after node 1 was killed",
        killed.elapsed().as_secs_f64()
    );
    status_until(&n2, &bus, "node 2 holds the device", |s| {
        connections_of(s, "n2") == Some(1)
    });

    // A desired change through node 2 reaches the device, which reports it.
    n2.cli(
        "hub",
        &[
            "device-twin",
            "update",
            "-d",
            "cluster-device",
            "--desired",
            r#"{"telemetryDelay":"2"}"#,
        ],
    );
    let (_, changed) = device.next("delayChanged", long);
    assert_eq!(changed["value"], "2");
    device.next("reported", long);

    drop(device);
    drop(n2);
    drop(n1);
    runtime.block_on(db.drop());
}
