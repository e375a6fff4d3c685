//! `muster device simulate`: wiring from flags to `muster_device::simulate`, and the console
//! output of the lab's device (text lines, or one JSON object per line with `--output json`).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use muster_device::dps::{DpsCredentials, ProvisioningOptions, Transport};
use muster_device::hub::{HubCredentials, HubTransport};
use muster_device::simulate::{SimEvent, SimulatorOptions};
use muster_device::{Identity, Secret, TrustRoots};
use serde_json::{Value, json};

use crate::cli::{BenchCommand, DeviceCommand, FleetArgs, Output, SimulateArgs, TransportArg};

/// The AMQP port devices dial by default.
const AMQP_PORT: u16 = 5671;
/// The port WebSocket transports dial by default.
const HTTPS_PORT: u16 = 443;

/// The DPS and hub transports a `--transport` names (DPS over HTTPS goes on to the hub over
/// MQTT).
fn transports(arg: TransportArg) -> (Transport, HubTransport) {
    match arg {
        TransportArg::Mqtt => (Transport::Mqtt, HubTransport::Mqtt),
        TransportArg::Https => (Transport::Https, HubTransport::Mqtt),
        TransportArg::Amqp => (Transport::Amqp, HubTransport::Amqp),
        TransportArg::MqttWs => (Transport::MqttWs, HubTransport::MqttWs),
        TransportArg::AmqpWs => (Transport::AmqpWs, HubTransport::AmqpWs),
    }
}

pub(crate) fn run(command: DeviceCommand, output: Output) -> Result<()> {
    match command {
        DeviceCommand::Simulate(args) => simulate(&args, output),
        DeviceCommand::Fleet(args) => fleet(&args, output),
    }
}

pub(crate) fn bench(command: BenchCommand, output: Output) -> Result<()> {
    match command {
        BenchCommand::Handshake {
            ca_cert,
            ca_key,
            seconds,
            concurrency,
            json,
        } => {
            let (issuer, _) = load_ca(&ca_cert, &ca_key)?;
            if !(seconds > 0.0 && seconds.is_finite()) {
                bail!("--seconds must be a positive number");
            }
            let options = muster_device::handshake::HandshakeOptions {
                issuer: std::sync::Arc::new(issuer),
                duration: Duration::from_secs_f64(seconds),
                concurrency: concurrency.max(1),
            };
            let runtime = crate::api::runtime()?;
            let report = runtime.block_on(muster_device::handshake::run(options))?;
            if json || output == Output::Json {
                line(&serde_json::to_string(&report)?);
            } else {
                line(&format!(
                    "{} mutual-TLS handshakes in {:.1} s ({} failed), concurrency {}: {} handshakes/s",
                    report.handshakes,
                    report.seconds,
                    report.failures,
                    report.concurrency,
                    report.handshakes_per_sec
                ));
            }
            Ok(())
        }
    }
}

/// A CA from its certificate file (an intermediate may be followed by its chain) and key:
/// the issuer and the non-root certificates to send after each leaf.
fn load_ca(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(muster_pki::Issuer, Vec<muster_pki::Certificate>)> {
    let pem = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let certificates = muster_pki::read_certificates(&pem)
        .with_context(|| format!("cannot read a certificate from {}", cert.display()))?;
    let first = certificates
        .first()
        .cloned()
        .with_context(|| format!("{} holds no certificate", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let key = muster_pki::read_private_key(&key_pem, None)
        .with_context(|| format!("cannot read the key {}", key.display()))?;
    let issuer = muster_pki::Issuer::new(first, key)
        .with_context(|| format!("{} cannot sign", cert.display()))?;
    let chain = certificates
        .into_iter()
        .filter(|c| !c.is_self_signed())
        .collect();
    Ok((issuer, chain))
}

fn fleet(args: &FleetArgs, output: Output) -> Result<()> {
    use muster_device::fleet::{
        FleetOptions, HubTarget, Identities, Progress, ProvisioningTarget, ServiceTarget,
    };
    let identities = match (&args.ca_cert, &args.ca_key, &args.symmetric_key_env) {
        (Some(cert), Some(key), None) => {
            let (issuer, chain) = load_ca(cert, key)?;
            Identities::Mint {
                issuer: std::sync::Arc::new(issuer),
                chain,
            }
        }
        (None, None, Some(var)) => Identities::GroupKey(secret_from_env(var)?),
        _ => bail!("give --ca-cert and --ca-key (X.509) or --symmetric-key-env (group key)"),
    };
    let trust = match &args.trust {
        Some(path) => TrustRoots::from_pem_file(path)
            .with_context(|| format!("cannot load the trust bundle {}", path.display()))?,
        None => TrustRoots::webpki(),
    };
    let (transport, hub_transport) = transports(args.transport);
    let provisioning = match (&args.no_provision, &args.provisioning_host, &args.id_scope) {
        (true, _, _) => None,
        (false, Some(host), Some(scope)) => {
            let (host, port) = host_and_port(host)?;
            Some(ProvisioningTarget {
                host,
                port,
                id_scope: scope.clone(),
                transport,
            })
        }
        _ => bail!("give --provisioning-host and --id-scope, or --no-provision with --hub-host"),
    };
    let hub_port = args.hub_port.unwrap_or_else(|| {
        let given = provisioning.as_ref().and_then(|p| p.port);
        match transport {
            Transport::Mqtt => given.unwrap_or(muster_device::hub::DEFAULT_PORT),
            Transport::Amqp => given.unwrap_or(AMQP_PORT),
            Transport::MqttWs | Transport::AmqpWs => given.unwrap_or(HTTPS_PORT),
            Transport::Https => muster_device::hub::DEFAULT_PORT,
        }
    });
    let service = if args.fanout || args.soak {
        let text = match &args.hub_connection_string {
            Some(cs) => cs.clone(),
            None => crate::serve::local_info(&args.data_dir)?
                .get("hubConnectionString")
                .and_then(Value::as_str)
                .context("the data directory has no hub connection string")?
                .to_owned(),
        };
        let cs = muster_auth::connection_string::ConnectionString::parse(&text)?;
        Some(ServiceTarget {
            base_url: format!("https://{}", cs.host_name),
            token_host: cs.host_name.clone(),
            key_name: cs
                .key_name
                .clone()
                .context("the connection string has no SharedAccessKeyName")?,
            key: cs
                .key
                .context("the connection string has no SharedAccessKey")?,
        })
    } else {
        None
    };
    let options = FleetOptions {
        devices: args.devices,
        prefix: args.prefix.clone(),
        concurrency: args.concurrency,
        connect_rate: args.connect_rate,
        identities,
        trust,
        provisioning,
        hub: HubTarget {
            host: args.hub_host.clone(),
            port: hub_port,
            transport: hub_transport,
        },
        duration: args.duration,
        telemetry_interval: args.telemetry_interval,
        qos: args.qos,
        payload_bytes: args.payload_bytes,
        lab_payload: args.lab_payload,
        in_flight: args.in_flight,
        // One address: let the system choose (which also works for remote hosts).
        source_addresses: if args.source_addresses > 1 {
            (1..=args.source_addresses)
                .map(|i| std::net::IpAddr::from([127, 0, 0, i]))
                .collect()
        } else {
            Vec::new()
        },
        fanout: if args.fanout { service.clone() } else { None },
        fanout_concurrency: args.fanout_concurrency,
        identity_dir: args.identity_dir.clone(),
        soak: match (&service, args.soak) {
            (Some(service), true) => Some(muster_device::soak::SoakOptions {
                service: service.clone(),
                service_ops_per_sec: args.service_ops_per_sec,
                churn_per_minute: args.churn_per_minute / 100.0,
                run_id: args.soak_run.clone().unwrap_or_else(|| {
                    time::OffsetDateTime::now_utc().unix_timestamp().to_string()
                }),
                ledger: args.soak_ledger.clone(),
            }),
            _ => None,
        },
    };
    if let Some(dir) = &args.identity_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    raise_fd_limit(args.devices);
    let progress = std::sync::Arc::new(Progress::default());
    let runtime = crate::api::runtime()?;
    let devices = args.devices as u64;
    let bars = !args.json
        && output != Output::Json
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (report, server) = runtime.block_on(async {
        let before = match &args.metrics_url {
            Some(url) => Some(scrape(url).await?),
            None => None,
        };
        let watcher =
            bars.then(|| tokio::spawn(show_progress(std::sync::Arc::clone(&progress), devices)));
        let report = muster_device::fleet::run(options, std::sync::Arc::clone(&progress)).await;
        if let Some(w) = watcher {
            w.abort();
        }
        let server = match (&args.metrics_url, before) {
            (Some(url), Some(before)) => Some(server_figures(&before, &scrape(url).await?)),
            _ => None,
        };
        anyhow::Ok((report?, server))
    })?;
    if args.json || output == Output::Json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(o), Some(s)) = (v.as_object_mut(), &server) {
            o.insert("serverMetrics".into(), s.clone());
        }
        line(&serde_json::to_string(&v)?);
    } else {
        for l in summary(&report) {
            line(&l);
        }
        if let Some(s) = &server {
            for l in server_summary(s) {
                line(&l);
            }
        }
    }
    Ok(())
}

/// Read a Prometheus text page: series (name with labels) → value.
async fn scrape(url: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    let text = reqwest::get(url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot read the server's metrics at {url}"))?
        .text()
        .await
        .with_context(|| format!("cannot read the server's metrics at {url}"))?;
    Ok(parse_metrics(&text))
}

fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// What the server's metrics say about the run: counter increases and the gauges after it.
fn server_figures(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Value {
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let commits = delta("muster_event_log_commit_seconds_count");
    let per_commit = |k: &str| {
        if commits > 0.0 {
            delta(k) / commits
        } else {
            0.0
        }
    };
    let mut out = serde_json::Map::new();
    out.insert(
        "telemetryStored".into(),
        json!(delta("muster_telemetry_messages_total")),
    );
    out.insert(
        "telemetryRefused".into(),
        json!(delta("muster_telemetry_refused_total")),
    );
    out.insert("eventLogCommits".into(), json!(commits));
    out.insert(
        "eventsPerCommit".into(),
        json!((per_commit("muster_event_log_batch_size_sum") * 10.0).round() / 10.0),
    );
    out.insert(
        "commitMs".into(),
        json!((per_commit("muster_event_log_commit_seconds_sum") * 1e6).round() / 1e3),
    );
    let labelled = |prefix: &str| -> serde_json::Map<String, Value> {
        after
            .keys()
            .filter(|k| k.starts_with(prefix))
            .filter_map(|k| {
                let d = delta(k);
                (d != 0.0).then(|| (k.trim_start_matches(prefix).to_owned(), json!(d)))
            })
            .collect()
    };
    out.insert(
        "registrations".into(),
        Value::Object(labelled("muster_dps_registrations_total")),
    );
    out.insert(
        "connectionsOpened".into(),
        Value::Object(labelled("muster_connections_opened_total")),
    );
    out.insert(
        "tlsHandshakeFailures".into(),
        Value::Object(labelled("muster_tls_handshake_failures_total")),
    );
    out.insert(
        "c2dQueueDepth".into(),
        json!(after.get("muster_c2d_queue_depth").copied().unwrap_or(0.0)),
    );
    out.insert(
        "devicesConnected".into(),
        json!(
            after
                .get("muster_devices_connected")
                .copied()
                .unwrap_or(0.0)
        ),
    );
    Value::Object(out)
}

fn server_summary(s: &Value) -> Vec<String> {
    let n = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut out = vec![format!(
        "server       {:>9} stored {:>5} refused   {} commits, {:.1} events and {:.3} ms each",
        n("telemetryStored"),
        n("telemetryRefused"),
        n("eventLogCommits"),
        n("eventsPerCommit"),
        n("commitMs")
    )];
    for key in ["registrations", "connectionsOpened", "tlsHandshakeFailures"] {
        if let Some(o) = s.get(key).and_then(Value::as_object)
            && !o.is_empty()
        {
            let parts: Vec<String> = o.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push(format!("server       {key}: {}", parts.join(", ")));
        }
    }
    out
}

/// Raise the open-file limit so a big fleet is not stopped by it (best effort).
fn raise_fd_limit(devices: usize) {
    let wanted = u64::try_from(devices)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(1024);
    if let Err(e) = rlimit::increase_nofile_limit(wanted) {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
}

/// Live progress bars on stderr while the fleet runs.
async fn show_progress(progress: std::sync::Arc<muster_device::fleet::Progress>, devices: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = |name: &str| {
        let b = multi.add(indicatif::ProgressBar::new(devices));
        b.set_style(style.clone());
        b.set_prefix(name.to_owned());
        b
    };
    let provision = bar("provision");
    let connect = bar("connect");
    let telemetry = multi.add(indicatif::ProgressBar::new_spinner());
    telemetry.set_prefix("telemetry");
    loop {
        provision.set_position(
            progress.provisioned.load(Relaxed) + progress.provision_failed.load(Relaxed),
        );
        provision.set_message(format!(
            "{} failed",
            progress.provision_failed.load(Relaxed)
        ));
        connect
            .set_position(progress.connected.load(Relaxed) + progress.connect_failed.load(Relaxed));
        connect.set_message(format!("{} failed", progress.connect_failed.load(Relaxed)));
        telemetry.set_message(format!(
            "{} sent, {} acknowledged, {} failed",
            progress.messages_sent.load(Relaxed),
            progress.messages_acked.load(Relaxed),
            progress.publish_failed.load(Relaxed)
        ));
        telemetry.tick();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The end-of-run table.
fn summary(r: &muster_device::fleet::FleetReport) -> Vec<String> {
    let p = |x: &muster_device::fleet::Percentiles| {
        format!(
            "p50 {:.2} ms  p90 {:.2}  p99 {:.2}  max {:.2}",
            x.p50, x.p90, x.p99, x.max
        )
    };
    let mut out = vec![
        format!(
            "{:<12} {:>9} ok {:>7} failed {:>10.1}/s   {}",
            "provision",
            r.provisioned,
            r.provision_failed,
            r.provision_per_sec,
            p(&r.provision_latency_ms)
        ),
        format!(
            "{:<12} {:>9} ok {:>7} failed {:>10.1}/s   {}",
            "connect",
            r.connected,
            r.connect_failed,
            r.connect_per_sec,
            p(&r.connect_latency_ms)
        ),
        format!(
            "{:<12} {:>9} ok {:>7} failed {:>10.1}/s   {}",
            "telemetry",
            r.messages_acked,
            r.publish_failed,
            r.messages_per_sec,
            p(&r.publish_latency_ms)
        ),
    ];
    if r.twin_fanout_received > 0 {
        out.push(format!(
            "{:<12} {:>9} ok {:>7} missed  last after {:.1} ms   {}",
            "fan-out",
            r.twin_fanout_received,
            r.connected.saturating_sub(r.twin_fanout_received),
            r.twin_fanout_total_ms,
            p(&r.twin_fanout_ms)
        ));
    }
    if let Some(s) = &r.soak {
        out.push(format!(
            "{:<12} {:>9} reconnects {} failed; twin {} patched {} failed {} seen, {} reported failed",
            "soak", s.reconnects, s.reconnect_failed, s.twin_patches, s.twin_patch_failed, s.desired_received, s.reported_failed
        ));
        out.push(format!(
            "{:<12} c2d {} sent {} failed {} received; methods {} answered {} offline {} failed   {}",
            "soak", s.c2d_sent, s.c2d_failed, s.c2d_received, s.methods_answered, s.methods_offline, s.methods_failed, p(&s.method_latency_ms)
        ));
    }
    for e in &r.errors {
        out.push(format!("error ({}, {}×): {}", e.phase, e.count, e.message));
    }
    out
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
        // The device client's errors name the file already.
        return Ok(Identity::from_pkcs12(cert, &password)?);
    }
    Ok(Identity::from_pem_files(cert, args.key.as_deref())?)
}

fn simulate(args: &SimulateArgs, output: Output) -> Result<()> {
    let (host, port) = host_and_port(&args.provisioning_host)?;
    let trust = match &args.trust {
        Some(path) => TrustRoots::from_pem_file(path)
            .with_context(|| format!("cannot load the trust bundle {}", path.display()))?,
        None => TrustRoots::webpki(),
    };
    let mut printer = Printer {
        output,
        told_how_to_stop: false,
    };
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
                "sha256Thumbprint": identity.sha256_thumbprint(),
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
    let (transport, hub_transport) = transports(args.transport);
    provisioning.transport = transport;
    // muster serves DPS and the hub on the same port of each protocol.
    let hub_port = args.hub_port.unwrap_or(match provisioning.transport {
        Transport::Https => muster_device::hub::DEFAULT_PORT,
        _ => provisioning.port(),
    });
    let options = SimulatorOptions {
        provisioning,
        hub_credentials,
        hub_port,
        hub_transport,
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
    /// Whether "Ctrl-C to exit" has been said.
    told_how_to_stop: bool,
}

impl Printer {
    fn event(&mut self, value: &Value) {
        match self.output {
            Output::Json => line(&value.to_string()),
            Output::Table => {
                line(&text(value));
                if str_of(value, "event") == "connected" && !self.told_how_to_stop {
                    self.told_how_to_stop = true;
                    line("              Ctrl-C to exit");
                }
            }
        }
    }

    fn sim(&mut self, event: &SimEvent) {
        let value = serde_json::to_value(event).unwrap_or(Value::Null);
        self.event(&value);
    }
}

/// What type each reported value has, as the lab's device shows it: ` — telemetryDelay is a
/// number`.
fn value_types(patch: Option<&Value>) -> String {
    let Some(Value::Object(o)) = patch else {
        return String::new();
    };
    let kinds: Vec<String> = o
        .iter()
        .map(|(k, v)| {
            let kind = match v {
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Bool(_) => "a boolean",
                Value::Null => "null",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            format!("{k} is {kind}")
        })
        .collect();
    if kinds.is_empty() {
        String::new()
    } else {
        format!(" — {}", kinds.join(", "))
    }
}

/// Print a line and flush, so a pipe sees each event as it happens.
fn line(text: &str) {
    crate::write_out(format_args!("{text}"));
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
            "certificate   {}  SHA-1 {}  SHA-256 {}  (valid until {})",
            str_of(v, "subject"),
            str_of(v, "thumbprint"),
            str_of(v, "sha256Thumbprint"),
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
            "reported      {} (version {}){}",
            v.get("patch").unwrap_or(&Value::Null),
            v.get("version").unwrap_or(&Value::Null),
            value_types(v.get("patch"))
        ),
        "telemetrySent" => format!(
            "{}  sent {}  temperatureAlert={}",
            str_of(v, "timestamp"),
            v.get("body").unwrap_or(&Value::Null),
            v.get("temperatureAlert").unwrap_or(&Value::Null)
        ),
        "sendFailed" => format!("send failed   {}", str_of(v, "reason")),
        "reportFailed" => format!(
            "report failed {} ({})",
            v.get("patch").unwrap_or(&Value::Null),
            str_of(v, "reason")
        ),
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
