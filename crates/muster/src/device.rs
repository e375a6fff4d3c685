//! `muster device simulate`: wiring from flags to `muster_device::simulate`, and the console
//! output of the lab's device (text lines, or one JSON object per line with `--output json`).

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use muster_device::dps::{DpsCredentials, ProvisioningOptions, Transport};
use muster_device::hub::HubCredentials;
use muster_device::simulate::{SimEvent, SimulatorOptions};
use muster_device::{Identity, Secret, TrustRoots};
use serde_json::{Value, json};

use crate::cli::{DeviceCommand, Output, SimulateArgs, TransportArg};

pub(crate) fn run(command: DeviceCommand, output: Output) -> Result<()> {
    match command {
        DeviceCommand::Simulate(args) => simulate(&args, output),
    }
}

fn secret_from_env(var: &str) -> Result<Secret> {
    let value =
        std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
    if value.trim().is_empty() {
        bail!("environment variable {var} is empty");
    }
    Ok(Secret::new(value.trim().to_owned()))
}

/// `HOST[:PORT]` → (host, port). (A bare IPv6 address is not split.)
fn host_and_port(text: &str) -> Result<(String, Option<u16>)> {
    match text.split_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(':') => {
            let port = port
                .parse()
                .with_context(|| format!("'{port}' in '{text}' is not a port"))?;
            Ok((host.to_owned(), Some(port)))
        }
        _ => Ok((text.to_owned(), None)),
    }
}

fn load_identity(args: &SimulateArgs, cert: &std::path::Path) -> Result<Identity> {
    let is_pkcs12 = cert
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pfx") || e.eq_ignore_ascii_case("p12"));
    if is_pkcs12 {
        let password = match &args.cert_password_env {
            Some(var) => secret_from_env(var)?.expose().to_owned(),
            None => String::new(),
        };
        return Identity::from_pkcs12(cert, &password)
            .with_context(|| format!("cannot load {}", cert.display()));
    }
    Identity::from_pem_files(cert, args.key.as_deref())
        .with_context(|| format!("cannot load {}", cert.display()))
}

fn simulate(args: &SimulateArgs, output: Output) -> Result<()> {
    let (host, port) = host_and_port(&args.provisioning_host)?;
    let trust = match &args.trust {
        Some(path) => TrustRoots::from_pem_file(path)
            .with_context(|| format!("cannot load the trust bundle {}", path.display()))?,
        None => TrustRoots::webpki(),
    };
    let mut printer = Printer { output };
    let (dps_credentials, hub_credentials) = match (
        &args.cert,
        &args.symmetric_key_env,
        &args.group_key_env,
        &args.registration_id,
    ) {
        (Some(cert), _, _, _) => {
            let identity = load_identity(args, cert)?;
            let leaf = identity.leaf();
            printer.event(&json!({
                "event": "certificate",
                "subject": leaf.subject(),
                "thumbprint": identity.thumbprint(),
                "notAfter": crate::certs::day(leaf.not_after()),
            }));
            (
                DpsCredentials::X509(identity.clone()),
                HubCredentials::X509(identity),
            )
        }
        (None, Some(var), _, Some(id)) => {
            let key = secret_from_env(var)?;
            (
                DpsCredentials::SymmetricKey {
                    registration_id: id.clone(),
                    key: key.clone(),
                },
                HubCredentials::sas(key),
            )
        }
        (None, None, Some(var), Some(id)) => {
            let group = secret_from_env(var)?;
            let credentials = DpsCredentials::from_group_key(id, &group)
                .context("cannot derive the device key")?;
            let DpsCredentials::SymmetricKey { key, .. } = &credentials else {
                bail!("cannot derive the device key");
            };
            let hub = HubCredentials::sas(key.clone());
            (credentials, hub)
        }
        _ => bail!(
            "give --cert (X.509), or --registration-id with --symmetric-key-env or --group-key-env"
        ),
    };
    let mut provisioning = ProvisioningOptions::new(host, &args.id_scope, dps_credentials);
    provisioning.port = port;
    provisioning.trust = trust;
    provisioning.transport = match args.transport {
        TransportArg::Mqtt => Transport::Mqtt,
        TransportArg::Https => Transport::Https,
    };
    let hub_port = args.hub_port.unwrap_or(match provisioning.transport {
        Transport::Mqtt => provisioning.port(),
        _ => muster_device::hub::DEFAULT_PORT,
    });
    let options = SimulatorOptions {
        provisioning,
        hub_credentials,
        hub_port,
        seed: None,
    };
    let duration = args.duration;
    let runtime = crate::api::runtime()?;
    runtime.block_on(async move {
        let stop = async move {
            match duration {
                Some(s) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        () = tokio::time::sleep(Duration::from_secs(s)) => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        muster_device::simulate::run(options, |e| printer.sim(&e), stop).await
    })?;
    Ok(())
}

struct Printer {
    output: Output,
}

impl Printer {
    fn event(&mut self, value: &Value) {
        match self.output {
            Output::Json => line(&value.to_string()),
            Output::Table => line(&text(value)),
        }
    }

    fn sim(&mut self, event: &SimEvent) {
        let value = serde_json::to_value(event).unwrap_or(Value::Null);
        self.event(&value);
    }
}

/// Print a line and flush, so a pipe sees each event as it happens.
fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn seconds(v: &Value) -> String {
    let d = v
        .get("telemetryDelay")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    format!("{d} s")
}

/// The human form of an event.
fn text(v: &Value) -> String {
    match str_of(v, "event") {
        "certificate" => format!(
            "certificate   {}  thumbprint {}  (valid until {})",
            str_of(v, "subject"),
            str_of(v, "thumbprint"),
            str_of(v, "notAfter")
        ),
        "registering" => format!(
            "registering   {} with {} over {}",
            str_of(v, "registrationId"),
            str_of(v, "endpoint"),
            str_of(v, "transport").to_uppercase()
        ),
        "registered" => format!(
            "registered    status {}, hub {}, device id {}{}",
            str_of(v, "status"),
            str_of(v, "assignedHub"),
            str_of(v, "deviceId"),
            v.get("substatus")
                .and_then(Value::as_str)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        "connected" => format!(
            "connected     to hub {} as {}{}",
            str_of(v, "hub"),
            str_of(v, "deviceId"),
            if v.get("sessionPresent") == Some(&Value::Bool(true)) {
                " (session resumed)"
            } else {
                ""
            }
        ),
        "disconnected" => format!("disconnected  {}", str_of(v, "reason")),
        "twinLoaded" => format!(
            "twin loaded   desired {}  reported {}  → telemetryDelay {}",
            v.get("desired").unwrap_or(&Value::Null),
            v.get("reported").unwrap_or(&Value::Null),
            seconds(v)
        ),
        "delayChanged" => format!(
            "desired       telemetryDelay {} (version {}) → sending every {}",
            v.get("value").unwrap_or(&Value::Null),
            v.get("version").unwrap_or(&Value::Null),
            seconds(v)
        ),
        "delayRejected" => format!(
            "desired       telemetryDelay {} (version {}) ignored: {}; still every {}",
            v.get("value").unwrap_or(&Value::Null),
            v.get("version").unwrap_or(&Value::Null),
            str_of(v, "reason"),
            seconds(v)
        ),
        "reported" => format!(
            "reported      {} (version {})",
            v.get("patch").unwrap_or(&Value::Null),
            v.get("version").unwrap_or(&Value::Null)
        ),
        "telemetrySent" => format!(
            "{}  sent {}  temperatureAlert={}",
            str_of(v, "timestamp"),
            v.get("body").unwrap_or(&Value::Null),
            v.get("temperatureAlert").unwrap_or(&Value::Null)
        ),
        "sendFailed" => format!("send failed   {}", str_of(v, "reason")),
        "messageReceived" => format!(
            "message       {}  properties {}",
            str_of(v, "body"),
            v.get("properties").unwrap_or(&Value::Null)
        ),
        "methodCalled" => format!(
            "method        {} (answered 501: not implemented)",
            str_of(v, "name")
        ),
        _ => v.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_and_without_ports() {
        assert_eq!(
            host_and_port("localhost").unwrap(),
            ("localhost".into(), None)
        );
        assert_eq!(
            host_and_port("localhost:18883").unwrap(),
            ("localhost".into(), Some(18883))
        );
        assert_eq!(
            host_and_port("127.0.0.1:8883").unwrap(),
            ("127.0.0.1".into(), Some(8883))
        );
        assert!(host_and_port("localhost:99999").is_err());
    }

    #[test]
    fn events_read_like_the_lab() {
        let line = text(
            &json!({"event": "telemetrySent", "timestamp": "2026-11-26T10:00:00.000Z",
            "body": {"temperature": 31.5}, "temperatureAlert": true}),
        );
        assert_eq!(
            line,
            "2026-11-26T10:00:00.000Z  sent {\"temperature\":31.5}  temperatureAlert=true"
        );
        let line = text(
            &json!({"event": "delayChanged", "version": 2, "value": "2", "telemetryDelay": 2.0}),
        );
        assert_eq!(
            line,
            "desired       telemetryDelay \"2\" (version 2) → sending every 2 s"
        );
    }
}
