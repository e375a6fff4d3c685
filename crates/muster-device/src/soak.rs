//! A soak: the fleet's telemetry phase with the rest of a hub's life mixed in, for hours if
//! need be. Each device sends a message every interval; the service side patches desired
//! properties, queues cloud-to-device messages and calls direct methods on random devices at a
//! steady rate; each device answers its methods, echoes desired patches into its reported
//! properties and receives its messages; and a share of the devices disconnects and connects
//! again every minute (churn).
//!
//! Every message carries `soakRun` and `soakSeq` properties. With
//! [`SoakOptions::ledger`], each device's count of messages sent and the sequence numbers that
//! were not acknowledged are written as JSON lines, so a reader of the event stream can check
//! that every acknowledged message is there (`bench/soak.sh` does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::Error;
use crate::fleet::{
    Connected, Errors, FleetOptions, Progress, ServiceTarget, histogram, lab_reading, micros,
};
use crate::hub::{HubClient, HubEvent, HubEvents, Message};

/// What a soak mixes into the telemetry phase.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The service API that patches twins, queues C2D messages and calls methods.
    pub service: ServiceTarget,
    /// Service operations per second across the fleet: twin patch, C2D, method, in turn.
    pub service_ops_per_sec: f64,
    /// Share of the devices that disconnect and connect again each minute (0.01 = 1%).
    pub churn_per_minute: f64,
    /// Tag of this run, sent as the `soakRun` property of every message.
    pub run_id: String,
    /// Write each device's ledger here (JSON lines: `deviceId`, `sent`, `unacknowledged`).
    pub ledger: Option<std::path::PathBuf>,
}

/// The soak's own figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SoakReport {
    /// Churn reconnects that succeeded.
    pub reconnects: u64,
    /// Churn reconnects that failed (retried at the next message).
    pub reconnect_failed: u64,
    /// Desired patches the service made.
    pub twin_patches: u64,
    /// … refused or failed.
    pub twin_patch_failed: u64,
    /// Desired-patch notifications devices received.
    pub desired_received: u64,
    /// Reported-property updates that failed.
    pub reported_failed: u64,
    /// Cloud-to-device messages queued by the service.
    pub c2d_sent: u64,
    /// … refused or failed.
    pub c2d_failed: u64,
    /// Cloud-to-device messages devices received.
    pub c2d_received: u64,
    /// Method calls the devices answered (as the service saw it).
    pub methods_answered: u64,
    /// Method calls that found the device between connections (404, not an error).
    pub methods_offline: u64,
    /// Method calls that failed otherwise (timeouts included).
    pub methods_failed: u64,
    /// Method latency seen by the service, in milliseconds.
    pub method_latency_ms: crate::fleet::Percentiles,
}

#[derive(Debug, Default)]
struct Counters {
    reconnects: AtomicU64,
    reconnect_failed: AtomicU64,
    twin_patches: AtomicU64,
    twin_patch_failed: AtomicU64,
    desired_received: AtomicU64,
    reported_failed: AtomicU64,
    c2d_sent: AtomicU64,
    c2d_failed: AtomicU64,
    c2d_received: AtomicU64,
    methods_answered: AtomicU64,
    methods_offline: AtomicU64,
    methods_failed: AtomicU64,
}

/// A number in [0, 1) from a shared splitmix64 stream (no seeding needed: reproducibility is
/// not the point, spread is).
fn random() -> f64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x5eed);
    let mut z = NEXT
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    #[allow(clippy::cast_precision_loss, reason = "53 random bits as a fraction")]
    let f = (z >> 11) as f64 / (1u64 << 53) as f64;
    f
}

/// One device's ledger line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Ledger {
    device_id: String,
    sent: u64,
    unacknowledged: Vec<u64>,
}

/// What one device task hands back.
struct DeviceResult {
    device: Connected,
    /// Still answering: method calls made near the end are answered after the last message.
    responder: tokio::task::JoinHandle<()>,
    ledger: Ledger,
    latency: Histogram<u64>,
    failures: Vec<(String, u64)>,
}

/// Answer what the hub sends one connection: methods, desired patches, C2D messages.
async fn respond(client: HubClient, mut events: HubEvents, counters: Arc<Counters>) {
    while let Some(event) = events.recv().await {
        match event {
            HubEvent::MethodCall { rid, payload, .. } => {
                let _ = client
                    .respond_method(&rid, 200, &json!({"echo": payload}))
                    .await;
            }
            HubEvent::DesiredPatch(patch) => {
                counters.desired_received.fetch_add(1, Ordering::Relaxed);
                if let Some(v) = patch.get("soak")
                    && client.patch_reported(&json!({"soak": v})).await.is_err()
                {
                    counters.reported_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            HubEvent::C2d(_) => {
                counters.c2d_received.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

fn count_failure(failures: &mut Vec<(String, u64)>, message: String) {
    match failures.iter_mut().find(|(k, _)| *k == message) {
        Some((_, n)) => *n += 1,
        None => failures.push((message, 1)),
    }
}

/// One device for the length of the soak.
async fn device(
    mut device: Connected,
    options: Arc<FleetOptions>,
    soak: Arc<SoakOptions>,
    counters: Arc<Counters>,
    progress: Arc<Progress>,
    deadline: Instant,
) -> DeviceResult {
    let interval = options.telemetry_interval.max(Duration::from_millis(10));
    let churn = soak.churn_per_minute * interval.as_secs_f64() / 60.0;
    let events = std::mem::replace(&mut device.events, tokio::sync::mpsc::channel(1).1);
    let mut responder = tokio::spawn(respond(
        device.client.clone(),
        events,
        Arc::clone(&counters),
    ));
    let body = vec![b'x'; options.payload_bytes];
    let mut latency = histogram();
    let mut failures = Vec::new();
    let mut unacknowledged = Vec::new();
    let mut seq = 0u64;
    // Spread the devices' first messages over one interval.
    let mut next = Instant::now() + interval.mul_f64(random());
    while next < deadline {
        tokio::time::sleep_until(next).await;
        next += interval;
        if device.client.is_closed() || random() < churn {
            let _ = device.client.close().await;
            responder.abort();
            match HubClient::connect(device.options.clone()).await {
                Ok((client, events)) => {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    responder =
                        tokio::spawn(respond(client.clone(), events, Arc::clone(&counters)));
                    device.client = client;
                }
                Err(e) => {
                    counters.reconnect_failed.fetch_add(1, Ordering::Relaxed);
                    count_failure(
                        &mut failures,
                        format!("reconnect: {}", muster_types::report(&e)),
                    );
                }
            }
        }
        let message = if options.lab_payload {
            lab_reading()
        } else {
            Message::new(body.clone())
        }
        .with_property("soakRun", soak.run_id.clone())
        .with_property("soakSeq", seq.to_string());
        progress.messages_sent.fetch_add(1, Ordering::Relaxed);
        let began = Instant::now();
        match device.client.send_telemetry(message).await {
            Ok(()) => {
                let _ = latency.record(micros(began.elapsed()));
                progress.messages_acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                progress.publish_failed.fetch_add(1, Ordering::Relaxed);
                unacknowledged.push(seq);
                count_failure(&mut failures, muster_types::report(&e));
            }
        }
        seq += 1;
    }
    // Nothing is left for the events channel to carry: hand back a closed one.
    device.events = tokio::sync::mpsc::channel(1).1;
    DeviceResult {
        ledger: Ledger {
            device_id: device.device_id.clone(),
            sent: seq,
            unacknowledged,
        },
        device,
        responder,
        latency,
        failures,
    }
}

/// The service side: one operation every `1 / service_ops_per_sec` seconds on a random
/// device, twin patch, C2D and method in turn, at most 64 at once.
async fn service(
    soak: Arc<SoakOptions>,
    options: Arc<FleetOptions>,
    ids: Arc<Vec<String>>,
    counters: Arc<Counters>,
    deadline: Instant,
) -> (Histogram<u64>, Vec<(String, u64)>) {
    let mut failures = Vec::new();
    let mut latency = histogram();
    if soak.service_ops_per_sec <= 0.0 || ids.is_empty() {
        return (latency, failures);
    }
    let tls = match crate::identity::client_config(&options.trust, None, &[b"http/1.1"]) {
        Ok(c) => rustls::ClientConfig::clone(&c),
        Err(e) => {
            count_failure(&mut failures, format!("service TLS: {e}"));
            return (latency, failures);
        }
    };
    let client = match reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            count_failure(&mut failures, format!("service HTTP client: {e}"));
            return (latency, failures);
        }
    };
    let service = &soak.service;
    let lifetime = options.duration.as_secs() + 3600;
    let token = match muster_auth::sas::make_token(
        &service.token_host,
        &service.key,
        Some(&service.key_name),
        crate::unix_now() + lifetime,
    ) {
        Ok(t) => t,
        Err(e) => {
            count_failure(&mut failures, format!("service SAS token: {e}"));
            return (latency, failures);
        }
    };
    let period = Duration::from_secs_f64(1.0 / soak.service_ops_per_sec);
    let limit = Arc::new(Semaphore::new(64));
    let mut calls = JoinSet::new();
    let mut next = Instant::now();
    let mut n = 0u64;
    while next < deadline {
        tokio::time::sleep_until(next).await;
        next += period;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a random index below len"
        )]
        let pick = ((random() * ids.len() as f64) as usize).min(ids.len() - 1);
        let Some(id) = ids.get(pick) else { continue };
        let id = muster_auth::sas::percent_encode(id);
        let base = &service.base_url;
        let request = match n % 3 {
            0 => client
                .patch(format!("{base}/twins/{id}?api-version=2021-04-12"))
                .json(&json!({"properties": {"desired": {"soak": n}}})),
            1 => client
                .post(format!(
                    "{base}/devices/{id}/messages/devicebound?api-version=2021-04-12"
                ))
                .header("iothub-messageid", format!("soak-{n}"))
                .body(format!("soak message {n}")),
            _ => client
                .post(format!("{base}/twins/{id}/methods?api-version=2021-04-12"))
                .json(&json!({"methodName": "soakPing", "responseTimeoutInSeconds": 10, "payload": {"n": n}})),
        };
        let kind = n % 3;
        n += 1;
        let request = request.header("authorization", token.clone());
        let counters = Arc::clone(&counters);
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        calls.spawn(async move {
            let _permit = permit;
            let began = Instant::now();
            let answer = request.send().await;
            let took = began.elapsed();
            let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
            let (ok, failed) = match kind {
                0 => (&counters.twin_patches, &counters.twin_patch_failed),
                1 => (&counters.c2d_sent, &counters.c2d_failed),
                _ => (&counters.methods_answered, &counters.methods_failed),
            };
            match (kind, status) {
                (_, 200..=299) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    (kind == 2)
                        .then_some(took)
                        .map_or(Ok(None), |t| Ok(Some(t)))
                }
                // The device is between connections (churn): Azure answers the same.
                (2, 404) => {
                    counters.methods_offline.fetch_add(1, Ordering::Relaxed);
                    Ok(None)
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let what = ["twin patch", "C2D send", "method call"]
                        .get(usize::try_from(kind).unwrap_or(0))
                        .copied()
                        .unwrap_or("call");
                    Err(match answer {
                        Ok(r) => format!("{what} answered {}", r.status()),
                        Err(e) => format!("{what} failed: {e}"),
                    })
                }
            }
        });
        while let Some(done) = calls.try_join_next() {
            tally(done, &mut latency, &mut failures);
        }
    }
    while let Some(done) = calls.join_next().await {
        tally(done, &mut latency, &mut failures);
    }
    (latency, failures)
}

/// What a finished service call adds: its latency (methods) or its failure.
type CallOutcome = Result<Result<Option<Duration>, String>, tokio::task::JoinError>;

fn tally(done: CallOutcome, latency: &mut Histogram<u64>, failures: &mut Vec<(String, u64)>) {
    match done {
        Ok(Ok(Some(took))) => {
            let _ = latency.record(micros(took));
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => count_failure(failures, e),
        Err(e) => count_failure(failures, format!("service task: {e}")),
    }
}

/// Run the soak over the connected fleet for [`FleetOptions::duration`]; returns the devices
/// (connected again where churn closed them), the figures and the publish latency.
pub(crate) async fn run(
    options: &Arc<FleetOptions>,
    soak: &SoakOptions,
    fleet: Vec<Connected>,
    progress: &Arc<Progress>,
    errors: &mut Errors,
) -> (Vec<Connected>, SoakReport, Histogram<u64>) {
    let deadline = Instant::now() + options.duration;
    let soak = Arc::new(soak.clone());
    let counters = Arc::new(Counters::default());
    let ids = Arc::new(
        fleet
            .iter()
            .map(|c| c.device_id.clone())
            .collect::<Vec<_>>(),
    );
    let service_task = tokio::spawn(service(
        Arc::clone(&soak),
        Arc::clone(options),
        ids,
        Arc::clone(&counters),
        deadline,
    ));
    let mut tasks = JoinSet::new();
    for c in fleet {
        tasks.spawn(device(
            c,
            Arc::clone(options),
            Arc::clone(&soak),
            Arc::clone(&counters),
            Arc::clone(progress),
            deadline,
        ));
    }
    let mut devices = Vec::new();
    let mut responders = Vec::new();
    let mut latency = histogram();
    let mut ledger = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => {
                let _ = latency.add(&r.latency);
                for (m, n) in r.failures {
                    for _ in 0..n {
                        errors.add("soak", m.clone());
                    }
                }
                ledger.push(r.ledger);
                responders.push(r.responder);
                devices.push(r.device);
            }
            Err(e) => errors.add("soak", format!("device task: {e}")),
        }
    }
    let mut method_latency = histogram();
    match service_task.await {
        Ok((h, failures)) => {
            method_latency = h;
            for (m, n) in failures {
                for _ in 0..n {
                    errors.add("soak", m.clone());
                }
            }
        }
        Err(e) => errors.add("soak", format!("service task: {e}")),
    }
    for r in responders {
        r.abort();
    }
    if let Some(path) = &soak.ledger
        && let Err(e) = write_ledger(path, &ledger)
    {
        errors.add("soak", format!("ledger {}: {e}", path.display()));
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let c = &counters;
    let report = SoakReport {
        reconnects: get(&c.reconnects),
        reconnect_failed: get(&c.reconnect_failed),
        twin_patches: get(&c.twin_patches),
        twin_patch_failed: get(&c.twin_patch_failed),
        desired_received: get(&c.desired_received),
        reported_failed: get(&c.reported_failed),
        c2d_sent: get(&c.c2d_sent),
        c2d_failed: get(&c.c2d_failed),
        c2d_received: get(&c.c2d_received),
        methods_answered: get(&c.methods_answered),
        methods_offline: get(&c.methods_offline),
        methods_failed: get(&c.methods_failed),
        method_latency_ms: crate::fleet::Percentiles::of(&method_latency),
    };
    (devices, report, latency)
}

fn write_ledger(path: &std::path::Path, ledger: &[Ledger]) -> Result<(), Error> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })?;
    let mut out = std::io::BufWriter::new(file);
    for l in ledger {
        let line = serde_json::to_string(l).unwrap_or_default();
        writeln!(out, "{line}").map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })?;
    }
    out.flush().map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::random;

    #[test]
    fn random_numbers_spread_over_the_unit_interval() {
        let xs: Vec<f64> = (0..10_000).map(|_| random()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below = xs.iter().filter(|x| **x < 0.5).count();
        assert!((4_500..5_500).contains(&below), "{below}");
    }
}
