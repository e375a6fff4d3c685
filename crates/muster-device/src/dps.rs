//! Device registration with the Device Provisioning Service (muster's or Azure's), over MQTT or
//! HTTPS, with an X.509 certificate or a symmetric key.
//!
//! The flow (wire facts: docs/wire-protocol.md §1 and §2): register → either `200
//! {"status":"assigned", "registrationState"}` at once (muster's default) or Azure's `202
//! {"status":"assigning", "operationId"}` with `retry-after`, then poll the operation until
//! `200 {"status":"assigned", "registrationState"}`. `429` and `5xx` answers are retried after their `retry-after`;
//! every other failure becomes [`Error::Provisioning`] with Azure's `errorCode`. The whole
//! registration runs under one deadline ([`ProvisioningOptions::timeout`]).

use std::sync::Arc;
use std::time::Duration;

use muster_auth::Secret;
use muster_auth::sas::percent_encode;
use muster_mqtt::{Connect, Packet, Publish, QoS, SubAckReturnCode, Subscribe, topic};
use rustls::ClientConfig;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::connection::{Connection, Endpoint};
use crate::identity::{Identity, TrustRoots, client_config};
use crate::{Error, USER_AGENT, unix_now};

/// The DPS device API version both SDKs send.
pub const API_VERSION: &str = "2019-03-31";
/// Default MQTT port.
pub const DEFAULT_MQTT_PORT: u16 = 8883;
/// Default HTTPS port.
pub const DEFAULT_HTTPS_PORT: u16 = 443;
/// Default deadline for a whole registration.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait between polls when the service names none (what both SDKs do).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// Longest `retry-after` honoured; a larger one is capped so a bad value cannot park a device.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// MQTT keep-alive of a provisioning session.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Lifetime of the SAS token of one registration.
const TOKEN_TTL: u64 = 3600;
const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// How to reach the provisioning service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// MQTT 3.1.1 over TLS (default port 8883).
    #[default]
    Mqtt,
    /// HTTPS (default port 443).
    Https,
    /// AMQP 1.0 over TLS (default port 5671).
    Amqp,
    /// MQTT through a WebSocket on the HTTPS port (default 443).
    MqttWs,
    /// AMQP through a WebSocket on the HTTPS port (default 443).
    AmqpWs,
}

impl Transport {
    /// The WebSocket subprotocol, for the tunnelled transports.
    fn websocket(self) -> Option<&'static str> {
        match self {
            Self::MqttWs => Some(muster_ws::MQTT),
            Self::AmqpWs => Some(muster_ws::AMQP),
            Self::Mqtt | Self::Https | Self::Amqp => None,
        }
    }
}

/// How the device proves who it is.
#[derive(Debug, Clone)]
pub enum DpsCredentials {
    /// A client certificate; the registration id is its common name.
    X509(Identity),
    /// An individual symmetric key (or a key derived from a group key, see
    /// [`DpsCredentials::from_group_key`]).
    SymmetricKey {
        /// The registration id.
        registration_id: String,
        /// The device's key (base64).
        key: Secret,
    },
}

impl DpsCredentials {
    /// Credentials for `registration_id` in a symmetric-key enrollment group: the device key
    /// is `base64(HMAC-SHA256(groupKey, registrationId))`.
    ///
    /// # Errors
    /// [`Error::Key`] when the group key is not base64.
    pub fn from_group_key(registration_id: &str, group_key: &Secret) -> Result<Self, Error> {
        Ok(Self::SymmetricKey {
            registration_id: registration_id.to_owned(),
            key: derive_device_key(group_key, registration_id)?,
        })
    }

    /// The registration id these credentials are for.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for a certificate without common name.
    pub fn registration_id(&self) -> Result<&str, Error> {
        match self {
            Self::X509(identity) => identity.registration_id(),
            Self::SymmetricKey {
                registration_id, ..
            } => Ok(registration_id),
        }
    }
}

/// The device key for `registration_id` in a symmetric-key enrollment group.
///
/// # Errors
/// [`Error::Key`] when the group key is not base64.
pub fn derive_device_key(group_key: &Secret, registration_id: &str) -> Result<Secret, Error> {
    Ok(muster_auth::sas::derive_device_key(
        group_key,
        registration_id,
    )?)
}

/// Everything a [`ProvisioningClient`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProvisioningOptions {
    /// The provisioning host (`global.azure-devices-provisioning.net`, or muster's host name).
    pub host: String,
    /// The port; `None` = 8883 for MQTT, 443 for HTTPS.
    pub port: Option<u16>,
    /// The ID scope (`0ne…`).
    pub id_scope: String,
    /// MQTT or HTTPS.
    pub transport: Transport,
    /// Roots the server certificate must chain to.
    pub trust: TrustRoots,
    /// The device's credentials.
    pub credentials: DpsCredentials,
    /// Custom data sent with the registration (`payload`), e.g. `{"modelId": "dtmi:…"}`.
    pub payload: Option<Value>,
    /// Deadline for the whole registration, retries and polls included.
    pub timeout: Duration,
    /// Local address to connect from (`None`: chosen by the system).
    pub local_address: Option<std::net::IpAddr>,
}

impl ProvisioningOptions {
    /// Options with the defaults: MQTT, its default port, webpki roots, no payload, 60 s.
    #[must_use]
    pub fn new(
        host: impl Into<String>,
        id_scope: impl Into<String>,
        credentials: DpsCredentials,
    ) -> Self {
        Self {
            host: host.into(),
            port: None,
            id_scope: id_scope.into(),
            transport: Transport::Mqtt,
            trust: TrustRoots::default(),
            credentials,
            payload: None,
            timeout: DEFAULT_TIMEOUT,
            local_address: None,
        }
    }

    /// The port in use: the one set, or the transport's default.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.transport {
            Transport::Mqtt => DEFAULT_MQTT_PORT,
            Transport::Https => DEFAULT_HTTPS_PORT,
            Transport::Amqp => crate::amqp::DEFAULT_PORT,
            Transport::MqttWs | Transport::AmqpWs => DEFAULT_HTTPS_PORT,
        })
    }
}

/// The outcome of a successful registration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Registration {
    /// `assigned`.
    pub status: String,
    /// The hub the device must connect to.
    pub assigned_hub: String,
    /// The device id in that hub.
    pub device_id: String,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset`, …
    pub substatus: Option<String>,
    /// The registration id.
    pub registration_id: String,
    /// The operation that produced this result.
    pub operation_id: String,
    /// When the registration record was created (as the service wrote it).
    pub created: Option<String>,
    /// When it last changed.
    pub last_updated: Option<String>,
    /// The record's etag.
    pub etag: Option<String>,
    /// Data returned by the service (custom allocation), if any.
    pub payload: Option<Value>,
    /// The whole `registrationState` object (enrollment group, certificate info, …).
    pub registration_state: Value,
}

/// Registers one device. Cheap to clone; `register` may be called again (re-provisioning).
#[derive(Debug, Clone)]
pub struct ProvisioningClient {
    options: ProvisioningOptions,
    registration_id: String,
    tls: Arc<ClientConfig>,
}

impl ProvisioningClient {
    /// Check the options and build the TLS configuration.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for an empty host or ID scope or a certificate without common
    /// name; [`Error::TlsConfig`] when rustls refuses the client certificate.
    pub fn new(options: ProvisioningOptions) -> Result<Self, Error> {
        if options.host.is_empty() {
            return Err(Error::InvalidOptions(
                "the provisioning host is empty".into(),
            ));
        }
        if options.id_scope.is_empty() || options.id_scope.contains('/') {
            return Err(Error::InvalidOptions(format!(
                "'{}' is not an ID scope",
                options.id_scope
            )));
        }
        let registration_id = options.credentials.registration_id()?.to_owned();
        if registration_id.is_empty() || registration_id.contains('/') {
            return Err(Error::InvalidOptions(format!(
                "'{registration_id}' is not a registration id"
            )));
        }
        let identity = match &options.credentials {
            DpsCredentials::X509(identity) => Some(identity),
            DpsCredentials::SymmetricKey { .. } => None,
        };
        let alpn: &[&[u8]] = match options.transport {
            Transport::Mqtt | Transport::Amqp => &[],
            Transport::Https | Transport::MqttWs | Transport::AmqpWs => &[b"http/1.1"],
        };
        let tls = client_config(&options.trust, identity, alpn)?;
        Ok(Self {
            options,
            registration_id,
            tls,
        })
    }

    /// The registration id this client registers.
    #[must_use]
    pub fn registration_id(&self) -> &str {
        &self.registration_id
    }

    /// Register the device and wait for its assignment.
    ///
    /// # Errors
    /// [`Error::Provisioning`] when the service refuses (e.g. `401002` for unknown or disabled
    /// devices) or the registration ends `failed`; [`Error::Timeout`] when the deadline
    /// passes; connection, TLS and protocol errors as they occur.
    pub async fn register(&self) -> Result<Registration, Error> {
        let timeout = self.options.timeout;
        let work = async {
            match self.options.transport {
                Transport::Mqtt | Transport::MqttWs => self.register_mqtt().await,
                Transport::Https => self.register_https().await,
                Transport::Amqp | Transport::AmqpWs => self.register_amqp().await,
            }
        };
        let registration =
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| Error::Timeout {
                    what: "provisioning",
                    after: timeout,
                })??;
        info!(
            registration_id = self.registration_id,
            hub = registration.assigned_hub,
            device_id = registration.device_id,
            "device provisioned"
        );
        Ok(registration)
    }

    /// A SAS token for the registration, or `None` for X.509.
    fn token(&self) -> Result<Option<String>, Error> {
        match &self.options.credentials {
            DpsCredentials::X509(_) => Ok(None),
            DpsCredentials::SymmetricKey { key, .. } => {
                let resource = format!(
                    "{}/registrations/{}",
                    self.options.id_scope, self.registration_id
                );
                Ok(Some(muster_auth::sas::make_token(
                    &resource,
                    key,
                    Some("registration"),
                    unix_now() + TOKEN_TTL,
                )?))
            }
        }
    }

    fn request_body(&self) -> Vec<u8> {
        let mut body = json!({"registrationId": self.registration_id});
        if let (Some(payload), Some(object)) = (&self.options.payload, body.as_object_mut()) {
            object.insert("payload".to_owned(), payload.clone());
        }
        body.to_string().into_bytes()
    }

    async fn register_mqtt(&self) -> Result<Registration, Error> {
        let endpoint = Endpoint {
            host: self.options.host.clone(),
            port: self.options.port(),
            tls: Arc::clone(&self.tls),
            local_address: self.options.local_address,
            websocket: self.options.transport.websocket(),
        };
        let connect = Connect {
            protocol_level: 4,
            client_id: self.registration_id.clone(),
            clean_session: true,
            keep_alive: u16::try_from(KEEP_ALIVE.as_secs()).unwrap_or(u16::MAX),
            username: Some(format!(
                "{}/registrations/{}/api-version={API_VERSION}&ClientVersion={}",
                self.options.id_scope,
                self.registration_id,
                percent_encode(USER_AGENT)
            )),
            password: self.token()?.map(String::into_bytes),
            will: None,
        };
        let (conn, _) = Connection::open(&endpoint, connect).await?;
        let mut session = MqttSession {
            conn,
            last_sent: Instant::now(),
            next_packet_id: 0,
            next_rid: 0,
        };
        session.subscribe().await?;
        let register_body = self.request_body();
        let outcome = async {
            let mut operation: Option<String> = None;
            loop {
                let rid = session.rid();
                let (topic, payload) = match &operation {
                    None => (
                        format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
                        register_body.clone(),
                    ),
                    Some(op) => (
                        format!(
                            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={}",
                            percent_encode(op)
                        ),
                        b" ".to_vec(),
                    ),
                };
                let answer = session.request(&rid, topic, payload).await?;
                match interpret(&answer)? {
                    Step::Done(registration) => return Ok(*registration),
                    Step::Poll { operation_id, wait } => {
                        operation = Some(operation_id);
                        session.idle(wait).await?;
                    }
                    Step::Retry { wait } => session.idle(wait).await?,
                }
            }
        }
        .await;
        session.conn.disconnect().await;
        outcome
    }

    async fn register_amqp(&self) -> Result<Registration, Error> {
        let endpoint = Endpoint {
            host: self.options.host.clone(),
            port: self.options.port(),
            tls: Arc::clone(&self.tls),
            local_address: self.options.local_address,
            websocket: self.options.transport.websocket(),
        };
        let mut links = crate::amqp::DpsLinks::open(
            &endpoint,
            &self.options.id_scope,
            &self.registration_id,
            self.token()?,
        )
        .await?;
        let register_body = self.request_body();
        let outcome = async {
            let mut operation: Option<String> = None;
            loop {
                let answer = match &operation {
                    None => links.request(register_body.clone(), None).await?,
                    Some(op) => links.request(b" ".to_vec(), Some(op)).await?,
                };
                let answer = Answer {
                    status: answer.status,
                    retry_after: answer.retry_after,
                    body: answer.body,
                };
                match interpret(&answer)? {
                    Step::Done(registration) => return Ok(*registration),
                    Step::Poll { operation_id, wait } => {
                        operation = Some(operation_id);
                        tokio::time::sleep(wait).await;
                    }
                    Step::Retry { wait } => tokio::time::sleep(wait).await,
                }
            }
        }
        .await;
        links.close().await;
        outcome
    }

    async fn register_https(&self) -> Result<Registration, Error> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(ClientConfig::clone(&self.tls))
            .local_address(self.options.local_address)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|source| Error::Http {
                url: format!("https://{}", self.options.host),
                source,
            })?;
        let host = if self.options.host.contains(':') {
            format!("[{}]", self.options.host)
        } else {
            self.options.host.clone()
        };
        let base = format!(
            "https://{host}:{}/{}/registrations/{}",
            self.options.port(),
            percent_encode(&self.options.id_scope),
            percent_encode(&self.registration_id)
        );
        let token = self.token()?;
        let register_body = self.request_body();
        let mut operation: Option<String> = None;
        loop {
            let (url, request) = match &operation {
                None => {
                    let url = format!("{base}/register?api-version={API_VERSION}");
                    let request = client
                        .put(&url)
                        .header("content-type", "application/json; charset=utf-8")
                        .body(register_body.clone());
                    (url, request)
                }
                Some(op) => {
                    let url = format!(
                        "{base}/operations/{}?api-version={API_VERSION}",
                        percent_encode(op)
                    );
                    let request = client.get(&url);
                    (url, request)
                }
            };
            let mut request = request.header("accept", "application/json");
            if let Some(t) = &token {
                request = request.header("authorization", t);
            }
            let response = request.send().await.map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = response
                .bytes()
                .await
                .map_err(|source| Error::Http { url, source })?;
            debug!(status, "provisioning answer over HTTPS");
            match interpret(&Answer {
                status,
                retry_after,
                body: body.to_vec(),
            })? {
                Step::Done(registration) => return Ok(*registration),
                Step::Poll { operation_id, wait } => {
                    operation = Some(operation_id);
                    tokio::time::sleep(wait).await;
                }
                Step::Retry { wait } => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// One answer of the service, whichever transport carried it.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// What to do after an answer.
#[derive(Debug)]
enum Step {
    Done(Box<Registration>),
    Poll {
        operation_id: String,
        wait: Duration,
    },
    Retry {
        wait: Duration,
    },
}

fn parse_retry_after(text: &str) -> Option<Duration> {
    text.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// Azure's error body `{errorCode, message, …}` as an [`Error::Provisioning`].
fn refusal(status: u16, body: &Value) -> Error {
    let error_code = body
        .get("errorCode")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(u32::from(status) * 1000);
    let message = body
        .get("message")
        .or_else(|| body.get("Message"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("status {status}"), str::to_owned);
    Error::Provisioning {
        status,
        error_code,
        message,
    }
}

fn interpret(answer: &Answer) -> Result<Step, Error> {
    let status = answer.status;
    if status == 429 || status >= 500 {
        // Whatever the body says (a proxy may send HTML): wait and try again.
        let wait = answer.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
        debug!(status, ?wait, "provisioning service asks to retry");
        return Ok(Step::Retry { wait });
    }
    let parsed = if answer.body.iter().all(u8::is_ascii_whitespace) {
        Ok(Value::Null)
    } else {
        serde_json::from_slice::<Value>(&answer.body)
    };
    if !(200..300).contains(&status) {
        return Err(match parsed {
            Ok(body) => refusal(status, &body),
            Err(_) => {
                let text = String::from_utf8_lossy(&answer.body);
                let mut message: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                if message.len() > 200 {
                    message = message.chars().take(200).collect::<String>() + "…";
                }
                Error::Provisioning {
                    status,
                    error_code: u32::from(status) * 1000,
                    message,
                }
            }
        });
    }
    let body = parsed.map_err(|e| {
        Error::Protocol(format!(
            "the provisioning service answered {status} with a body that is not JSON: {e}"
        ))
    })?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let operation_id = text(&body, "operationId");
    match body.get("status").and_then(Value::as_str) {
        Some("assigning") => {
            let operation_id = operation_id.ok_or_else(|| {
                Error::Protocol("an 'assigning' answer without operationId".to_owned())
            })?;
            Ok(Step::Poll {
                operation_id,
                wait: answer.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            })
        }
        Some("assigned") => {
            let state = body
                .get("registrationState")
                .cloned()
                .unwrap_or(Value::Null);
            let required = |key: &str| {
                text(&state, key).ok_or_else(|| {
                    Error::Protocol(format!("an 'assigned' registration without {key}"))
                })
            };
            Ok(Step::Done(Box::new(Registration {
                status: "assigned".to_owned(),
                assigned_hub: required("assignedHub")?,
                device_id: required("deviceId")?,
                substatus: text(&state, "substatus"),
                registration_id: required("registrationId")?,
                operation_id: operation_id.unwrap_or_default(),
                created: text(&state, "createdDateTimeUtc"),
                last_updated: text(&state, "lastUpdatedDateTimeUtc"),
                etag: text(&state, "etag"),
                payload: state.get("payload").filter(|p| !p.is_null()).cloned(),
                registration_state: state,
            })))
        }
        Some(other @ ("failed" | "disabled" | "unassigned")) => {
            let state = body.get("registrationState").unwrap_or(&Value::Null);
            let error_code = state
                .get("errorCode")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(if other == "disabled" {
                    401_002
                } else {
                    400_000
                });
            let message = text(state, "errorMessage")
                .unwrap_or_else(|| format!("the registration ended with status '{other}'"));
            Err(Error::Provisioning {
                status,
                error_code,
                message,
            })
        }
        Some(other) => Err(Error::Protocol(format!(
            "unexpected registration status '{other}'"
        ))),
        None => Err(Error::Protocol(
            "a provisioning answer without status".to_owned(),
        )),
    }
}

/// The provisioning MQTT session: one request at a time, keep-alive while waiting.
#[derive(Debug)]
struct MqttSession {
    conn: Connection,
    last_sent: Instant,
    next_packet_id: u16,
    next_rid: u64,
}

impl MqttSession {
    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        self.next_packet_id
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        self.next_rid.to_string()
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), Error> {
        self.conn.write_packet(packet).await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Subscribe to the response topic and wait for the SUBACK.
    async fn subscribe(&mut self) -> Result<(), Error> {
        let packet_id = self.packet_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(RESPONSE_FILTER.to_owned(), QoS::AtLeastOnce)],
        }))
        .await?;
        loop {
            if let Packet::SubAck(ack) = self.next_packet(None).await?.ok_or_else(closed)?
                && ack.packet_id == packet_id
            {
                return if ack.return_codes.contains(&SubAckReturnCode::Failure) {
                    Err(Error::Protocol(format!(
                        "the provisioning service refused the subscription to {RESPONSE_FILTER}"
                    )))
                } else {
                    Ok(())
                };
            }
        }
    }

    /// Publish a request and wait for the response carrying `rid`.
    async fn request(
        &mut self,
        rid: &str,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<Answer, Error> {
        let packet_id = self.packet_id();
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(packet_id),
            payload: payload.into(),
        }))
        .await?;
        loop {
            let Packet::Publish(p) = self.next_packet(None).await?.ok_or_else(closed)? else {
                continue;
            };
            if let Some(answer) = parse_response(&p, rid) {
                return Ok(answer);
            }
            debug!(topic = p.topic, "ignoring a message for another request");
        }
    }

    /// Wait `wait`, answering the server and keeping the connection alive meanwhile.
    async fn idle(&mut self, wait: Duration) -> Result<(), Error> {
        let until = Instant::now() + wait;
        while self.next_packet(Some(until)).await?.is_some() {}
        Ok(())
    }

    /// The next packet, acknowledging QoS 1 publishes and pinging when the keep-alive is due.
    /// With `until`, `Ok(None)` means the time passed; without, the server closed.
    async fn next_packet(&mut self, until: Option<Instant>) -> Result<Option<Packet>, Error> {
        loop {
            let ping_at = self.last_sent + KEEP_ALIVE;
            let wake = until.map_or(ping_at, |u| u.min(ping_at));
            tokio::select! {
                packet = self.conn.read_packet() => {
                    let Some(packet) = packet? else {
                        return Err(closed());
                    };
                    if let Packet::Publish(p) = &packet
                        && let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id)
                    {
                        self.send(&Packet::PubAck(id)).await?;
                    }
                    return Ok(Some(packet));
                }
                () = tokio::time::sleep_until(wake) => {
                    if until.is_some_and(|u| Instant::now() >= u) {
                        return Ok(None);
                    }
                    self.send(&Packet::PingReq).await?;
                }
            }
        }
    }
}

fn closed() -> Error {
    Error::Disconnected("the provisioning service closed the connection".to_owned())
}

/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]` for our `rid`.
fn parse_response(p: &Publish, rid: &str) -> Option<Answer> {
    let rest = p.topic.strip_prefix(RESPONSE_PREFIX)?;
    let (status, query) = rest
        .split_once("/?")
        .unwrap_or((rest.trim_end_matches('/'), ""));
    let status = status.parse::<u16>().ok()?;
    let bag = topic::parse_property_bag(query);
    let get = |key: &str| bag.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if get("$rid") != Some(rid) {
        return None;
    }
    Some(Answer {
        status,
        retry_after: get("retry-after").and_then(parse_retry_after),
        body: p.payload.to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn answer(status: u16, retry: Option<u64>, body: &Value) -> Answer {
        Answer {
            status,
            retry_after: retry.map(Duration::from_secs),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn answers_become_steps() {
        let step = interpret(&answer(
            202,
            Some(3),
            &json!({"operationId": "4.a.b", "status": "assigning"}),
        ))
        .unwrap();
        assert!(
            matches!(step, Step::Poll { ref operation_id, wait } if operation_id == "4.a.b" && wait == Duration::from_secs(3))
        );
        let step = interpret(&answer(
            200,
            None,
            &json!({"operationId": "4.a.b", "status": "assigned", "registrationState": {
                "registrationId": "r1", "assignedHub": "hub", "deviceId": "d1",
                "substatus": "initialAssignment", "payload": {"x": 1}}}),
        ))
        .unwrap();
        let Step::Done(r) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (r.assigned_hub.as_str(), r.device_id.as_str()),
            ("hub", "d1")
        );
        assert_eq!(r.payload, Some(json!({"x": 1})));
        // Throttling and server errors are retried after retry-after (default 2 s).
        assert!(matches!(
            interpret(&answer(429, Some(1), &json!({"errorCode": 429001}))).unwrap(),
            Step::Retry { wait } if wait == Duration::from_secs(1)
        ));
        assert!(matches!(
            interpret(&answer(503, None, &Value::Null)).unwrap(),
            Step::Retry { wait } if wait == DEFAULT_RETRY_AFTER
        ));
        // Refusals carry Azure's code and message.
        let e = interpret(&answer(
            401,
            None,
            &json!({"errorCode": 401002, "message": "Unauthorized"}),
        ))
        .unwrap_err();
        assert_eq!(e.to_string(), "provisioning refused: 401002 Unauthorized");
        let e = interpret(&answer(
            200,
            None,
            &json!({"status": "failed", "registrationState": {"errorCode": 400209, "errorMessage": "Custom allocation failed"}}),
        ))
        .unwrap_err();
        assert!(matches!(
            e,
            Error::Provisioning {
                error_code: 400_209,
                ..
            }
        ));
        assert!(interpret(&answer(200, None, &json!({"status": "weird"}))).is_err());
        // Bodies that are not JSON: retried when throttled, reported when refused.
        let html = |status| Answer {
            status,
            retry_after: None,
            body: b"<html>\n  <b>Bad   gateway</b></html>".to_vec(),
        };
        assert!(matches!(interpret(&html(502)).unwrap(), Step::Retry { .. }));
        let e = interpret(&html(403)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "provisioning refused: 403000 <html> <b>Bad gateway</b></html>"
        );
        assert!(matches!(interpret(&html(200)), Err(Error::Protocol(_))));
    }

    #[test]
    fn response_topics() {
        let p = |topic: &str| Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.to_owned(),
            packet_id: None,
            payload: bytes::Bytes::from_static(b"{}"),
        };
        let a =
            parse_response(&p("$dps/registrations/res/202/?$rid=7&retry-after=3"), "7").unwrap();
        assert_eq!(a.status, 202);
        assert_eq!(a.retry_after, Some(Duration::from_secs(3)));
        assert!(parse_response(&p("$dps/registrations/res/202/?$rid=8"), "7").is_none());
        assert!(parse_response(&p("$iothub/twin/res/200/?$rid=7"), "7").is_none());
        assert_eq!(parse_retry_after("100000"), Some(MAX_RETRY_AFTER), "capped");
    }
}
