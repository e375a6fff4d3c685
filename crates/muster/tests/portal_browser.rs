//! The seed lab through the portal in Debian's headless Chromium, against a real `muster serve`
//! process: `tests/portal/lab.js` (playwright-core, no browser download) signs in with the admin
//! password the server printed at first start, uploads an OpenSSL root, verifies it with a
//! certificate from `muster certs`, creates the group with the initial twin, runs
//! `muster device simulate`, sees it Connected, edits the twin, watches the chart, disables the
//! group and deletes everything. Screenshots of each page go to `docs/portal/`.
//!
//! `#[ignore]`d in a plain `cargo test` (it needs Node, playwright-core and Chromium);
//! `bash tests/portal/run.sh` installs what is missing and runs it, as `.ci/run` does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly"
)]

mod common;

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::muster;
use serde_json::Value;

/// Kills the server when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs Node, playwright-core and Chromium: bash tests/portal/run.sh"]
fn the_lab_in_a_browser() {
    let harness = std::env::var("MUSTER_PORTAL_HARNESS").unwrap_or_else(|_| {
        panic!("MUSTER_PORTAL_HARNESS is not set: run bash tests/portal/run.sh (it installs playwright-core and names tests/portal)")
    });
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = common::serve(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Killed(child);
    // The admin password is printed once, at first start.
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut password = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((_, p)) = line.split_once("makes a new one): ") {
            password = Some(p.trim().to_owned());
            break;
        }
    }
    let password = password.expect("serve prints the portal admin password at first start");
    // Keep reading what the server prints, so its stdout stays open.
    std::thread::spawn(move || lines.for_each(drop));
    let endpoint = data.join("endpoint.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !endpoint.exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = muster()
        .args(["info", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let simulate = serde_json::json!([
        "device",
        "simulate",
        "--provisioning-host",
        format!("localhost:{}", info["mqttPort"]),
        "--id-scope",
        info["idScope"],
        "--trust",
        info["trustBundle"],
        "--output",
        "json"
    ]);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let shots = std::env::var("MUSTER_PORTAL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join("docs/portal"));
    let out = Command::new("node")
        .arg(PathBuf::from(&harness).join("lab.js"))
        .env("PORTAL_URL", info["portalUrl"].as_str().unwrap())
        .env("ADMIN_PASSWORD", &password)
        .env("MUSTER_BIN", env!("CARGO_BIN_EXE_muster"))
        .env("WORK_DIR", &work)
        .env("SIMULATE_ARGS", simulate.to_string())
        .env("SCREENSHOTS", &shots)
        .output()
        .expect("node on PATH");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the portal lab failed:\n{stderr}\n{stdout}"
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no result line: {stdout}\n{stderr}"));
    assert_eq!(result["ok"], true);
    assert_eq!(result["reported"], 2);
    // The group and the device are gone, as the browser left them.
    let list = muster()
        .args([
            "dps",
            "enrollment-group",
            "list",
            "--output",
            "json",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(list.status.success());
    assert!(!String::from_utf8_lossy(&list.stdout).contains("simulated-devices"));
    for page in [
        "01-sign-in",
        "04-certificate-verified",
        "05-add-enrollment-group",
        "09-device",
        "11-live-telemetry",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "screenshot {page}"
        );
    }
}
