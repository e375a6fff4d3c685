//! `muster certs` end to end: the real binary in a temporary directory, checked with OpenSSL.
//!
//! Needs the `openssl` command (installed by `.ci/run`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn muster(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed with exactly one line on stderr; returns it.
fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the `openssl` command on PATH (apt-get install openssl): {e}")
        })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn lab_workflow_verifies_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(&muster(d, &["certs", "create-root-and-intermediate"], &[]));
    assert!(out.contains("Next:"), "{out}");
    assert!(out.contains("expires"), "{out}");
    let certs = d.join("certs");
    for f in ["root-ca.pem", "intermediate-ca.pem", "ca-chain.pem"] {
        assert_eq!(mode(&certs.join(f)) & 0o077, 0o044, "{f}");
    }
    for f in ["root-ca.key.pem", "intermediate-ca.key.pem"] {
        assert_eq!(mode(&certs.join(f)), 0o600, "{f}");
    }
    let code = "49C900C30C78D916C46AE9D9C124E9CFFD5FCE124696FAEA";
    ok(&muster(
        d,
        &["certs", "create-verification-cert", code],
        &[],
    ));
    let out = ok(&muster(
        d,
        &[
            "certs",
            "create-device-cert",
            "simulated-device1",
            "--pfx-password-env",
            "DEVICE_PFX_PASSWORD",
        ],
        &[("DEVICE_PFX_PASSWORD", "correct horse")],
    ));
    assert!(
        !out.contains("correct horse"),
        "the password must not be printed"
    );
    ok(&muster(
        d,
        &[
            "certs",
            "create-device-cert",
            "direct-device",
            "--ca",
            "root",
        ],
        &[],
    ));
    assert!(
        !certs.join("direct-device.pfx").exists(),
        "no PFX without a password"
    );
    assert_eq!(mode(&certs.join("simulated-device1.key.pem")), 0o600);
    assert_eq!(mode(&certs.join("simulated-device1.pfx")), 0o600);

    // The device file is leaf + intermediate; the root is not in it.
    let pem = std::fs::read_to_string(certs.join("simulated-device1.pem")).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
    let direct = std::fs::read_to_string(certs.join("direct-device.pem")).unwrap();
    assert_eq!(direct.matches("BEGIN CERTIFICATE").count(), 1);

    // OpenSSL agrees.
    for (file, untrusted) in [
        ("simulated-device1.pem", Some("intermediate-ca.pem")),
        ("direct-device.pem", None),
        ("verification-code.pem", None),
        ("intermediate-ca.pem", None),
    ] {
        let mut args = vec!["verify", "-CAfile", "root-ca.pem"];
        if let Some(u) = untrusted {
            args.extend(["-untrusted", u]);
        }
        if file.contains("device") {
            args.extend(["-purpose", "sslclient"]);
        }
        args.push(file);
        let out = openssl(&certs, &args);
        assert!(
            out.status.success(),
            "openssl verify {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let subject = openssl(
        &certs,
        &["x509", "-in", "verification-code.pem", "-noout", "-subject"],
    );
    assert!(String::from_utf8_lossy(&subject.stdout).contains(code));
    let out = openssl(
        &certs,
        &[
            "pkcs12",
            "-in",
            "simulated-device1.pfx",
            "-passin",
            "pass:correct horse",
            "-nodes",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PRIVATE KEY") && text.matches("BEGIN CERTIFICATE").count() == 2,
        "{text}"
    );
    let out = openssl(
        &certs,
        &[
            "pkcs12",
            "-in",
            "simulated-device1.pfx",
            "-passin",
            "pass:wrong",
            "-nodes",
        ],
    );
    assert!(!out.status.success());

    // show: human, with the chain verdict, and JSON.
    let out = ok(&muster(
        d,
        &[
            "certs",
            "show",
            "certs/simulated-device1.pem",
            "--trust",
            "certs/root-ca.pem",
        ],
        &[],
    ));
    assert!(out.contains("chain: valid"), "{out}");
    assert!(
        out.contains("CN=simulated-device1") && out.contains("SHA-256"),
        "{out}"
    );
    let out = ok(&muster(
        d,
        &[
            "certs",
            "show",
            "certs/simulated-device1.pfx",
            "--password-env",
            "PW",
            "--output",
            "json",
        ],
        &[("PW", "correct horse")],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "PKCS#12");
    assert_eq!(v["hasPrivateKey"], true);
    assert_eq!(v["certificates"][0]["commonName"], "simulated-device1");
    let fp = openssl(
        &certs,
        &[
            "x509",
            "-in",
            "simulated-device1.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let fp = String::from_utf8_lossy(&fp.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "");
    assert_eq!(v["certificates"][0]["sha256Thumbprint"], fp.as_str());
    // A chain that does not validate: exit non-zero and say why.
    let other = tempfile::tempdir().unwrap();
    ok(&muster(
        other.path(),
        &["certs", "create-root-and-intermediate"],
        &[],
    ));
    let other_root = other.path().join("certs/root-ca.pem");
    let out = muster(
        d,
        &[
            "certs",
            "show",
            "certs/simulated-device1.pem",
            "--trust",
            other_root.to_str().unwrap(),
        ],
        &[],
    );
    let err = fails(&out);
    assert!(err.contains("no trusted issuer"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT valid"));
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(&muster(d, &["certs", "create-root-and-intermediate"], &[]));
    let before = std::fs::read(d.join("certs/root-ca.pem")).unwrap();
    let err = fails(&muster(d, &["certs", "create-root-and-intermediate"], &[]));
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("certs/root-ca.pem")).unwrap(), before);
    ok(&muster(d, &["certs", "create-device-cert", "dev1"], &[]));
    let dev = std::fs::read(d.join("certs/dev1.pem")).unwrap();
    fails(&muster(d, &["certs", "create-device-cert", "dev1"], &[]));
    assert_eq!(std::fs::read(d.join("certs/dev1.pem")).unwrap(), dev);
    ok(&muster(
        d,
        &["certs", "create-device-cert", "dev1", "--force"],
        &[],
    ));
    assert_ne!(std::fs::read(d.join("certs/dev1.pem")).unwrap(), dev);
    ok(&muster(
        d,
        &["certs", "create-root-and-intermediate", "--force"],
        &[],
    ));
    assert_ne!(std::fs::read(d.join("certs/root-ca.pem")).unwrap(), before);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(d.join("certs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn algorithms_days_and_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(&muster(
        d,
        &[
            "certs",
            "create-root-and-intermediate",
            "--dir",
            "rsa",
            "--algorithm",
            "rsa-2048",
            "--days",
            "30",
            "--subject-prefix",
            "Contoso",
            "--output",
            "json",
        ],
        &[],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rootCa"]["keyAlgorithm"], "RSA 2048");
    assert_eq!(v["rootCa"]["subject"], "CN=Contoso Root CA");
    assert_eq!(v["rootCa"]["daysLeft"], 30);
    // The intermediate never outlives the root.
    assert_eq!(v["intermediateCa"]["notAfter"], v["rootCa"]["notAfter"]);
    let out = ok(&muster(
        d,
        &[
            "certs",
            "create-device-cert",
            "rsa-dev",
            "--dir",
            "rsa",
            "--days",
            "3",
            "--output",
            "json",
        ],
        &[],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deviceCertificate"]["daysLeft"], 3);
    let out = openssl(
        &d.join("rsa"),
        &[
            "verify",
            "-CAfile",
            "root-ca.pem",
            "-untrusted",
            "intermediate-ca.pem",
            "rsa-dev.pem",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&muster(
        d,
        &[
            "certs",
            "create-root-and-intermediate",
            "--dir",
            "ed",
            "--algorithm",
            "ed25519",
        ],
        &[],
    ));
    ok(&muster(
        d,
        &["certs", "create-device-cert", "ed-dev", "--dir", "ed"],
        &[],
    ));
    let out = openssl(
        &d.join("ed"),
        &[
            "verify",
            "-CAfile",
            "root-ca.pem",
            "-untrusted",
            "intermediate-ca.pem",
            "ed-dev.pem",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_inputs_are_one_line_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // No CA yet.
    let err = fails(&muster(d, &["certs", "create-device-cert", "dev1"], &[]));
    assert!(err.contains("create-root-and-intermediate"), "{err}");
    let err = fails(&muster(
        d,
        &[
            "certs",
            "create-root-and-intermediate",
            "--algorithm",
            "dsa",
        ],
        &[],
    ));
    assert!(err.contains("dsa") && err.contains("ecdsa-p256"), "{err}");
    assert!(!d.join("certs").exists());
    ok(&muster(d, &["certs", "create-root-and-intermediate"], &[]));
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(d.join("certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    // Password variable missing or empty: nothing written.
    let err = fails(&muster(
        d,
        &[
            "certs",
            "create-device-cert",
            "dev1",
            "--pfx-password-env",
            "NOPE_UNSET",
        ],
        &[],
    ));
    assert!(err.contains("NOPE_UNSET"), "{err}");
    fails(&muster(
        d,
        &[
            "certs",
            "create-device-cert",
            "dev1",
            "--pfx-password-env",
            "EMPTY",
        ],
        &[("EMPTY", "")],
    ));
    // Invalid ids and codes.
    for id in ["../evil", "", "a b", "x".repeat(65).as_str()] {
        let err = fails(&muster(d, &["certs", "create-device-cert", id], &[]));
        assert!(err.contains("invalid device id"), "{err}");
    }
    fails(&muster(
        d,
        &["certs", "create-verification-cert", "has space"],
        &[],
    ));
    assert_eq!(listing(), before);

    // show on bad files names the file and the reason.
    let bad = d.join("bad");
    std::fs::create_dir(&bad).unwrap();
    let root = std::fs::read_to_string(d.join("certs/root-ca.pem")).unwrap();
    std::fs::write(bad.join("garbage.pem"), b"this is not a certificate").unwrap();
    std::fs::write(bad.join("truncated.pem"), &root[..root.len() / 2]).unwrap();
    std::fs::write(bad.join("junk.der"), [0x30u8, 0x82, 0x05, 0x00, 0x01, 0x02]).unwrap();
    std::fs::copy(d.join("certs/root-ca.key.pem"), bad.join("key.pem")).unwrap();
    let cases = [
        ("garbage.pem", "malformed"),
        ("truncated.pem", "truncated"),
        ("junk.der", "malformed"),
        ("key.pem", "no certificate"),
        ("missing.pem", "cannot read"),
    ];
    for (file, reason) in cases {
        let err = fails(&muster(&bad, &["certs", "show", file], &[]));
        assert!(err.contains(file), "{err}");
        assert!(err.contains(reason), "{file}: {err}");
    }
    // PFX without, and with the wrong, password.
    ok(&muster(
        d,
        &[
            "certs",
            "create-device-cert",
            "p1",
            "--pfx-password-env",
            "PW",
        ],
        &[("PW", "pw1")],
    ));
    let err = fails(&muster(d, &["certs", "show", "certs/p1.pfx"], &[]));
    assert!(err.contains("password"), "{err}");
    let err = fails(&muster(
        d,
        &["certs", "show", "certs/p1.pfx", "--password-env", "PW"],
        &[("PW", "pw2")],
    ));
    assert!(err.contains("wrong password"), "{err}");
    // An encrypted CA key (someone protected it with OpenSSL) needs a password.
    let out = openssl(
        &d.join("certs"),
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "intermediate-ca.key.pem",
            "-passout",
            "pass:x",
            "-out",
            "enc.key.pem",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(
        d.join("certs/enc.key.pem"),
        d.join("certs/intermediate-ca.key.pem"),
    )
    .unwrap();
    let err = fails(&muster(d, &["certs", "create-device-cert", "dev2"], &[]));
    assert!(
        err.contains("intermediate-ca.key.pem") && err.contains("encrypted"),
        "{err}"
    );
    assert!(!d.join("certs/dev2.pem").exists());
}

#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["certs", "create-root-and-intermediate", "--dir"])
        .arg(dir.path().join("certs"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command prints (as `muster … | head -1` can).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.code() == Some(141),
        "{:?}: {stderr}",
        out.status
    );
}
