//! A `muster serve` process on ephemeral ports in a temporary directory, for the CLI tests.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "shared test fixture; each test binary uses part of it"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn muster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_muster"))
}

/// `muster serve --data-dir DATA` with every port ephemeral (flags may follow).
pub fn serve(data: &std::path::Path) -> Command {
    let mut command = muster();
    command.args(["serve", "--data-dir"]).arg(data).args([
        "--mqtt-port",
        "0",
        "--https-port",
        "0",
        "--portal-port",
        "0",
        "--amqp-port",
        "0",
    ]);
    command
}

/// A running server; killed on drop.
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// `muster info --json`.
    pub info: Value,
}

impl Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = serve(&dir.path().join("data"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = dir.path().join("data/endpoint.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !endpoint.exists() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        let out = muster()
            .args(["info", "--json", "--data-dir"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let info = serde_json::from_slice(&out.stdout).unwrap();
        Self { child, dir, info }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run `muster <args…>`, expecting success; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = muster().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "muster {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
