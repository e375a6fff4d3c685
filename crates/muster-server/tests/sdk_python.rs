//! The official Azure IoT Python device SDK (`azure-iot-device`, unmodified) provisions against
//! muster: X.509 with root- and intermediate-signed certificates, a device made by OpenSSL in
//! the classic lab profile, a symmetric-key group, and a refusal.
//!
//! Needs the SDK: `.ci/run` installs it with `tests/sdk/setup.sh` and sets
//! `MUSTER_SDK_PYTHON` to the venv's python. Without that variable these tests are skipped
//! (and say so). The SDK only speaks to port 8883, so each test binds its own loopback address
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

use common::TestServer;
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::{Value, json};

fn python() -> Option<String> {
    match std::env::var("MUSTER_SDK_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!(
                "SKIPPED: set MUSTER_SDK_PYTHON to a python with azure-iot-device (tests/sdk/setup.sh prints it; .ci/run sets it)"
            );
            None
        }
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
async fn python_sdk_provisions_x509_devices() {
    let Some(py) = python() else { return };
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

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_provisions_an_openssl_lab_profile_device() {
    let Some(py) = python() else { return };
    let server = server_on(12).await;
    let dir = server.dir.path().to_path_buf();
    std::fs::write(
        dir.join("lab.cnf"),
        "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=x\n[v3_ca]\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always,issuer\nbasicConstraints=critical,CA:true\nkeyUsage=critical,digitalSignature,cRLSign,keyCertSign\n[usr_cert]\nbasicConstraints=CA:FALSE\nnsCertType=client,email\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\nkeyUsage=critical,nonRepudiation,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,emailProtection\n",
    )
    .unwrap();
    openssl(&dir, &["genrsa", "-out", "root.key", "4096"]);
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-x509",
            "-config",
            "lab.cnf",
            "-extensions",
            "v3_ca",
            "-key",
            "root.key",
            "-subj",
            "/CN=Azure IoT Hub CA Cert Test Only",
            "-days",
            "30",
            "-sha256",
            "-out",
            "root.pem",
        ],
    );
    openssl(&dir, &["genrsa", "-out", "dev.key", "2048"]);
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-config",
            "lab.cnf",
            "-key",
            "dev.key",
            "-subj",
            "/CN=lab-device-1",
            "-out",
            "dev.csr",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "dev.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-extfile",
            "lab.cnf",
            "-extensions",
            "usr_cert",
            "-days",
            "30",
            "-sha256",
            "-out",
            "dev.pem",
        ],
    );
    let root_pem = std::fs::read_to_string(dir.join("root.pem")).unwrap();
    let root_key = std::fs::read_to_string(dir.join("root.key")).unwrap();
    x509_group(&server, &root_pem, &root_key).await;
    let scope = server.id_scope();
    let trust = server.data_dir().join("tls/ca.pem").display().to_string();
    let cert = dir.join("dev.pem").display().to_string();
    let key = dir.join("dev.key").display().to_string();
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
async fn python_sdk_provisions_with_a_group_symmetric_key() {
    let Some(py) = python() else { return };
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
async fn python_service_sdk_manages_devices_and_twins() {
    let Some(py) = python() else { return };
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
async fn python_device_sdk_follows_its_twin_on_the_hub() {
    let Some(py) = python() else { return };
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
