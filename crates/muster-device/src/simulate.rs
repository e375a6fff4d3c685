//! The simulated device of the classic DPS lab.
//!
//! It provisions through DPS, connects to the hub it was assigned, loads its twin, and sends a
//! sensor reading every `telemetryDelay` seconds — `{"temperature", "humidity", "pressure",
//! "latitude", "longitude"}` with the application property `temperatureAlert` = `"true"` when
//! the temperature is above 30 °C. `telemetryDelay` comes from the twin's desired properties,
//! at start and on every change (a string or a number); the value in effect is reported back
//! as a number. An invalid value keeps the previous one and is reported as such. After a
//! reconnect the twin is read again, so a change made while the device was away (desired
//! patches are not queued) is not missed. Direct methods are answered with 501 (the lab's
//! device implements none) and cloud-to-device messages are shown.
//!
//! [`run`] does the work and tells the caller what happens through [`SimEvent`]s, so a CLI can
//! print them as text or JSON and a test can watch them.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::dps::{ProvisioningClient, ProvisioningOptions, Registration};
use crate::error::Error;
use crate::hub::{HubClient, HubCredentials, HubEvent, HubOptions, Message};

/// The delay used when the twin names none.
pub const DEFAULT_TELEMETRY_DELAY: f64 = 1.0;
/// Largest accepted `telemetryDelay` (one day).
pub const MAX_TELEMETRY_DELAY: f64 = 86_400.0;

/// How to run the simulated device.
#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    /// The DPS registration (host, scope, transport, trust, credentials).
    pub provisioning: ProvisioningOptions,
    /// How to authenticate to the assigned hub (the same certificate, or the device key).
    pub hub_credentials: HubCredentials,
    /// The hub's port (muster serves DPS and the hub on the same one per protocol).
    pub hub_port: u16,
    /// MQTT or AMQP to the hub.
    pub hub_transport: crate::hub::HubTransport,
    /// Seed for the sensor readings (`None`: from the clock).
    pub seed: Option<u64>,
}

/// Something the simulated device did or saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
#[non_exhaustive]
pub enum SimEvent {
    /// Registration started.
    #[serde(rename_all = "camelCase")]
    Registering {
        /// The registration id.
        registration_id: String,
        /// `mqtt`, `mqtt-ws`, `amqp`, `amqp-ws` or `https`.
        transport: String,
        /// `host:port` of the provisioning service.
        endpoint: String,
    },
    /// DPS answered.
    #[serde(rename_all = "camelCase")]
    Registered {
        /// `assigned`.
        status: String,
        /// The hub.
        assigned_hub: String,
        /// The device id in that hub.
        device_id: String,
        /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset`, …
        substatus: Option<String>,
    },
    /// Connected to the hub.
    #[serde(rename_all = "camelCase")]
    Connected {
        /// The hub.
        hub: String,
        /// The device id.
        device_id: String,
        /// Whether the hub kept a persistent session.
        session_present: bool,
    },
    /// The hub connection dropped (the client reconnects).
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The twin was read.
    #[serde(rename_all = "camelCase")]
    TwinLoaded {
        /// Its desired properties.
        desired: Value,
        /// Its reported properties.
        reported: Value,
        /// The delay in effect, seconds.
        telemetry_delay: f64,
    },
    /// A desired-property change set a new delay.
    #[serde(rename_all = "camelCase")]
    DelayChanged {
        /// The desired `$version`.
        version: Option<u64>,
        /// The value as the service wrote it.
        value: Value,
        /// The delay now in effect, seconds.
        telemetry_delay: f64,
    },
    /// A desired `telemetryDelay` that is not a positive number was ignored.
    #[serde(rename_all = "camelCase")]
    DelayRejected {
        /// The desired `$version`.
        version: Option<u64>,
        /// The value as the service wrote it.
        value: Value,
        /// Why it was ignored.
        reason: String,
        /// The delay still in effect, seconds.
        telemetry_delay: f64,
    },
    /// Reported properties were patched.
    Reported {
        /// The patch.
        patch: Value,
        /// The reported `$version` after it.
        version: u64,
    },
    /// A telemetry message was acknowledged by the hub.
    #[serde(rename_all = "camelCase")]
    TelemetrySent {
        /// When it was sent (RFC 3339, UTC).
        timestamp: String,
        /// The message body.
        body: Value,
        /// The `temperatureAlert` application property.
        temperature_alert: bool,
    },
    /// A telemetry message could not be sent (the hub connection is down); the next one is
    /// tried on schedule.
    SendFailed {
        /// Why.
        reason: String,
    },
    /// A reported-properties patch failed (the hub is unreachable); the next change tries
    /// again.
    ReportFailed {
        /// The patch.
        patch: Value,
        /// Why.
        reason: String,
    },
    /// A cloud-to-device message arrived.
    #[serde(rename_all = "camelCase")]
    MessageReceived {
        /// Its body as text.
        body: String,
        /// Its application properties.
        properties: Vec<(String, String)>,
    },
    /// A direct method was called (and answered with 501).
    MethodCalled {
        /// Its name.
        name: String,
    },
}

/// Why a desired `telemetryDelay` is not usable (one line, shown as the rejection reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DelayError(pub String);

/// Parse a desired `telemetryDelay`: a positive number of seconds, as a JSON number or a
/// string holding one.
///
/// # Errors
/// [`DelayError`]: why the value is not usable.
pub fn parse_delay(value: &Value) -> Result<f64, DelayError> {
    let bad = |why: String| Err(DelayError(why));
    let n = match value {
        Value::Number(n) => match n.as_f64() {
            Some(n) => n,
            None => return bad("not a finite number".to_owned()),
        },
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(n) => n,
            Err(_) => return bad(format!("'{s}' is not a number")),
        },
        Value::Null => return bad("it was removed".to_owned()),
        other => return bad(format!("{other} is not a number")),
    };
    if !n.is_finite() || n <= 0.0 {
        return bad(format!("{n} is not a positive number of seconds"));
    }
    if n > MAX_TELEMETRY_DELAY {
        return bad(format!("{n} is more than a day"));
    }
    Ok(n)
}

/// The JSON number for a delay: an integer when it is whole.
#[must_use]
pub fn delay_json(delay: f64) -> Value {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked whole and within a day"
    )]
    if delay.fract() == 0.0 && (0.0..=MAX_TELEMETRY_DELAY).contains(&delay) {
        return json!(delay as u64);
    }
    json!(delay)
}

/// The lab's sensor: readings in its ranges from a small deterministic generator (not for
/// cryptography).
#[derive(Debug, Clone)]
pub struct Sensor {
    state: u64,
}

impl Sensor {
    /// A sensor seeded with `seed` (0 is replaced).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self { state: seed.max(1) }
    }

    fn next_unit(&mut self) -> f64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        #[allow(
            clippy::cast_precision_loss,
            reason = "53 random bits into a double's mantissa"
        )]
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        unit
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        let v = low + (high - low) * self.next_unit();
        (v * 100.0).round() / 100.0
    }

    /// One reading and its `temperatureAlert` (temperature above 30).
    pub fn reading(&mut self) -> (Value, bool) {
        let temperature = self.between(20.0, 35.0);
        let body = json!({
            "temperature": temperature,
            "humidity": self.between(60.0, 80.0),
            "pressure": self.between(1013.0, 1025.0),
            "latitude": self.between(39.5, 40.5),
            "longitude": self.between(-98.5, -97.5),
        });
        (body, temperature > 30.0)
    }
}

fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn registration_id(options: &ProvisioningOptions) -> String {
    match &options.credentials {
        crate::dps::DpsCredentials::X509(identity) => {
            identity.common_name().unwrap_or_default().to_owned()
        }
        crate::dps::DpsCredentials::SymmetricKey {
            registration_id, ..
        } => registration_id.clone(),
    }
}

/// Provision, connect and run the lab's device until `stop` resolves (then disconnect and
/// return `Ok`). Returns the error that ended it otherwise: a refused registration, a refused
/// hub connection (also after a reconnect, e.g. once the device was deleted), or a lost
/// connection the client gave up on.
///
/// # Errors
/// [`Error`] as above.
pub async fn run(
    options: SimulatorOptions,
    mut on_event: impl FnMut(SimEvent) + Send,
    stop: impl Future<Output = ()> + Send,
) -> Result<Registration, Error> {
    let (registration, client, mut events) = provision_and_connect(&options, &mut on_event).await?;
    // The client also announces that first connection as an event; it was shown above.
    let mut first_connected_seen = false;
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
    });
    let mut sensor = Sensor::new(seed);
    let mut delay = load_twin(&client, &mut on_event).await?;

    // Sends and reports run beside the loop, which stays free to see a refusal or a stop
    // while the hub is unreachable; their outcomes come back here.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut sending = false;
    tokio::pin!(stop);
    let mut last_sent: Option<Instant> = None;
    let result = loop {
        let next = last_sent.map_or_else(Instant::now, |t| t + Duration::from_secs_f64(delay));
        tokio::select! {
            () = &mut stop => break Ok(registration),
            () = tokio::time::sleep_until(next) => {
                last_sent = Some(Instant::now());
                if sending {
                    on_event(SimEvent::SendFailed {
                        reason: "skipped: the previous message is not acknowledged yet (the hub is unreachable)".to_owned(),
                    });
                    continue;
                }
                sending = true;
                let (body, alert) = sensor.reading();
                let timestamp = rfc3339_now();
                let message = Message::json(&body)
                    .with_property("temperatureAlert", if alert { "true" } else { "false" });
                let (client, done) = (client.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let event = match client.send_telemetry(message).await {
                        Ok(()) => SimEvent::TelemetrySent { timestamp, body, temperature_alert: alert },
                        Err(e) => SimEvent::SendFailed { reason: muster_types::report(&e) },
                    };
                    let _ = done.send(Done::Event(event));
                });
            }
            Some(done) = done_rx.recv() => match done {
                Done::Event(event) => {
                    if matches!(event, SimEvent::TelemetrySent { .. } | SimEvent::SendFailed { .. }) {
                        sending = false;
                    }
                    on_event(event);
                }
                // The twin as it is after a reconnect: a change made while the device was away
                // (desired patches are not queued) takes effect now.
                Done::Twin(desired) => {
                    if let Some(v) = desired.get("telemetryDelay")
                        && let Ok(d) = parse_delay(v)
                        && (d - delay).abs() > f64::EPSILON
                    {
                        delay = d;
                        on_event(SimEvent::DelayChanged {
                            version: desired.get("$version").and_then(Value::as_u64),
                            value: v.clone(),
                            telemetry_delay: d,
                        });
                        spawn_report(&client, &done_tx, d);
                    }
                }
            },
            event = events.recv() => match event {
                None => break Err(Error::Closed),
                Some(HubEvent::Refused { code }) => {
                    // The lab's last step: a deleted or disabled device is refused for good.
                    break Err(Error::Refused { code });
                }
                Some(HubEvent::DesiredPatch(patch)) => {
                    if let Some(v) = patch.get("telemetryDelay") {
                        let version = patch.get("$version").and_then(Value::as_u64);
                        if let Some(d) = desired_delay(v, version, delay, &mut on_event) {
                            delay = d;
                            spawn_report(&client, &done_tx, d);
                        }
                    }
                }
                Some(HubEvent::MethodCall { name, rid, .. }) => {
                    on_event(SimEvent::MethodCalled { name: name.clone() });
                    let client = client.clone();
                    tokio::spawn(async move {
                        let _ = client
                            .respond_method(
                                &rid,
                                501,
                                &json!({"message": format!("the lab device implements no method '{name}'")}),
                            )
                            .await;
                    });
                }
                Some(HubEvent::C2d(m)) => on_event(SimEvent::MessageReceived {
                    body: String::from_utf8_lossy(&m.body).into_owned(),
                    properties: m.properties.clone(),
                }),
                Some(HubEvent::Connected { session_present }) => {
                    if first_connected_seen {
                        on_event(SimEvent::Connected {
                            hub: registration.assigned_hub.clone(),
                            device_id: registration.device_id.clone(),
                            session_present,
                        });
                        // The client reads the twin again itself: HubEvent::Twin.
                    }
                    first_connected_seen = true;
                }
                Some(HubEvent::Disconnected { reason }) => {
                    on_event(SimEvent::Disconnected { reason });
                }
                Some(HubEvent::Twin(twin)) => {
                    let _ = done_tx.send(Done::Twin(twin.desired));
                }
            },
        }
    };
    // Stopping (Ctrl-C, or a refusal) does not wait for a hub that may not answer.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    result
}

/// Register, then connect to the assigned hub.
async fn provision_and_connect(
    options: &SimulatorOptions,
    on_event: &mut (impl FnMut(SimEvent) + Send),
) -> Result<
    (
        Registration,
        HubClient,
        tokio::sync::mpsc::Receiver<HubEvent>,
    ),
    Error,
> {
    let dps = &options.provisioning;
    on_event(SimEvent::Registering {
        registration_id: registration_id(dps),
        transport: match dps.transport {
            crate::dps::Transport::Mqtt => "mqtt".to_owned(),
            crate::dps::Transport::Https => "https".to_owned(),
            crate::dps::Transport::Amqp => "amqp".to_owned(),
            crate::dps::Transport::MqttWs => "mqtt-ws".to_owned(),
            crate::dps::Transport::AmqpWs => "amqp-ws".to_owned(),
        },
        endpoint: format!("{}:{}", dps.host, dps.port()),
    });
    let registration = ProvisioningClient::new(dps.clone())?.register().await?;
    on_event(SimEvent::Registered {
        status: registration.status.clone(),
        assigned_hub: registration.assigned_hub.clone(),
        device_id: registration.device_id.clone(),
        substatus: registration.substatus.clone(),
    });
    let mut hub = HubOptions::for_registration(&registration, options.hub_credentials.clone());
    hub.port = options.hub_port;
    hub.transport = options.hub_transport;
    hub.trust = dps.trust.clone();
    let (client, events) = HubClient::connect(hub).await?;
    on_event(SimEvent::Connected {
        hub: registration.assigned_hub.clone(),
        device_id: registration.device_id.clone(),
        session_present: false,
    });
    Ok((registration, client, events))
}

/// Read the twin, take `telemetryDelay` from it and report the value in effect.
async fn load_twin(
    client: &HubClient,
    on_event: &mut (impl FnMut(SimEvent) + Send),
) -> Result<f64, Error> {
    let mut delay = DEFAULT_TELEMETRY_DELAY;
    let twin = client.get_twin().await?;
    if let Some(v) = twin.desired.get("telemetryDelay") {
        match parse_delay(v) {
            Ok(d) => delay = d,
            Err(reason) => on_event(SimEvent::DelayRejected {
                version: twin.desired_version(),
                value: v.clone(),
                reason: reason.0,
                telemetry_delay: delay,
            }),
        }
    }
    on_event(SimEvent::TwinLoaded {
        desired: twin.desired.clone(),
        reported: twin.reported.clone(),
        telemetry_delay: delay,
    });
    let patch = json!({"telemetryDelay": delay_json(delay)});
    let version = client.patch_reported(&patch).await?;
    on_event(SimEvent::Reported { patch, version });

    Ok(delay)
}

/// A desired `telemetryDelay`: the new delay, announced, or `None` (rejected, announced).
fn desired_delay(
    value: &Value,
    version: Option<u64>,
    current: f64,
    on_event: &mut (impl FnMut(SimEvent) + Send),
) -> Option<f64> {
    match parse_delay(value) {
        Ok(d) => {
            on_event(SimEvent::DelayChanged {
                version,
                value: value.clone(),
                telemetry_delay: d,
            });
            Some(d)
        }
        Err(reason) => {
            on_event(SimEvent::DelayRejected {
                version,
                value: value.clone(),
                reason: reason.0,
                telemetry_delay: current,
            });
            None
        }
    }
}

/// What the side tasks report back to the loop.
#[derive(Debug)]
enum Done {
    /// An event to show (a send or a report finished).
    Event(SimEvent),
    /// The desired properties read after a reconnect.
    Twin(Value),
}

/// Report `delay` as the `telemetryDelay` in effect, beside the loop.
fn spawn_report(client: &HubClient, done: &tokio::sync::mpsc::UnboundedSender<Done>, delay: f64) {
    let patch = json!({"telemetryDelay": delay_json(delay)});
    let (client, done) = (client.clone(), done.clone());
    tokio::spawn(async move {
        let event = match client.patch_reported(&patch).await {
            Ok(version) => SimEvent::Reported { patch, version },
            Err(e) => SimEvent::ReportFailed {
                patch,
                reason: muster_types::report(&e),
            },
        };
        let _ = done.send(Done::Event(event));
    });
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
    fn delays_accept_numbers_and_numeric_strings() {
        assert_eq!(parse_delay(&json!("1")), Ok(1.0));
        assert_eq!(parse_delay(&json!(" 2.5 ")), Ok(2.5));
        assert_eq!(parse_delay(&json!(3)), Ok(3.0));
        for bad in [
            json!("soon"),
            json!(0),
            json!(-1),
            json!("-2"),
            json!(null),
            json!(true),
            json!({"a": 1}),
            json!(100_000),
        ] {
            assert!(parse_delay(&bad).is_err(), "{bad}");
        }
        assert_eq!(delay_json(2.0), json!(2));
        assert_eq!(delay_json(0.5), json!(0.5));
    }

    #[test]
    fn readings_stay_in_the_lab_ranges_and_alert_above_30() {
        let mut sensor = Sensor::new(42);
        let mut alerts = 0;
        for _ in 0..2000 {
            let (r, alert) = sensor.reading();
            let t = r["temperature"].as_f64().unwrap();
            assert!((20.0..=35.0).contains(&t), "{r}");
            assert_eq!(alert, t > 30.0);
            alerts += usize::from(alert);
            assert!((60.0..=80.0).contains(&r["humidity"].as_f64().unwrap()));
            assert!((1013.0..=1025.0).contains(&r["pressure"].as_f64().unwrap()));
            assert!((39.5..=40.5).contains(&r["latitude"].as_f64().unwrap()));
            assert!((-98.5..=-97.5).contains(&r["longitude"].as_f64().unwrap()));
        }
        // A third of the range is above 30.
        assert!((500..=840).contains(&alerts), "{alerts}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        let now = rfc3339_now();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z'));
    }
}
