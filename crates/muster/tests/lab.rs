//! The seed lab (X.509 group enrollment), start to finish, with nothing but the `muster`
//! command against a real `muster serve` process: make a root and intermediate CA, upload the
//! root and prove possession with the verification code, create the `simulated-devices` group
//! with the initial twin `{"telemetryDelay":"1"}`, run `muster device simulate` with a device
//! certificate, watch it get assigned and send telemetry every second, set the desired
//! `telemetryDelay` to "2" and watch the cadence and the reported property follow, then disable
//! the group (a new device is refused), delete the group and the device (the running device is
//! refused too). A second test does the lab with an OpenSSL-made certificate packed as a
//! password-protected PFX.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Device, Server};
use serde_json::{Value, json};

/// The device's own send time of a `telemetrySent` event (its `timestamp`,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`), in seconds of the day.
fn sent_at(event: &Value) -> f64 {
    let ts = event["timestamp"].as_str().unwrap();
    let clock = ts.split('T').nth(1).unwrap().trim_end_matches('Z');
    let parts: Vec<f64> = clock.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// The gaps between consecutive sends, as the device timed them (not as the test received
/// them: a busy machine delivers lines late and in bursts).
fn gaps(sent: &[f64]) -> Vec<f64> {
    sent.windows(2)
        .map(|p| (p[1] - p[0]).rem_euclid(86_400.0))
        .collect()
}

/// Check each telemetry event's properties against its body.
fn check_reading(event: &Value) {
    let body = &event["body"];
    let t = body["temperature"].as_f64().unwrap();
    assert!((20.0..=35.0).contains(&t), "{event}");
    assert_eq!(event["temperatureAlert"], json!(t > 30.0), "{event}");
    for (k, lo, hi) in [
        ("humidity", 60.0, 80.0),
        ("pressure", 1013.0, 1025.0),
        ("latitude", 39.5, 40.5),
        ("longitude", -98.5, -97.5),
    ] {
        let v = body[k].as_f64().unwrap();
        assert!((lo..=hi).contains(&v), "{k} in {event}");
    }
}

#[test]
fn the_lab_x509_group_enrollment_end_to_end() {
    let server = Server::start();
    // Exercise 2: the CA chain.
    server.certs_cli(&["create-root-and-intermediate"]);
    let certs = server.certs();
    let root = certs.join("root-ca.pem").display().to_string();
    // Exercise 3: upload the root and prove possession with the verification code.
    server.cli(
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
    let code: Value = serde_json::from_str(&server.cli(
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
    let code = code["properties"]["verificationCode"].as_str().unwrap();
    server.certs_cli(&["create-verification-cert", code]);
    let proof = certs.join("verification-code.pem").display().to_string();
    let verified: Value = serde_json::from_str(&server.cli(
        "dps",
        &[
            "certificate",
            "verify",
            "--name",
            "lab-root",
            "--path",
            &proof,
            "--output",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(verified["properties"]["isVerified"], true, "{verified}");
    // Exercise 4: the enrollment group.
    server.cli(
        "dps",
        &[
            "enrollment-group",
            "create",
            "--enrollment-id",
            "simulated-devices",
            "--ca-name",
            "lab-root",
            "--allocation-policy",
            "hashed",
            "--reprovision-policy",
            "reprovisionandmigratedata",
            "--initial-twin-properties",
            r#"{"telemetryDelay":"1"}"#,
        ],
    );
    // Exercise 5: a device certificate and the simulated device.
    server.certs_cli(&["create-device-cert", "simulated-device1"]);
    let mut args = server.simulate_args();
    args.extend([
        "--cert".into(),
        certs.join("simulated-device1.pem").display().to_string(),
        "--key".into(),
        certs
            .join("simulated-device1.key.pem")
            .display()
            .to_string(),
    ]);
    let mut device = Device::spawn(&args, &[]);
    let long = Duration::from_secs(20);
    let (_, cert) = device.next("certificate", long);
    assert!(
        cert["subject"]
            .as_str()
            .unwrap()
            .contains("simulated-device1"),
        "{cert}"
    );
    assert_eq!(cert["thumbprint"].as_str().unwrap().len(), 40);
    let (_, registered) = device.next("registered", long);
    assert_eq!(registered["status"], "assigned");
    assert_eq!(registered["deviceId"], "simulated-device1");
    assert_eq!(registered["assignedHub"], "localhost");
    assert_eq!(registered["substatus"], "initialAssignment");
    let (_, twin) = device.next("twinLoaded", long);
    assert_eq!(twin["desired"]["telemetryDelay"], "1");
    assert_eq!(twin["telemetryDelay"], 1.0);
    let (_, reported) = device.next("reported", long);
    assert_eq!(reported["patch"], json!({"telemetryDelay": 1}));
    let mut sent = Vec::new();
    for _ in 0..4 {
        let (_, e) = device.next("telemetrySent", long);
        check_reading(&e);
        sent.push(sent_at(&e));
    }
    // The device waits telemetryDelay between sends (timers fire late, never early).
    for gap in gaps(&sent) {
        assert!((0.95..1.9).contains(&gap), "1 s cadence, got {gap:.3} s");
    }
    // The portal's view: the device exists, its telemetry is in the event stream with the
    // temperatureAlert property.
    let devices: Value =
        serde_json::from_str(&server.cli("hub", &["device-identity", "list", "--output", "json"]))
            .unwrap();
    assert_eq!(devices[0]["deviceId"], "simulated-device1");
    assert_eq!(devices[0]["connectionState"], "Connected");
    let events = server.cli(
        "hub",
        &[
            "monitor-events",
            "--device-id",
            "simulated-device1",
            "--from",
            "earliest",
            "--timeout",
            "2",
            "--output",
            "json",
        ],
    );
    let first: Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    let alert = first["properties"]["temperatureAlert"].as_str().unwrap();
    let temperature = first["body"]["temperature"].as_f64().unwrap();
    assert_eq!(alert == "true", temperature > 30.0, "{first}");
    assert_eq!(
        first["systemProperties"]["content-type"],
        "application/json"
    );

    // Exercise 6: change the desired telemetryDelay to "2".
    server.cli(
        "hub",
        &[
            "device-twin",
            "update",
            "-d",
            "simulated-device1",
            "--desired",
            r#"{"telemetryDelay":"2"}"#,
        ],
    );
    let (_, changed) = device.next("delayChanged", long);
    assert_eq!(changed["value"], "2");
    assert_eq!(changed["telemetryDelay"], 2.0);
    let (_, reported) = device.next("reported", long);
    assert_eq!(reported["patch"], json!({"telemetryDelay": 2}));
    let mut sent = Vec::new();
    for _ in 0..3 {
        let (_, e) = device.next("telemetrySent", long);
        check_reading(&e);
        sent.push(sent_at(&e));
    }
    for gap in gaps(&sent) {
        assert!((1.95..2.9).contains(&gap), "2 s cadence, got {gap:.3} s");
    }
    let twin: Value = serde_json::from_str(&server.cli(
        "hub",
        &[
            "device-twin",
            "show",
            "-d",
            "simulated-device1",
            "--output",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(twin["properties"]["reported"]["telemetryDelay"], 2);
    assert_eq!(twin["properties"]["desired"]["telemetryDelay"], "2");
    // An invalid value keeps the cadence.
    server.cli(
        "hub",
        &[
            "device-twin",
            "update",
            "-d",
            "simulated-device1",
            "--desired",
            r#"{"telemetryDelay":"soon"}"#,
        ],
    );
    let (_, rejected) = device.next("delayRejected", long);
    assert_eq!(rejected["value"], "soon");
    assert_eq!(rejected["telemetryDelay"], 2.0);

    // Exercise 7: retire. A disabled group refuses a new device …
    server.cli(
        "dps",
        &[
            "enrollment-group",
            "update",
            "--enrollment-id",
            "simulated-devices",
            "--provisioning-status",
            "disabled",
        ],
    );
    server.certs_cli(&["create-device-cert", "simulated-device2"]);
    let mut args2 = server.simulate_args();
    args2.extend([
        "--cert".into(),
        certs.join("simulated-device2.pem").display().to_string(),
        "--key".into(),
        certs
            .join("simulated-device2.key.pem")
            .display()
            .to_string(),
    ]);
    let (ok, err) = Device::spawn(&args2, &[]).wait(long);
    assert!(!ok, "a device of a disabled group is refused");
    assert!(
        err.contains("provisioning refused: 401002"),
        "one clear line: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // … and once the group and the device are deleted, the running device is refused too.
    server.cli(
        "dps",
        &[
            "enrollment-group",
            "delete",
            "--enrollment-id",
            "simulated-devices",
        ],
    );
    server.cli(
        "hub",
        &["device-identity", "delete", "-d", "simulated-device1"],
    );
    let (ok, err) = device.wait(long);
    assert!(!ok, "the deleted device stops with an error");
    assert!(err.contains("not authorized"), "{err}");
    let (ok, err) = Device::spawn(&args, &[]).wait(long);
    assert!(!ok);
    assert!(err.contains("provisioning refused: 401002"), "{err}");
}

fn openssl(dir: &Path, args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new("openssl")
        .args(args)
        .envs(env.iter().copied())
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

#[test]
fn the_lab_with_an_openssl_certificate_in_a_password_protected_pfx() {
    let server = Server::start();
    let dir = server.dir.path();
    // The lab's OpenSSL profile (its openssl_root_ca.cnf / openssl_device_intermediate_ca.cnf
    // extensions), RSA keys, a root and a device certificate.
    std::fs::write(
        dir.join("lab.cnf"),
        "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=x\n[v3_ca]\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always,issuer\nbasicConstraints=critical,CA:true\nkeyUsage=critical,digitalSignature,cRLSign,keyCertSign\n[usr_cert]\nbasicConstraints=CA:FALSE\nnsCertType=client,email\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\nkeyUsage=critical,nonRepudiation,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,emailProtection\n",
    )
    .unwrap();
    openssl(dir, &["genrsa", "-out", "root.key", "2048"], &[]);
    openssl(
        dir,
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
        &[],
    );
    openssl(dir, &["genrsa", "-out", "dev.key", "2048"], &[]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-config",
            "lab.cnf",
            "-key",
            "dev.key",
            "-subj",
            "/CN=lab-pfx-device",
            "-out",
            "dev.csr",
        ],
        &[],
    );
    openssl(
        dir,
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
        &[],
    );
    let password = [("LAB_PFX_PASSWORD", "1234-lab")];
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "dev.key",
            "-in",
            "dev.pem",
            "-out",
            "dev.pfx",
            "-passout",
            "env:LAB_PFX_PASSWORD",
        ],
        &password,
    );
    let root = dir.join("root.pem").display().to_string();
    let root_key = dir.join("root.key").display().to_string();
    server.cli(
        "dps",
        &[
            "certificate",
            "create",
            "--name",
            "openssl-root",
            "--path",
            &root,
        ],
    );
    // Proof of possession in one step with the CA key (the code is signed locally).
    server.cli(
        "dps",
        &[
            "certificate",
            "verify",
            "--name",
            "openssl-root",
            "--ca-key",
            &root_key,
        ],
    );
    server.cli(
        "dps",
        &[
            "enrollment-group",
            "create",
            "--enrollment-id",
            "simulated-devices",
            "--ca-name",
            "openssl-root",
            "--initial-twin-properties",
            r#"{"telemetryDelay":"1"}"#,
        ],
    );
    let pfx = dir.join("dev.pfx").display().to_string();
    let mut args = server.simulate_args();
    args.extend([
        "--cert".into(),
        pfx,
        "--cert-password-env".into(),
        "LAB_PFX_PASSWORD".into(),
        "--duration".into(),
        "4".into(),
    ]);
    // A wrong password is one clear error.
    let (ok, err) =
        Device::spawn(&args, &[("LAB_PFX_PASSWORD", "wrong")]).wait(Duration::from_secs(20));
    assert!(!ok);
    assert!(err.contains("dev.pfx"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        err.matches("dev.pfx").count(),
        1,
        "the file is named once: {err}"
    );
    assert!(
        err.contains("--cert-password-env"),
        "the fix is named: {err}"
    );
    let mut device = Device::spawn(&args, &password);
    let long = Duration::from_secs(20);
    let (_, registered) = device.next("registered", long);
    assert_eq!(registered["deviceId"], "lab-pfx-device");
    let (_, twin) = device.next("twinLoaded", long);
    assert_eq!(twin["telemetryDelay"], 1.0);
    let (_, e) = device.next("telemetrySent", long);
    check_reading(&e);
    let (ok, err) = device.wait(long);
    assert!(ok, "--duration ends the run cleanly: {err}");
}
