//! A hub device session over MQTT (wire facts: docs/wire-protocol.md §3).
//!
//! This file only translates: the CONNECT packet becomes a [`Credential`] for
//! [`muster_hub::Hub::authenticate`], topics become domain actions that the identity is
//! authorized for, publishes become telemetry, twin and method calls, and the hub's
//! [`Outbound`] events become publishes on the topics the device subscribed to. Every decision
//! — who may connect, what they may touch, limits, durability, settlement — is the hub core's.
//!
//! [`HubSession`] owns the state of one connection and has one handler per packet kind.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use muster_hub::auth::{AuthError, Authenticated, Credential};
use muster_hub::c2d::MAX_C2D_QUEUE;
use muster_hub::methods::MethodResult;
use muster_hub::presence::{Outbound, Registration};
use muster_hub::registry::HubError;
use muster_hub::telemetry::{SystemProperty, Telemetry};
use muster_hub::{Action, Hub, Identity, Settlement, Target};
use muster_mqtt::iothub::{self, DevicePublish, Subscription};
use muster_mqtt::{
    ConnAck, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckReturnCode, Subscribe,
    Unsubscribe, topic,
};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Context;
use muster_mqtt::framed::{Framed as Connection, FramedError as ConnectionError};

/// Telemetry messages handled (stored and acknowledged) together at most.
const MAX_BATCH: usize = 64;
/// How long an MQTT delivery of a cloud-to-device message stays locked awaiting its PUBACK.
/// Unacknowledged messages are given back when the connection ends; the lock only matters when
/// a process dies with messages in flight.
const C2D_LOCK: Duration = Duration::from_secs(60);

/// `{host}/{deviceId}[/{moduleId}]/?…` → (host, device id, module id).
pub(super) fn parse_username(username: &str) -> Option<(&str, &str, Option<&str>)> {
    let path = username.split_once("/?").map_or(username, |(p, _)| p);
    let mut parts = path.split('/');
    let host = parts.next().filter(|h| !h.is_empty())?;
    let device = parts.next().filter(|d| !d.is_empty())?;
    let module = parts.next().filter(|m| !m.is_empty());
    if parts.next().is_some() {
        return None;
    }
    Some((host, device, module))
}

/// Azure's property-bag key of a system property a device may set.
fn system_property(key: &str) -> Option<SystemProperty> {
    Some(match key {
        "$.mid" => SystemProperty::MessageId,
        "$.cid" => SystemProperty::CorrelationId,
        "$.uid" => SystemProperty::UserId,
        "$.ct" => SystemProperty::ContentType,
        "$.ce" => SystemProperty::ContentEncoding,
        "$.exp" => SystemProperty::AbsoluteExpiryTime,
        "$.to" => SystemProperty::To,
        "$.on" => SystemProperty::OutputName,
        "$.ifid" => SystemProperty::InterfaceId,
        "$.sub" => SystemProperty::Subject,
        _ => return None,
    })
}

/// A telemetry publish as the hub sees it: `$.` keys are system properties, the rest
/// application properties; RETAIN becomes `mqtt-retain`.
fn telemetry(properties: Vec<(String, String)>, p: &Publish) -> Telemetry {
    let mut t = Telemetry {
        body: p.payload.to_vec(),
        ..Telemetry::default()
    };
    for (k, v) in properties {
        if k.is_empty() {
            continue;
        }
        match system_property(&k) {
            Some(s) => t.system.push((s, v)),
            None => t.properties.push((k, v)),
        }
    }
    if p.retain {
        t.properties
            .push(("mqtt-retain".to_owned(), "true".to_owned()));
    }
    t
}

/// The MQTT CONNACK code for a refused authentication.
fn refusal_code(e: &AuthError) -> ConnectReturnCode {
    if e.is_unavailable() {
        ConnectReturnCode::ServerUnavailable
    } else {
        ConnectReturnCode::NotAuthorized
    }
}

/// A twin error on the twin response topic: IoT Hub's status and a JSON body.
fn twin_error(rid: &str, e: &HubError) -> (String, Vec<u8>) {
    let status = e.status();
    let body = json!({"errorCode": u32::from(status) * 1000 + 4, "message": e.public_message()});
    (
        iothub::twin_response(status, rid, None),
        body.to_string().into_bytes(),
    )
}

/// The action a subscription asks for, for an identity's authorization.
fn subscription_action<'a>(filter: &'a str, me: Target<'a>) -> Option<Action<'a>> {
    match iothub::subscription(filter) {
        Subscription::TwinResponses => Some(Action::UseTwin(me)),
        Subscription::DesiredPatches => Some(Action::ReceiveDesired(me)),
        Subscription::MethodRequests => Some(Action::ReceiveMethods(me)),
        Subscription::CloudToDevice { device_id } => Some(Action::ReceiveC2d(Target {
            device_id,
            module_id: None,
        })),
        Subscription::Other => None,
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    code: ConnectReturnCode,
    reason: &str,
) {
    warn!(reason, "hub connection refused");
    let _ = conn
        .write_packet(&Packet::ConnAck(ConnAck {
            session_present: false,
            code,
        }))
        .await;
}

/// Authenticate a CONNECT and run the session until it ends.
pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    ctx: &Context,
    connect: &muster_mqtt::Connect,
    peer: Result<Vec<muster_pki::Certificate>, String>,
    shutdown: &CancellationToken,
) {
    let username = connect.username.as_deref().unwrap_or_default();
    let Some((host, device_id, module_id)) = parse_username(username) else {
        let reason = "the username is not {host}/{deviceId}/?api-version=…";
        return refuse(conn, ConnectReturnCode::BadUserNameOrPassword, reason).await;
    };
    // A module's client id is `deviceId/moduleId`.
    let client_id = match module_id {
        Some(m) => muster_hub::modules::module_identity(device_id, m),
        None => device_id.to_owned(),
    };
    if connect.client_id != client_id {
        let reason = "the client id is not the device (or device/module) id of the username";
        return refuse(conn, ConnectReturnCode::IdentifierRejected, reason).await;
    }
    tracing::Span::current().record("device_id", client_id.as_str());
    let chain = peer.unwrap_or_default();
    let credential = match connect.password.as_deref().map(std::str::from_utf8) {
        Some(Ok(token)) => Credential::Sas(token),
        Some(Err(_)) => {
            let reason = "the password is not UTF-8";
            return refuse(conn, ConnectReturnCode::BadUserNameOrPassword, reason).await;
        }
        None => Credential::X509(&chain),
    };
    let hub = &ctx.hub;
    let auth = match hub
        .authenticate(host, device_id, module_id, credential)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            let reason = muster_types::report(&e);
            return refuse(conn, refusal_code(&e), &reason).await;
        }
    };
    let saved = match hub
        .open_session(&auth.identity, !connect.clean_session)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let reason = muster_types::report(&e);
            return refuse(conn, ConnectReturnCode::ServerUnavailable, &reason).await;
        }
    };
    let registration = hub.connect(&auth.identity).await;
    let accepted = Packet::ConnAck(ConnAck {
        session_present: saved.is_some(),
        code: ConnectReturnCode::Accepted,
    });
    if conn.write_packet(&accepted).await.is_err() {
        hub.disconnect(&auth.identity, registration.generation)
            .await;
        return;
    }
    info!(
        hub = auth.identity.hub,
        session_present = saved.is_some(),
        "device connected"
    );
    let mut session = HubSession::new(conn, hub, auth, connect, saved.unwrap_or_default());
    let reason = session.serve(registration, shutdown).await;
    info!(
        hub = session.auth.identity.hub,
        reason, "device disconnected"
    );
}

/// What woke the session loop.
enum Event {
    Outbound(Outbound),
    Read(Option<Result<Option<Packet>, ConnectionError>>),
}

/// Why a handler ends the session.
type Close = &'static str;

/// One authenticated device or module connection.
struct HubSession<'a, S> {
    conn: &'a mut Connection<S>,
    hub: &'a Hub,
    auth: Authenticated,
    persistent: bool,
    keep_alive: Option<Duration>,
    subscriptions: BTreeSet<String>,
    /// Cloud-to-device messages sent and not yet acknowledged: packet id → lock token.
    in_flight: HashMap<u16, String>,
    next_packet_id: u16,
    last_activity: Instant,
    /// A packet read while batching telemetry, handled next.
    pending: Option<Packet>,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> HubSession<'a, S> {
    fn new(
        conn: &'a mut Connection<S>,
        hub: &'a Hub,
        auth: Authenticated,
        connect: &muster_mqtt::Connect,
        saved: Vec<String>,
    ) -> Self {
        Self {
            conn,
            hub,
            auth,
            persistent: !connect.clean_session,
            keep_alive: (connect.keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
            subscriptions: saved.into_iter().collect(),
            in_flight: HashMap::new(),
            next_packet_id: 0,
            last_activity: Instant::now(),
            pending: None,
        }
    }

    fn identity(&self) -> &Identity {
        &self.auth.identity
    }

    /// Whether the device subscribed to its cloud-to-device messages.
    fn wants_mail(&self) -> bool {
        self.identity().module_id.is_none()
            && self
                .subscriptions
                .contains(&iothub::c2d_filter(self.identity().device_id.as_str()))
    }

    /// The loop: packets from the device, events from the hub, and the ends of a session
    /// (shutdown, takeover or removal, token expiry, keep-alive). Returns why it ended.
    async fn serve(
        &mut self,
        mut registration: Registration,
        shutdown: &CancellationToken,
    ) -> Close {
        let token_left = self.auth.expires.map(|e| {
            let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
            Duration::from_secs(e.saturating_sub(now))
        });
        let deadline =
            tokio::time::sleep(token_left.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
        tokio::pin!(deadline);
        let mut reason = if self.wants_mail() {
            self.deliver_mail().await.err().unwrap_or("")
        } else {
            ""
        };
        while reason.is_empty() {
            let keep_alive = self.keep_alive;
            let pending = self.pending.take();
            let conn = &mut *self.conn;
            let read = async {
                if let Some(p) = pending {
                    return Some(Ok(Some(p)));
                }
                match keep_alive {
                    Some(limit) => tokio::time::timeout(limit, conn.read_packet()).await.ok(),
                    None => Some(conn.read_packet().await),
                }
            };
            let event = tokio::select! {
                () = shutdown.cancelled() => { reason = "server shutting down"; break }
                () = registration.kicked.cancelled() => {
                    reason = "replaced by a newer connection, or the device was deleted or disabled";
                    break
                }
                () = &mut deadline, if token_left.is_some() => { reason = "the SAS token expired"; break }
                Some(out) = registration.rx.recv() => Event::Outbound(out),
                r = read => Event::Read(r),
            };
            if let Err(r) = self.handle(event).await {
                reason = r;
            }
        }
        self.give_back_mail().await;
        self.hub
            .disconnect(self.identity(), registration.generation)
            .await;
        reason
    }

    async fn handle(&mut self, event: Event) -> Result<(), Close> {
        let packet = match event {
            Event::Outbound(out) => return self.on_outbound(out).await,
            Event::Read(None) => return Err("keep-alive expired"),
            Event::Read(Some(Ok(None))) => return Err("the device closed the connection"),
            Event::Read(Some(Err(e))) => {
                warn!(error = %e, "protocol error");
                return Err("protocol error");
            }
            Event::Read(Some(Ok(Some(packet)))) => packet,
        };
        match packet {
            Packet::Subscribe(sub) => self.on_subscribe(sub).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u).await,
            Packet::PingReq => self.write(&Packet::PingResp).await,
            Packet::PubAck(id) => {
                self.on_puback(id).await;
                Ok(())
            }
            Packet::Disconnect => Err("the device disconnected"),
            Packet::Publish(p) => self.on_publish(p).await,
            other => {
                warn!(packet = other.name(), "unexpected packet");
                Err("unexpected packet")
            }
        }
    }

    async fn write(&mut self, packet: &Packet) -> Result<(), Close> {
        self.conn.write_packet(packet).await.map_err(|e| {
            debug!(error = %e, "write failed");
            "write failed"
        })
    }

    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), Close> {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            payload: payload.into(),
        });
        self.write(&packet).await
    }

    /// A hub event: publish it if the device subscribed to where it goes. A method call for a
    /// device that takes no methods fails at once (404), as in IoT Hub.
    async fn on_outbound(&mut self, out: Outbound) -> Result<(), Close> {
        let (topic, payload, method) = match out {
            Outbound::Mail if self.wants_mail() => return self.deliver_mail().await,
            Outbound::Mail => return Ok(()),
            Outbound::DesiredPatch { version, patch } => (
                iothub::desired_patch(version),
                patch.to_string().into_bytes(),
                None,
            ),
            Outbound::MethodRequest { rid, name, payload } => {
                (iothub::method_request(&name, &rid), payload, Some(rid))
            }
        };
        if self.subscriptions.iter().any(|f| topic::matches(f, &topic)) {
            return self.publish(topic, payload).await;
        }
        if let Some(rid) = method {
            self.hub.refuse_method(&self.auth.identity, &rid);
        }
        Ok(())
    }

    async fn save_subscriptions(&self) {
        if !self.persistent {
            return;
        }
        let subs: Vec<String> = self.subscriptions.iter().cloned().collect();
        if let Err(e) = self.hub.save_session(self.identity(), &subs).await {
            warn!(error = %e, "cannot save the session's subscriptions");
        }
    }

    async fn on_subscribe(&mut self, sub: Subscribe) -> Result<(), Close> {
        let me = &self.auth.identity;
        let mut codes = Vec::with_capacity(sub.filters.len());
        for (filter, qos) in &sub.filters {
            let allowed = subscription_action(filter, me.target())
                .ok_or_else(|| format!("'{filter}' is not a device topic"))
                .and_then(|a| me.authorize(a).map_err(|e| e.to_string()));
            match allowed {
                Ok(()) => {
                    self.subscriptions.insert(filter.clone());
                    codes.push(SubAckReturnCode::Success((*qos).min(QoS::AtLeastOnce)));
                }
                Err(reason) => {
                    warn!(filter, reason, "subscription refused");
                    codes.push(SubAckReturnCode::Failure);
                }
            }
        }
        self.save_subscriptions().await;
        let ack = Packet::SubAck(SubAck {
            packet_id: sub.packet_id,
            return_codes: codes,
        });
        self.write(&ack).await?;
        if self.wants_mail() {
            self.deliver_mail().await?;
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        for f in &u.filters {
            self.subscriptions.remove(f);
        }
        self.save_subscriptions().await;
        self.write(&Packet::UnsubAck(u.packet_id)).await
    }

    /// The device acknowledged a cloud-to-device message: complete it.
    async fn on_puback(&mut self, id: u16) {
        let Some(lock) = self.in_flight.remove(&id) else {
            return;
        };
        let settled = self
            .hub
            .settle_c2d(self.identity(), &lock, Settlement::Complete)
            .await;
        if let Err(e) = settled {
            warn!(error = %e, "could not complete a delivered cloud-to-device message");
        }
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.in_flight.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// Receive what is pending and publish it at QoS 1; each message stays locked until the
    /// device's PUBACK completes it.
    async fn deliver_mail(&mut self) -> Result<(), Close> {
        let room = MAX_C2D_QUEUE.saturating_sub(self.in_flight.len());
        if room == 0 {
            return Ok(());
        }
        let deliveries = match self.hub.receive_c2d(self.identity(), room, C2D_LOCK).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot read the cloud-to-device queue");
                return Ok(());
            }
        };
        let device_id = self.identity().device_id.to_string();
        for d in deliveries {
            let m = d.message;
            let mut props: Vec<(String, String)> = vec![("$.mid".into(), m.message_id)];
            if let Some(c) = m.correlation_id {
                props.push(("$.cid".into(), c));
            }
            props.push((
                "$.to".into(),
                format!("/devices/{device_id}/messages/devicebound"),
            ));
            if let Some(a) = m.ack {
                props.push(("iothub-ack".into(), a));
            }
            props.extend(m.properties);
            let id = self.packet_id();
            self.in_flight.insert(id, d.lock_token);
            let packet = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: iothub::c2d_topic(&device_id, props),
                packet_id: Some(id),
                payload: m.body.into(),
            });
            self.write(&packet).await?;
        }
        Ok(())
    }

    /// The connection ends: unacknowledged messages go back to the queue for the next
    /// delivery (to a newer connection at once, if there is one).
    async fn give_back_mail(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        for (_, lock) in self.in_flight.drain() {
            let settled = self
                .hub
                .settle_c2d(&self.auth.identity, &lock, Settlement::Abandon)
                .await;
            if let Err(e) = settled {
                debug!(error = %e, "an unacknowledged message could not be given back");
            }
        }
        self.hub
            .presence()
            .send(&self.auth.identity.key(), Outbound::Mail);
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        if p.qos == QoS::ExactlyOnce {
            return Err("QoS 2 is not supported");
        }
        self.hub
            .touch(&self.auth.identity, &mut self.last_activity)
            .await;
        let me = &self.auth.identity;
        let (reply, ack) = match iothub::device_publish(&p.topic) {
            DevicePublish::Telemetry {
                device_id,
                module_id,
                properties,
            } => {
                let target = Target {
                    device_id,
                    module_id,
                };
                if let Err(e) = me.authorize(Action::SendTelemetry(target)) {
                    warn!(topic = p.topic, reason = %e, "publish refused; closing");
                    return Err("publish outside the device's topics");
                }
                let first = telemetry(properties, &p);
                return self.on_telemetry(first, p).await;
            }
            DevicePublish::TwinGet { rid } => {
                let reply = match self.hub.device_twin(me).await {
                    Ok(view) => (
                        iothub::twin_response(200, &rid, None),
                        view.to_string().into_bytes(),
                    ),
                    Err(e) => twin_error(&rid, &e),
                };
                (Some(reply), true)
            }
            DevicePublish::TwinReported { rid } => {
                let reply = match self.hub.report(me, &p.payload).await {
                    Ok(version) => (iothub::twin_response(204, &rid, Some(version)), Vec::new()),
                    Err(e) => {
                        warn!(error = %e, "reported patch refused");
                        twin_error(&rid, &e)
                    }
                };
                (Some(reply), true)
            }
            DevicePublish::MethodResponse { status, rid } => {
                let result = MethodResult::from_device(status, &p.payload);
                if !self.hub.complete_method(me, &rid, result) {
                    debug!(rid, "method response for no waiting call (timed out?)");
                }
                (None, true)
            }
            DevicePublish::Other => {
                warn!(
                    topic = p.topic,
                    "publish outside the device's topics; closing"
                );
                return Err("publish outside the device's topics");
            }
        };
        if let (true, QoS::AtLeastOnce, Some(id)) = (ack, p.qos, p.packet_id) {
            self.write(&Packet::PubAck(id)).await?;
        }
        match reply {
            Some((topic, body)) => self.publish(topic, body).await,
            None => Ok(()),
        }
    }

    /// Telemetry: this message and the telemetry already buffered behind it are stored
    /// together (one group commit) and acknowledged in one write.
    async fn on_telemetry(&mut self, first: Telemetry, p: Publish) -> Result<(), Close> {
        let me = &self.auth.identity;
        let mut batch = vec![first];
        let mut acks: Vec<Option<u16>> =
            vec![(p.qos == QoS::AtLeastOnce).then_some(p.packet_id).flatten()];
        while batch.len() < MAX_BATCH {
            match self.conn.next_buffered() {
                Ok(Some(Packet::Publish(q))) if q.qos != QoS::ExactlyOnce => {
                    match iothub::device_publish(&q.topic) {
                        DevicePublish::Telemetry {
                            device_id,
                            module_id,
                            properties,
                        } if me
                            .authorize(Action::SendTelemetry(Target {
                                device_id,
                                module_id,
                            }))
                            .is_ok() =>
                        {
                            acks.push((q.qos == QoS::AtLeastOnce).then_some(q.packet_id).flatten());
                            batch.push(telemetry(properties, &q));
                        }
                        _ => {
                            self.pending = Some(Packet::Publish(q));
                            break;
                        }
                    }
                }
                Ok(Some(other)) => {
                    self.pending = Some(other);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "protocol error");
                    break;
                }
            }
        }
        if let Err(e) = self.hub.ingest(me, batch).await {
            warn!(error = %muster_types::report(&e), "telemetry not stored; closing without acknowledging");
            return Err(match e {
                muster_hub::telemetry::IngestError::TooLarge { .. } => {
                    "telemetry message too large"
                }
                muster_hub::telemetry::IngestError::Unavailable(_) => "event log unavailable",
            });
        }
        for id in acks.into_iter().flatten() {
            if self.conn.queue(&Packet::PubAck(id)).is_err() {
                return Err("write failed");
            }
        }
        self.conn.flush().await.map_err(|e| {
            debug!(error = %e, "write failed");
            "write failed"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_username, subscription_action};
    use muster_hub::{Action, Target};

    #[test]
    fn usernames_and_filters() {
        assert_eq!(
            parse_username("localhost/dev-1/?api-version=2019-10-01&DeviceClientType=x"),
            Some(("localhost", "dev-1", None))
        );
        assert_eq!(
            parse_username("localhost:18883/dev-1/?api-version=2021-04-12"),
            Some(("localhost:18883", "dev-1", None))
        );
        assert_eq!(
            parse_username("h/dev-1/mod1/?api-version=1"),
            Some(("h", "dev-1", Some("mod1")))
        );
        assert_eq!(parse_username("h/?x"), None);
        let me = Target {
            device_id: "d1",
            module_id: None,
        };
        assert_eq!(
            subscription_action("$iothub/methods/POST/#", me),
            Some(Action::ReceiveMethods(me))
        );
        assert_eq!(subscription_action("#", me), None);
        assert!(matches!(
            subscription_action("devices/d2/messages/devicebound/#", me),
            Some(Action::ReceiveC2d(Target {
                device_id: "d2",
                ..
            }))
        ));
    }
}
