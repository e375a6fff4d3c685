//! A `muster serve` process on ephemeral ports in a temporary directory, for the CLI tests.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "shared test fixture; each test binary uses part of it"
)]

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
        Self::start_with(&[])
    }

    /// A server started with more `muster serve` flags.
    pub fn start_with(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = serve(&dir.path().join("data"))
            .args(flags)
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

impl Server {
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Run `muster <group> --data-dir DATA <args…>` (group = dps or hub), expecting success;
    /// returns stdout.
    pub fn cli(&self, group: &str, args: &[&str]) -> String {
        let out = muster()
            .arg(group)
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "muster {group} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn certs_cli(&self, args: &[&str]) {
        let out = muster()
            .arg("certs")
            .args(args)
            .arg("--dir")
            .arg(self.certs())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "muster certs {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `muster device simulate` arguments for this server.
    pub fn simulate_args(&self) -> Vec<String> {
        vec![
            "device".into(),
            "simulate".into(),
            "--provisioning-host".into(),
            format!("localhost:{}", self.info["mqttPort"]),
            "--id-scope".into(),
            self.info["idScope"].as_str().unwrap().into(),
            "--trust".into(),
            self.info["trustBundle"].as_str().unwrap().into(),
            "--output".into(),
            "json".into(),
        ]
    }
}

/// A running `muster device simulate` and the events it prints.
pub struct Device {
    child: Child,
    events: mpsc::Receiver<(Instant, Value)>,
    seen: Vec<(Instant, Value)>,
}

impl Device {
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Self {
        let mut command = muster();
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON event line ({e}): {line}"));
                if tx.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The next event named `name` (skipping others), within `timeout`.
    pub fn next(&mut self, name: &str, timeout: Duration) -> (Instant, Value) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((at, v)) => {
                    self.seen.push((at, v.clone()));
                    if v["event"] == name {
                        return (at, v);
                    }
                }
                Err(_) => panic!("no '{name}' event within {timeout:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Wait for the process to end; returns (success, stderr).
    pub fn wait(mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (status.success(), err);
            }
            assert!(
                Instant::now() < deadline,
                "simulate did not exit; saw {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
