//! The official Azure IoT Node SDKs (unmodified) against muster over AMQP 1.0 and WebSockets: the seed lab end
//! to end (DPS with X.509, hub, initial twin, telemetry, a desired change reported back,
//! retirement), hub devices with SAS and X.509 (telemetry, twin, desired pushes, C2D complete
//! and reject, direct methods), DPS with a group key and a refusal, the service client's C2D
//! with delivery feedback, and a replay of the .NET device's AMQP pattern.
//!
//! The Node AMQP clients accept `host:port`, so every test runs on an ephemeral port of
//! 127.0.0.1. `#[ignore]`d like the other SDK tests: `bash tests/sdk/run.sh` installs the SDKs
//! (`MUSTER_SDK_NODE`) and runs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "a test fails loudly"
)]

mod common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Rest, ServerFixture as _, TestServer};
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::{Value, json};

fn harness() -> String {
    match std::env::var("MUSTER_SDK_NODE") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "MUSTER_SDK_NODE is not set: it must name tests/sdk/node after its setup.sh (bash tests/sdk/run.sh sets it and runs these tests)"
        ),
    }
}

fn node_command(script: &str, ca: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.arg(format!("{}/{script}", harness()))
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", ca);
    c
}

/// Run a driver to its end; its one JSON line.
async fn node(script: &'static str, ca: &Path, args: &[&str]) -> Value {
    let mut command = node_command(script, ca, args);
    let out = tokio::task::spawn_blocking(move || command.output().expect("node on PATH"))
        .await
        .unwrap();
    parse(&out)
}

fn parse(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "harness output: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Start a driver and wait for `{"ready":true…}` on its stderr; the ready line.
async fn spawn_ready(script: &str, ca: &Path, args: &[&str]) -> (Child, Value) {
    let mut child = node_command(script, ca, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node on PATH");
    let stderr = child.stderr.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("\"ready\":true"));
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        ready
    });
    let line = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("the driver became ready in time")
        .unwrap();
    let Some(line) = line else {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the driver never became ready: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    (child, serde_json::from_str(&line).unwrap())
}

async fn finish(child: Child) -> Value {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    parse(&out)
}

/// Create the SAS device `id` and return its connection string for `host`.
async fn device_connection_string(hub: &Rest, host: &str, id: &str) -> String {
    let d = hub
        .ok(
            Method::PUT,
            &format!("/devices/{id}"),
            Some(json!({"deviceId": id})),
            &[],
        )
        .await;
    let key = d["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    format!("HostName={host};DeviceId={id};SharedAccessKey={key}")
}

/// Create the symmetric-key enrollment group `sas` and return its primary key.
async fn sas_group_key(dps: &Rest) -> String {
    dps.ok(
        Method::PUT,
        "/enrollmentGroups/sas",
        Some(json!({"attestation": {"type": "symmetricKey"}})),
        &[],
    )
    .await;
    let att = dps
        .ok(
            Method::POST,
            "/enrollmentGroups/sas/attestationmechanism",
            None,
            &[],
        )
        .await;
    att["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Send telemetry intervals (ms) of the lab device while it used `delay`.
fn intervals(result: &Value, delay: &str) -> Vec<i64> {
    let sent = result["sent"].as_array().unwrap();
    sent.windows(2)
        .filter(|w| w[0]["delay"] == delay && w[1]["delay"] == delay)
        .map(|w| w[1]["at"].as_i64().unwrap() - w[0]["at"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn the_lab_runs_end_to_end_over_amqp() {
    let server = TestServer::start().await;
    let (dps, hub) = (server.rest(), server.hub_rest());
    let pki = Pki::new();
    dps.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    let group = json!({
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
        "initialTwin": {"properties": {"desired": {"telemetryDelay": "1"}}},
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
    });
    dps.ok(Method::PUT, "/enrollmentGroups/lab", Some(group), &[])
        .await;
    let work = server.dir.path();
    let cert = write(
        work,
        "device-1.pem",
        &format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
    );
    let key = write(work, "device-1.key.pem", &pki.leaf.key_pem);
    let ca = server.ca_path();
    let amqp = server.amqp_port().to_string();
    let dps_host = format!("localhost:{amqp}");
    let scope = server.id_scope();
    let lab = [
        "--transport",
        "amqp",
        "--host",
        &dps_host,
        "--id-scope",
        &scope,
        "--registration-id",
        "device-1",
        "--cert",
        &cert,
        "--key",
        &key,
        "--hub-port",
        &amqp,
        "--duration",
        "12",
        "--timeout",
        "60",
    ];
    let (child, ready) = spawn_ready("lab_device.js", &ca, &lab).await;
    assert_eq!(ready["deviceId"], "device-1");
    assert_eq!(
        ready["initialDelay"], "1",
        "the enrollment group's initial twin"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    hub.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    let result = finish(child).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["assignedHub"], "localhost");
    // The SDK hands over the whole desired section when it subscribes, then the change.
    let last = |k: &str| {
        result[k]
            .as_array()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(last("desired")["telemetryDelay"], "2", "{result}");
    assert_eq!(last("reported")["telemetryDelay"], "2", "{result}");
    // The cadence follows the desired property.
    let (fast, slow) = (intervals(&result, "1"), intervals(&result, "2"));
    assert!(fast.len() >= 2 && slow.len() >= 2, "{result}");
    assert!(fast.iter().all(|ms| (800..1800).contains(ms)), "{fast:?}");
    assert!(slow.iter().all(|ms| (1800..2800).contains(ms)), "{slow:?}");
    let twin = hub.ok(Method::GET, "/twins/device-1", None, &[]).await;
    assert_eq!(twin["properties"]["reported"]["telemetryDelay"], "2");
    // Its telemetry, with temperatureAlert, is in the event stream.
    let events = hub.read_events("device-1", 3).await;
    assert!(
        events
            .iter()
            .all(|e| e["properties"]["temperatureAlert"].is_string()),
        "{events:?}"
    );
    assert_eq!(
        events[0]["systemProperties"]["iothub-connection-device-id"],
        "device-1"
    );

    // Retirement: disable and delete the group and the device; the device is refused.
    let mut group = dps
        .ok(Method::GET, "/enrollmentGroups/lab", None, &[])
        .await;
    group["provisioningStatus"] = json!("disabled");
    dps.ok(Method::PUT, "/enrollmentGroups/lab", Some(group), &[])
        .await;
    dps.send(Method::DELETE, "/enrollmentGroups/lab", None, &[])
        .await;
    hub.send(Method::DELETE, "/devices/device-1", None, &[])
        .await;
    let refused = node(
        "provision.js",
        &ca,
        &[
            "--transport",
            "amqp",
            "--host",
            &dps_host,
            "--id-scope",
            &scope,
            "--registration-id",
            "device-1",
            "--cert",
            &cert,
            "--key",
            &key,
            "--timeout",
            "30",
        ],
    )
    .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["errorCode"], 401_002, "{refused}");
}

/// Drive `hub_device.js` (transport `amqp`): it waits for a desired patch, a C2D message and a
/// `reboot` call, which this sends.
async fn drive_device(hub: &Rest, device: &str, ca: &Path, args: &[&str]) -> Value {
    let (child, _) = spawn_ready("hub_device.js", ca, args).await;
    hub.ok(
        Method::PATCH,
        &format!("/twins/{device}"),
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    let status = hub
        .send_c2d(
            device,
            b"hello",
            &[("iothub-app-priority", "high"), ("iothub-ack", "full")],
        )
        .await;
    assert_eq!(status, 204);
    let method = hub
        .ok(
            Method::POST,
            &format!("/twins/{device}/methods"),
            Some(json!({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 20})),
            &[],
        )
        .await;
    assert_eq!(method["status"], 200);
    assert_eq!(method["payload"]["rebooted"], true);
    finish(child).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn node_devices_use_the_hub_over_amqp_with_sas_and_x509() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let ca = server.ca_path();
    let host = format!("localhost:{}", server.amqp_port());

    // SAS: CBS put-token on the connection.
    let cs = device_connection_string(&hub, &host, "amqp-sas").await;
    let ca_arg = ca.display().to_string();
    let args = [
        "--transport",
        "amqp",
        "--connection-string",
        &cs,
        "--ca",
        &ca_arg,
        "--timeout",
        "40",
    ];
    let result = drive_device(&hub, "amqp-sas", &ca, &args).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["patch"]["telemetryDelay"], "2");
    assert_eq!(result["c2d"]["data"], "hello");
    assert_eq!(result["c2d"]["properties"]["priority"], "high");
    assert_eq!(result["c2dSettlement"], "completed");
    let events = hub.read_events("amqp-sas", 1).await;
    assert_eq!(
        events[0]["properties"]["temperatureAlert"], "true",
        "{events:?}"
    );
    let device = hub.ok(Method::GET, "/devices/amqp-sas", None, &[]).await;
    assert_eq!(
        device["cloudToDeviceMessageCount"], 0,
        "completed: {device}"
    );

    // X.509 (thumbprint): no CBS, the TLS client certificate; the C2D message is rejected.
    let pki = Pki::new();
    let thumbprint = muster_pki::Certificate::from_der(&pki.leaf.der)
        .unwrap()
        .sha1_thumbprint();
    hub.ok(
        Method::PUT,
        "/devices/device-1",
        Some(
            json!({"deviceId": "device-1", "authentication": {"type": "selfSigned",
            "x509Thumbprint": {"primaryThumbprint": thumbprint}}}),
        ),
        &[],
    )
    .await;
    let work = server.dir.path();
    let cert = write(work, "leaf.pem", &pki.leaf.pem);
    let key = write(work, "leaf.key", &pki.leaf.key_pem);
    let cs = format!("HostName={host};DeviceId=device-1;x509=true");
    let args = [
        "--transport",
        "amqp",
        "--connection-string",
        &cs,
        "--ca",
        &ca_arg,
        "--cert",
        &cert,
        "--key",
        &key,
        "--reject-c2d",
        "--timeout",
        "40",
    ];
    let result = drive_device(&hub, "device-1", &ca, &args).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["c2dSettlement"], "rejected");
    let device = hub.ok(Method::GET, "/devices/device-1", None, &[]).await;
    assert_eq!(device["cloudToDeviceMessageCount"], 0, "rejected: {device}");
    assert_eq!(device["connectionState"], "Disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn node_provisions_over_amqp_with_an_openssl_lab_chain_a_group_key_and_refusals() {
    let server = TestServer::start().await;
    let dps = server.rest();
    // X.509 with a chain made by OpenSSL with the lab's certificate profile (certGen.sh's
    // openssl_root_ca.cnf: nsCertType, emailProtection, a 4096-bit root).
    let dir = server.dir.path().to_path_buf();
    let chain = muster_test_support::openssl_lab_chain(&dir, "lab-device-1");
    let (root_pem, root_key) = (chain.root_pem, chain.root_key_pem);
    dps.upload_verified_ca("lab-root", &root_pem, &root_key)
        .await;
    dps.ok(
        Method::PUT,
        "/enrollmentGroups/lab",
        Some(json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "lab-root"}}}})),
        &[],
    )
    .await;
    let (lab_cert, lab_key) = (
        chain.device_cert.display().to_string(),
        chain.device_key.display().to_string(),
    );
    let ca = server.ca_path();
    let host = format!("localhost:{}", server.amqp_port());
    let scope = server.id_scope();
    let lab = node(
        "provision.js",
        &ca,
        &[
            "--transport",
            "amqp",
            "--host",
            &host,
            "--id-scope",
            &scope,
            "--registration-id",
            "lab-device-1",
            "--cert",
            &lab_cert,
            "--key",
            &lab_key,
            "--timeout",
            "40",
        ],
    )
    .await;
    assert_eq!(lab["ok"], true, "{lab}");
    assert_eq!(lab["deviceId"], "lab-device-1");
    let group_key = &sas_group_key(&dps).await;
    let sas = node(
        "provision.js",
        &ca,
        &[
            "--transport",
            "amqp",
            "--host",
            &host,
            "--id-scope",
            &scope,
            "--registration-id",
            "sensor-amqp",
            "--group-key",
            group_key,
            "--timeout",
            "40",
        ],
    )
    .await;
    assert_eq!(sas["ok"], true, "{sas}");
    assert_eq!(sas["status"], "assigned");
    assert_eq!(sas["deviceId"], "sensor-amqp");
    let refused = node(
        "provision.js",
        &ca,
        &[
            "--transport",
            "amqp",
            "--host",
            &host,
            "--id-scope",
            "0ne00000000",
            "--registration-id",
            "sensor-amqp",
            "--group-key",
            group_key,
            "--timeout",
            "30",
        ],
    )
    .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["errorCode"], 401_002, "{refused}");
    let wrong_key = node(
        "provision.js",
        &ca,
        &[
            "--transport",
            "amqp",
            "--host",
            &host,
            "--id-scope",
            &scope,
            "--registration-id",
            "sensor-amqp",
            "--group-key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "--timeout",
            "30",
        ],
    )
    .await;
    assert_eq!(wrong_key["ok"], false, "{wrong_key}");
    assert_eq!(wrong_key["errorCode"], 401_002, "{wrong_key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn node_service_sends_c2d_over_amqp_and_reads_feedback() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let ca = server.ca_path();
    let amqp = server.amqp_port();
    let device_cs = device_connection_string(&hub, &format!("localhost:{amqp}"), "fb-1").await;
    let ca_arg = ca.display().to_string();
    let (device, _) = spawn_ready(
        "hub_device.js",
        &ca,
        &[
            "--transport",
            "amqp",
            "--connection-string",
            &device_cs,
            "--ca",
            &ca_arg,
            "--timeout",
            "40",
        ],
    )
    .await;
    let service_cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .replace(
            &format!("HostName=localhost:{}", server.https_port()),
            &format!("HostName=localhost:{amqp}"),
        );
    let sent = node(
        "service.js",
        &ca,
        &[
            "--mode",
            "c2d",
            "--connection-string",
            &service_cs,
            "--device-id",
            "fb-1",
            "--message-id",
            "m-42",
            "--data",
            "hello",
            "--prop",
            "priority=high",
            "--timeout",
            "40",
        ],
    )
    .await;
    assert_eq!(sent["ok"], true, "{sent}");
    assert_eq!(sent["record"]["originalMessageId"], "m-42", "{sent}");
    assert_eq!(sent["record"]["statusCode"], "Success", "{sent}");
    assert_eq!(sent["record"]["deviceId"], "fb-1");
    // The device got it (and the rest of its scenario).
    hub.ok(
        Method::PATCH,
        "/twins/fb-1",
        Some(json!({"properties": {"desired": {"x": 1}}})),
        &[],
    )
    .await;
    hub.ok(
        Method::POST,
        "/twins/fb-1/methods",
        Some(json!({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 20})),
        &[],
    )
    .await;
    let result = finish(device).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["c2d"]["data"], "hello");
    assert_eq!(result["c2d"]["properties"]["priority"], "high");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn the_dotnet_device_pattern_works_over_amqp() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let token = hub.sas_device("dotnet-1").await;
    assert_eq!(hub.send_c2d("dotnet-1", b"to .NET", &[]).await, 204);
    let ca = server.ca_path();
    let ca_arg = ca.display().to_string();
    let port = server.amqp_port().to_string();
    let result = node(
        "dotnet_pattern.js",
        &ca,
        &[
            "--host",
            "localhost",
            "--port",
            &port,
            "--device-id",
            "dotnet-1",
            "--sas-token",
            &token,
            "--ca",
            &ca_arg,
            "--expect-c2d",
            "1",
            "--timeout",
            "30",
        ],
    )
    .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["cbs"]["statusCode"], 200, "{result}");
    assert_eq!(result["cbs"]["statusCodeType"], "int", "{result}");
    assert_eq!(result["telemetry"]["outcome"], "accepted", "{result}");
    assert_eq!(result["twin"]["status"], 200, "{result}");
    assert_eq!(result["twin"]["statusType"], "int", "{result}");
    assert_eq!(result["c2d"]["tagLengths"], json!([16]), "{result}");
    let device = hub.ok(Method::GET, "/devices/dotnet-1", None, &[]).await;
    assert_eq!(device["cloudToDeviceMessageCount"], 0, "{device}");
}

/// A server on `127.0.0.{last_octet}` with the SDKs' fixed ports (443 for WebSockets and
/// HTTPS devices).
async fn server_on(last_octet: u8) -> TestServer {
    let bind = std::net::IpAddr::from([127, 0, 0, last_octet]);
    TestServer::start_with(|c| {
        c.bind = bind;
        c.https_port = 443;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE) and port 443; run with: bash tests/sdk/run.sh"]
async fn node_devices_and_dps_use_websockets_on_443() {
    let server = server_on(41).await;
    let host = "127.0.0.41";
    let hub_cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .replace(
            &format!("HostName=localhost:{}", server.https_port()),
            &format!("HostName={host}"),
        );
    let hub = Rest::new(&hub_cs, &server.ca_pem(), server.running.https_addr);
    let ca = server.ca_path();
    let ca_arg = ca.display().to_string();
    for transport in ["mqtt-ws", "amqp-ws"] {
        let id = format!("ws-{transport}");
        let cs = device_connection_string(&hub, host, &id).await;
        let args = [
            "--transport",
            transport,
            "--connection-string",
            &cs,
            "--ca",
            &ca_arg,
            "--timeout",
            "40",
        ];
        let result = drive_device(&hub, &id, &ca, &args).await;
        assert_eq!(result["ok"], true, "{transport}: {result}");
        assert_eq!(result["patch"]["telemetryDelay"], "2", "{transport}");
        assert_eq!(result["c2d"]["data"], "hello", "{transport}");
        let events = hub.read_events(&id, 1).await;
        assert_eq!(
            events[0]["properties"]["temperatureAlert"], "true",
            "{transport}: {events:?}"
        );
    }

    // The HTTPS device API (no twin or methods over HTTPS): telemetry, then a C2D message,
    // rejected.
    let cs = device_connection_string(&hub, host, "http-1").await;
    let (child, _) = spawn_ready(
        "hub_device.js",
        &ca,
        &[
            "--transport",
            "http",
            "--connection-string",
            &cs,
            "--ca",
            &ca_arg,
            "--reject-c2d",
            "--timeout",
            "40",
        ],
    )
    .await;
    let status = hub
        .send_c2d("http-1", b"over https", &[("iothub-app-priority", "high")])
        .await;
    assert_eq!(status, 204);
    let result = finish(child).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["c2d"]["data"], "over https");
    assert_eq!(result["c2d"]["properties"]["priority"], "high", "{result}");
    assert_eq!(result["c2dSettlement"], "rejected");
    let events = hub.read_events("http-1", 1).await;
    assert_eq!(
        events[0]["properties"]["temperaturealert"], "true",
        "{events:?}"
    );
    let device = hub.ok(Method::GET, "/devices/http-1", None, &[]).await;
    assert_eq!(device["cloudToDeviceMessageCount"], 0, "{device}");

    // DPS through the tunnel: X.509 over AMQP (certificate in the 443 handshake), a group key
    // over MQTT.
    let dps = server.rest();
    let pki = Pki::new();
    dps.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    dps.ok(
        Method::PUT,
        "/enrollmentGroups/x509",
        Some(json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}}})),
        &[],
    )
    .await;
    let group_key = &sas_group_key(&dps).await;
    let work = server.dir.path();
    let cert = write(
        work,
        "device-1.pem",
        &format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
    );
    let key = write(work, "device-1.key.pem", &pki.leaf.key_pem);
    let scope = server.id_scope();
    let x509 = node(
        "provision.js",
        &ca,
        &[
            "--transport",
            "amqp-ws",
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
            "--timeout",
            "40",
        ],
    )
    .await;
    assert_eq!(x509["ok"], true, "{x509}");
    assert_eq!(x509["deviceId"], "device-1");
    for transport in ["mqtt-ws", "amqp-ws"] {
        let id = format!("sensor-{transport}");
        let sas = node(
            "provision.js",
            &ca,
            &[
                "--transport",
                transport,
                "--host",
                host,
                "--id-scope",
                &scope,
                "--registration-id",
                &id,
                "--group-key",
                group_key,
                "--timeout",
                "40",
            ],
        )
        .await;
        assert_eq!(sas["ok"], true, "{transport}: {sas}");
        assert_eq!(sas["deviceId"], id);
    }
}
