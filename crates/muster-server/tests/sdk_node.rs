//! The official Azure IoT Node SDKs (unmodified) against muster: the provisioning device
//! client over MQTT and HTTPS with X.509 and a group symmetric key, a refusal, and the
//! provisioning service client managing an enrollment group.
//!
//! Needs Node ≥ 20 and the harness in `tests/sdk/node` installed (`tests/sdk/node/setup.sh`);
//! `.ci/run` does that and sets `MUSTER_SDK_NODE` to the harness folder. The tests are
//! `#[ignore]`d, so a plain `cargo test` lists them as ignored; `bash tests/sdk/run.sh` installs
//! the SDKs and runs them. Node's DPS-over-HTTPS and service clients only reach
//! port 443, so each test binds its own loopback address on 443 and 8883 (root is needed).

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
use std::process::Command;

use common::{ServerFixture as _, TestServer};
use muster_server::config::Config;
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::{Value, json};

/// Where the SDK is; these tests are `#[ignore]`d, so they run only when asked for, and then
/// the SDK must be there.
fn harness() -> String {
    match std::env::var("MUSTER_SDK_NODE") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "MUSTER_SDK_NODE is not set: it must name tests/sdk/node after its setup.sh (bash tests/sdk/run.sh sets it and runs these tests)"
        ),
    }
}

async fn server_on(last_octet: u8) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let bind = IpAddr::from([127, 0, 0, last_octet]);
    let config = Config {
        data_dir: dir.path().join("data"),
        bind,
        mqtt_port: 8883,
        amqp_port: 0,
        https_port: 443,
        portal_port: 0,
        hostnames: vec!["localhost".into()],
        ..Config::default()
    };
    let running = muster_server::start(config.clone()).await.unwrap();
    TestServer {
        running,
        dir,
        config,
    }
}

fn node(dir: &str, script: &str, ca: &str, args: &[String]) -> Value {
    let out = Command::new("node")
        .arg(format!("{dir}/{script}"))
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .output()
        .expect("node on PATH");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "harness output: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn node_sdk_provisions_over_mqtt_and_https() {
    let dir = harness();
    let server = server_on(21).await;
    let host = "127.0.0.21";
    let pki = Pki::new();
    let rest = server.rest();
    rest.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    rest.ok(Method::PUT, "/enrollmentGroups/grp", Some(json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}}})), &[]).await;
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/sas",
        Some(json!({"attestation": {"type": "symmetricKey"}})),
        &[],
    )
    .await;
    let att = rest
        .ok(
            Method::POST,
            "/enrollmentGroups/sas/attestationmechanism",
            None,
            &[],
        )
        .await;
    let group_key = att["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let work = server.dir.path().to_path_buf();
    let cert = work.join("device-1.pem");
    std::fs::write(
        &cert,
        format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem),
    )
    .unwrap();
    let key = work.join("device-1.key.pem");
    std::fs::write(&key, &pki.leaf.key_pem).unwrap();
    let ca = server.data_dir().join("tls/ca.pem").display().to_string();
    let scope = server.id_scope();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    let results = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for transport in ["mqtt", "http"] {
            let x509 = node(
                &dir,
                "provision.js",
                &ca,
                &strings(&[
                    "--transport",
                    transport,
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
                    "60",
                ]),
            );
            let sas = node(
                &dir,
                "provision.js",
                &ca,
                &strings(&[
                    "--transport",
                    transport,
                    "--host",
                    host,
                    "--id-scope",
                    &scope,
                    "--registration-id",
                    &format!("sensor-{transport}"),
                    "--group-key",
                    &group_key,
                    "--timeout",
                    "60",
                ]),
            );
            let refused = node(
                &dir,
                "provision.js",
                &ca,
                &strings(&[
                    "--transport",
                    transport,
                    "--host",
                    host,
                    "--id-scope",
                    &scope,
                    "--registration-id",
                    "not-device-1",
                    "--cert",
                    &cert,
                    "--key",
                    &key,
                    "--timeout",
                    "30",
                ]),
            );
            out.push((transport, x509, sas, refused));
        }
        out
    })
    .await
    .unwrap();
    for (transport, x509, sas, refused) in results {
        assert_eq!(x509["ok"], true, "{transport} x509: {x509}");
        assert_eq!(x509["status"], "assigned");
        assert_eq!(x509["deviceId"], "device-1");
        assert_eq!(x509["assignedHub"], "localhost");
        assert_eq!(sas["ok"], true, "{transport} sas: {sas}");
        assert_eq!(sas["deviceId"], format!("sensor-{transport}"));
        assert_eq!(refused["ok"], false, "{transport} refusal: {refused}");
        assert_eq!(
            refused["error"], "UnauthorizedError",
            "{transport}: {refused}"
        );
        assert_eq!(refused["status"], 401_002, "{transport}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn node_service_sdk_manages_enrollment_groups() {
    let dir = harness();
    let server = server_on(22).await;
    let pki = Pki::new();
    server
        .rest()
        .upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    let policy = server.running.info["dpsConnectionString"]
        .as_str()
        .unwrap()
        .to_owned();
    // The SDK only reaches port 443: the server's HostName has no port; point it at our address.
    let cs = policy.replace("HostName=localhost", "HostName=127.0.0.22");
    let ca = server.data_dir().join("tls/ca.pem").display().to_string();
    let result = tokio::task::spawn_blocking(move || {
        node(
            &dir,
            "service.js",
            &ca,
            &strings(&[
                "--connection-string",
                &cs,
                "--group-id",
                "node-group",
                "--ca-name",
                "root-ca",
                "--timeout",
                "60",
            ]),
        )
    })
    .await
    .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["updated"]["provisioningStatus"], "disabled");
    assert_eq!(result["staleEtagStatus"], 412, "{result}");
    assert_eq!(result["deleted"], true);
    assert_eq!(result["getAfterDeleteStatus"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official Node SDKs (MUSTER_SDK_NODE); run with: bash tests/sdk/run.sh"]
async fn node_device_and_registry_sdks_use_the_hub() {
    use std::io::BufRead as _;
    let dir = harness();
    let server = server_on(23).await;
    let hub_cs = server.running.info["hubConnectionString"]
        .as_str()
        .unwrap()
        .replace("HostName=localhost", "HostName=127.0.0.23");
    let rest = common::Rest::new(&hub_cs, &server.ca_pem(), server.running.https_addr);
    let device = rest
        .ok(
            Method::PUT,
            "/devices/node-dev-1",
            Some(json!({"deviceId": "node-dev-1"})),
            &[],
        )
        .await;
    let key = device["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca = server.data_dir().join("tls/ca.pem").display().to_string();
    let device_cs = format!("HostName=127.0.0.23;DeviceId=node-dev-1;SharedAccessKey={key}");
    let mut child = Command::new("node")
        .arg(format!("{dir}/hub_device.js"))
        .args([
            "--connection-string",
            &device_cs,
            "--ca",
            &ca,
            "--timeout",
            "40",
        ])
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node on PATH");
    // Wait for the device to say it is listening.
    let stderr = child.stderr.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("\"ready\":true"))
    });
    let ready = tokio::time::timeout(std::time::Duration::from_secs(40), ready)
        .await
        .expect("device ready in time")
        .unwrap();
    assert!(ready, "the Node device never became ready");
    rest.ok(
        Method::PATCH,
        "/twins/node-dev-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
        &[],
    )
    .await;
    let status = rest
        .client
        .post(format!(
            "{}/devices/node-dev-1/messages/devicebound",
            rest.base
        ))
        .header("authorization", rest.token())
        .header("iothub-app-priority", "high")
        .body("hello")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 204);
    let method = rest
        .ok(
            Method::POST,
            "/twins/node-dev-1/methods",
            Some(json!({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 20})),
            &[],
        )
        .await;
    assert_eq!(method["status"], 200);
    assert_eq!(method["payload"]["rebooted"], true);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("{stdout}"));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["patch"]["telemetryDelay"], "2");
    assert_eq!(result["c2d"]["data"], "hello");
    assert_eq!(result["c2d"]["properties"]["priority"], "high");
    // Its telemetry, with temperatureAlert, is in the event stream.
    let mut resp = rest
        .client
        .get(format!(
            "{}/messages/events?from=earliest&deviceId=node-dev-1",
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

    // The Node registry client: create, get, list, twin update, delete, 404 after.
    let ca2 = ca.clone();
    let result = tokio::task::spawn_blocking(move || {
        let out = Command::new("node")
            .arg(format!("{}/registry.js", harness()))
            .args(["--connection-string", &hub_cs, "--timeout", "40"])
            .env("NODE_EXTRA_CA_CERTS", &ca2)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|_| panic!("{stdout}"))
    })
    .await
    .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["updated"]["desired"]["telemetryDelay"], "3");
    assert_eq!(result["getAfterDelete"], "DeviceNotFoundError");
}
