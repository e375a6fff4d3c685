//! Provision a device with its X.509 certificate, connect to the hub it was assigned, read
//! the twin, report a property, send a few telemetry messages and answer direct methods
//! meanwhile.
//!
//! With a server started by `muster serve` and a device certificate from
//! `muster certs create-device-cert simulated-device1` (see README.md):
//!
//! ```sh
//! cargo run -p muster-device --example provision_and_send -- \
//!     --scope "$(muster info --json | jq -r .idScope)" \
//!     --cert certs/simulated-device1.pem --key certs/simulated-device1.key.pem \
//!     --trust muster-data/tls/ca.pem
//! ```
//!
//! Options: `--host` (default `localhost`), `--port` (MQTT, default 8883), `--messages N`
//! (default 5).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::path::PathBuf;
use std::time::Duration;

use muster_device::{
    DpsCredentials, HubClient, HubCredentials, HubEvent, HubOptions, Identity, Message,
    ProvisioningClient, ProvisioningOptions, TrustRoots,
};
use serde_json::json;

#[derive(Debug)]
struct Args {
    host: String,
    port: u16,
    scope: String,
    cert: PathBuf,
    key: Option<PathBuf>,
    trust: Option<PathBuf>,
    messages: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "localhost".into(),
        port: 8883,
        scope: String::new(),
        cert: PathBuf::new(),
        key: None,
        trust: None,
        messages: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--host" => args.host = value()?,
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--scope" => args.scope = value()?,
            "--cert" => args.cert = value()?.into(),
            "--key" => args.key = Some(value()?.into()),
            "--trust" => args.trust = Some(value()?.into()),
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.scope.is_empty() || args.cert.as_os_str().is_empty() {
        return Err("usage: provision_and_send --scope ID_SCOPE --cert DEVICE.pem [--key DEVICE.key.pem] [--trust CA.pem] [--host HOST] [--port 8883] [--messages N]".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let identity = Identity::from_pem_files(&args.cert, args.key.as_deref())?;
    let trust = match &args.trust {
        Some(path) => TrustRoots::from_pem_file(path)?,
        None => TrustRoots::default(),
    };
    println!(
        "device certificate: CN={} thumbprint={}",
        identity.common_name().unwrap_or("?"),
        identity.thumbprint()
    );

    // 1. Provision.
    let mut options = ProvisioningOptions::new(
        args.host.clone(),
        args.scope.clone(),
        DpsCredentials::X509(identity.clone()),
    );
    options.port = Some(args.port);
    options.trust = trust.clone();
    let registration = ProvisioningClient::new(options)?.register().await?;
    println!(
        "provisioned: hub {} device {} ({})",
        registration.assigned_hub,
        registration.device_id,
        registration.substatus.as_deref().unwrap_or("-")
    );

    // 2. Connect to the assigned hub with the same certificate.
    let mut options = HubOptions::for_registration(&registration, HubCredentials::X509(identity));
    options.port = args.port;
    options.trust = trust;
    let (client, mut events) = HubClient::connect(options).await?;

    // 3. Twin: read it, report something.
    let twin = client.get_twin().await?;
    println!("desired properties: {}", twin.desired);
    let version = client
        .patch_reported(&json!({"firmware": "muster-device example", "telemetryDelay": twin.desired.get("telemetryDelay")}))
        .await?;
    println!("reported properties now at version {version}");

    // 4. Telemetry, while answering whatever the hub sends.
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0;
    while sent < args.messages {
        tokio::select! {
            _ = ticker.tick() => {
                sent += 1;
                let message = Message::json(&json!({"temperature": 20.0 + f64::from(sent) / 10.0}))
                    .with_message_id(format!("example-{sent}"))
                    .with_property("temperatureAlert", "false");
                client.send_telemetry(message).await?;
                println!("telemetry {sent}/{} acknowledged", args.messages);
            }
            event = events.recv() => match event {
                Some(HubEvent::MethodCall { name, rid, payload }) => {
                    println!("method {name}({payload}) called");
                    client.respond_method(&rid, 200, &json!({"handled": name})).await?;
                }
                Some(HubEvent::DesiredPatch(patch)) => println!("desired patch: {patch}"),
                Some(HubEvent::C2d(message)) => {
                    println!("cloud-to-device: {}", String::from_utf8_lossy(&message.body));
                }
                Some(other) => println!("{other:?}"),
                None => break,
            },
        }
    }
    client.close().await?;
    println!("closed");
    Ok(())
}
