//! A fleet of simulated devices as a load generator: provisioning storm, connect storm,
//! telemetry and desired-property fan-out, measured with HDR histograms.
//!
//! [`run`] drives the phases one after the other so each figure is measured on its own:
//! 1. **provision** every device through DPS (skipped with [`FleetOptions::provisioning`] =
//!    `None`: devices then connect straight to [`FleetOptions::hub`], which may be any MQTT
//!    broker),
//! 2. **connect** every device to its hub,
//! 3. **telemetry** for [`FleetOptions::duration`], each device at its interval or as fast as
//!    its in-flight window allows,
//! 4. optionally **fan-out**: a desired-property patch to every device through the service
//!    REST API, timed from the PATCH to the device's notification.
//!
//! Identities are minted on the fly (a leaf per device from a CA, CN = `{prefix}{index}`) or
//! derived from a symmetric-key group key, all before the first timed phase (on every core),
//! so the figures measure the server rather than the generator's certificate factory.
//! Concurrency is bounded by a semaphore, the connect rate by a schedule (device *i* starts no
//! earlier than *i / rate* seconds in) — no shared lock on any hot path: counters are atomics,
//! histograms are per task and merged at the end.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use muster_auth::Secret;
use muster_pki::{Algorithm, Certificate, Issuer, Profile, Request};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::dps::{DpsCredentials, ProvisioningClient, ProvisioningOptions, Transport};
use crate::error::Error;
use crate::hub::{HubClient, HubCredentials, HubEvent, HubEvents, HubOptions, Message};
use crate::identity::{Identity, TrustRoots};

/// Where device identities come from.
#[derive(Debug, Clone)]
pub enum Identities {
    /// Mint an ECDSA P-256 leaf per device from this CA; `chain` (intermediates, may be empty)
    /// is sent after the leaf.
    Mint {
        /// The signing CA.
        issuer: Arc<Issuer>,
        /// Certificates sent after the leaf.
        chain: Vec<Certificate>,
    },
    /// Derive each device's key from a symmetric-key enrollment group's key.
    GroupKey(Secret),
}

/// The provisioning service to register with.
#[derive(Debug, Clone)]
pub struct ProvisioningTarget {
    /// Host name.
    pub host: String,
    /// Port (`None`: the transport's default).
    pub port: Option<u16>,
    /// ID scope.
    pub id_scope: String,
    /// MQTT or HTTPS.
    pub transport: Transport,
}

/// The hub (or MQTT broker) to connect to.
#[derive(Debug, Clone)]
pub struct HubTarget {
    /// Host name; `None`: the one provisioning assigned.
    pub host: Option<String>,
    /// Port (8883 for MQTT, 5671 for AMQP).
    pub port: u16,
    /// MQTT or AMQP.
    pub transport: crate::hub::HubTransport,
}

/// The service API used for the fan-out phase.
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    /// `https://host:port`.
    pub base_url: String,
    /// Host name the SAS token is scoped to (the connection string's `HostName`).
    pub token_host: String,
    /// Policy name (`iothubowner`, `service`).
    pub key_name: String,
    /// Policy key.
    pub key: Secret,
}

/// What the fleet does.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of devices.
    pub devices: usize,
    /// Device ids and common names are `{prefix}{index}`.
    pub prefix: String,
    /// Devices provisioning or connecting at once.
    pub concurrency: usize,
    /// New provisionings / connections per second (`None`: as fast as concurrency allows).
    pub connect_rate: Option<f64>,
    /// Identities.
    pub identities: Identities,
    /// Roots the servers' certificates chain to.
    pub trust: TrustRoots,
    /// Provision first (`None`: connect straight to `hub`).
    pub provisioning: Option<ProvisioningTarget>,
    /// The hub.
    pub hub: HubTarget,
    /// Length of the telemetry phase (zero: none).
    pub duration: Duration,
    /// Per-device telemetry interval (zero: as fast as the in-flight window allows).
    pub telemetry_interval: Duration,
    /// 0 or 1.
    pub qos: u8,
    /// Size of each telemetry body.
    pub payload_bytes: usize,
    /// Send the lab's readings instead of `payload_bytes` filler: a JSON body with temperature
    /// and humidity, the `temperatureAlert` property and a JSON content type (what routing
    /// conditions read).
    pub lab_payload: bool,
    /// Unacknowledged QoS 1 messages per device when sending as fast as possible.
    pub in_flight: usize,
    /// Local addresses to connect from, used round robin (empty: the system's choice).
    pub source_addresses: Vec<IpAddr>,
    /// Run the fan-out phase against this service API.
    pub fanout: Option<ServiceTarget>,
    /// PATCH requests in flight during the fan-out (1: each notification timed alone).
    pub fanout_concurrency: usize,
    /// Keep minted identities here (`{id}.pem`, `{id}.key.pem`) and reuse them on later runs,
    /// so a fleet can connect with `--no-provision` to the devices an earlier run provisioned.
    pub identity_dir: Option<std::path::PathBuf>,
    /// Make the telemetry phase a soak: service calls and reconnect churn mixed in.
    pub soak: Option<crate::soak::SoakOptions>,
}

/// Live counters, readable while the fleet runs (for progress bars).
#[derive(Debug, Default)]
pub struct Progress {
    /// Devices provisioned.
    pub provisioned: AtomicU64,
    /// Provisioning failures.
    pub provision_failed: AtomicU64,
    /// Devices connected.
    pub connected: AtomicU64,
    /// Connection failures.
    pub connect_failed: AtomicU64,
    /// Messages sent.
    pub messages_sent: AtomicU64,
    /// Messages acknowledged (QoS 1) or written (QoS 0).
    pub messages_acked: AtomicU64,
    /// Messages that failed.
    pub publish_failed: AtomicU64,
    /// Desired-patch notifications received in the fan-out phase.
    pub fanout_received: AtomicU64,
    /// The phase running: 0 provision, 1 connect, 2 telemetry, 3 fan-out, 4 done.
    pub phase: AtomicU64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds, in milliseconds (3 decimals).
    #[must_use]
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        #[allow(clippy::cast_precision_loss, reason = "microseconds shown as ms")]
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// The fleet's figures; serialized, the `--json` summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetReport {
    /// Devices in the fleet.
    pub devices: u64,
    /// Registered.
    pub provisioned: u64,
    /// Refused or failed registrations.
    pub provision_failed: u64,
    /// Registrations per second over the provisioning phase.
    pub provision_per_sec: f64,
    /// Registration latency (start of the TLS connection to `assigned`).
    pub provision_latency_ms: Percentiles,
    /// Connected to the hub.
    pub connected: u64,
    /// Failed connections.
    pub connect_failed: u64,
    /// Connections per second over the connect phase.
    pub connect_per_sec: f64,
    /// Connect latency (TCP + TLS + CONNACK + subscriptions).
    pub connect_latency_ms: Percentiles,
    /// Telemetry messages sent.
    pub messages_sent: u64,
    /// Acknowledged (QoS 1: PUBACK, i.e. durable in muster; QoS 0: written).
    pub messages_acked: u64,
    /// Failed messages.
    pub publish_failed: u64,
    /// Acknowledged messages per second over the telemetry phase.
    pub messages_per_sec: f64,
    /// Publish → acknowledgement latency.
    pub publish_latency_ms: Percentiles,
    /// PATCH → device notification latency per device in the fan-out phase.
    pub twin_fanout_ms: Percentiles,
    /// From the first PATCH to the last notification.
    pub twin_fanout_total_ms: f64,
    /// Notifications received in the fan-out phase.
    pub twin_fanout_received: u64,
    /// The soak's figures, when the telemetry phase was a soak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<crate::soak::SoakReport>,
    /// The first distinct errors, with how often each happened.
    pub errors: Vec<ErrorCount>,
}

/// An error message and its count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    /// The phase.
    pub phase: &'static str,
    /// The message.
    pub message: String,
    /// How many times.
    pub count: u64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("1 µs .. 1 h at 3 digits is a valid histogram"))
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[allow(clippy::cast_precision_loss, reason = "a rate for display")]
fn rate(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        return 0.0;
    }
    (count as f64 / s * 10.0).round() / 10.0
}

/// Errors seen, counted by (phase, message); keeps at most 16 distinct ones.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<ErrorCount>);

impl Errors {
    pub(crate) fn add(&mut self, phase: &'static str, message: String) {
        if let Some(e) = self
            .0
            .iter_mut()
            .find(|e| e.phase == phase && e.message == message)
        {
            e.count += 1;
        } else if self.0.len() < 16 {
            self.0.push(ErrorCount {
                phase,
                message,
                count: 1,
            });
        }
    }
}

/// The id of device `index`.
#[must_use]
pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}")
}

/// Write a file readable by its owner only (it may hold a private key).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Device `index`'s credentials: DPS and hub.
fn credentials(
    options: &FleetOptions,
    index: usize,
) -> Result<(DpsCredentials, HubCredentials), Error> {
    let id = device_id(&options.prefix, index);
    match &options.identities {
        Identities::Mint { issuer, chain } => {
            if let Some(dir) = &options.identity_dir {
                let cert = dir.join(format!("{id}.pem"));
                let key = dir.join(format!("{id}.key.pem"));
                if cert.exists() && key.exists() {
                    let identity = Identity::from_pem_files(&cert, Some(&key))?;
                    return Ok((
                        DpsCredentials::X509(identity.clone()),
                        HubCredentials::X509(identity),
                    ));
                }
            }
            let now = time::OffsetDateTime::now_utc();
            let issued = issuer
                .issue(
                    &Request {
                        common_name: id.clone(),
                        organization: None,
                        profile: Profile::Client,
                        not_before: now - time::Duration::hours(1),
                        not_after: now + time::Duration::days(30),
                    },
                    Algorithm::EcdsaP256,
                )
                .map_err(|source| Error::Certificate {
                    context: "minting a device certificate".to_owned(),
                    source,
                })?;
            let mut certificates = vec![issued.certificate];
            certificates.extend(chain.iter().cloned());
            if let Some(dir) = &options.identity_dir {
                let pem: String = certificates.iter().map(Certificate::to_pem).collect();
                let write = |name: String, text: &str| {
                    let path = dir.join(name);
                    write_private(&path, text.as_bytes())
                        .map_err(|source| Error::File { path, source })
                };
                write(format!("{id}.key.pem"), &issued.key.to_pem())?;
                write(format!("{id}.pem"), &pem)?;
            }
            let identity = Identity::new(certificates, issued.key)?;
            Ok((
                DpsCredentials::X509(identity.clone()),
                HubCredentials::X509(identity),
            ))
        }
        Identities::GroupKey(group) => {
            let dps = DpsCredentials::from_group_key(&id, group)?;
            let key = match &dps {
                DpsCredentials::SymmetricKey { key, .. } => key.clone(),
                DpsCredentials::X509(_) => unreachable!("from_group_key makes a symmetric key"),
            };
            Ok((dps, HubCredentials::sas(key)))
        }
    }
}

fn source(options: &FleetOptions, index: usize) -> Option<IpAddr> {
    if options.source_addresses.is_empty() {
        return None;
    }
    options
        .source_addresses
        .get(index % options.source_addresses.len())
        .copied()
}

/// Wait for device `index`'s slot in the connect-rate schedule.
async fn pace(start: Instant, rate: Option<f64>, index: usize) {
    if let Some(r) = rate.filter(|r| *r > 0.0) {
        #[allow(clippy::cast_precision_loss, reason = "a schedule offset")]
        let at = start + Duration::from_secs_f64(index as f64 / r);
        tokio::time::sleep_until(at).await;
    }
}

/// A device ready to connect: its id, hub and credentials.
struct Ready {
    index: usize,
    device_id: String,
    hub: String,
    credentials: HubCredentials,
}

/// A connected device.
pub(crate) struct Connected {
    pub(crate) device_id: String,
    pub(crate) client: HubClient,
    pub(crate) events: HubEvents,
    /// How it connected (to connect again in a soak's churn).
    pub(crate) options: HubOptions,
}

/// Identities minted per device (`None` where minting failed to run).
type Minted = Vec<Option<(DpsCredentials, HubCredentials)>>;

/// Identities for every device, before any timed phase.
async fn mint(options: &Arc<FleetOptions>) -> Result<Minted, Error> {
    // Identities first, outside every timed phase: minting is the load generator's work, not
    // the server's. Spread over the blocking pool (all cores).
    let mut minted: Minted = Vec::new();
    minted.resize_with(options.devices, || None);
    let chunk = options.devices.div_ceil(8).max(1);
    let mut minting = JoinSet::new();
    for first in (0..options.devices).step_by(chunk) {
        let options = Arc::clone(options);
        minting.spawn_blocking(move || {
            let last = (first + chunk).min(options.devices);
            (first..last)
                .map(|i| (i, credentials(&options, i)))
                .collect::<Vec<_>>()
        });
    }
    while let Some(joined) = minting.join_next().await {
        for (i, made) in joined.map_err(|e| Error::InvalidOptions(format!("minting: {e}")))? {
            if let Some(slot) = minted.get_mut(i) {
                *slot = Some(made?);
            }
        }
    }

    Ok(minted)
}

/// Phase 1: register every device (or take its identity as it is without provisioning).
async fn provision(
    options: &Arc<FleetOptions>,
    minted: Minted,
    limit: &Arc<Semaphore>,
    progress: &Arc<Progress>,
    report: &mut FleetReport,
    errors: &mut Errors,
) -> Vec<Ready> {
    let mut ready = Vec::with_capacity(options.devices);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (index, made) in minted.into_iter().enumerate() {
        let Some((dps, hub)) = made else { continue };
        let options = Arc::clone(options);
        let limit = Arc::clone(limit);
        let progress = Arc::clone(progress);
        tasks.spawn(async move {
            pace(start, options.connect_rate, index).await;
            let _permit = limit.acquire_owned().await;
            let Some(target) = &options.provisioning else {
                return Ok::<_, Error>((
                    Ready {
                        index,
                        device_id: device_id(&options.prefix, index),
                        hub: options.hub.host.clone().unwrap_or_default(),
                        credentials: hub,
                    },
                    None,
                ));
            };
            let mut p = ProvisioningOptions::new(target.host.clone(), target.id_scope.clone(), dps);
            p.port = target.port;
            p.transport = target.transport;
            p.trust = options.trust.clone();
            p.local_address = source(&options, index);
            let began = Instant::now();
            let result = ProvisioningClient::new(p)?.register().await;
            let took = began.elapsed();
            match result {
                Ok(r) => {
                    progress.provisioned.fetch_add(1, Ordering::Relaxed);
                    Ok((
                        Ready {
                            index,
                            device_id: r.device_id,
                            hub: options.hub.host.clone().unwrap_or(r.assigned_hub),
                            credentials: hub,
                        },
                        Some(took),
                    ))
                }
                Err(e) => {
                    progress.provision_failed.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        });
    }
    let mut provision_latency = histogram();
    let mut last_done = start;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((r, took))) => {
                if let Some(took) = took {
                    let _ = provision_latency.record(micros(took));
                    report.provisioned += 1;
                    last_done = Instant::now();
                }
                ready.push(r);
            }
            Ok(Err(e)) => {
                report.provision_failed += 1;
                errors.add("provision", muster_types::report(&e));
            }
            Err(e) => errors.add("provision", format!("task failed: {e}")),
        }
    }
    if options.provisioning.is_some() {
        report.provision_per_sec = rate(report.provisioned, last_done.duration_since(start));
        report.provision_latency_ms = Percentiles::of(&provision_latency);
    }
    ready.sort_by_key(|r| r.index);

    ready
}

/// Phase 2: connect every ready device to its hub.
async fn connect(
    options: &Arc<FleetOptions>,
    ready: Vec<Ready>,
    limit: &Arc<Semaphore>,
    progress: &Arc<Progress>,
    report: &mut FleetReport,
    errors: &mut Errors,
) -> Vec<Connected> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (slot, device) in ready.into_iter().enumerate() {
        let options = Arc::clone(options);
        let limit = Arc::clone(limit);
        let progress = Arc::clone(progress);
        tasks.spawn(async move {
            pace(start, options.connect_rate, slot).await;
            let _permit = limit.acquire_owned().await;
            let mut hub = HubOptions::new(device.hub, device.device_id.clone(), device.credentials);
            hub.port = options.hub.port;
            hub.transport = options.hub.transport;
            hub.trust = options.trust.clone();
            hub.local_address = source(&options, device.index);
            hub.max_in_flight = options.in_flight.clamp(1, 65_000);
            hub.reconnect.max_attempts = Some(3);
            let began = Instant::now();
            match HubClient::connect(hub.clone()).await {
                Ok((client, events)) => {
                    progress.connected.fetch_add(1, Ordering::Relaxed);
                    Ok((
                        Connected {
                            device_id: device.device_id,
                            client,
                            events,
                            options: hub,
                        },
                        began.elapsed(),
                    ))
                }
                Err(e) => {
                    progress.connect_failed.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        });
    }
    let mut connect_latency = histogram();
    let mut fleet = Vec::with_capacity(options.devices);
    let mut last_done = start;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((c, took))) => {
                let _ = connect_latency.record(micros(took));
                last_done = Instant::now();
                fleet.push(c);
            }
            Ok(Err(e)) => {
                report.connect_failed += 1;
                errors.add("connect", muster_types::report(&e));
            }
            Err(e) => errors.add("connect", format!("task failed: {e}")),
        }
    }
    report.connected = fleet.len() as u64;
    report.connect_per_sec = rate(report.connected, last_done.duration_since(start));
    report.connect_latency_ms = Percentiles::of(&connect_latency);

    fleet
}

/// Run the fleet. `progress` is updated as it goes.
///
/// # Errors
/// [`Error::InvalidOptions`] for impossible options; device failures are counted in the
/// report, not returned.
pub async fn run(options: FleetOptions, progress: Arc<Progress>) -> Result<FleetReport, Error> {
    if options.devices == 0 || options.concurrency == 0 {
        return Err(Error::InvalidOptions(
            "devices and concurrency must be at least 1".into(),
        ));
    }
    if options.qos > 1 {
        return Err(Error::InvalidOptions("qos must be 0 or 1".into()));
    }
    if options.provisioning.is_none() && options.hub.host.is_none() {
        return Err(Error::InvalidOptions(
            "without provisioning, the hub host must be given".into(),
        ));
    }
    let options = Arc::new(options);
    let mut report = FleetReport {
        devices: options.devices as u64,
        ..FleetReport::default()
    };
    let mut errors = Errors::default();

    let minted = mint(&options).await?;

    // Phase 1: provision (or take the identities as they are).
    progress.phase.store(0, Ordering::Relaxed);
    let limit = Arc::new(Semaphore::new(options.concurrency));
    let ready = provision(
        &options,
        minted,
        &limit,
        &progress,
        &mut report,
        &mut errors,
    )
    .await;

    // Phase 2: connect.
    progress.phase.store(1, Ordering::Relaxed);
    let mut fleet = connect(&options, ready, &limit, &progress, &mut report, &mut errors).await;

    // Phase 3: telemetry (or a soak).
    progress.phase.store(2, Ordering::Relaxed);
    if let Some(soak) = options.soak.clone()
        && !options.duration.is_zero()
        && !fleet.is_empty()
    {
        let (devices, figures, latency) =
            crate::soak::run(&options, &soak, fleet, &progress, &mut errors).await;
        fleet = devices;
        report.messages_sent = progress.messages_sent.load(Ordering::Relaxed);
        report.messages_acked = progress.messages_acked.load(Ordering::Relaxed);
        report.publish_failed = progress.publish_failed.load(Ordering::Relaxed);
        report.messages_per_sec = rate(report.messages_acked, options.duration);
        report.publish_latency_ms = Percentiles::of(&latency);
        report.soak = Some(figures);
    } else if !options.duration.is_zero() && !fleet.is_empty() {
        let (latency, phase_errors) = telemetry(&options, &fleet, &progress).await;
        report.messages_sent = progress.messages_sent.load(Ordering::Relaxed);
        report.messages_acked = progress.messages_acked.load(Ordering::Relaxed);
        report.publish_failed = progress.publish_failed.load(Ordering::Relaxed);
        report.messages_per_sec = rate(report.messages_acked, options.duration);
        report.publish_latency_ms = Percentiles::of(&latency);
        for (m, n) in phase_errors {
            for _ in 0..n {
                errors.add("telemetry", m.clone());
            }
        }
    }

    // Phase 4: fan-out.
    progress.phase.store(3, Ordering::Relaxed);
    if let Some(service) = &options.fanout {
        let (received, per_device, total) = fanout(
            service,
            &options,
            fleet.as_mut_slice(),
            &progress,
            &mut errors,
        )
        .await;
        report.twin_fanout_received = received;
        report.twin_fanout_ms = Percentiles::of(&per_device);
        report.twin_fanout_total_ms = (total.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    }
    progress.phase.store(4, Ordering::Relaxed);
    let mut closing = JoinSet::new();
    for c in fleet {
        closing.spawn(async move {
            let _ = c.client.close().await;
        });
    }
    while closing.join_next().await.is_some() {}
    report.errors = errors.0;
    Ok(report)
}

/// One reading as the lab's simulated device sends it: temperature 20–35 °C, humidity 60–80 %,
/// `temperatureAlert` when above 30 °C.
pub(crate) fn lab_reading() -> Message {
    // A varied but reproducible stream of readings (splitmix64 of a counter).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut z = NEXT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let n = u32::try_from((z ^ (z >> 31)) & u64::from(u32::MAX)).unwrap_or(0);
    let temperature = 20.0 + f64::from(n % 1500) / 100.0;
    let humidity = 60.0 + f64::from((n / 1500) % 2000) / 100.0;
    let mut m =
        Message::json(&serde_json::json!({"temperature": temperature, "humidity": humidity}));
    m.properties.push((
        "temperatureAlert".to_owned(),
        if temperature > 30.0 { "true" } else { "false" }.to_owned(),
    ));
    m
}

/// The telemetry phase; returns the merged latency histogram and error counts.
async fn telemetry(
    options: &Arc<FleetOptions>,
    fleet: &[Connected],
    progress: &Arc<Progress>,
) -> (Histogram<u64>, Vec<(String, u64)>) {
    let deadline = Instant::now() + options.duration;
    let body = vec![b'x'; options.payload_bytes];
    let mut tasks = JoinSet::new();
    // As fast as acks allow: `in_flight` senders per device; at an interval: one.
    let senders = if options.telemetry_interval.is_zero() {
        options.in_flight.max(1)
    } else {
        1
    };
    for c in fleet {
        for _ in 0..senders {
            let client = c.client.clone();
            let body = body.clone();
            let options = Arc::clone(options);
            let progress = Arc::clone(progress);
            tasks.spawn(async move {
                let mut latency = histogram();
                let mut failures: Vec<(String, u64)> = Vec::new();
                let mut next = Instant::now();
                while Instant::now() < deadline {
                    if !options.telemetry_interval.is_zero() {
                        if next > deadline {
                            // Stay connected (idle) until the phase ends.
                            tokio::time::sleep_until(deadline).await;
                            break;
                        }
                        tokio::time::sleep_until(next).await;
                        next += options.telemetry_interval;
                    }
                    let message = if options.lab_payload {
                        lab_reading()
                    } else {
                        Message::new(body.clone())
                    };
                    progress.messages_sent.fetch_add(1, Ordering::Relaxed);
                    let began = Instant::now();
                    let sent = if options.qos == 0 {
                        client.send_telemetry_at_most_once(message).await
                    } else {
                        client.send_telemetry(message).await
                    };
                    match sent {
                        Ok(()) => {
                            let _ = latency.record(micros(began.elapsed()));
                            progress.messages_acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            progress.publish_failed.fetch_add(1, Ordering::Relaxed);
                            let m = muster_types::report(&e);
                            match failures.iter_mut().find(|(k, _)| *k == m) {
                                Some((_, n)) => *n += 1,
                                None => failures.push((m, 1)),
                            }
                            if matches!(e, Error::Closed) {
                                break;
                            }
                        }
                    }
                }
                (latency, failures)
            });
        }
    }
    let mut all = histogram();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((h, f)) = joined {
            let _ = all.add(&h);
            errors.extend(f);
        }
    }
    (all, errors)
}

/// The fan-out phase: PATCH every device's desired properties, time each notification.
async fn fanout(
    service: &ServiceTarget,
    options: &FleetOptions,
    fleet: &mut [Connected],
    progress: &Arc<Progress>,
    errors: &mut Errors,
) -> (u64, Histogram<u64>, Duration) {
    let marker = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(0);
    let tls = match crate::identity::client_config(&options.trust, None, &[b"http/1.1"]) {
        Ok(c) => rustls::ClientConfig::clone(&c),
        Err(e) => {
            errors.add("fanout", format!("TLS: {e}"));
            return (0, histogram(), Duration::ZERO);
        }
    };
    let client = match reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            errors.add("fanout", format!("HTTP client: {e}"));
            return (0, histogram(), Duration::ZERO);
        }
    };
    let expiry = crate::unix_now() + 3600;
    let token = match muster_auth::sas::make_token(
        &service.token_host,
        &service.key,
        Some(&service.key_name),
        expiry,
    ) {
        Ok(t) => t,
        Err(e) => {
            errors.add("fanout", format!("SAS token: {e}"));
            return (0, histogram(), Duration::ZERO);
        }
    };
    let start = Instant::now();
    // One waiter per device: the time its notification arrives.
    let mut waiters = JoinSet::new();
    let mut sent_at: Vec<Arc<std::sync::OnceLock<Instant>>> = Vec::with_capacity(fleet.len());
    for c in fleet.iter_mut() {
        let mut events = std::mem::replace(&mut c.events, tokio::sync::mpsc::channel(1).1);
        let stamp = Arc::new(std::sync::OnceLock::new());
        sent_at.push(Arc::clone(&stamp));
        let progress = Arc::clone(progress);
        waiters.spawn(async move {
            let wait = async {
                while let Some(event) = events.recv().await {
                    if let HubEvent::DesiredPatch(patch) = event
                        && patch.get("fleetFanout").and_then(Value::as_u64) == Some(marker)
                    {
                        let now = Instant::now();
                        progress.fanout_received.fetch_add(1, Ordering::Relaxed);
                        return Some(now);
                    }
                }
                None
            };
            let arrived = tokio::time::timeout(Duration::from_secs(60), wait)
                .await
                .ok()
                .flatten();
            (arrived, stamp)
        });
    }
    let limit = Arc::new(Semaphore::new(options.fanout_concurrency.max(1)));
    let mut patches = JoinSet::new();
    for (c, stamp) in fleet.iter().zip(&sent_at) {
        let client = client.clone();
        let url = format!(
            "{}/twins/{}?api-version=2021-04-12",
            service.base_url,
            muster_auth::sas::percent_encode(&c.device_id)
        );
        let token = token.clone();
        let stamp = Arc::clone(stamp);
        let limit = Arc::clone(&limit);
        patches.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let _ = stamp.set(Instant::now());
            let resp = client
                .patch(url)
                .header("authorization", token)
                .json(&json!({"properties": {"desired": {"fleetFanout": marker}}}))
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("PATCH /twins answered {}", r.status())),
                Err(e) => Err(format!("PATCH /twins failed: {e}")),
            }
        });
    }
    while let Some(joined) = patches.join_next().await {
        if let Ok(Err(e)) = joined {
            errors.add("fanout", e);
        }
    }
    let mut per_device = histogram();
    let mut received = 0;
    let mut last = start;
    while let Some(joined) = waiters.join_next().await {
        if let Ok((Some(arrived), stamp)) = joined {
            received += 1;
            last = last.max(arrived);
            if let Some(sent) = stamp.get() {
                let _ = per_device.record(micros(arrived.saturating_duration_since(*sent)));
            }
        }
    }
    (received, per_device, last.duration_since(start))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!((p.p50 - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.p90 - 9.0).abs() < 0.01, "{p:?}");
        assert!((p.p99 - 9.9).abs() < 0.01, "{p:?}");
        assert!((p.max - 10.0).abs() < 0.01, "{p:?}");
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    #[test]
    fn rates_and_errors() {
        assert!((rate(500, Duration::from_millis(250)) - 2000.0).abs() < f64::EPSILON);
        assert!(rate(5, Duration::ZERO).abs() < f64::EPSILON);
        let mut e = Errors::default();
        e.add("connect", "refused".into());
        e.add("connect", "refused".into());
        e.add("provision", "refused".into());
        assert_eq!(e.0.len(), 2);
        assert_eq!(e.0[0].count, 2);
    }

    #[test]
    fn the_summary_has_the_documented_keys() {
        let v = serde_json::to_value(FleetReport::default()).unwrap();
        for k in [
            "devices",
            "provisioned",
            "provisionFailed",
            "provisionPerSec",
            "provisionLatencyMs",
            "connected",
            "connectFailed",
            "connectPerSec",
            "messagesSent",
            "messagesAcked",
            "publishFailed",
            "messagesPerSec",
            "publishLatencyMs",
            "twinFanoutMs",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert!(v["provisionLatencyMs"].get("p90").is_some());
    }
}
