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

/// The lab's CA, verified, and the `simulated-devices` group, made through `node`; returns the
/// certificate directory.
fn lab_setup(n2: &Server) -> std::path::PathBuf {
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
    certs
}

/// The test database and the cluster's NATS URL, or `None` (with a line saying how to switch
/// the test on) when PostgreSQL or NATS is not configured.
fn services(label: &str) -> Option<(tokio::runtime::Runtime, TestDatabase, String)> {
    let Ok(bus) = std::env::var("MUSTER_TEST_NATS") else {
        eprintln!("skipped: set MUSTER_TEST_NATS=nats://127.0.0.1:4222 to run the cluster test");
        return None;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDatabase::create(label))?;
    Some((runtime, db, bus))
}

/// `muster serve` as node `id` of the cluster on `db` and `bus`, bound to 127.0.0.`octet`.
fn cluster_node(db: &TestDatabase, bus: &str, octet: u8, id: &str) -> Server {
    Server::start_with(&[
        "--bind",
        &format!("127.0.0.{octet}"),
        "--store",
        &db.url,
        "--bus",
        bus,
        "--node-id",
        id,
    ])
}

/// Wait until node `id` reports `devices` connections (seen through `observer`), while the
/// fleet runs.
fn wait_for_fleet(
    observer: &Server,
    bus: &str,
    id: &str,
    devices: usize,
    fleet: &mut std::process::Child,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while connections_of(&status(observer, bus), id) != Some(devices as u64) {
        assert!(
            Instant::now() < deadline && fleet.try_wait().unwrap().is_none(),
            "the fleet never connected to {id}: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_killed_node_s_devices_get_in_through_another_node() {
    let Some((runtime, db, bus)) = services("kill") else {
        return;
    };
    let mut n1 = cluster_node(&db, &bus, 2, "n1");
    let n2 = cluster_node(&db, &bus, 3, "n2");
    assert_eq!(
        n1.info["idScope"], n2.info["idScope"],
        "one cluster, one ID scope"
    );
    let relay = Relay::start(mqtt_addr(&n1));

    // The lab's set-up, through node 2's management API (the store is shared).
    let certs = lab_setup(&n2);
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

/// A soak fleet's settings: QoS 1 telemetry every 50 ms per device for 12 s, with a ledger.
struct Load<'a> {
    devices: usize,
    port: u16,
    certs: &'a std::path::Path,
    trust: &'a std::path::Path,
    scope: &'a str,
    service: &'a Server,
    ledger: &'a std::path::Path,
    run: &'a str,
}

/// Start the fleet; returns it and a reader of its stderr.
fn soak_fleet(load: &Load<'_>) -> (std::process::Child, impl Fn() -> String + use<>) {
    let err = load
        .service
        .dir
        .path()
        .join(format!("fleet-{}.err", load.run));
    let fleet = muster()
        .args([
            "device",
            "fleet",
            "--devices",
            &load.devices.to_string(),
            "--prefix",
            "load-",
        ])
        .arg("--ca-cert")
        .arg(load.certs.join("root-ca.pem"))
        .arg("--ca-key")
        .arg(load.certs.join("root-ca.key.pem"))
        .arg("--trust")
        .arg(load.trust)
        .args([
            "--provisioning-host",
            &format!("localhost:{}", load.port),
            "--id-scope",
            load.scope,
            "--hub-host",
            "localhost",
            "--hub-port",
            &load.port.to_string(),
            "--duration",
            "12s",
            "--telemetry-interval",
            "50ms",
            "--qos",
            "1",
            "--soak",
            "--service-ops-per-sec",
            "0",
            "--churn-per-minute",
            "0",
            "--soak-run",
            load.run,
            "--json",
        ])
        .arg("--soak-ledger")
        .arg(load.ledger)
        .arg("--data-dir")
        .arg(load.service.data())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    (fleet, move || {
        std::fs::read_to_string(&err).unwrap_or_default()
    })
}

/// The messages the ledger says were acknowledged, and how many of them the event log read
/// through `server` lacks.
fn check_ledger(
    server: &Server,
    ledger: &std::path::Path,
    run: &str,
    devices: usize,
) -> (usize, usize) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut expected: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in std::fs::read_to_string(ledger).unwrap().lines() {
        let d: Value = serde_json::from_str(line).unwrap();
        let skip: BTreeSet<u64> = d["unacknowledged"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let sent = d["sent"].as_u64().unwrap();
        expected.insert(
            d["deviceId"].as_str().unwrap().to_owned(),
            (0..sent).filter(|s| !skip.contains(s)).collect(),
        );
    }
    assert_eq!(expected.len(), devices, "a ledger line per device");
    let acknowledged: usize = expected.values().map(BTreeSet::len).sum();
    assert!(
        acknowledged > devices * 20,
        "the load ran: {acknowledged} acknowledged"
    );
    let events = server.cli(
        "hub",
        &[
            "monitor-events",
            "--from",
            "earliest",
            "--timeout",
            "3",
            "--output",
            "json",
        ],
    );
    let mut found: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in events.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e["properties"]["soakRun"] != run {
            continue;
        }
        let seq = e["properties"]["soakSeq"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        found
            .entry(e["deviceId"].as_str().unwrap().to_owned())
            .or_default()
            .insert(seq);
    }
    let missing = expected
        .iter()
        .map(|(device, seqs)| {
            let got = found.get(device).cloned().unwrap_or_default();
            seqs.difference(&got).count()
        })
        .sum();
    (acknowledged, missing)
}

/// A nats-server of the test's own (JetStream in a temporary directory), so it can be killed.
struct PrivateNats {
    child: std::process::Child,
    port: u16,
    store: tempfile::TempDir,
}

impl PrivateNats {
    fn spawn(port: u16, store: &std::path::Path) -> std::process::Child {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, store.path());
        Self { child, port, store }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then (after `down`) start again on the same port and store.
    fn kill_and_restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(self.port, self.store.path());
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NATS is killed with SIGKILL under QoS 1 load and started again on the same store: messages
/// are not acknowledged while it is away (the devices keep and resend them), nothing that was
/// acknowledged is lost, and the node recovers on its own.
#[test]
fn nats_killed_and_restarted_under_load_loses_no_acknowledged_message() {
    const DEVICES: usize = 10;
    // The shared NATS only says that nats-server is installed here; this test runs its own.
    let Some((runtime, db, _)) = services("natsdown") else {
        return;
    };
    let mut nats = PrivateNats::start();
    let url = nats.url();
    let n1 = cluster_node(&db, &url, 7, "solo");
    let certs = lab_setup(&n1);
    let ledger = n1.dir.path().join("ledger.jsonl");
    let run = format!("natsdown-{}", std::process::id());
    let relay = Relay::start(mqtt_addr(&n1));
    let (mut fleet, fleet_log) = soak_fleet(&Load {
        devices: DEVICES,
        port: relay.addr.port(),
        certs: &certs,
        trust: &n1.data().join("tls/ca.pem"),
        scope: n1.info["idScope"].as_str().unwrap(),
        service: &n1,
        ledger: &ledger,
        run: &run,
    });
    wait_for_fleet(&n1, &url, "solo", DEVICES, &mut fleet, &fleet_log);
    std::thread::sleep(Duration::from_secs(2));
    nats.kill_and_restart(Duration::from_secs(2));
    let _ = fleet.wait().unwrap();
    let (acknowledged, missing) = check_ledger(&n1, &ledger, &run, DEVICES);
    eprintln!(
        "{acknowledged} messages acknowledged across a NATS kill and restart, {missing} missing"
    );
    assert_eq!(missing, 0, "every acknowledged message is in the event log");
    drop(n1);
    drop(nats);
    runtime.block_on(db.drop());
}

/// Under QoS 1 load through the relay, node 1 is killed with SIGKILL: every message a device
/// had acknowledged is in the cluster's event log (JetStream), read back through node 2, and
/// the devices carry on through node 2.
#[test]
fn no_acknowledged_message_is_lost_when_a_node_is_killed_under_load() {
    const DEVICES: usize = 20;
    let Some((runtime, db, bus)) = services("killload") else {
        return;
    };
    let mut n1 = cluster_node(&db, &bus, 5, "k1");
    let n2 = cluster_node(&db, &bus, 6, "k2");
    let relay = Relay::start(mqtt_addr(&n1));
    let certs = lab_setup(&n2);
    let ledger = n2.dir.path().join("ledger.jsonl");
    let run = format!("kill-{}", std::process::id());
    let (mut fleet, fleet_log) = soak_fleet(&Load {
        devices: DEVICES,
        port: relay.addr.port(),
        certs: &certs,
        trust: &n1.data().join("tls/ca.pem"),
        scope: n1.info["idScope"].as_str().unwrap(),
        service: &n2,
        ledger: &ledger,
        run: &run,
    });

    // Load on node 1 for a few seconds, then SIGKILL; the load balancer now leads to node 2.
    wait_for_fleet(&n2, &bus, "k1", DEVICES, &mut fleet, &fleet_log);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        fleet.try_wait().unwrap().is_none(),
        "the load still runs when node 1 is killed: {}",
        fleet_log()
    );
    n1.child.kill().unwrap();
    n1.child.wait().unwrap();
    relay.point_at(mqtt_addr(&n2));
    let _ = fleet.wait().unwrap();
    status_until(&n2, &bus, "node 2 took the fleet", |s| {
        connections_of(s, "k2").is_some()
    });

    // Every acknowledged message of the run is in the event log, read through node 2.
    let (acknowledged, missing) = check_ledger(&n2, &ledger, &run, DEVICES);
    eprintln!(
        "{acknowledged} messages acknowledged across the kill, {missing} missing from the event log"
    );
    assert_eq!(missing, 0, "every acknowledged message is in the event log");

    drop(n2);
    drop(n1);
    runtime.block_on(db.drop());
}
