//! `muster serve` as a process: first start creates the data directory as README.md lays it out,
//! `muster info --json` describes it, `muster dps` commands work against it, SIGTERM stops it with
//! exit code 0, and a restart keeps the ID scope.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::muster;

/// Wait until the server has bound its ports and written `endpoint.json`.
fn wait_for_endpoint(dir: &Path) {
    let endpoint = dir.join("data/endpoint.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !endpoint.exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `muster serve` on `DIR/data` with every port ephemeral (flags may follow).
fn serve(dir: &Path) -> Command {
    common::serve(&dir.join("data"))
}

fn start(dir: &Path) -> Child {
    let child = serve(dir)
        .env("MUSTER_HOSTNAMES", "localhost,hub2.local")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_endpoint(dir);
    child
}

fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "serve exits 0 on SIGTERM, got {status}");
            return;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn info(dir: &Path) -> serde_json::Value {
    let out = muster()
        .args(["info", "--json", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn serve_bootstraps_answers_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let child = start(dir);
    let data = dir.join("data");
    for f in [
        "tls/ca.pem",
        "tls/ca.key.pem",
        "tls/server.pem",
        "tls/server.key.pem",
        "state.json",
        "muster.db",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    for f in ["tls/ca.key.pem", "tls/server.key.pem", "state.json"] {
        assert_eq!(
            std::fs::metadata(data.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o077,
            0,
            "{f} must not be readable by others"
        );
    }
    let i = info(dir);
    let scope = i["idScope"].as_str().unwrap().to_owned();
    assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");
    assert_eq!(i["hostname"], "localhost");
    assert_eq!(i["hubs"].as_array().unwrap().len(), 2);
    assert!(
        i["hubConnectionString"]
            .as_str()
            .unwrap()
            .contains("SharedAccessKeyName=iothubowner")
    );
    let port = i["httpsPort"].as_u64().unwrap();
    assert!(
        i["dpsConnectionString"]
            .as_str()
            .unwrap()
            .starts_with(&format!("HostName=localhost:{port};"))
    );
    assert!(Path::new(i["trustBundle"].as_str().unwrap()).is_absolute());
    // The server certificate covers every host name.
    let server_pem = std::fs::read(data.join("tls/server.pem")).unwrap();
    let leaf = muster_pki::read_certificates(&server_pem)
        .unwrap()
        .remove(0);
    for name in ["DNS:localhost", "DNS:hub2.local", "IP:127.0.0.1", "IP:::1"] {
        assert!(
            leaf.subject_alt_names().iter().any(|s| s == name),
            "{name} missing from {:?}",
            leaf.subject_alt_names()
        );
    }

    // Management through the CLI, authenticated from the data directory.
    let out = muster()
        .args(["dps", "--data-dir"])
        .arg(&data)
        .args([
            "enrollment-group",
            "create",
            "--enrollment-id",
            "sensors",
            "--symmetric-key",
            "--iot-hubs",
            "hub2.local",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g["iotHubs"], serde_json::json!(["hub2.local"]));
    let out = muster()
        .args(["dps", "--data-dir"])
        .arg(&data)
        .args(["enrollment-group", "show", "--enrollment-id", "missing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("not found"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A wrong key is refused.
    let out = muster()
        .args(["dps", "--data-dir"])
        .arg(&data)
        .args(["--connection-string", &format!("HostName=localhost:{port};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAA=="), "enrollment-group", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // The lab's operator actions on the hub: view devices, edit the desired telemetryDelay,
    // delete a device.
    let hub = |args: &[&str]| {
        let out = muster()
            .args(["hub", "--data-dir"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = hub(&["device-identity", "create", "-d", "dev-1"]);
    assert!(ok, "{err}");
    let (ok, out, _) = hub(&["device-identity", "list", "--output", "json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["deviceId"], "dev-1");
    assert_eq!(list[0]["authentication"]["type"], "sas");
    let (ok, out, err) = hub(&[
        "device-twin",
        "update",
        "-d",
        "dev-1",
        "--desired",
        r#"{"telemetryDelay":"2"}"#,
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    let twin: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(twin["properties"]["desired"]["telemetryDelay"], "2");
    let (ok, _, err) = hub(&[
        "device-twin",
        "update",
        "-d",
        "dev-1",
        "--desired",
        "{not json",
    ]);
    assert!(!ok && err.contains("--desired"), "{err}");
    let (ok, out, err) = hub(&[
        "c2d",
        "send",
        "-d",
        "dev-1",
        "--data",
        "hello",
        "--prop",
        "priority=high",
        "--ack",
        "full",
    ]);
    assert!(ok && out.contains("Queued"), "{err}");
    let (ok, _, err) = hub(&[
        "c2d", "send", "-d", "dev-1", "--data", "x", "--prop", "novalue",
    ]);
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");
    let (ok, _, err) = hub(&[
        "invoke-device-method",
        "-d",
        "dev-1",
        "--method-name",
        "reboot",
    ]);
    assert!(!ok && err.contains("DeviceNotOnline"), "{err}");
    let (ok, _, err) = hub(&["monitor-events", "--from", "earliest", "--timeout", "1"]);
    assert!(ok, "{err}");
    let (ok, out, err) = hub(&[
        "query",
        "-q",
        "SELECT COUNT() AS n FROM devices",
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([{"n": 1}])
    );
    let (ok, _, _) = hub(&["device-identity", "delete", "-d", "dev-1"]);
    assert!(ok);
    let (ok, _, err) = hub(&["device-identity", "show", "-d", "dev-1"]);
    assert!(!ok && err.contains("DeviceNotFound"), "{err}");

    stop(child);
    // Restart: same scope, the group is still there.
    let child = start(dir);
    assert_eq!(info(dir)["idScope"], scope.as_str());
    let out = muster()
        .args(["dps", "--data-dir"])
        .arg(&data)
        .args(["enrollment-group", "list", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    stop(child);
}

#[test]
fn config_default_is_printed_and_bad_config_is_refused() {
    let out = muster().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mqtt_port = 8883") && text.contains("# "),
        "{text}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "mqtt_prot = 1\n").unwrap();
    let out = muster()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt_prot"), "{err}");
}

#[test]
fn a_bad_store_is_refused_with_what_to_write_and_no_password_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |store: &str| {
        let out = serve(tmp.path())
            .args(["--store", store])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{store} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("mysql://muster:hunter2@db/muster");
    assert!(err.contains("postgres://USER@HOST/DATABASE"), "{err}");
    assert!(!err.contains("hunter2"), "password shown: {err}");
    // A PostgreSQL that is not there: refused within the connect timeout, naming the address.
    let err = run("postgres://muster:hunter2@127.0.0.1:1/muster");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2"), "password shown: {err}");
    let err = run("postgres://muster@127.0.0.1/muster?sslmode=require");
    assert!(err.contains("sslmode"), "{err}");
}

#[test]
fn one_server_per_data_dir_and_nothing_touched_before_the_ports_are_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let first = start(dir);
    let data = dir.join("data");
    let endpoint_before = std::fs::read(data.join("endpoint.json")).unwrap();
    let state_before = std::fs::read(data.join("state.json")).unwrap();

    // The same data dir on other ports: refused at once, naming the holder; nothing rewritten.
    let began = Instant::now();
    let out = muster()
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--portal-port",
            "0",
            "--amqp-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(began.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("is in use by pid {}", first.id())),
        "{err}"
    );
    assert_eq!(
        err.trim().lines().last().unwrap().matches("in use").count(),
        1,
        "{err}"
    );
    assert_eq!(
        std::fs::read(data.join("endpoint.json")).unwrap(),
        endpoint_before
    );
    assert_eq!(
        std::fs::read(data.join("state.json")).unwrap(),
        state_before
    );

    // Another data dir on the first server's MQTT port: refused before the directory exists.
    let busy = info(dir)["mqttPort"].as_u64().unwrap().to_string();
    let other = dir.join("other");
    let out = muster()
        .args(["serve", "--data-dir"])
        .arg(&other)
        .args([
            "--mqtt-port",
            &busy,
            "--https-port",
            "0",
            "--portal-port",
            "0",
            "--amqp-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{busy}")),
        "{err}"
    );
    assert!(
        !other.exists(),
        "nothing is created before the ports are bound"
    );

    // A clean stop removes the endpoint file; the next server takes the directory.
    stop(first);
    assert!(!data.join("endpoint.json").exists());
    let second = start(dir);
    stop(second);
}

/// `muster serve` under a shell-set open-file limit; returns the child (stderr piped).
fn start_limited(dir: &Path, limits: &str) -> Child {
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{limits}; exec {} serve --data-dir {} --mqtt-port 0 --amqp-port 0 --https-port 0 --portal-port 0",
            env!("CARGO_BIN_EXE_muster"),
            dir.join("data").display()
        ))
        .env("MUSTER_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_endpoint(dir);
    child
}

fn stderr_of(mut child: Child) -> String {
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_open_file_limit_is_raised_or_reported() {
    // A soft limit below the hard one is raised to the hard one.
    let tmp = tempfile::tempdir().unwrap();
    let child = start_limited(tmp.path(), "ulimit -Sn 256 && ulimit -Hn 4000");
    let err = stderr_of(child);
    assert!(
        err.contains("raised the open-file limit") && err.contains("before=256 after=4000"),
        "{err}"
    );

    // A hard limit that is the cap: a warning at start, and when descriptors run out, one
    // warning per few seconds that counts the refused connections and says how to raise it.
    let tmp = tempfile::tempdir().unwrap();
    let child = start_limited(tmp.path(), "ulimit -n 64");
    let endpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("data/endpoint.json")).unwrap())
            .unwrap();
    let port = u16::try_from(endpoint["mqttPort"].as_u64().unwrap()).unwrap();
    let sockets: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(sockets);
    let err = stderr_of(child);
    assert!(
        err.contains("the open-file limit is 64 and cannot go higher"),
        "{err}"
    );
    let warnings = err.matches("out of file descriptors").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings: {err}");
    assert!(
        err.contains("ulimit -n") && err.contains("LimitNOFILE="),
        "{err}"
    );
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(dir.path())
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_endpoint(dir.path());
    let stderr = child.stderr.take().unwrap();
    stop(child);
    let text = std::io::read_to_string(stderr).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "start and stop are logged: {text}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
    }
    assert!(text.contains("\"stopped\""), "{text}");
}

#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Nobody reads what the first start prints (the admin password).
    drop(child.stdout.take());
    wait_for_endpoint(dir.path());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve keeps running with its stdout closed"
    );
    stop(child);
}
