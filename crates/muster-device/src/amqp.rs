//! AMQP 1.0 for the device client: DPS registration and the hub connection, as the Azure
//! SDKs speak them (`docs/wire-protocol.md` §7 of the server).
//!
//! - **DPS:** TLS with the client certificate (X.509) or SASL PLAIN with the registration's
//!   SAS token (symmetric key); a link pair on `{idScope}/registrations/{registrationId}`;
//!   `iotdps-register` and `iotdps-get-operationstatus` requests correlated by id; a refusal
//!   rejects the request with the DPS error JSON as description.
//! - **Hub:** TLS (with the certificate for X.509), plain AMQP, a CBS `put-token` for SAS
//!   (renewed on the same links before expiry), then one session with the telemetry sender, the
//!   cloud-to-device receiver (messages are accepted once handed to the application), the twin
//!   pair and the direct-method pair. The [`hub`](crate::hub) client's commands are served here
//!   with the same [`HubEvent`]s as over MQTT; telemetry not yet accepted is sent again after
//!   a reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{Fields, ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Batch, Body, Data, Message as AmqpMessage,
    MessageAnnotations, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Session};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use muster_mqtt::iothub;
use serde_json::Value as Json;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Error;
use crate::connection::Endpoint;
use crate::hub::{Command, HubCredentials, HubEvent, HubOptions, Message, TwinAnswer};

/// The port AMQP devices dial.
pub(crate) const DEFAULT_PORT: u16 = 5671;

type Msg = AmqpMessage<Body<Value>>;

fn link_error(what: &'static str) -> impl Fn(&dyn std::fmt::Debug) -> Error {
    move |e| {
        if unauthorized(e) {
            Error::Refused {
                code: muster_mqtt::ConnectReturnCode::NotAuthorized,
            }
        } else {
            Error::Protocol(format!("AMQP {what}: {e:?}"))
        }
    }
}

/// TLS, then an AMQP connection (SASL PLAIN when `plain` is given) and one session.
pub(crate) async fn open(
    endpoint: &Endpoint,
    container: &str,
    plain: Option<(String, String)>,
) -> Result<(ConnectionHandle<()>, SessionHandle<()>), Error> {
    let tls = endpoint.open_stream().await?;
    let mut builder = Connection::builder()
        .container_id(container)
        .hostname(endpoint.host.as_str())
        .max_frame_size(64 * 1024)
        .idle_time_out(120_000u32);
    if let Some((username, password)) = plain {
        builder = builder.sasl_profile(SaslProfile::Plain { username, password });
    }
    let mut connection = builder
        .open_with_stream(tls)
        .await
        .map_err(|e| link_error("open")(&e))?;
    let session = Session::begin(&mut connection)
        .await
        .map_err(|e| link_error("begin")(&e))?;
    Ok((connection, session))
}

fn data(bytes: Vec<u8>) -> Body<Value> {
    Body::Data(Batch::new(vec![Data(Binary::from(bytes))]))
}

fn body_bytes(body: &Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(AmqpValue(Value::String(s))) => s.clone().into_bytes(),
        Body::Value(AmqpValue(Value::Binary(b))) => b.to_vec(),
        _ => Vec::new(),
    }
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => {
            let h: String = u.as_inner().iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn simple_text(v: &SimpleValue) -> String {
    match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_owned(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn app_property(m: &Msg, name: &str) -> Option<String> {
    m.application_properties
        .as_ref()?
        .0
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| simple_text(v))
}

fn annotation(m: &Msg, name: &str) -> Option<Value> {
    m.message_annotations
        .as_ref()?
        .0
        .iter()
        .find(|(k, _)| matches!(k, OwnedKey::Symbol(s) if s.as_str() == name))
        .map(|(_, v)| v.clone())
}

fn message(
    properties: Properties,
    application: Vec<(String, SimpleValue)>,
    annotations: Vec<(&str, Value)>,
    body: Body<Value>,
) -> Msg {
    AmqpMessage {
        header: None,
        delivery_annotations: None,
        message_annotations: (!annotations.is_empty()).then(|| {
            MessageAnnotations(
                annotations
                    .into_iter()
                    .map(|(k, v)| (OwnedKey::Symbol(Symbol::from(k)), v))
                    .collect(),
            )
        }),
        properties: Some(properties),
        application_properties: (!application.is_empty())
            .then(|| ApplicationProperties(application.into_iter().collect())),
        body,
        footer: None,
    }
}

fn uuid() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    id_text(&MessageId::Uuid(b.into()))
}

// ---------------------------------------------------------------------------------------
// DPS

/// One DPS answer: the HTTP-like status, `retry-after`, the JSON body.
pub(crate) struct DpsAnswer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

/// A DPS link pair on `{scope}/registrations/{id}`.
pub(crate) struct DpsLinks {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    sender: Sender,
    receiver: Receiver,
}

impl DpsLinks {
    pub(crate) async fn open(
        endpoint: &Endpoint,
        scope: &str,
        registration_id: &str,
        token: Option<String>,
    ) -> Result<Self, Error> {
        let address = format!("{scope}/registrations/{registration_id}");
        let plain = token.map(|t| (address.clone(), t));
        let (connection, mut session) = open(endpoint, registration_id, plain).await?;
        let sender = Sender::attach(
            &mut session,
            format!("dps-out-{}", uuid()),
            address.as_str(),
        )
        .await
        .map_err(|e| link_error("attach")(&e))?;
        let receiver = Receiver::builder()
            .name(format!("dps-in-{}", uuid()))
            .source(address.as_str())
            .receiver_settle_mode(ReceiverSettleMode::First)
            .attach(&mut session)
            .await
            .map_err(|e| link_error("attach")(&e))?;
        Ok(Self {
            connection,
            session,
            sender,
            receiver,
        })
    }

    /// A register (`operation` = `None`) or status request; the service's answer.
    pub(crate) async fn request(
        &mut self,
        body: Vec<u8>,
        operation: Option<&str>,
    ) -> Result<DpsAnswer, Error> {
        let correlation = uuid();
        let mut application = vec![(
            "iotdps-operation-type".to_owned(),
            SimpleValue::String(
                if operation.is_some() {
                    "iotdps-get-operationstatus"
                } else {
                    "iotdps-register"
                }
                .to_owned(),
            ),
        )];
        match operation {
            Some(op) => application.push((
                "iotdps-operation-id".to_owned(),
                SimpleValue::String(op.to_owned()),
            )),
            None => application.push((
                "iotdps-forceRegistration".to_owned(),
                SimpleValue::Bool(false),
            )),
        }
        let request = message(
            Properties {
                message_id: Some(MessageId::String(correlation.clone())),
                correlation_id: Some(MessageId::String(correlation.clone())),
                ..Properties::default()
            },
            application,
            vec![],
            data(body),
        );
        let outcome = self
            .sender
            .send(request)
            .await
            .map_err(|e| link_error("send")(&e))?;
        if let Outcome::Rejected(rejected) = outcome {
            // The refusal's description is the DPS error JSON.
            let description = rejected
                .error
                .and_then(|e| e.description)
                .unwrap_or_default();
            let parsed: Json = serde_json::from_str(&description).unwrap_or(Json::Null);
            let status = parsed
                .get("errorCode")
                .and_then(Json::as_u64)
                .and_then(|c| u16::try_from(c / 1000).ok())
                .unwrap_or(400);
            return Ok(DpsAnswer {
                status,
                retry_after: None,
                body: description.into_bytes(),
            });
        }
        loop {
            let delivery = self
                .receiver
                .recv::<Body<Value>>()
                .await
                .map_err(|e| link_error("receive")(&e))?;
            let _ = self.receiver.accept(&delivery).await;
            let m = delivery.message();
            let matches = m
                .properties
                .as_ref()
                .and_then(|p| p.correlation_id.as_ref())
                .is_none_or(|c| id_text(c) == correlation);
            if !matches {
                continue;
            }
            let body = body_bytes(&m.body);
            let parsed: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
            let status = match parsed.get("status").and_then(Json::as_str) {
                Some("assigning") => 202,
                _ => 200,
            };
            let retry_after = app_property(m, "retry-after")
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Ok(DpsAnswer {
                status,
                retry_after,
                body,
            });
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.sender.close().await;
        let _ = self.receiver.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

// ---------------------------------------------------------------------------------------
// Hub

/// An established hub connection and its links.
pub(crate) struct HubLinks {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    cbs: Option<(Sender, Receiver)>,
    events: Sender,
    c2d: Receiver,
    twin_out: Sender,
    twin_in: Receiver,
    methods_out: Sender,
    methods_in: Receiver,
    /// When to send a fresh token.
    renew_at: Option<Instant>,
}

impl std::fmt::Debug for HubLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLinks").finish_non_exhaustive()
    }
}

fn channel(kind: &str) -> Fields {
    let mut fields = Fields::default();
    fields.insert(
        Symbol::from("com.microsoft:channel-correlation-id"),
        Value::String(format!("{kind}:{}", uuid())),
    );
    fields.insert(
        Symbol::from("com.microsoft:api-version"),
        Value::String(crate::hub::API_VERSION.to_owned()),
    );
    fields
}

impl HubLinks {
    /// Connect, authenticate and attach every link, under the connect deadline.
    pub(crate) async fn open(endpoint: &Endpoint, options: &HubOptions) -> Result<Self, Error> {
        tokio::time::timeout(options.connect_timeout, Self::establish(endpoint, options))
            .await
            .map_err(|_| Error::Timeout {
                what: "connecting to the hub over AMQP",
                after: options.connect_timeout,
            })?
    }

    async fn establish(endpoint: &Endpoint, options: &HubOptions) -> Result<Self, Error> {
        let (connection, mut session) = open(endpoint, &options.device_id, None).await?;
        let id = muster_auth::sas::percent_encode(&options.device_id);
        let mut renew_at = None;
        let cbs = match &options.credentials {
            HubCredentials::X509(_) => None,
            HubCredentials::Sas { key, token_ttl } => {
                let mut out = Sender::attach(&mut session, format!("cbs-out-{}", uuid()), "$cbs")
                    .await
                    .map_err(|e| link_error("attach $cbs")(&e))?;
                let mut inn = Receiver::attach(&mut session, format!("cbs-in-{}", uuid()), "$cbs")
                    .await
                    .map_err(|e| link_error("attach $cbs")(&e))?;
                put_token(&mut out, &mut inn, options, key, *token_ttl).await?;
                renew_at = Some(Instant::now() + crate::hub::renewal_delay(*token_ttl));
                Some((out, inn))
            }
        };
        let base = format!("/devices/{id}");
        let events = Sender::attach(
            &mut session,
            format!("events-{}", uuid()),
            format!("{base}/messages/events"),
        )
        .await
        .map_err(|e| link_error("attach telemetry")(&e))?;
        let c2d = Receiver::builder()
            .name(format!("c2d-{}", uuid()))
            .source(format!("{base}/messages/devicebound"))
            .receiver_settle_mode(ReceiverSettleMode::First)
            .attach(&mut session)
            .await
            .map_err(|e| link_error("attach cloud-to-device")(&e))?;
        let twin = channel("twin");
        let twin_out = Sender::builder()
            .name(format!("twin-out-{}", uuid()))
            .target(format!("{base}/twin"))
            .sender_settle_mode(SenderSettleMode::Settled)
            .properties(twin.clone())
            .attach(&mut session)
            .await
            .map_err(|e| link_error("attach twin")(&e))?;
        let twin_in = Receiver::builder()
            .name(format!("twin-in-{}", uuid()))
            .source(format!("{base}/twin"))
            .receiver_settle_mode(ReceiverSettleMode::First)
            .properties(twin)
            .attach(&mut session)
            .await
            .map_err(|e| link_error("attach twin")(&e))?;
        let methods = channel("methods");
        let methods_out = Sender::builder()
            .name(format!("methods-out-{}", uuid()))
            .target(format!("{base}/methods/devicebound"))
            .sender_settle_mode(SenderSettleMode::Settled)
            .properties(methods.clone())
            .attach(&mut session)
            .await
            .map_err(|e| link_error("attach methods")(&e))?;
        let methods_in = Receiver::builder()
            .name(format!("methods-in-{}", uuid()))
            .source(format!("{base}/methods/devicebound"))
            .receiver_settle_mode(ReceiverSettleMode::First)
            .properties(methods)
            .attach(&mut session)
            .await
            .map_err(|e| link_error("attach methods")(&e))?;
        let mut links = Self {
            connection,
            session,
            cbs,
            events,
            c2d,
            twin_out,
            twin_in,
            methods_out,
            methods_in,
            renew_at,
        };
        // Ask for desired-property changes (the answer is read by the task).
        let subscribe = message(
            Properties {
                correlation_id: Some(MessageId::String(format!("subscribe-{}", uuid()))),
                ..Properties::default()
            },
            vec![],
            vec![
                ("operation", Value::String("PUT".into())),
                (
                    "resource",
                    Value::String("/notifications/twin/properties/desired".into()),
                ),
            ],
            data(b" ".to_vec()),
        );
        links
            .twin_out
            .send(Sendable::builder().message(subscribe).settled(true).build())
            .await
            .map_err(|e| link_error("twin subscribe")(&e))?;
        Ok(links)
    }

    async fn close(mut self) {
        let _ = self.events.close().await;
        let _ = self.c2d.close().await;
        let _ = self.twin_out.close().await;
        let _ = self.twin_in.close().await;
        let _ = self.methods_out.close().await;
        let _ = self.methods_in.close().await;
        if let Some((out, inn)) = self.cbs.take() {
            let _ = out.close().await;
            let _ = inn.close().await;
        }
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

async fn put_token(
    out: &mut Sender,
    inn: &mut Receiver,
    options: &HubOptions,
    key: &muster_auth::Secret,
    ttl: Duration,
) -> Result<(), Error> {
    let audience = format!("{}/devices/{}", options.host, options.device_id);
    let token =
        muster_auth::sas::make_token(&audience, key, None, crate::unix_now() + ttl.as_secs())?;
    let id = uuid();
    let request = message(
        Properties {
            message_id: Some(MessageId::String(id.clone())),
            reply_to: Some("cbs".into()),
            to: Some("$cbs".into()),
            ..Properties::default()
        },
        vec![
            ("operation".into(), SimpleValue::String("put-token".into())),
            (
                "type".into(),
                SimpleValue::String("servicebus.windows.net:sastoken".into()),
            ),
            ("name".into(), SimpleValue::String(audience)),
        ],
        vec![],
        Body::Value(AmqpValue(Value::String(token))),
    );
    out.send(request)
        .await
        .map_err(|e| link_error("put-token")(&e))?;
    loop {
        let reply = inn
            .recv::<Body<Value>>()
            .await
            .map_err(|e| link_error("put-token answer")(&e))?;
        let _ = inn.accept(&reply).await;
        let m = reply.message();
        let ours = m
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.as_ref())
            .is_some_and(|c| id_text(c) == id);
        if !ours {
            continue;
        }
        let status = app_property(m, "status-code").unwrap_or_default();
        return if status == "200" || status == "202" {
            Ok(())
        } else {
            Err(Error::Refused {
                code: muster_mqtt::ConnectReturnCode::NotAuthorized,
            })
        };
    }
}

/// Telemetry waiting for its outcome (sent again after a reconnect).
struct Pending {
    message: Msg,
    reply: oneshot::Sender<Result<(), Error>>,
}

type OutcomeFuture = futures_util::future::BoxFuture<'static, (u64, Result<Outcome, String>)>;

/// The connection task of an AMQP hub client.
pub(crate) struct Task {
    pub(crate) options: Arc<HubOptions>,
    pub(crate) endpoint: Endpoint,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: mpsc::Sender<HubEvent>,
    pub(crate) close: Arc<Notify>,
    requests: HashMap<String, oneshot::Sender<Result<TwinAnswer, Error>>>,
    methods: HashMap<String, MessageId>,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
}

/// Why one connection's loop ended.
enum Exit {
    Close,
    Lost(String),
}

/// Whether a link error is the hub refusing the device (deleted, disabled, credentials
/// changed): `amqp:unauthorized-access`.
fn unauthorized(e: &dyn std::fmt::Debug) -> bool {
    format!("{e:?}").contains("UnauthorizedAccess")
}

impl Task {
    pub(crate) fn new(
        options: Arc<HubOptions>,
        endpoint: Endpoint,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<HubEvent>,
        close: Arc<Notify>,
    ) -> Self {
        Self {
            options,
            endpoint,
            commands,
            events,
            close,
            requests: HashMap::new(),
            methods: HashMap::new(),
            pending: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub(crate) async fn run(mut self, first: HubLinks) {
        let mut links = first;
        let mut attempt: u32 = 0;
        let mut reconnects = 0u64;
        loop {
            let _ = self.events.try_send(HubEvent::Connected {
                session_present: false,
            });
            if reconnects > 0 {
                self.refresh_twin(&mut links).await;
            }
            reconnects += 1;
            let exit = self.serve(&mut links).await;
            links.close().await;
            let reason = match exit {
                Exit::Close => {
                    info!("disconnected from the hub (closed)");
                    return self.finish("closed");
                }
                Exit::Lost(reason) => reason,
            };
            warn!(reason, "AMQP connection to the hub lost");
            let _ = self.events.try_send(HubEvent::Disconnected {
                reason: reason.clone(),
            });
            for (_, reply) in self.requests.drain() {
                let _ = reply.send(Err(Error::Disconnected(reason.clone())));
            }
            self.methods.clear();
            if !self.options.reconnect.enabled {
                return self.finish(&reason);
            }
            links = loop {
                let wait = self.options.reconnect.backoff(attempt);
                attempt = attempt.saturating_add(1);
                if self
                    .options
                    .reconnect
                    .max_attempts
                    .is_some_and(|m| attempt > m)
                {
                    return self.finish("giving up reconnecting");
                }
                tokio::select! {
                    () = self.close.notified() => return self.finish("closed"),
                    () = tokio::time::sleep(wait) => {}
                }
                match HubLinks::open(&self.endpoint, &self.options).await {
                    Ok(l) => {
                        attempt = 0;
                        info!("reconnected to the hub over AMQP");
                        break l;
                    }
                    Err(e) => {
                        if let Error::Refused { code } = &e {
                            let _ = self.events.try_send(HubEvent::Refused { code: *code });
                        }
                        let _ = self.events.try_send(HubEvent::Disconnected {
                            reason: format!("reconnecting failed: {e}"),
                        });
                    }
                }
            };
        }
    }

    fn finish(&mut self, reason: &str) {
        for (_, reply) in self.requests.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(Error::Disconnected(reason.to_owned())));
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            fail(command, &Error::Closed);
        }
    }

    async fn refresh_twin(&mut self, links: &mut HubLinks) {
        let id = format!("refresh-{}", uuid());
        let (reply, answer) = oneshot::channel();
        self.requests.insert(id.clone(), reply);
        if self
            .twin_request(links, &id, "GET", None, b" ".to_vec())
            .await
            .is_err()
        {
            return;
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Ok(Ok(answer)) = answer.await
                && let Ok(twin) = crate::hub::parse_twin(&answer.body)
            {
                let _ = events.send(HubEvent::Twin(twin)).await;
            }
        });
    }

    async fn serve(&mut self, links: &mut HubLinks) -> Exit {
        let mut outcomes: FuturesUnordered<OutcomeFuture> = FuturesUnordered::new();
        // Whatever was not accepted before the connection broke goes again, in order.
        let resend: Vec<u64> = self.pending.keys().copied().collect();
        for seq in resend {
            if let Some(p) = self.pending.get(&seq) {
                let m = p.message.clone();
                match links.events.send_batchable(m).await {
                    Ok(fut) => outcomes.push(Box::pin(async move {
                        (seq, fut.await.map_err(|e| e.to_string()))
                    })),
                    Err(e) => return Exit::Lost(format!("telemetry resend failed: {e}")),
                }
            }
        }
        loop {
            let renew = async {
                match links.renew_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.close.notified() => return Exit::Close,
                command = self.commands.recv() => {
                    let Some(command) = command else { return Exit::Close };
                    if let Err(reason) = self.command(links, command, &mut outcomes).await {
                        return Exit::Lost(reason);
                    }
                }
                Some((seq, outcome)) = outcomes.next(), if !outcomes.is_empty() => {
                    let Some(p) = self.pending.remove(&seq) else { continue };
                    match outcome {
                        Ok(Outcome::Accepted(_)) => { let _ = p.reply.send(Ok(())); }
                        Ok(other) => {
                            let _ = p.reply.send(Err(Error::Protocol(format!("the hub did not accept the message: {other:?}"))));
                        }
                        Err(reason) => {
                            self.pending.insert(seq, p);
                            return Exit::Lost(format!("telemetry link: {reason}"));
                        }
                    }
                }
                d = links.c2d.recv::<Body<Value>>() => match d {
                    Ok(d) => {
                        let m = c2d_message(d.message());
                        let _ = links.c2d.accept(&d).await;
                        if self.events.send(HubEvent::C2d(m)).await.is_err() {
                            return Exit::Close;
                        }
                    }
                    Err(e) => return self.lost(&e, "cloud-to-device link"),
                },
                d = links.twin_in.recv::<Body<Value>>() => match d {
                    Ok(d) => {
                        let _ = links.twin_in.accept(&d).await;
                        self.twin_message(d.message()).await;
                    }
                    Err(e) => return self.lost(&e, "twin link"),
                },
                d = links.methods_in.recv::<Body<Value>>() => match d {
                    Ok(d) => {
                        let _ = links.methods_in.accept(&d).await;
                        self.method_call(d.message()).await;
                    }
                    Err(e) => return self.lost(&e, "method link"),
                },
                () = renew => {
                    let HubCredentials::Sas { key, token_ttl } = &self.options.credentials else {
                        links.renew_at = None;
                        continue;
                    };
                    let Some((out, inn)) = links.cbs.as_mut() else { continue };
                    if let Err(e) = put_token(out, inn, &self.options, key, *token_ttl).await {
                        return Exit::Lost(format!("token renewal failed: {e}"));
                    }
                    debug!("SAS token renewed on the CBS link");
                    links.renew_at = Some(Instant::now() + crate::hub::renewal_delay(*token_ttl));
                }
            }
        }
    }

    /// A link ended: a refusal is announced as [`HubEvent::Refused`] first.
    fn lost(&self, e: &dyn std::fmt::Debug, link: &str) -> Exit {
        if unauthorized(e) {
            let _ = self.events.try_send(HubEvent::Refused {
                code: muster_mqtt::ConnectReturnCode::NotAuthorized,
            });
        }
        Exit::Lost(format!("{link}: {e:?}"))
    }

    async fn twin_request(
        &mut self,
        links: &mut HubLinks,
        correlation: &str,
        operation: &str,
        resource: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let mut annotations = vec![("operation", Value::String(operation.to_owned()))];
        if let Some(r) = resource {
            annotations.push(("resource", Value::String(r.to_owned())));
        }
        let m = message(
            Properties {
                correlation_id: Some(MessageId::String(correlation.to_owned())),
                ..Properties::default()
            },
            vec![],
            annotations,
            data(body),
        );
        links
            .twin_out
            .send_batchable(Sendable::builder().message(m).settled(true).build())
            .await
            .map(drop)
            .map_err(|e| format!("twin link: {e}"))
    }

    async fn command(
        &mut self,
        links: &mut HubLinks,
        command: Command,
        outcomes: &mut FuturesUnordered<OutcomeFuture>,
    ) -> Result<(), String> {
        match command {
            Command::Request {
                rid,
                topic,
                payload,
                reply,
            } => {
                let (operation, resource) = if topic.starts_with(iothub::TWIN_REPORTED) {
                    ("PATCH", Some("/properties/reported"))
                } else {
                    ("GET", None)
                };
                let correlation = format!("{rid}-{}", uuid());
                self.requests.insert(correlation.clone(), reply);
                self.twin_request(links, &correlation, operation, resource, payload)
                    .await
            }
            Command::Publish {
                topic,
                payload,
                reply,
            } => {
                self.publish(links, &topic, payload, reply, false, outcomes)
                    .await
            }
            Command::Fire {
                topic,
                payload,
                reply,
            } => {
                self.publish(links, &topic, payload, reply, true, outcomes)
                    .await
            }
        }
    }

    async fn publish(
        &mut self,
        links: &mut HubLinks,
        topic: &str,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), Error>>,
        at_most_once: bool,
        outcomes: &mut FuturesUnordered<OutcomeFuture>,
    ) -> Result<(), String> {
        if let Some((status, rid)) = method_response(topic) {
            let Some(id) = self.methods.remove(&rid) else {
                let _ = reply.send(Err(Error::Protocol(format!(
                    "no method call '{rid}' is waiting for an answer"
                ))));
                return Ok(());
            };
            let m = message(
                Properties {
                    correlation_id: Some(id),
                    ..Properties::default()
                },
                vec![("IoThub-status".into(), SimpleValue::Int(i32::from(status)))],
                vec![],
                data(payload.to_vec()),
            );
            let sent = links
                .methods_out
                .send_batchable(Sendable::builder().message(m).settled(true).build())
                .await;
            let _ = reply.send(sent.map(drop).map_err(|e| Error::Protocol(e.to_string())));
            return Ok(());
        }
        let bag = topic
            .split_once("/messages/events/")
            .map(|(_, bag)| bag)
            .unwrap_or_default();
        let m = telemetry(&Message::from_bag(bag, payload.to_vec()));
        if at_most_once {
            let sent = links
                .events
                .send_batchable(Sendable::builder().message(m).settled(true).build())
                .await;
            let _ = reply.send(sent.map(drop).map_err(|e| Error::Protocol(e.to_string())));
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let fut = match links.events.send_batchable(m.clone()).await {
            Ok(fut) => fut,
            Err(e) => {
                self.pending.insert(seq, Pending { message: m, reply });
                return Err(format!("telemetry link: {e}"));
            }
        };
        self.pending.insert(seq, Pending { message: m, reply });
        outcomes.push(Box::pin(async move {
            (seq, fut.await.map_err(|e| e.to_string()))
        }));
        Ok(())
    }

    async fn twin_message(&mut self, m: &Msg) {
        let correlation = m
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.as_ref())
            .map(id_text);
        let body = body_bytes(&m.body);
        let Some(correlation) = correlation else {
            // A desired-property change.
            match serde_json::from_slice::<Json>(&body) {
                Ok(patch) => {
                    let _ = self.events.send(HubEvent::DesiredPatch(patch)).await;
                }
                Err(e) => warn!(error = %e, "a desired patch that is not JSON"),
            }
            return;
        };
        let Some(reply) = self.requests.remove(&correlation) else {
            debug!(correlation, "twin answer for no request");
            return;
        };
        let status = match annotation(m, "status") {
            Some(Value::Int(n)) => u16::try_from(n).unwrap_or(500),
            Some(Value::Long(n)) => u16::try_from(n).unwrap_or(500),
            _ => 200,
        };
        let mut bag = Vec::new();
        if let Some(Value::Long(v)) = annotation(m, "version") {
            bag.push(("$version".to_owned(), v.to_string()));
        }
        let _ = reply.send(Ok(TwinAnswer {
            status,
            bag,
            body: Bytes::from(body),
        }));
    }

    async fn method_call(&mut self, m: &Msg) {
        let Some(id) = m.properties.as_ref().and_then(|p| p.correlation_id.clone()) else {
            warn!("a method call without correlation id");
            return;
        };
        let rid = id_text(&id);
        let name = app_property(m, "IoThub-methodname").unwrap_or_default();
        let body = body_bytes(&m.body);
        let payload = if body.is_empty() {
            Json::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&body).into_owned()))
        };
        self.methods.insert(rid.clone(), id);
        let _ = self
            .events
            .send(HubEvent::MethodCall { name, rid, payload })
            .await;
    }
}

fn fail(command: Command, error: &Error) {
    let text = error.to_string();
    match command {
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(Error::Disconnected(text)));
        }
        Command::Publish { reply, .. } | Command::Fire { reply, .. } => {
            let _ = reply.send(Err(Error::Disconnected(text)));
        }
    }
}

/// `$iothub/methods/res/{status}/?$rid={rid}` → (status, rid).
fn method_response(topic: &str) -> Option<(u16, String)> {
    let rest = topic.strip_prefix("$iothub/methods/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let rid = muster_mqtt::topic::parse_property_bag(query)
        .into_iter()
        .find(|(k, _)| k == "$rid")?
        .1;
    Some((status.parse().ok()?, rid))
}

/// A telemetry message as AMQP.
fn telemetry(m: &Message) -> Msg {
    let properties = Properties {
        message_id: m.message_id.clone().map(MessageId::String),
        correlation_id: m.correlation_id.clone().map(MessageId::String),
        content_type: m.content_type.clone().map(Symbol::from),
        content_encoding: m.content_encoding.clone().map(Symbol::from),
        ..Properties::default()
    };
    message(
        properties,
        m.properties
            .iter()
            .chain(
                m.system_properties
                    .iter()
                    .filter(|(k, _)| k == "iothub-ack"),
            )
            .map(|(k, v)| (k.clone(), SimpleValue::String(v.clone())))
            .collect(),
        vec![],
        data(m.body.clone()),
    )
}

/// A cloud-to-device message for the application.
fn c2d_message(m: &Msg) -> Message {
    let mut out = Message::new(body_bytes(&m.body));
    if let Some(p) = &m.properties {
        out.message_id = p.message_id.as_ref().map(id_text);
        out.correlation_id = p.correlation_id.as_ref().map(id_text);
        out.content_type = p.content_type.as_ref().map(|s| s.as_str().to_owned());
        out.content_encoding = p.content_encoding.as_ref().map(|s| s.as_str().to_owned());
        if let Some(to) = &p.to {
            out.system_properties.push(("$.to".to_owned(), to.clone()));
        }
    }
    if let Some(a) = &m.application_properties {
        out.properties =
            a.0.iter()
                .map(|(k, v)| (k.clone(), simple_text(v)))
                .collect();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn method_responses_are_read_from_topics() {
        assert_eq!(
            method_response("$iothub/methods/res/200/?$rid=abc-1"),
            Some((200, "abc-1".to_owned()))
        );
        assert_eq!(method_response("devices/d/messages/events/"), None);
    }

    #[test]
    fn telemetry_keeps_its_properties() {
        let m = Message::new(b"x".to_vec())
            .with_property("temperatureAlert", "true")
            .with_message_id("m-1");
        let amqp = telemetry(&m);
        assert_eq!(
            app_property(&amqp, "temperatureAlert").as_deref(),
            Some("true")
        );
        assert_eq!(
            amqp.properties.unwrap().message_id,
            Some(MessageId::String("m-1".into()))
        );
    }
}
