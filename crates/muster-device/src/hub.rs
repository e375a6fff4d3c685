//! The hub client: one MQTT connection per device, owned by one task.
//!
//! # Ownership
//! [`HubClient::connect`] opens the connection and spawns a task that owns the socket, the
//! outstanding requests and the unacknowledged publishes. [`HubClient`] handles (cheap clones)
//! talk to it through a bounded command channel; what the hub sends arrives as [`HubEvent`]s
//! on a bounded channel. Nothing is shared behind a lock, so thousands of clients can run in
//! one runtime.
//!
//! # Behaviour
//! - Twin requests (`$iothub/twin/GET`, reported `PATCH`) go out at QoS 0 and are matched to
//!   their answer by `$rid`; a non-2xx status becomes [`Error::Hub`] with the body's
//!   `errorCode`/`message`.
//! - Telemetry and method responses go out at QoS 1 and resolve when the PUBACK arrives. At
//!   most [`HubOptions::max_in_flight`] are unacknowledged; further sends wait for room.
//!   After a reconnect the unacknowledged ones are sent again (DUP), so delivery is
//!   at-least-once.
//! - Cloud-to-device messages are acknowledged once handed to the event channel. When the
//!   application lags and the channel is full, the message is *not* acknowledged: the hub keeps
//!   it and delivers it again after the next reconnect. Desired patches and method calls that
//!   find the channel full are dropped with a warning (a twin GET recovers the state).
//! - Keep-alive: a PINGREQ when nothing was sent for the keep-alive period; no answer within
//!   another period counts as a lost connection.
//! - Reconnect (when enabled): exponential backoff with jitter; the session is persistent
//!   (CleanSession=0) so subscriptions are sent only when the hub reports no session. SAS
//!   tokens are renewed before they expire by reconnecting with a fresh token. A refusal at
//!   the *first* connect is returned to the caller and never retried.
//! - The task ends (sending DISCONNECT) on [`HubClient::close`], when every handle is dropped,
//!   or when reconnecting is disabled or gives up; the event channel then closes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use muster_auth::Secret;
use muster_auth::sas::{percent_decode, percent_encode};
use muster_mqtt::iothub;
use muster_mqtt::{
    Connect, ConnectReturnCode, Packet, Publish, QoS, SubAckReturnCode, Subscribe, topic,
};
use serde_json::{Value, json};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::connection::{Connection, Endpoint};
use crate::dps::Registration;
use crate::identity::{Identity, TrustRoots, client_config};
use crate::{Error, USER_AGENT, unix_now};

/// The IoT Hub MQTT API version sent in the username.
pub const API_VERSION: &str = "2021-04-12";
/// Default MQTT port.
pub const DEFAULT_PORT: u16 = 8883;
/// Largest telemetry body the hub accepts.
pub const MAX_TELEMETRY_SIZE: usize = 256 * 1024;
/// Default lifetime of a SAS token (renewed before it ends).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Shortest SAS token lifetime accepted.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(5);

const SUBSCRIBE_ID: u16 = 1;
/// Twin requests remembered before abandoned ones (caller timed out) are swept.
const SWEEP_REQUESTS_AT: usize = 1024;

/// How the device authenticates to the hub.
#[derive(Debug, Clone)]
pub enum HubCredentials {
    /// The client certificate (the device's `selfSigned` thumbprint or a CA-signed chain).
    X509(Identity),
    /// A shared access key: tokens for `{host}/devices/{deviceId}` are made from it and
    /// renewed before `token_ttl` runs out.
    Sas {
        /// The device's key (base64).
        key: Secret,
        /// Lifetime of each token (at least [`MIN_TOKEN_TTL`]).
        token_ttl: Duration,
    },
}

impl HubCredentials {
    /// SAS credentials with the default token lifetime (one hour).
    #[must_use]
    pub fn sas(key: Secret) -> Self {
        Self::Sas {
            key,
            token_ttl: DEFAULT_TOKEN_TTL,
        }
    }
}

/// When and how often to reconnect after the connection is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all.
    pub enabled: bool,
    /// Delay before the first attempt (before jitter).
    pub initial_delay: Duration,
    /// Largest delay between attempts.
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// Enabled; 1 s doubling up to 60 s; never give up.
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: a lost connection ends the client.
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The delay before attempt `attempt` (0-based): `initial × 2^attempt`, at most
    /// `max_delay`, of which a random half is kept ("equal jitter") so that a fleet cut off
    /// at once does not reconnect in lockstep.
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        let base = self
            .initial_delay
            .saturating_mul(factor)
            .min(self.max_delay);
        let half = base / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A number in `[0, 1)` that differs between calls and processes; good enough for jitter.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Everything [`HubClient::connect`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubOptions {
    /// The hub's host name (DPS's `assignedHub`).
    pub host: String,
    /// The MQTT port.
    pub port: u16,
    /// The device id (also the MQTT client id).
    pub device_id: String,
    /// How the device authenticates.
    pub credentials: HubCredentials,
    /// Roots the server certificate must chain to.
    pub trust: TrustRoots,
    /// CleanSession: `false` (default) keeps subscriptions and queued C2D messages across
    /// reconnects.
    pub clean_session: bool,
    /// MQTT keep-alive (whole seconds; zero turns pings off).
    pub keep_alive: Duration,
    /// What to do when the connection is lost.
    pub reconnect: ReconnectPolicy,
    /// Deadline for one connection attempt (TCP, TLS, CONNECT, SUBSCRIBE).
    pub connect_timeout: Duration,
    /// Deadline for a twin request.
    pub request_timeout: Duration,
    /// Unacknowledged QoS 1 publishes (telemetry, method responses) at most.
    pub max_in_flight: usize,
    /// Capacity of the event channel.
    pub event_capacity: usize,
    /// Local address to connect from (`None`: chosen by the system).
    pub local_address: Option<std::net::IpAddr>,
    /// MQTT (default) or AMQP; set [`HubOptions::port`] to match (8883, 5671).
    pub transport: HubTransport,
}

/// How a device reaches its hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubTransport {
    /// MQTT 3.1.1 over TLS (default port 8883).
    #[default]
    Mqtt,
    /// AMQP 1.0 over TLS (default port 5671).
    Amqp,
    /// MQTT through a WebSocket on the HTTPS port (443).
    MqttWs,
    /// AMQP through a WebSocket on the HTTPS port (443).
    AmqpWs,
}

impl HubTransport {
    fn websocket(self) -> Option<&'static str> {
        match self {
            Self::MqttWs => Some(muster_ws::MQTT),
            Self::AmqpWs => Some(muster_ws::AMQP),
            Self::Mqtt | Self::Amqp => None,
        }
    }

    fn is_amqp(self) -> bool {
        matches!(self, Self::Amqp | Self::AmqpWs)
    }
}

impl HubOptions {
    /// Options with the defaults: port 8883, webpki roots, persistent session, 60 s
    /// keep-alive, reconnect enabled, 30 s deadlines, 64 publishes in flight, 256 events.
    #[must_use]
    pub fn new(
        host: impl Into<String>,
        device_id: impl Into<String>,
        credentials: HubCredentials,
    ) -> Self {
        Self {
            host: host.into(),
            port: DEFAULT_PORT,
            device_id: device_id.into(),
            credentials,
            trust: TrustRoots::default(),
            clean_session: false,
            keep_alive: Duration::from_secs(60),
            reconnect: ReconnectPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 64,
            event_capacity: 256,
            local_address: None,
            transport: HubTransport::Mqtt,
        }
    }

    /// Options for the hub and device id a registration assigned.
    #[must_use]
    pub fn for_registration(registration: &Registration, credentials: HubCredentials) -> Self {
        Self::new(
            registration.assigned_hub.clone(),
            registration.device_id.clone(),
            credentials,
        )
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidOptions(m));
        if self.host.is_empty() || self.host.contains('/') {
            return bad(format!("'{}' is not a hub host name", self.host));
        }
        if self.device_id.is_empty() || self.device_id.contains(['/', '#', '+']) {
            return bad(format!("'{}' is not a device id", self.device_id));
        }
        if u16::try_from(self.keep_alive.as_secs()).is_err() {
            return bad("keep_alive is longer than 65535 s".into());
        }
        if !(1..usize::from(u16::MAX)).contains(&self.max_in_flight) {
            return bad("max_in_flight must be between 1 and 65534".into());
        }
        if self.event_capacity == 0 {
            return bad("event_capacity must be at least 1".into());
        }
        if let HubCredentials::Sas { token_ttl, .. } = &self.credentials
            && *token_ttl < MIN_TOKEN_TTL
        {
            return bad(format!(
                "token_ttl must be at least {} s",
                MIN_TOKEN_TTL.as_secs()
            ));
        }
        Ok(())
    }
}

/// The device's twin as the device sees it: `desired` and `reported`, each with `$version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Twin {
    /// Desired properties (set by the service).
    pub desired: Value,
    /// Reported properties (set by the device).
    pub reported: Value,
}

impl Twin {
    /// `desired.$version`.
    #[must_use]
    pub fn desired_version(&self) -> Option<u64> {
        self.desired.get("$version").and_then(Value::as_u64)
    }

    /// `reported.$version`.
    #[must_use]
    pub fn reported_version(&self) -> Option<u64> {
        self.reported.get("$version").and_then(Value::as_u64)
    }
}

/// A device-to-cloud (telemetry) or cloud-to-device message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The body.
    pub body: Vec<u8>,
    /// Application properties, in order.
    pub properties: Vec<(String, String)>,
    /// `$.mid`.
    pub message_id: Option<String>,
    /// `$.cid`.
    pub correlation_id: Option<String>,
    /// `$.ct`, e.g. `application/json`.
    pub content_type: Option<String>,
    /// `$.ce`, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// Other system properties by their wire names (`$.to`, `$.exp`, `iothub-ack`, …).
    pub system_properties: Vec<(String, String)>,
}

impl Message {
    /// A message with this body and nothing else.
    #[must_use]
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// A JSON message: content type `application/json`, encoding `utf-8`.
    #[must_use]
    pub fn json(body: &Value) -> Self {
        Self {
            body: body.to_string().into_bytes(),
            content_type: Some("application/json".to_owned()),
            content_encoding: Some("utf-8".to_owned()),
            ..Self::default()
        }
    }

    /// Add an application property.
    #[must_use]
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// Set the message id.
    #[must_use]
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Set the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The application property `key`, if present.
    #[must_use]
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The property bag of a topic: system properties first, then application properties.
    fn property_bag(&self) -> String {
        let system = [
            ("$.mid", &self.message_id),
            ("$.cid", &self.correlation_id),
            ("$.ct", &self.content_type),
            ("$.ce", &self.content_encoding),
        ];
        let pairs = system
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .chain(
                self.system_properties
                    .iter()
                    .chain(&self.properties)
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
        topic::encode_property_bag(pairs)
    }

    /// Read a message from a property bag and a body.
    pub(crate) fn from_bag(bag: &str, body: Vec<u8>) -> Self {
        let mut m = Self::new(body);
        for (k, v) in topic::parse_property_bag(bag.trim_end_matches('/')) {
            match k.as_str() {
                "$.mid" => m.message_id = Some(v),
                "$.cid" => m.correlation_id = Some(v),
                "$.ct" => m.content_type = Some(v),
                "$.ce" => m.content_encoding = Some(v),
                "" => {}
                _ if k.starts_with("$.") || k == "iothub-ack" => m.system_properties.push((k, v)),
                _ => m.properties.push((k, v)),
            }
        }
        m
    }
}

/// Something the hub sent, or a change of the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HubEvent {
    /// Connected (the first connection included); `session_present` when the hub kept the
    /// persistent session.
    Connected {
        /// The CONNACK's session-present flag.
        session_present: bool,
    },
    /// The connection ended (reconnecting follows when enabled), or a reconnect attempt
    /// failed (`reason` starts with `reconnecting failed:`).
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The service changed desired properties: the changed keys plus `$version`.
    DesiredPatch(Value),
    /// A direct method call; answer it with [`HubClient::respond_method`] and this `rid`.
    MethodCall {
        /// The method name.
        name: String,
        /// The request id to answer.
        rid: String,
        /// The payload (JSON; `null` when empty; a string when not JSON).
        payload: Value,
    },
    /// A cloud-to-device message.
    C2d(Message),
    /// The twin, read again after a reconnect: the hub does not queue desired-property changes
    /// for a device that is away, so this is how a change made meanwhile reaches it (the SDKs
    /// do the same).
    Twin(Twin),
    /// A reconnect attempt was refused by the hub in its CONNACK (the device was deleted,
    /// disabled, or its credentials changed); sent before the `Disconnected` for the attempt.
    /// The client keeps retrying under its [`ReconnectPolicy`]; an application that treats a
    /// refusal as final closes it.
    Refused {
        /// The CONNACK return code.
        code: ConnectReturnCode,
    },
}

/// The events of one client. Ends (`None`) when the client has stopped.
pub type HubEvents = mpsc::Receiver<HubEvent>;

/// A twin response: status, the topic's property bag, body.
#[derive(Debug)]
pub(crate) struct TwinAnswer {
    pub(crate) status: u16,
    pub(crate) bag: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

#[derive(Debug)]
pub(crate) enum Command {
    /// A QoS 0 request answered on `$iothub/twin/res/…?$rid={rid}`.
    Request {
        rid: String,
        topic: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<TwinAnswer, Error>>,
    },
    /// A QoS 1 publish, resolved by its PUBACK.
    Publish {
        topic: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// A QoS 0 publish, resolved once written.
    Fire {
        topic: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::Sender<Command>,
    /// Asks the task to disconnect; apart from the commands so that it never waits behind
    /// them.
    close: Arc<Notify>,
    device_id: String,
    request_timeout: Duration,
    next_rid: AtomicU64,
}

/// A handle to one device's hub connection. Clone it freely; every clone talks to the same
/// connection task. Dropping the last handle disconnects.
#[derive(Debug, Clone)]
pub struct HubClient {
    shared: Arc<Shared>,
}

impl HubClient {
    /// Connect (one attempt), subscribe to twin responses, desired patches, methods and C2D,
    /// and start the connection task. The first event is [`HubEvent::Connected`].
    ///
    /// # Errors
    /// [`Error::InvalidOptions`]; [`Error::Refused`] when the hub refuses the credentials
    /// (not retried); [`Error::Connect`], [`Error::Tls`], [`Error::Timeout`] and protocol
    /// errors of the first attempt.
    pub async fn connect(options: HubOptions) -> Result<(Self, HubEvents), Error> {
        options.check()?;
        let identity = match &options.credentials {
            HubCredentials::X509(identity) => Some(identity),
            HubCredentials::Sas { .. } => None,
        };
        let alpn: &[&[u8]] = match options.transport.websocket() {
            Some(_) => &[b"http/1.1"],
            None => &[],
        };
        let endpoint = Endpoint {
            host: options.host.clone(),
            port: options.port,
            tls: client_config(&options.trust, identity, alpn)?,
            local_address: options.local_address,
            websocket: options.transport.websocket(),
        };
        let options = Arc::new(options);
        if options.transport.is_amqp() {
            return Self::connect_amqp(options, endpoint).await;
        }
        let first = attempt(&endpoint, &options).await?;
        info!(
            device_id = options.device_id,
            hub = options.host,
            session_present = first.session_present,
            "connected to the hub"
        );
        let (commands_tx, commands_rx) = mpsc::channel(options.max_in_flight.max(16));
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity);
        let span = info_span!("hub", device_id = options.device_id);
        let close = Arc::new(Notify::new());
        let task = Task {
            close: Arc::clone(&close),
            c2d_prefix: format!("devices/{}/messages/devicebound/", options.device_id),
            options: Arc::clone(&options),
            endpoint,
            commands: commands_rx,
            events: events_tx,
            requests: HashMap::new(),
            in_flight: HashMap::new(),
            next_packet_id: 0,
            next_seq: 0,
        };
        tokio::spawn(task.run(first).instrument(span));
        let client = Self {
            shared: Arc::new(Shared {
                commands: commands_tx,
                close,
                device_id: options.device_id.clone(),
                request_timeout: options.request_timeout,
                next_rid: AtomicU64::new(1),
            }),
        };
        Ok((client, events_rx))
    }

    async fn connect_amqp(
        options: Arc<HubOptions>,
        endpoint: Endpoint,
    ) -> Result<(Self, HubEvents), Error> {
        let first = crate::amqp::HubLinks::open(&endpoint, &options).await?;
        info!(
            device_id = options.device_id,
            hub = options.host,
            "connected to the hub over AMQP"
        );
        let (commands_tx, commands_rx) = mpsc::channel(options.max_in_flight.max(16));
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity);
        let span = info_span!("hub", device_id = options.device_id);
        let close = Arc::new(Notify::new());
        let task = crate::amqp::Task::new(
            Arc::clone(&options),
            endpoint,
            commands_rx,
            events_tx,
            Arc::clone(&close),
        );
        tokio::spawn(task.run(first).instrument(span));
        let client = Self {
            shared: Arc::new(Shared {
                commands: commands_tx,
                close,
                device_id: options.device_id.clone(),
                request_timeout: options.request_timeout,
                next_rid: AtomicU64::new(1),
            }),
        };
        Ok((client, events_rx))
    }

    /// The device id.
    #[must_use]
    pub fn device_id(&self) -> &str {
        &self.shared.device_id
    }

    /// Whether the connection task has stopped (closed, or gave up reconnecting).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shared.commands.is_closed()
    }

    /// Read the twin.
    ///
    /// # Errors
    /// [`Error::Hub`] for a non-2xx answer; [`Error::Timeout`] after
    /// [`HubOptions::request_timeout`]; [`Error::NotConnected`] while reconnecting;
    /// [`Error::Disconnected`] when the connection drops first; [`Error::Closed`].
    pub async fn get_twin(&self) -> Result<Twin, Error> {
        let answer = self
            .twin_request("twin GET", iothub::TWIN_GET, b" ".to_vec())
            .await?;
        parse_twin(&answer.body)
    }

    /// Patch the reported properties (a JSON object; `null` values delete); returns the new
    /// reported `$version`.
    ///
    /// # Errors
    /// As [`HubClient::get_twin`]; [`Error::Protocol`] when the answer carries no version.
    pub async fn patch_reported(&self, patch: &Value) -> Result<u64, Error> {
        let answer = self
            .twin_request(
                "reported properties PATCH",
                iothub::TWIN_REPORTED,
                patch.to_string().into_bytes(),
            )
            .await?;
        answer
            .bag
            .iter()
            .find(|(k, _)| k == "$version")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .ok_or_else(|| {
                Error::Protocol("the reported patch answer carries no $version".to_owned())
            })
    }

    /// Send a telemetry message (QoS 1); resolves when the hub has acknowledged it, i.e. it is
    /// durably stored. Across a reconnect the message is sent again. There is no deadline of
    /// its own: wrap the call in [`tokio::time::timeout`] for one.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] over 256 KB; [`Error::Disconnected`] when the connection
    /// drops and reconnecting is disabled; [`Error::Closed`].
    pub async fn send_telemetry(&self, message: Message) -> Result<(), Error> {
        if message.body.len() > MAX_TELEMETRY_SIZE {
            return Err(Error::MessageTooLarge {
                size: message.body.len(),
                max: MAX_TELEMETRY_SIZE,
            });
        }
        let topic = format!(
            "devices/{}/messages/events/{}",
            self.shared.device_id,
            message.property_bag()
        );
        self.publish(topic, message.body.into()).await
    }

    /// Send a telemetry message at QoS 0: resolves once written to the connection, with no
    /// acknowledgement and no resend (what a fleet measuring raw throughput wants; devices
    /// that must not lose readings use [`HubClient::send_telemetry`]).
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] over 256 KB; [`Error::NotConnected`] while reconnecting;
    /// [`Error::Closed`].
    pub async fn send_telemetry_at_most_once(&self, message: Message) -> Result<(), Error> {
        if message.body.len() > MAX_TELEMETRY_SIZE {
            return Err(Error::MessageTooLarge {
                size: message.body.len(),
                max: MAX_TELEMETRY_SIZE,
            });
        }
        let topic = format!(
            "devices/{}/messages/events/{}",
            self.shared.device_id,
            message.property_bag()
        );
        let (reply, answer) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Fire {
                topic,
                payload: message.body.into(),
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Answer the direct method call `rid` with `status` and a JSON payload.
    ///
    /// # Errors
    /// As [`HubClient::send_telemetry`].
    pub async fn respond_method(
        &self,
        rid: &str,
        status: u16,
        payload: &Value,
    ) -> Result<(), Error> {
        let topic = iothub::method_response(status, rid);
        self.publish(topic, payload.to_string().into_bytes().into())
            .await
    }

    /// Send DISCONNECT and stop the connection task; outstanding calls fail with
    /// [`Error::Closed`]. Closing a closed client does nothing.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for reporting a failed DISCONNECT.
    pub async fn close(&self) -> Result<(), Error> {
        self.shared.close.notify_one();
        // The task closes its end of the command channel once DISCONNECT is sent.
        self.shared.commands.closed().await;
        Ok(())
    }

    async fn publish(&self, topic: String, payload: Bytes) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Publish {
                topic,
                payload,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn twin_request(
        &self,
        operation: &'static str,
        prefix: &str,
        payload: Vec<u8>,
    ) -> Result<TwinAnswer, Error> {
        let rid = self
            .shared
            .next_rid
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let topic = format!("{prefix}?$rid={rid}");
        let (reply, answer) = oneshot::channel();
        let timeout = self.shared.request_timeout;
        let work = async {
            self.shared
                .commands
                .send(Command::Request {
                    rid,
                    topic,
                    payload,
                    reply,
                })
                .await
                .map_err(|_| Error::Closed)?;
            answer.await.map_err(|_| Error::Closed)?
        };
        let answer = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                what: operation,
                after: timeout,
            })??;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(hub_refusal(operation, &answer))
        }
    }
}

/// A non-2xx twin answer as [`Error::Hub`].
fn hub_refusal(operation: &'static str, answer: &TwinAnswer) -> Error {
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let error_code = body
        .get("errorCode")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok());
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
    Error::Hub {
        operation,
        status: answer.status,
        error_code,
        message,
    }
}

/// When to renew a token of lifetime `ttl`: a fifth of it (between 2 s and 2 min) early.
pub(crate) fn renewal_delay(ttl: Duration) -> Duration {
    let margin = (ttl / 5).clamp(Duration::from_secs(2), Duration::from_secs(120));
    ttl.saturating_sub(margin)
}

/// An open connection and its keep-alive bookkeeping.
#[derive(Debug)]
struct Link {
    conn: Connection,
    last_sent: Instant,
    ping_sent: Option<Instant>,
}

/// A twin GET answer's body.
pub(crate) fn parse_twin(body: &[u8]) -> Result<Twin, Error> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("the twin is not JSON: {e}")))?;
    let section = |name: &str| body.get(name).cloned().unwrap_or_else(|| json!({}));
    Ok(Twin {
        desired: section("desired"),
        reported: section("reported"),
    })
}

impl Link {
    async fn send(&mut self, packet: &Packet) -> Result<(), Error> {
        self.conn.write_packet(packet).await?;
        self.last_sent = Instant::now();
        Ok(())
    }
}

/// The result of a successful connection attempt.
#[derive(Debug)]
struct Established {
    link: Link,
    session_present: bool,
    /// When to reconnect with a fresh SAS token.
    renew_at: Option<Instant>,
    /// Packets that arrived before the SUBACK, to handle first.
    early: Vec<Packet>,
}

/// One connection attempt under the connect deadline.
async fn attempt(endpoint: &Endpoint, options: &HubOptions) -> Result<Established, Error> {
    tokio::time::timeout(options.connect_timeout, establish(endpoint, options))
        .await
        .map_err(|_| Error::Timeout {
            what: "connecting to the hub",
            after: options.connect_timeout,
        })?
}

/// CONNECT (with a fresh token for SAS) and, unless the hub kept the session, SUBSCRIBE.
async fn establish(endpoint: &Endpoint, options: &HubOptions) -> Result<Established, Error> {
    let (password, renew_at) = match &options.credentials {
        HubCredentials::X509(_) => (None, None),
        HubCredentials::Sas { key, token_ttl } => {
            let resource = format!("{}/devices/{}", options.host, options.device_id);
            let token = muster_auth::sas::make_token(
                &resource,
                key,
                None,
                unix_now() + token_ttl.as_secs(),
            )?;
            (
                Some(token.into_bytes()),
                Some(Instant::now() + renewal_delay(*token_ttl)),
            )
        }
    };
    let connect = Connect {
        protocol_level: 4,
        client_id: options.device_id.clone(),
        clean_session: options.clean_session,
        keep_alive: u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX),
        username: Some(format!(
            "{}/{}/?api-version={API_VERSION}&DeviceClientType={}",
            options.host,
            options.device_id,
            percent_encode(USER_AGENT)
        )),
        password,
        will: None,
    };
    let (conn, ack) = Connection::open(endpoint, connect).await?;
    let mut link = Link {
        conn,
        last_sent: Instant::now(),
        ping_sent: None,
    };
    let mut early = Vec::new();
    if options.clean_session || !ack.session_present {
        let filters: Vec<(String, QoS)> = [
            iothub::TWIN_RESPONSES.to_owned(),
            iothub::DESIRED_PATCHES.to_owned(),
            iothub::METHOD_REQUESTS.to_owned(),
            format!("devices/{}/messages/devicebound/#", options.device_id),
        ]
        .into_iter()
        .map(|f| (f, QoS::AtLeastOnce))
        .collect();
        link.send(&Packet::Subscribe(Subscribe {
            packet_id: SUBSCRIBE_ID,
            filters: filters.clone(),
        }))
        .await?;
        loop {
            match link.conn.read_packet().await? {
                None => {
                    return Err(Error::Protocol(
                        "the hub closed the connection before SUBACK".to_owned(),
                    ));
                }
                Some(Packet::SubAck(suback)) if suback.packet_id == SUBSCRIBE_ID => {
                    let refused: Vec<&str> = filters
                        .iter()
                        .zip(&suback.return_codes)
                        .filter(|(_, code)| **code == SubAckReturnCode::Failure)
                        .map(|((f, _), _)| f.as_str())
                        .collect();
                    if !refused.is_empty() {
                        return Err(Error::Protocol(format!(
                            "the hub refused the subscription to {}",
                            refused.join(", ")
                        )));
                    }
                    break;
                }
                Some(other) => early.push(other),
            }
        }
    }
    Ok(Established {
        link,
        session_present: ack.session_present,
        renew_at,
        early,
    })
}

/// A QoS 1 publish awaiting its PUBACK.
#[derive(Debug)]
struct Outgoing {
    /// Order of submission, for resending in order.
    seq: u64,
    topic: String,
    payload: Bytes,
    /// Written at least once (a resend carries DUP).
    sent: bool,
    reply: oneshot::Sender<Result<(), Error>>,
}

/// Why a connection's service loop ended.
#[derive(Debug)]
enum Exit {
    /// Asked to close (or every handle is gone).
    Close,
    /// The token is due for renewal.
    Renew,
    /// The connection broke.
    Lost(String),
}

/// Why the task stops for good.
#[derive(Debug)]
enum Ending {
    Closed,
    GaveUp(String),
}

/// The connection task. Owns the link, the outstanding requests and the unacknowledged
/// publishes.
#[derive(Debug)]
struct Task {
    options: Arc<HubOptions>,
    endpoint: Endpoint,
    c2d_prefix: String,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<HubEvent>,
    /// Twin requests by `$rid`.
    requests: HashMap<String, oneshot::Sender<Result<TwinAnswer, Error>>>,
    /// Unacknowledged publishes by packet id.
    in_flight: HashMap<u16, Outgoing>,
    next_packet_id: u16,
    next_seq: u64,
    close: Arc<Notify>,
}

impl Task {
    async fn run(mut self, first: Established) {
        let mut current = first;
        let mut reconnects: u64 = 0;
        loop {
            self.emit(HubEvent::Connected {
                session_present: current.session_present,
            });
            let Established {
                mut link,
                renew_at,
                early,
                ..
            } = current;
            if reconnects > 0 {
                self.refresh_twin(&mut link, reconnects).await;
            }
            reconnects += 1;
            let exit = self.serve(&mut link, renew_at, early).await;
            let (reason, renewing) = match exit {
                Exit::Close => {
                    link.conn.disconnect().await;
                    info!("disconnected from the hub (closed)");
                    self.finish(&Ending::Closed);
                    return;
                }
                Exit::Renew => {
                    link.conn.disconnect().await;
                    ("renewing the SAS token".to_owned(), true)
                }
                Exit::Lost(reason) => (reason, false),
            };
            if renewing {
                info!(reason, "reconnecting to the hub");
            } else {
                warn!(reason, "connection to the hub lost");
            }
            self.emit(HubEvent::Disconnected {
                reason: reason.clone(),
            });
            for (_, reply) in self.requests.drain() {
                let _ = reply.send(Err(Error::Disconnected(reason.clone())));
            }
            if !renewing && !self.options.reconnect.enabled {
                self.finish(&Ending::GaveUp(reason));
                return;
            }
            match self.reconnect(renewing).await {
                Ok(established) => {
                    info!(
                        session_present = established.session_present,
                        "reconnected to the hub"
                    );
                    current = established;
                }
                Err(ending) => {
                    if let Ending::GaveUp(reason) = &ending {
                        warn!(reason, "giving up on the hub connection");
                        self.emit(HubEvent::Disconnected {
                            reason: format!("giving up: {reason}"),
                        });
                    }
                    self.finish(&ending);
                    return;
                }
            }
        }
    }

    /// After a reconnect: read the twin again and report it as [`HubEvent::Twin`].
    async fn refresh_twin(&mut self, link: &mut Link, n: u64) {
        let rid = format!("reconnect-{n}");
        let (reply, answer) = oneshot::channel();
        self.requests.insert(rid.clone(), reply);
        let request = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: format!("{}?$rid={rid}", iothub::TWIN_GET),
            packet_id: None,
            payload: Bytes::from_static(b" "),
        });
        if link.send(&request).await.is_err() {
            self.requests.remove(&rid);
            return;
        }
        let events = self.events.clone();
        let timeout = self.options.request_timeout;
        tokio::spawn(async move {
            let twin = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(Ok(a))) if a.status == 200 => parse_twin(&a.body),
                _ => return debug!("the twin could not be read again after a reconnect"),
            };
            match twin {
                Ok(twin) => {
                    let _ = events.send(HubEvent::Twin(twin)).await;
                }
                Err(e) => warn!(error = %e, "the twin read after a reconnect is unreadable"),
            }
        });
    }

    /// Serve one connection until it ends.
    async fn serve(
        &mut self,
        link: &mut Link,
        renew_at: Option<Instant>,
        early: Vec<Packet>,
    ) -> Exit {
        if let Err(e) = self.resend(link).await {
            return Exit::Lost(muster_types::report(&e));
        }
        for packet in early {
            if let Err(e) = self.handle_packet(link, packet).await {
                return Exit::Lost(muster_types::report(&e));
            }
        }
        let keep_alive = self.options.keep_alive;
        loop {
            let ping_due = (!keep_alive.is_zero())
                .then(|| link.ping_sent.unwrap_or(link.last_sent) + keep_alive);
            let has_room = self.in_flight.len() < self.options.max_in_flight;
            let result = tokio::select! {
                packet = link.conn.read_packet() => match packet {
                    Ok(Some(packet)) => {
                        link.ping_sent = None;
                        self.handle_packet(link, packet).await
                    }
                    Ok(None) => return Exit::Lost("the hub closed the connection".to_owned()),
                    Err(e) => Err(e),
                },
                () = self.close.notified() => return Exit::Close,
                command = self.commands.recv(), if has_room => match command {
                    None => return Exit::Close,
                    Some(command) => self.handle_command(link, command).await,
                },
                () = sleep_until(ping_due) => {
                    if link.ping_sent.is_some() {
                        return Exit::Lost(
                            "the hub did not answer within the keep-alive period".to_owned(),
                        );
                    }
                    let sent = link.send(&Packet::PingReq).await;
                    link.ping_sent = Some(Instant::now());
                    sent
                }
                () = sleep_until(renew_at) => return Exit::Renew,
            };
            if let Err(e) = result {
                return Exit::Lost(muster_types::report(&e));
            }
        }
    }

    /// Send the unacknowledged publishes again, oldest first.
    async fn resend(&mut self, link: &mut Link) -> Result<(), Error> {
        let mut order: Vec<(u64, u16)> =
            self.in_flight.iter().map(|(id, o)| (o.seq, *id)).collect();
        order.sort_unstable();
        for (_, id) in order {
            let Some(outgoing) = self.in_flight.get_mut(&id) else {
                continue;
            };
            let packet = Packet::Publish(Publish {
                dup: outgoing.sent,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: outgoing.topic.clone(),
                packet_id: Some(id),
                payload: outgoing.payload.clone(),
            });
            outgoing.sent = true;
            link.send(&packet).await?;
        }
        Ok(())
    }

    /// Remember a QoS 1 publish under a free packet id.
    fn queue(
        &mut self,
        topic: String,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), Error>>,
    ) -> u16 {
        // Callers keep `in_flight` below `u16::MAX - 1` entries, so a free id exists.
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.in_flight.contains_key(&self.next_packet_id) {
                break;
            }
        }
        self.next_seq += 1;
        self.in_flight.insert(
            self.next_packet_id,
            Outgoing {
                seq: self.next_seq,
                topic,
                payload,
                sent: false,
                reply,
            },
        );
        self.next_packet_id
    }

    async fn handle_command(&mut self, link: &mut Link, command: Command) -> Result<(), Error> {
        match command {
            Command::Request {
                rid,
                topic,
                payload,
                reply,
            } => {
                if self.requests.len() >= SWEEP_REQUESTS_AT {
                    self.requests.retain(|_, waiting| !waiting.is_closed());
                }
                self.requests.insert(rid, reply);
                link.send(&Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic,
                    packet_id: None,
                    payload: payload.into(),
                }))
                .await
            }
            Command::Publish {
                topic,
                payload,
                reply,
            } => {
                let id = self.queue(topic.clone(), payload.clone(), reply);
                if let Some(outgoing) = self.in_flight.get_mut(&id) {
                    outgoing.sent = true;
                }
                link.send(&Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic,
                    packet_id: Some(id),
                    payload,
                }))
                .await
            }
            Command::Fire {
                topic,
                payload,
                reply,
            } => {
                let sent = link
                    .send(&Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic,
                        packet_id: None,
                        payload,
                    }))
                    .await;
                let _ = reply.send(match &sent {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Error::NotConnected),
                });
                sent
            }
        }
    }

    async fn handle_packet(&mut self, link: &mut Link, packet: Packet) -> Result<(), Error> {
        match packet {
            Packet::Publish(p) => self.handle_publish(link, p).await,
            Packet::PubAck(id) => {
                match self.in_flight.remove(&id) {
                    Some(outgoing) => {
                        let _ = outgoing.reply.send(Ok(()));
                    }
                    None => debug!(packet_id = id, "PUBACK for no outstanding publish"),
                }
                Ok(())
            }
            Packet::PingResp | Packet::SubAck(_) | Packet::UnsubAck(_) => Ok(()),
            other => Err(Error::Protocol(format!(
                "unexpected {} from the hub",
                other.name()
            ))),
        }
    }

    async fn handle_publish(&mut self, link: &mut Link, p: Publish) -> Result<(), Error> {
        if p.qos == QoS::ExactlyOnce {
            return Err(Error::Protocol(
                "the hub sent a QoS 2 message, which this client does not support".to_owned(),
            ));
        }
        let acknowledge = if let Some(rest) = p.topic.strip_prefix(iothub::TWIN_RESPONSE_PREFIX) {
            self.twin_answer(rest, p.payload.clone());
            true
        } else if p.topic.starts_with(iothub::DESIRED_PREFIX) {
            match serde_json::from_slice::<Value>(&p.payload) {
                Ok(patch) => {
                    self.emit(HubEvent::DesiredPatch(patch));
                }
                Err(e) => warn!(error = %e, "desired patch is not JSON; ignored"),
            }
            true
        } else if let Some(rest) = p.topic.strip_prefix(iothub::METHOD_PREFIX) {
            match method_call(rest, &p.payload) {
                Some(call) => {
                    self.emit(call);
                }
                None => warn!(topic = p.topic, "malformed method call; ignored"),
            }
            true
        } else if let Some(bag) = p.topic.strip_prefix(self.c2d_prefix.as_str()) {
            let message = Message::from_bag(bag, p.payload.to_vec());
            self.emit(HubEvent::C2d(message))
        } else {
            debug!(topic = p.topic, "message on an unknown topic; ignored");
            true
        };
        match (p.qos, p.packet_id, acknowledge) {
            (QoS::AtLeastOnce, Some(id), true) => link.send(&Packet::PubAck(id)).await,
            _ => Ok(()),
        }
    }

    /// `{status}/?$rid={rid}[&$version=N]`: complete the waiting request.
    fn twin_answer(&mut self, rest: &str, body: Bytes) {
        let (status, query) = rest
            .split_once("/?")
            .unwrap_or((rest.trim_end_matches('/'), ""));
        let Ok(status) = status.parse::<u16>() else {
            warn!(status, "twin response with an unreadable status; ignored");
            return;
        };
        let bag = topic::parse_property_bag(query);
        let Some(rid) = bag
            .iter()
            .find(|(k, _)| k == "$rid")
            .map(|(_, v)| v.clone())
        else {
            warn!("twin response without $rid; ignored");
            return;
        };
        match self.requests.remove(&rid) {
            Some(reply) => {
                let _ = reply.send(Ok(TwinAnswer { status, bag, body }));
            }
            None => debug!(rid, "twin response for no waiting request (timed out?)"),
        }
    }

    /// Hand an event to the application. `false` when the channel is full (the event is
    /// dropped); a closed channel counts as delivered (nobody listens).
    fn emit(&self, event: HubEvent) -> bool {
        match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => true,
            Err(TrySendError::Full(event)) => {
                let kind = match &event {
                    HubEvent::Connected { .. } => "Connected",
                    HubEvent::Disconnected { .. } => "Disconnected",
                    HubEvent::DesiredPatch(_) => "DesiredPatch",
                    HubEvent::MethodCall { .. } => "MethodCall",
                    HubEvent::C2d(_) => "C2d",
                    HubEvent::Twin(_) => "Twin",
                    HubEvent::Refused { .. } => "Refused",
                };
                warn!(
                    kind,
                    "event channel full (the application is not reading events); event dropped"
                );
                false
            }
        }
    }

    /// Wait for `fut` while disconnected: telemetry is queued for the next connection, twin
    /// requests fail fast, and a close request (or losing every handle) ends the wait with
    /// `None`.
    async fn offline<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let has_room = self.in_flight.len() < self.options.max_in_flight;
            tokio::select! {
                out = &mut fut => return Some(out),
                () = self.close.notified() => return None,
                command = self.commands.recv(), if has_room => match command {
                    None => return None,
                    Some(Command::Request { reply, .. }) => {
                        let _ = reply.send(Err(Error::NotConnected));
                    }
                    Some(Command::Publish { topic, payload, reply }) => {
                        self.queue(topic, payload, reply);
                    }
                    Some(Command::Fire { reply, .. }) => {
                        let _ = reply.send(Err(Error::NotConnected));
                    }
                },
            }
        }
    }

    /// Reconnect with backoff (at once when renewing a token).
    async fn reconnect(&mut self, immediately: bool) -> Result<Established, Ending> {
        let options = Arc::clone(&self.options);
        let endpoint = self.endpoint.clone();
        let policy = &options.reconnect;
        let mut failures: u32 = 0;
        loop {
            let delay = if immediately && failures == 0 {
                Duration::ZERO
            } else {
                policy.backoff(failures)
            };
            debug!(?delay, attempt = failures + 1, "reconnecting");
            self.offline(tokio::time::sleep(delay))
                .await
                .ok_or(Ending::Closed)?;
            let error = match self.offline(attempt(&endpoint, &options)).await {
                None => return Err(Ending::Closed),
                Some(Ok(established)) => return Ok(established),
                Some(Err(e)) => e,
            };
            failures += 1;
            warn!(error = %muster_types::report(&error), failures, "reconnecting to the hub failed");
            if let Error::Refused { code } = &error {
                self.emit(HubEvent::Refused { code: *code });
            }
            self.emit(HubEvent::Disconnected {
                reason: format!("reconnecting failed: {}", muster_types::report(&error)),
            });
            if !policy.enabled || policy.max_attempts.is_some_and(|max| failures >= max) {
                return Err(Ending::GaveUp(error.to_string()));
            }
        }
    }

    /// Fail everything outstanding and stop taking commands.
    fn finish(&mut self, ending: &Ending) {
        let error = || match ending {
            Ending::Closed => Error::Closed,
            Ending::GaveUp(reason) => Error::Disconnected(reason.clone()),
        };
        for (_, reply) in self.requests.drain() {
            let _ = reply.send(Err(error()));
        }
        for (_, outgoing) in self.in_flight.drain() {
            let _ = outgoing.reply.send(Err(error()));
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Request { reply, .. } => {
                    let _ = reply.send(Err(error()));
                }
                Command::Publish { reply, .. } | Command::Fire { reply, .. } => {
                    let _ = reply.send(Err(error()));
                }
            }
        }
    }
}

/// Sleep until `at`; forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `{name}/?$rid={rid}` and the payload as a [`HubEvent::MethodCall`].
fn method_call(rest: &str, payload: &[u8]) -> Option<HubEvent> {
    let (name, query) = rest.split_once("/?")?;
    let rid = topic::parse_property_bag(query)
        .into_iter()
        .find(|(k, _)| k == "$rid")
        .map(|(_, v)| v)?;
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
    };
    Some(HubEvent::MethodCall {
        name: percent_decode(name),
        rid,
        payload,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn telemetry_property_bags() {
        let m = Message::json(&json!({"t": 1}))
            .with_message_id("m-1")
            .with_property("alert", "yes")
            .with_property("sp ace", "a/b");
        assert_eq!(
            m.property_bag(),
            "%24.mid=m-1&%24.ct=application%2Fjson&%24.ce=utf-8&alert=yes&sp%20ace=a%2Fb"
        );
        assert_eq!(Message::new("x").property_bag(), "");
    }

    #[test]
    fn c2d_messages_from_topics() {
        let m = Message::from_bag(
            "%24.mid=c2d-1&%24.to=%2Fdevices%2Fd1%2Fmessages%2Fdevicebound&iothub-ack=full&priority=high",
            b"hi".to_vec(),
        );
        assert_eq!(m.message_id.as_deref(), Some("c2d-1"));
        assert_eq!(m.property("priority"), Some("high"));
        assert_eq!(
            m.system_properties,
            vec![
                (
                    "$.to".to_owned(),
                    "/devices/d1/messages/devicebound".to_owned()
                ),
                ("iothub-ack".to_owned(), "full".to_owned())
            ]
        );
    }

    #[test]
    fn method_calls_from_topics() {
        let call = method_call("set%20Delay/?$rid=abc", br#"{"s":2}"#).unwrap();
        assert_eq!(
            call,
            HubEvent::MethodCall {
                name: "set Delay".into(),
                rid: "abc".into(),
                payload: json!({"s": 2})
            }
        );
        let HubEvent::MethodCall { payload, .. } = method_call("m/?$rid=1", b"").unwrap() else {
            panic!()
        };
        assert_eq!(payload, Value::Null);
        assert!(method_call("m/?x=1", b"").is_none());
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let policy = ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..ReconnectPolicy::default()
        };
        for attempt in 0..30 {
            let d = policy.backoff(attempt);
            let base = (Duration::from_millis(100) * 2u32.pow(attempt.min(10)))
                .min(Duration::from_secs(1));
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.backoff(5)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
        assert_eq!(
            renewal_delay(Duration::from_secs(3600)),
            Duration::from_secs(3480)
        );
        assert_eq!(
            renewal_delay(Duration::from_secs(5)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn options_are_checked() {
        let sas = HubCredentials::Sas {
            key: Secret::new("AAAA"),
            token_ttl: Duration::from_secs(1),
        };
        assert!(HubOptions::new("h", "d", sas).check().is_err());
        assert!(
            HubOptions::new("h", "a/b", HubCredentials::sas(Secret::new("AAAA")))
                .check()
                .is_err()
        );
        assert!(
            HubOptions::new("h", "d", HubCredentials::sas(Secret::new("AAAA")))
                .check()
                .is_ok()
        );
    }
}
