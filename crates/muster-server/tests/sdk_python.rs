//! The official Azure IoT Python device SDK (`azure-iot-device`, unmodified) provisions against
//! muster: X.509 with root- and intermediate-signed certificates, a device made by OpenSSL in
//! the classic lab profile, a symmetric-key group, and a refusal.
//!
//! Needs the SDK: `.ci/run` installs it with `tests/sdk/setup.sh` and sets
//! `MUSTER_SDK_PYTHON` to the venv's python. The tests are `#[ignore]`d, so a plain `cargo test`
//! lists them as ignored; `bash tests/sdk/run.sh` installs the SDKs and runs them. The SDK only speaks to port 8883, so each test binds its own loopback address
//! on 8883 (root is needed to bind it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "a test fails loudly and explains skips"
)]

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use common::{ServerFixture as _, TestServer};
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::{Value, json};

/// Where the SDK is; these tests are `#[ignore]`d, so they run only when asked for, and then
/// the SDK must be there.
fn python() -> String {
    match std::env::var("MUSTER_SDK_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "MUSTER_SDK_PYTHON is not set: it must name a python with azure-iot-device (bash tests/sdk/setup.sh prints one; bash tests/sdk/run.sh sets it and runs these tests)"
        ),
    }
}

fn sdk_script(name: &str) -> String {
    format!("{}/../../tests/sdk/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Run a harness script; returns its one JSON line.
fn run(python: &str, script: &str, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(sdk_script(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "harness output: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn server_on(last_octet: u8) -> TestServer {
    TestServer::start_at(IpAddr::from([127, 0, 0, last_octet]), 8883).await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

async fn x509_group(server: &TestServer, ca_pem: &str, ca_key_pem: &str) {
    let rest = server.rest();
    rest.upload_verified_ca("root-ca", ca_pem, ca_key_pem).await;
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/simulated-devices",
        Some(json!({
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
            "initialTwin": {"properties": {"desired": {"telemetryDelay": "1"}}},
        })),
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_sdk_provisions_x509_devices() {
    let py = python();
    let server = server_on(11).await;
    let pki = Pki::new();
    x509_group(&server, &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    let dir = server.dir.path().to_path_buf();
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    let host = "127.0.0.11";
    let scope = server.id_scope();
    let cases = [
        (
            "device-1",
            format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
            pki.leaf.key_pem.clone(),
        ),
        (
            "device-direct",
            pki.leaf_from_root.pem.clone(),
            pki.leaf_from_root.key_pem.clone(),
        ),
    ];
    for (id, chain, key) in cases {
        let cert = write(&dir, &format!("{id}.pem"), &chain);
        let key = write(&dir, &format!("{id}.key.pem"), &key);
        let result = tokio::task::spawn_blocking({
            let (py, scope, trust) = (py.clone(), scope.clone(), trust.clone());
            move || {
                run(
                    &py,
                    "provision_x509.py",
                    &[
                        "--host",
                        host,
                        "--id-scope",
                        &scope,
                        "--registration-id",
                        id,
                        "--cert",
                        &cert,
                        "--key",
                        &key,
                        "--trust",
                        &trust,
                        "--timeout",
                        "60",
                    ],
                )
            }
        })
        .await
        .unwrap();
        assert_eq!(result["ok"], true, "{id}: {result}");
        assert_eq!(result["status"], "assigned");
        assert_eq!(result["deviceId"], id);
        assert_eq!(result["assignedHub"], "localhost");
        assert_eq!(result["substatus"], "initialAssignment");
    }

    // Disable the group: the SDK reports the refusal as an error caused by a 401.
    let rest = server.rest();
    let mut g = rest
        .ok(
            Method::GET,
            "/enrollmentGroups/simulated-devices",
            None,
            &[],
        )
        .await;
    g["provisioningStatus"] = json!("disabled");
    g.as_object_mut().unwrap().remove("etag");
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/simulated-devices",
        Some(g),
        &[],
    )
    .await;
    let cert = dir.join("device-1.pem").display().to_string();
    let key = dir.join("device-1.key.pem").display().to_string();
    let result = tokio::task::spawn_blocking(move || {
        run(
            &py,
            "provision_x509.py",
            &[
                "--host",
                host,
                "--id-scope",
                &scope,
                "--registration-id",
                "device-1",
                "--cert",
                &cert,
                "--key",
                &key,
                "--trust",
                &trust,
                "--timeout",
                "30",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(result["ok"], false, "{result}");
    assert!(result.to_string().contains("401"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_sdk_provisions_an_openssl_lab_profile_device() {
    let py = python();
    let server = server_on(12).await;
    let dir = server.dir.path().to_path_buf();
    let lab = muster_test_support::openssl_lab_chain(&dir, "lab-device-1");
    let (root_pem, root_key) = (lab.root_pem.clone(), lab.root_key_pem.clone());
    x509_group(&server, &root_pem, &root_key).await;
    let scope = server.id_scope();
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    let cert = lab.device_cert.display().to_string();
    let key = lab.device_key.display().to_string();
    let result = tokio::task::spawn_blocking(move || {
        run(
            &py,
            "provision_x509.py",
            &[
                "--host",
                "127.0.0.12",
                "--id-scope",
                &scope,
                "--registration-id",
                "lab-device-1",
                "--cert",
                &cert,
                "--key",
                &key,
                "--trust",
                &trust,
                "--timeout",
                "60",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["deviceId"], "lab-device-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_sdk_provisions_with_a_group_symmetric_key() {
    let py = python();
    let server = server_on(13).await;
    let rest = server.rest();
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/sas-group",
        Some(json!({"attestation": {"type": "symmetricKey"}})),
        &[],
    )
    .await;
    let att = rest
        .ok(
            Method::POST,
            "/enrollmentGroups/sas-group/attestationmechanism",
            None,
            &[],
        )
        .await;
    let group_key = att["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let scope = server.id_scope();
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    let (py2, scope2, trust2) = (py.clone(), scope.clone(), trust.clone());
    let result = tokio::task::spawn_blocking(move || {
        run(
            &py2,
            "provision_symmetric_key.py",
            &[
                "--host",
                "127.0.0.13",
                "--id-scope",
                &scope2,
                "--registration-id",
                "sensor-1",
                "--group-key",
                &group_key,
                "--trust",
                &trust2,
                "--timeout",
                "60",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["deviceId"], "sensor-1");
    // A key that is not derived from the group key is refused.
    let result = tokio::task::spawn_blocking(move || {
        run(
            &py,
            "provision_symmetric_key.py",
            &[
                "--host",
                "127.0.0.13",
                "--id-scope",
                &scope,
                "--registration-id",
                "sensor-2",
                "--symmetric-key",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "--trust",
                &trust,
                "--timeout",
                "30",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(result["ok"], false, "{result}");
    assert!(result.to_string().contains("401"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_service_sdk_manages_devices_and_twins() {
    let py = python();
    let server = server_on(14).await;
    let pki = Pki::new();
    x509_group(&server, &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    // Provision one device the lab's way first, so the operator can see and edit it.
    let dir = server.dir.path().to_path_buf();
    let cert = write(
        &dir,
        "device-1.pem",
        &format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
    );
    let key = write(&dir, "device-1.key.pem", &pki.leaf.key_pem);
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    let scope = server.id_scope();
    let (py2, trust2) = (py.clone(), trust.clone());
    let provisioned = tokio::task::spawn_blocking(move || {
        run(
            &py2,
            "provision_x509.py",
            &[
                "--host",
                "127.0.0.14",
                "--id-scope",
                &scope,
                "--registration-id",
                "device-1",
                "--cert",
                &cert,
                "--key",
                &key,
                "--trust",
                &trust2,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(provisioned["ok"], true, "{provisioned}");
    // The server listens on 127.0.0.14 (its certificate carries that address).
    let cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .replace("HostName=localhost", "HostName=127.0.0.14");
    let result = tokio::task::spawn_blocking(move || {
        let out = Command::new(&py)
            .arg(sdk_script("hub_service.py"))
            .args([
                "--connection-string",
                &cs,
                "--device-id",
                "svc-dev-1",
                "--existing-device",
                "device-1",
            ])
            .env("REQUESTS_CA_BUNDLE", &trust)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
    })
    .await
    .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["created"]["authType"], "sas");
    assert_eq!(
        result["created"]["hasKey"], true,
        "keys are generated when empty"
    );
    assert_eq!(result["listed"], json!(["device-1", "svc-dev-1"]));
    assert_eq!(result["updatedTwin"]["desired"], "2");
    assert_eq!(result["updatedTwin"]["desiredVersion"], 2);
    assert_eq!(result["updatedTwin"]["tags"]["site"], "lab");
    assert_eq!(result["replacedTwin"]["desired"], json!({"mode": "eco"}));
    assert_eq!(result["replacedTwin"]["tags"], json!({"floor": 1}));
    assert_eq!(
        result["existing"]["telemetryDelay"], "1",
        "the enrollment's initial twin"
    );
    assert_eq!(result["existing"]["authType"], "selfSigned");
    assert_eq!(result["existing"]["updatedTelemetryDelay"], "2");
    assert_eq!(result["getAfterDeleteStatus"], 404, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_device_sdk_follows_its_twin_on_the_hub() {
    let py = python();
    let server = server_on(15).await;
    let pki = Pki::new();
    x509_group(&server, &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    let dir = server.dir.path().to_path_buf();
    let cert = write(
        &dir,
        "device-1.pem",
        &format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
    );
    let key = write(&dir, "device-1.key.pem", &pki.leaf.key_pem);
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    let scope = server.id_scope();
    let host = "127.0.0.15";
    let (py2, cert2, key2, trust2) = (py.clone(), cert.clone(), key.clone(), trust.clone());
    let provisioned = tokio::task::spawn_blocking(move || {
        run(
            &py2,
            "provision_x509.py",
            &[
                "--host",
                host,
                "--id-scope",
                &scope,
                "--registration-id",
                "device-1",
                "--cert",
                &cert2,
                "--key",
                &key2,
                "--trust",
                &trust2,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(provisioned["ok"], true, "{provisioned}");
    // The device connects to the hub, reads its twin, reports, and waits for a desired patch.
    let device = tokio::task::spawn_blocking(move || {
        run(
            &py,
            "hub_device.py",
            &[
                "--host",
                host,
                "--device-id",
                "device-1",
                "--cert",
                &cert,
                "--key",
                &key,
                "--trust",
                &trust,
                "--wait",
                "30",
            ],
        )
    });
    let cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .to_owned();
    let rest = common::Rest::new(&cs, &server.ca_pem(), server.running.https_addr);
    // Wait until the device has reported, then change the desired property.
    let mut reported = false;
    for _ in 0..100 {
        let twin = rest.ok(Method::GET, "/twins/device-1", None, &[]).await;
        if twin["properties"]["reported"]["telemetryDelay"] == 1 {
            reported = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(reported, "the device never reported telemetryDelay");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    let result = device.await.unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        result["desired"]["telemetryDelay"], "1",
        "initial twin from the enrollment group"
    );
    // The SDK first hands the app the full desired section it read at connect (version 1), then
    // the patch the operator made.
    let patches = result["patches"].as_array().unwrap();
    let last = patches.last().unwrap();
    assert_eq!(last["telemetryDelay"], "2", "{result}");
    assert_eq!(last["$version"], 2);
    // The lab's telemetry, with its temperatureAlert property, is in the event stream.
    let mut resp = rest
        .client
        .get(format!(
            "{}/messages/events?from=earliest&deviceId=device-1",
            rest.base
        ))
        .header("authorization", rest.token())
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: Value =
        serde_json::from_str(String::from_utf8_lossy(&chunk).lines().next().unwrap()).unwrap();
    assert_eq!(event["properties"]["temperatureAlert"], "true");
    assert_eq!(event["body"]["temperature"], 31.2);
    assert_eq!(
        event["systemProperties"]["content-type"],
        "application/json"
    );
}

/// The lab with the official Python SDK on a cluster: the device provisions through node 1
/// (127.0.0.16), connects to the hub on node 2 (127.0.0.17), and the operator changes the
/// desired property through node 3 (127.0.0.18); the three share a PostgreSQL store and a
/// NATS bus. Needs `MUSTER_TEST_POSTGRES` and `MUSTER_TEST_NATS` besides the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_sdk_lab_with_provisioning_and_hub_on_different_nodes() {
    let py = python();
    let Ok(nats) = std::env::var("MUSTER_TEST_NATS") else {
        eprintln!(
            "skipped: set MUSTER_TEST_NATS=nats://127.0.0.1:4222 (and MUSTER_TEST_POSTGRES) for the cluster lab"
        );
        return;
    };
    let Some(db) = muster_store_pg::testing::TestDatabase::create("sdklab").await else {
        return;
    };
    let mut nodes = Vec::new();
    for n in 1..=3u8 {
        let (url, bus) = (db.url.clone(), nats.clone());
        nodes.push(
            TestServer::start_with(move |c| {
                c.bind = IpAddr::from([127, 0, 0, 15 + n]);
                c.mqtt_port = 8883;
                c.store = url;
                c.bus = Some(bus);
                c.node_id = Some(format!("lab{n}"));
            })
            .await,
        );
    }
    let pki = Pki::new();
    x509_group(&nodes[0], &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    let dir = nodes[0].dir.path().to_path_buf();
    let cert = write(
        &dir,
        "device-1.pem",
        &format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
    );
    let key = write(&dir, "device-1.key.pem", &pki.leaf.key_pem);
    // One trust root for the cluster: node 1's bundle verifies every node.
    let trust = nodes[0].data_dir().join("tls/ca.pem").display().to_string();
    let scope = nodes[0].id_scope();
    let (py2, cert2, key2, trust2) = (py.clone(), cert.clone(), key.clone(), trust.clone());
    let provisioned = tokio::task::spawn_blocking(move || {
        run(
            &py2,
            "provision_x509.py",
            &[
                "--host",
                "127.0.0.16",
                "--id-scope",
                &scope,
                "--registration-id",
                "device-1",
                "--cert",
                &cert2,
                "--key",
                &key2,
                "--trust",
                &trust2,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(provisioned["ok"], true, "{provisioned}");
    assert_eq!(provisioned["status"], "assigned");
    let device = tokio::task::spawn_blocking(move || {
        run(
            &py,
            "hub_device.py",
            &[
                "--host",
                "127.0.0.17",
                "--device-id",
                "device-1",
                "--cert",
                &cert,
                "--key",
                &key,
                "--trust",
                &trust,
                "--wait",
                "30",
            ],
        )
    });
    let rest = nodes[2].hub_rest();
    let mut reported = false;
    for _ in 0..100 {
        let twin = rest.ok(Method::GET, "/twins/device-1", None, &[]).await;
        if twin["properties"]["reported"]["telemetryDelay"] == 1 {
            reported = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        reported,
        "the device never reported telemetryDelay (seen through node 3)"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    let result = device.await.unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["desired"]["telemetryDelay"], "1");
    let last = result["patches"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["telemetryDelay"], "2",
        "the patch made on node 3 reached node 2: {result}"
    );
    for node in nodes {
        node.stop().await;
    }
    db.drop().await;
}

/// `hub_device_flows.py` running in the background: its stderr is read line by line (markers and
/// SDK logs), its stdin is the offline gate. Killed on drop so a failing test leaves nothing.
struct FlowsDevice {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl FlowsDevice {
    fn spawn(python: &str, args: &[String]) -> Self {
        use std::io::BufRead as _;
        use std::process::Stdio;
        let mut child = Command::new(python)
            .arg(sdk_script("hub_device_flows.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                drop(l);
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            stdin,
            lines,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait for a marker line on the driver's stderr.
    async fn wait_for(&mut self, marker: &str) {
        let found = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(line) = self.lines.recv().await {
                if line.trim() == marker {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !found {
            let _ = self.child.kill();
            let out = self
                .child
                .stdout
                .take()
                .map(|mut s| {
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut text);
                    text
                })
                .unwrap_or_default();
            panic!(
                "the device never printed {marker}\nstdout: {out}\nstderr:\n{}",
                self.log()
            );
        }
    }

    fn send_line(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for the driver to exit; its one JSON line and its stderr.
    async fn finish(mut self) -> (Value, String) {
        drop(self.stdin.take());
        let mut stdout = self.child.stdout.take().unwrap();
        let text = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
            text
        })
        .await
        .unwrap();
        let log = self.log();
        let result = serde_json::from_str(text.lines().last().unwrap_or_default())
            .unwrap_or_else(|_| panic!("harness output: {text}\nstderr:\n{log}"));
        (result, log)
    }
}

impl Drop for FlowsDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send_c2d(rest: &common::Rest, device_id: &str, body: &str, headers: &[(&str, &str)]) {
    let status = rest.send_c2d(device_id, body.as_bytes(), headers).await;
    assert_eq!(status, 204, "C2D send");
}

async fn invoke(
    rest: &common::Rest,
    device_id: &str,
    method: &str,
    payload: Value,
) -> (u16, Value) {
    let (status, headers, body) = rest
        .send(
            Method::POST,
            &format!("/twins/{device_id}/methods"),
            Some(json!({"methodName": method, "payload": payload, "responseTimeoutInSeconds": 15})),
            &[],
        )
        .await;
    let code = headers
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        code.map_or(body.clone(), |c| json!({"errorCode": c, "body": body})),
    )
}

/// Drive `hub_device_flows.py` (its auth arguments in `auth`) through C2D and methods, a
/// disconnect with one C2D queued while offline, a reconnect, and C2D and a method again.
async fn device_flows_with_a_reconnect(
    py: &str,
    rest: &common::Rest,
    device_id: &str,
    auth: Vec<String>,
    expected_auth: &str,
) {
    let mut args = auth;
    args.extend(
        [
            "--expect",
            "1,1,2,1",
            "--offline-gate",
            "--wait",
            "30",
            "--timeout",
            "150",
        ]
        .map(str::to_owned),
    );
    let mut device = FlowsDevice::spawn(py, &args);
    device.wait_for("ready-1").await;

    // Phase 1: a C2D message with system and application properties, then a method call.
    send_c2d(
        rest,
        device_id,
        "hello 1",
        &[
            ("iothub-messageid", "c2d-1"),
            ("iothub-correlationid", "corr-1"),
            ("iothub-app-priority", "high"),
            ("iothub-app-note", "a b/c+d&e=f"),
        ],
    )
    .await;
    let (status, reply) = invoke(rest, device_id, "reboot", json!({"delay": 1})).await;
    assert_eq!(status, 200, "{reply}\n{}", device.log());
    assert_eq!(
        reply,
        json!({"status": 200, "payload": {"phase": 1, "method": "reboot", "echo": {"delay": 1}}})
    );

    // The device disconnects (MQTT DISCONNECT). Once the hub shows it offline, a method call
    // fails with DeviceNotOnline and a C2D message waits in the queue.
    device.wait_for("offline").await;
    let mut offline = false;
    for _ in 0..100 {
        let d = rest
            .ok(Method::GET, &format!("/devices/{device_id}"), None, &[])
            .await;
        if d["connectionState"] == "Disconnected" {
            offline = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(offline, "the hub still shows the device connected");
    let (status, reply) = invoke(rest, device_id, "reboot", json!({})).await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["errorCode"], "DeviceNotOnline", "{reply}");
    send_c2d(
        rest,
        device_id,
        "queued while offline",
        &[
            ("iothub-messageid", "c2d-2"),
            ("iothub-ack", "full"),
            ("iothub-app-phase", "offline"),
        ],
    )
    .await;

    // Reconnect: CleanSession=0 and the SDK does not subscribe again, so everything below
    // arrives through the subscriptions the hub kept for the session.
    device.send_line("reconnect");
    device.wait_for("ready-2").await;
    send_c2d(
        rest,
        device_id,
        "hello 3",
        &[
            ("iothub-messageid", "c2d-3"),
            ("iothub-correlationid", "corr-3"),
        ],
    )
    .await;
    let (status, reply) = invoke(rest, device_id, "getStatus", json!({"n": 2})).await;
    assert_eq!(status, 200, "{reply}\n{}", device.log());
    assert_eq!(
        reply,
        json!({"status": 200, "payload": {"phase": 2, "method": "getStatus", "echo": {"n": 2}}})
    );

    let (result, log) = device.finish().await;
    assert_eq!(result["ok"], true, "{result}\nstderr:\n{log}");
    assert_eq!(result["auth"], expected_auth);
    assert_eq!(result["gate"], "reconnect");
    assert_eq!(
        result["messages"],
        json!([
            {"phase": 1, "data": "hello 1", "messageId": "c2d-1", "correlationId": "corr-1",
             "customProperties": {"priority": "high", "note": "a b/c+d&e=f"},
             "contentType": null, "contentEncoding": null, "ack": null},
            {"phase": 2, "data": "queued while offline", "messageId": "c2d-2",
             "correlationId": null, "customProperties": {"phase": "offline"},
             "contentType": null, "contentEncoding": null, "ack": "full"},
            {"phase": 2, "data": "hello 3", "messageId": "c2d-3", "correlationId": "corr-3",
             "customProperties": {}, "contentType": null, "contentEncoding": null, "ack": null},
        ]),
        "{result}"
    );
    let methods = result["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2, "{result}");
    for (m, (phase, name, payload)) in methods.iter().zip([
        (1, "reboot", json!({"delay": 1})),
        (2, "getStatus", json!({"n": 2})),
    ]) {
        assert_eq!(m["phase"], phase, "{result}");
        assert_eq!(m["name"], name);
        assert_eq!(m["payload"], payload);
        assert!(
            m["requestId"].as_str().is_some_and(|r| !r.is_empty()),
            "{result}"
        );
    }
    assert_ne!(methods[0]["requestId"], methods[1]["requestId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_device_sdk_receives_c2d_and_methods_across_a_reconnect_with_x509() {
    let py = python();
    let server = server_on(16).await;
    let host = "127.0.0.16";
    // A genuinely self-signed device certificate, registered by its thumbprint.
    let cert = muster_test_support::TestCa::self_signed(&muster_test_support::Spec::new(
        "py-flows-x509",
        muster_test_support::Kind::Client,
    ))
    .cert;
    let thumbprint = muster_pki::read_certificate(cert.pem.as_bytes())
        .unwrap()
        .sha1_thumbprint();
    let hub_cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .to_owned();
    let rest = common::Rest::new(&hub_cs, &server.ca_pem(), server.running.https_addr);
    let created = rest
        .ok(
            Method::PUT,
            "/devices/py-flows-x509",
            Some(json!({
                "deviceId": "py-flows-x509",
                "authentication": {"type": "selfSigned",
                    "x509Thumbprint": {"primaryThumbprint": thumbprint, "secondaryThumbprint": null}},
            })),
            &[],
        )
        .await;
    assert_eq!(created["authentication"]["type"], "selfSigned");
    let dir = server.dir.path().to_path_buf();
    let cert_path = write(&dir, "py-flows-x509.pem", &cert.pem);
    let key_path = write(&dir, "py-flows-x509.key.pem", &cert.key_pem);
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    let auth = [
        "--host",
        host,
        "--device-id",
        "py-flows-x509",
        "--cert",
        cert_path.as_str(),
        "--key",
        key_path.as_str(),
        "--trust",
        trust.as_str(),
    ]
    .map(str::to_owned)
    .to_vec();
    device_flows_with_a_reconnect(&py, &rest, "py-flows-x509", auth, "x509").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDK (MUSTER_SDK_PYTHON); run with: bash tests/sdk/run.sh"]
async fn python_device_sdk_receives_c2d_and_methods_across_a_reconnect_with_sas() {
    let py = python();
    let server = server_on(17).await;
    let hub_cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .to_owned();
    let rest = common::Rest::new(&hub_cs, &server.ca_pem(), server.running.https_addr);
    // base64 of "0123456789abcdef0123456789abcdef" and of "fedcba9876543210fedcba9876543210".
    let primary = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let secondary = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let created = rest
        .ok(
            Method::PUT,
            "/devices/py-flows-sas",
            Some(json!({
                "deviceId": "py-flows-sas",
                "authentication": {"type": "sas",
                    "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}},
            })),
            &[],
        )
        .await;
    assert_eq!(created["authentication"]["type"], "sas");
    assert_eq!(
        created["authentication"]["symmetricKey"]["primaryKey"],
        primary
    );
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    // The server listens on 127.0.0.17 (its certificate carries that address); the SDK signs
    // its token for that host name.
    let device_cs = format!("HostName=127.0.0.17;DeviceId=py-flows-sas;SharedAccessKey={primary}");
    let auth = [
        "--connection-string",
        device_cs.as_str(),
        "--trust",
        trust.as_str(),
    ]
    .map(str::to_owned)
    .to_vec();
    device_flows_with_a_reconnect(&py, &rest, "py-flows-sas", auth, "sas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Python SDKs (MUSTER_SDK_PYTHON) and ports 443 and 5671; run with: bash tests/sdk/run.sh"]
async fn python_sdks_use_amqp_and_websockets() {
    let py = python();
    let server = TestServer::start_with(|c| {
        c.bind = IpAddr::from([127, 0, 0, 16]);
        c.mqtt_port = 8883;
        c.amqp_port = 5671;
        c.https_port = 443;
    })
    .await;
    let host = "127.0.0.16";
    let hub_cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .replace("HostName=localhost", &format!("HostName={host}"));
    let rest = common::Rest::new(&hub_cs, &server.ca_pem(), server.running.https_addr);
    let token = rest.sas_device("c2d-target").await;
    let trust = server.ca_path().display().to_string();

    // The service SDK's C2D send, over AMQP on 5671 and over AMQP/WebSockets on 443.
    for (websockets, id) in [(false, "py-amqp"), (true, "py-amqp-ws")] {
        let (py, cs, trust) = (py.clone(), hub_cs.clone(), trust.clone());
        let sent = tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "--connection-string",
                &cs,
                "--trust",
                &trust,
                "--device-id",
                "c2d-target",
                "--message-id",
                id,
                "--data",
                "from python",
            ];
            if websockets {
                args.push("--websockets");
            }
            run(&py, "hub_service_c2d.py", &args)
        })
        .await
        .unwrap();
        assert_eq!(sent["ok"], true, "websockets={websockets}: {sent}");
    }
    // Both are queued, with their ids and properties: read them over the HTTPS device API.
    for expected in ["py-amqp", "py-amqp-ws"] {
        let r = rest
            .client
            .get(format!(
                "{}/devices/c2d-target/messages/devicebound",
                rest.base
            ))
            .header("authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["iothub-messageid"], expected);
        assert_eq!(r.headers()["iothub-app-priority"], "high");
        let lock = r.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_owned();
        assert_eq!(r.text().await.unwrap(), "from python");
        let done = rest
            .client
            .delete(format!(
                "{}/devices/c2d-target/messages/devicebound/{lock}",
                rest.base
            ))
            .header("authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 204);
    }

    // The device SDK with websockets=True: DPS, then the hub, through wss://…:443.
    let pki = Pki::new();
    x509_group(&server, &pki.root.cert.pem, &pki.root.cert.key_pem).await;
    let dir = server.dir.path().to_path_buf();
    let cert = write(
        &dir,
        "device-1.pem",
        &format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
    );
    let key = write(&dir, "device-1.key.pem", &pki.leaf.key_pem);
    let scope = server.id_scope();
    let (py2, cert2, key2, trust2) = (py.clone(), cert.clone(), key.clone(), trust.clone());
    let provisioned = tokio::task::spawn_blocking(move || {
        run(
            &py2,
            "provision_x509.py",
            &[
                "--host",
                host,
                "--id-scope",
                &scope,
                "--registration-id",
                "device-1",
                "--cert",
                &cert2,
                "--key",
                &key2,
                "--trust",
                &trust2,
                "--websockets",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(provisioned["ok"], true, "{provisioned}");
    let device = tokio::task::spawn_blocking(move || {
        run(
            &py,
            "hub_device.py",
            &[
                "--host",
                host,
                "--device-id",
                "device-1",
                "--cert",
                &cert,
                "--key",
                &key,
                "--trust",
                &trust,
                "--wait",
                "30",
                "--websockets",
            ],
        )
    });
    let mut reported = false;
    for _ in 0..100 {
        let twin = rest.ok(Method::GET, "/twins/device-1", None, &[]).await;
        if twin["properties"]["reported"]["telemetryDelay"] == 1 {
            reported = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        reported,
        "the device never reported telemetryDelay over WebSockets"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    let result = device.await.unwrap();
    assert_eq!(result["ok"], true, "{result}");
    let last = result["patches"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["telemetryDelay"], "2", "{result}");
}
