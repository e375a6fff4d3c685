//! A hub device session over MQTT (wire facts: spec §3).
//!
//! Authentication happens before CONNACK: SAS against the device's keys, or the TLS client
//! certificate against the device's thumbprints (`selfSigned`) or a verified CA with CN =
//! device id (`certificateAuthority`). Unknown, disabled and unauthenticated devices get
//! CONNACK 5. A device may only subscribe to and publish on its own topics. A second connection
//! for the same device closes the first; deleting or disabling the device closes it too. A SAS
//! session ends when its token expires.
//!
//! Implemented today: telemetry into the durable event log (PUBACK after the append), twin GET,
//! reported patches, desired-patch notifications, persistent subscriptions for CleanSession=0.
//! Cloud-to-device messages are delivered at QoS 1 from the durable queue and removed on
//! PUBACK; direct methods are answered on `$iothub/methods/res/{status}`.

use std::collections::BTreeSet;
use std::time::Duration;

use muster_auth::Secret;
use muster_auth::sas::SasToken;
use muster_hub::docs;
use muster_mqtt::{
    ConnAck, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckReturnCode, topic,
};
use muster_pki::{ChainOptions, Usage, validate_chain};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection::{Connection, ConnectionError};
use crate::Context;
use crate::sessions::Outbound;

const TWIN_RES: &str = "$iothub/twin/res/#";
const TWIN_DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";
const METHODS: &str = "$iothub/methods/POST/#";
const TWIN_GET: &str = "$iothub/twin/GET/";
const TWIN_REPORTED: &str = "$iothub/twin/PATCH/properties/reported/";
/// IoT Hub's device-to-cloud message limit.
const MAX_TELEMETRY: usize = 256 * 1024;

/// Azure property-bag system keys and the names the event stream gives them.
const SYSTEM_KEYS: [(&str, &str); 10] = [
    ("$.mid", "message-id"),
    ("$.cid", "correlation-id"),
    ("$.uid", "user-id"),
    ("$.ct", "content-type"),
    ("$.ce", "content-encoding"),
    ("$.exp", "absolute-expiry-time"),
    ("$.to", "to"),
    ("$.on", "iothub-outputname"),
    ("$.ifid", "iothub-interface-id"),
    ("$.sub", "dt-subject"),
];

/// Turn a telemetry publish into an event: system properties from the `$.` keys, the rest
/// application properties; RETAIN becomes `mqtt-retain`.
fn telemetry_event(
    hub: &str,
    device_id: &str,
    module_id: Option<&str>,
    bag: &str,
    p: &Publish,
) -> muster_store::events::NewEvent {
    let now = time::OffsetDateTime::now_utc();
    let mut system = vec![
        (
            "iothub-connection-device-id".to_owned(),
            device_id.to_owned(),
        ),
        (
            "iothub-enqueuedtime".to_owned(),
            muster_hub::time_fmt::azure(now),
        ),
        ("iothub-message-source".to_owned(), "Telemetry".to_owned()),
    ];
    if let Some(m) = module_id {
        system.push(("iothub-connection-module-id".to_owned(), m.to_owned()));
    }
    let mut properties = Vec::new();
    for (k, v) in topic::parse_property_bag(bag.trim_end_matches('/')) {
        if k.is_empty() {
            continue;
        }
        match SYSTEM_KEYS.iter().find(|(key, _)| *key == k) {
            Some((_, name)) => system.push(((*name).to_owned(), v)),
            None => properties.push((k, v)),
        }
    }
    if p.retain {
        properties.push(("mqtt-retain".to_owned(), "true".to_owned()));
    }
    muster_store::events::NewEvent {
        hub: hub.to_ascii_lowercase(),
        device_id: device_id.to_owned(),
        module_id: module_id.map(str::to_owned),
        properties,
        system_properties: system,
        body: p.payload.to_vec(),
        enqueued: muster_hub::time_fmt::azure(now),
        enqueued_unix: now.unix_timestamp(),
    }
}

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

fn strip_port(host: &str) -> &str {
    host.rsplit_once(':')
        .filter(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
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

/// Check the device's credentials; returns the SAS expiry (Unix seconds) for SAS sessions.
async fn authenticate(
    ctx: &Context,
    device: &Value,
    device_id: &str,
    module_id: Option<&str>,
    password: Option<&[u8]>,
    chain: &[muster_pki::Certificate],
) -> Result<Option<u64>, String> {
    let now = time::OffsetDateTime::now_utc();
    let kind = device
        .pointer("/authentication/type")
        .and_then(Value::as_str)
        .unwrap_or("sas");
    if let Some(password) = password {
        let text =
            std::str::from_utf8(password).map_err(|_| "the password is not UTF-8".to_owned())?;
        let token = SasToken::parse(text).map_err(|e| e.to_string())?;
        let resource = token.resource().to_ascii_lowercase();
        let (host, rest) = resource
            .split_once('/')
            .ok_or_else(|| format!("token resource '{}' names no device", token.resource()))?;
        let host = strip_port(host);
        let expected = match module_id {
            Some(m) => format!("devices/{device_id}/modules/{m}"),
            None => format!("devices/{device_id}"),
        };
        if !ctx.resource_hosts.iter().any(|h| h == host) || rest != expected.to_ascii_lowercase() {
            return Err(format!(
                "token is for '{}', not this device",
                token.resource()
            ));
        }
        let unix = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        if token.expiry() < unix {
            return Err(format!("token expired at {}", token.expiry()));
        }
        if kind != "sas" {
            return Err(format!("the device authenticates with {kind}, not SAS"));
        }
        let key = |p: &str| {
            Secret::new(
                device
                    .pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )
        };
        let (primary, secondary) = (
            key("/authentication/symmetricKey/primaryKey"),
            key("/authentication/symmetricKey/secondaryKey"),
        );
        token
            .verify_signature(&[&primary, &secondary])
            .map_err(|e| e.to_string())?;
        return Ok(Some(token.expiry()));
    }
    let leaf = chain
        .first()
        .ok_or_else(|| "no password and no client certificate".to_owned())?;
    match kind {
        "selfSigned" => {
            let thumbs: Vec<String> = ["primaryThumbprint", "secondaryThumbprint"]
                .iter()
                .filter_map(|k| {
                    device
                        .pointer(&format!("/authentication/x509Thumbprint/{k}"))
                        .and_then(Value::as_str)
                })
                .map(str::to_ascii_uppercase)
                .collect();
            if !thumbs
                .iter()
                .any(|t| *t == leaf.sha1_thumbprint() || *t == leaf.sha256_thumbprint())
            {
                return Err("the client certificate's thumbprint is not the device's".into());
            }
            if !leaf.is_valid_at(now) {
                return Err("the client certificate is outside its validity period".into());
            }
            Ok(None)
        }
        "certificateAuthority" => {
            if leaf.common_name().is_none_or(|cn| cn != device_id) {
                return Err(format!(
                    "the certificate CN is not the device id '{device_id}'"
                ));
            }
            let anchors: Vec<_> = ctx
                .dps
                .list_certificates()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|c| c.is_verified)
                .map(|c| c.certificate)
                .collect();
            validate_chain(
                chain,
                &anchors,
                ChainOptions {
                    at: now,
                    usage: Usage::ClientAuth,
                },
            )
            .map_err(|e| e.to_string())?;
            Ok(None)
        }
        other => Err(format!("the device authenticates with {other}, not X.509")),
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one session loop, read top to bottom"
)]
pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    ctx: &Context,
    connect: &muster_mqtt::Connect,
    peer: Result<Vec<muster_pki::Certificate>, String>,
    shutdown: &CancellationToken,
) {
    let username = connect.username.as_deref().unwrap_or_default();
    let Some((host, device_id, module)) = parse_username(username) else {
        return refuse(
            conn,
            ConnectReturnCode::BadUserNameOrPassword,
            "the username is not {host}/{deviceId}/?api-version=…",
        )
        .await;
    };
    // A module's identity is `deviceId/moduleId`, which is also its client id.
    let identity = match module {
        Some(m) => muster_hub::modules::module_identity(device_id, m),
        None => device_id.to_owned(),
    };
    if connect.client_id != identity {
        return refuse(
            conn,
            ConnectReturnCode::IdentifierRejected,
            "the client id is not the device (or device/module) id of the username",
        )
        .await;
    }
    tracing::Span::current().record("registration_id", identity.as_str());
    let hub = ctx.hub_for_host(strip_port(host));
    let device = match ctx.registry.device_document(&hub, device_id).await {
        Ok(Some(d)) => d,
        Ok(None) => return refuse(conn, ConnectReturnCode::NotAuthorized, "unknown device").await,
        Err(e) => return refuse(conn, ConnectReturnCode::ServerUnavailable, &e.to_string()).await,
    };
    if device.get("status").and_then(Value::as_str) == Some("disabled") {
        return refuse(
            conn,
            ConnectReturnCode::NotAuthorized,
            "the device is disabled",
        )
        .await;
    }
    let credentials = if module.is_some() {
        match ctx.registry.device_document(&hub, &identity).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return refuse(conn, ConnectReturnCode::NotAuthorized, "unknown module").await;
            }
            Err(e) => {
                return refuse(conn, ConnectReturnCode::ServerUnavailable, &e.to_string()).await;
            }
        }
    } else {
        device
    };
    let chain = peer.unwrap_or_default();
    let expiry = match authenticate(
        ctx,
        &credentials,
        device_id,
        module,
        connect.password.as_deref(),
        &chain,
    )
    .await
    {
        Ok(e) => e,
        Err(reason) => return refuse(conn, ConnectReturnCode::NotAuthorized, &reason).await,
    };

    let key = docs::key(&hub, &identity);
    let saved = if connect.clean_session {
        if let Err(e) = ctx.registry.forget_session(&hub, &identity).await {
            warn!(error = %e, "cannot drop the saved session");
        }
        None
    } else {
        match ctx.registry.session(&hub, &identity).await {
            Ok(s) => s,
            Err(e) => {
                return refuse(conn, ConnectReturnCode::ServerUnavailable, &e.to_string()).await;
            }
        }
    };
    let mut registration = ctx.sessions.register(&key);
    // Recorded before CONNACK, so a service that sees the device connected reads it so too.
    if let Err(e) = ctx
        .registry
        .record_activity(&hub, &identity, Some(true))
        .await
    {
        warn!(error = %e, "cannot record the connection state");
    }
    if conn
        .write_packet(&Packet::ConnAck(ConnAck {
            session_present: saved.is_some(),
            code: ConnectReturnCode::Accepted,
        }))
        .await
        .is_err()
    {
        ctx.sessions.unregister(&key, registration.generation);
        if !ctx.sessions.is_connected(&key)
            && let Err(e) = ctx
                .registry
                .record_activity(&hub, &identity, Some(false))
                .await
        {
            warn!(error = %e, "cannot record the connection state");
        }
        return;
    }
    info!(hub, session_present = saved.is_some(), "device connected");
    let mut last_activity = std::time::Instant::now();
    let mut subscriptions: BTreeSet<String> = saved.unwrap_or_default().into_iter().collect();
    // Modules receive no cloud-to-device messages (as in IoT Hub).
    let c2d_filter = if module.is_some() {
        String::new()
    } else {
        format!("devices/{device_id}/messages/devicebound/#")
    };
    let mut mailbox = Mailbox::default();
    if subscriptions.contains(&c2d_filter)
        && mailbox.deliver(conn, ctx, &hub, device_id).await.is_err()
    {
        ctx.sessions.unregister(&key, registration.generation);
        return;
    }
    let events_prefix = match module {
        Some(m) => format!("devices/{device_id}/modules/{m}/messages/events/"),
        None => format!("devices/{device_id}/messages/events/"),
    };
    // A packet read while batching telemetry, handled next.
    let mut pending: Option<Packet> = None;
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let token_left = expiry.map(|e| {
        let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        Duration::from_secs(e.saturating_sub(now))
    });
    let token_deadline =
        tokio::time::sleep(token_left.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
    tokio::pin!(token_deadline);

    let reason = loop {
        let read = async {
            if let Some(p) = pending.take() {
                return Some(Ok(Some(p)));
            }
            match keep_alive {
                Some(limit) => tokio::time::timeout(limit, conn.read_packet()).await.ok(),
                None => Some(conn.read_packet().await),
            }
        };
        let event = tokio::select! {
            () = shutdown.cancelled() => break "server shutting down",
            () = registration.kicked.cancelled() => break "replaced by a newer connection, or the device was deleted or disabled",
            () = &mut token_deadline, if token_left.is_some() => break "the SAS token expired",
            Some(out) = registration.rx.recv() => Event::Outbound(out),
            r = read => Event::Read(r),
        };
        let result: Result<(), ConnectionError> = match event {
            Event::Outbound(Outbound::Publish { topic, payload }) => {
                if subscriptions.iter().any(|f| topic::matches(f, &topic)) {
                    publish(conn, topic, payload).await
                } else {
                    Ok(())
                }
            }
            Event::Outbound(Outbound::Mail) => {
                if subscriptions.contains(&c2d_filter) {
                    mailbox.deliver(conn, ctx, &hub, device_id).await
                } else {
                    Ok(())
                }
            }
            Event::Read(None) => break "keep-alive expired",
            Event::Read(Some(Ok(None))) => break "the device closed the connection",
            Event::Read(Some(Err(e))) => {
                warn!(error = %e, "protocol error");
                break "protocol error";
            }
            Event::Read(Some(Ok(Some(packet)))) => match packet {
                Packet::Subscribe(sub) => {
                    let codes = sub
                        .filters
                        .iter()
                        .map(|(f, qos)| {
                            if allowed_filter(f, device_id, module) {
                                subscriptions.insert(f.clone());
                                SubAckReturnCode::Success((*qos).min(QoS::AtLeastOnce))
                            } else {
                                warn!(
                                    filter = f,
                                    "subscription outside the device's topics refused"
                                );
                                SubAckReturnCode::Failure
                            }
                        })
                        .collect();
                    if !connect.clean_session {
                        let subs: Vec<String> = subscriptions.iter().cloned().collect();
                        if let Err(e) = ctx.registry.save_session(&hub, &identity, &subs).await {
                            warn!(error = %e, "cannot save the session's subscriptions");
                        }
                    }
                    let acked = conn
                        .write_packet(&Packet::SubAck(SubAck {
                            packet_id: sub.packet_id,
                            return_codes: codes,
                        }))
                        .await;
                    if acked.is_ok() && subscriptions.contains(&c2d_filter) {
                        mailbox.deliver(conn, ctx, &hub, device_id).await
                    } else {
                        acked
                    }
                }
                Packet::Unsubscribe(u) => {
                    for f in &u.filters {
                        subscriptions.remove(f);
                    }
                    if !connect.clean_session {
                        let subs: Vec<String> = subscriptions.iter().cloned().collect();
                        if let Err(e) = ctx.registry.save_session(&hub, &identity, &subs).await {
                            warn!(error = %e, "cannot save the session's subscriptions");
                        }
                    }
                    conn.write_packet(&Packet::UnsubAck(u.packet_id)).await
                }
                Packet::PingReq => conn.write_packet(&Packet::PingResp).await,
                Packet::PubAck(id) => {
                    if let Some(stored) = mailbox.in_flight.remove(&id)
                        && let Err(e) = ctx.registry.complete_c2d(&stored).await
                    {
                        warn!(error = %e, "could not remove a delivered cloud-to-device message");
                    }
                    Ok(())
                }
                Packet::Disconnect => break "the device disconnected",
                Packet::Publish(p) => {
                    if p.qos == QoS::ExactlyOnce {
                        break "QoS 2 is not supported";
                    }
                    // lastActivityTime at most once a minute: not a registry write per message.
                    if last_activity.elapsed() > Duration::from_secs(60) {
                        last_activity = std::time::Instant::now();
                        if let Err(e) = ctx.registry.record_activity(&hub, &identity, None).await {
                            warn!(error = %e, "cannot record activity");
                        }
                    }
                    if p.topic.starts_with(&events_prefix) {
                        // This message and the telemetry already buffered behind it are stored
                        // together (one group commit) and acknowledged in one write.
                        let mut batch = vec![p];
                        while batch.len() < MAX_BATCH {
                            match conn.next_buffered() {
                                Ok(Some(Packet::Publish(q)))
                                    if q.qos != QoS::ExactlyOnce
                                        && q.topic.starts_with(&events_prefix) =>
                                {
                                    batch.push(q);
                                }
                                Ok(Some(other)) => {
                                    pending = Some(other);
                                    break;
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    warn!(error = %e, "protocol error");
                                    pending = None;
                                    break;
                                }
                            }
                        }
                        if let Err(reason) =
                            store_telemetry(ctx, &hub, device_id, module, &events_prefix, &batch)
                                .await
                        {
                            break reason;
                        }
                        let mut queued = Ok(());
                        for q in &batch {
                            if let (QoS::AtLeastOnce, Some(id)) = (q.qos, q.packet_id) {
                                queued = queued.and(conn.queue(&Packet::PubAck(id)));
                            }
                        }
                        match queued {
                            Ok(()) => conn.flush().await,
                            Err(e) => Err(e),
                        }
                    } else {
                        match handle_publish(ctx, &hub, device_id, module, &p).await {
                            Err(reason) => break reason,
                            Ok(reply) => {
                                let acked = match (p.qos, p.packet_id) {
                                    (QoS::AtLeastOnce, Some(id)) => {
                                        conn.write_packet(&Packet::PubAck(id)).await
                                    }
                                    _ => Ok(()),
                                };
                                match (acked, reply) {
                                    (Err(e), _) => Err(e),
                                    (Ok(()), Some((topic, body))) => {
                                        publish(conn, topic, body).await
                                    }
                                    (Ok(()), None) => Ok(()),
                                }
                            }
                        }
                    }
                }
                other => {
                    warn!(packet = other.name(), "unexpected packet");
                    break "unexpected packet";
                }
            },
        };
        if let Err(e) = result {
            debug!(error = %e, "write failed");
            break "write failed";
        }
    };
    ctx.sessions.unregister(&key, registration.generation);
    // A takeover leaves the newer connection's state in place.
    if ctx.sessions.is_connected(&key) {
        debug!("a newer connection owns the device");
    } else if let Err(e) = ctx
        .registry
        .record_activity(&hub, &identity, Some(false))
        .await
    {
        warn!(error = %e, "cannot record the connection state");
    }
    info!(hub, reason, "device disconnected");
}

/// Cloud-to-device messages sent on this connection and not yet acknowledged.
#[derive(Debug, Default)]
struct Mailbox {
    in_flight: std::collections::HashMap<u16, String>,
    next_id: u16,
}

impl Mailbox {
    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.in_flight.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Publish every pending message not already in flight, at QoS 1; each stays queued until
    /// the device's PUBACK (so a reconnect redelivers it).
    async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        ctx: &Context,
        hub: &str,
        device_id: &str,
    ) -> Result<(), ConnectionError> {
        let pending = match ctx.registry.pending_c2d(hub, device_id).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read the cloud-to-device queue");
                return Ok(());
            }
        };
        for (stored, m) in pending {
            if self.in_flight.values().any(|k| *k == stored) || self.in_flight.len() >= 50 {
                continue;
            }
            let mut props: Vec<(String, String)> = vec![("$.mid".into(), m.message_id.clone())];
            if let Some(c) = &m.correlation_id {
                props.push(("$.cid".into(), c.clone()));
            }
            props.push((
                "$.to".into(),
                format!("/devices/{device_id}/messages/devicebound"),
            ));
            if let Some(a) = &m.ack {
                props.push(("iothub-ack".into(), a.clone()));
            }
            props.extend(m.properties.iter().cloned());
            let topic = format!(
                "devices/{device_id}/messages/devicebound/{}",
                topic::encode_property_bag(props)
            );
            let id = self.packet_id();
            conn.write_packet(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic,
                packet_id: Some(id),
                payload: m.body.clone().into(),
            }))
            .await?;
            self.in_flight.insert(id, stored);
        }
        Ok(())
    }
}

enum Event {
    Outbound(Outbound),
    Read(Option<Result<Option<Packet>, ConnectionError>>),
}

fn allowed_filter(filter: &str, device_id: &str, module_id: Option<&str>) -> bool {
    filter == TWIN_RES
        || filter == TWIN_DESIRED
        || filter == METHODS
        || (module_id.is_none() && filter == format!("devices/{device_id}/messages/devicebound/#"))
}

async fn publish<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    topic: String,
    payload: Vec<u8>,
) -> Result<(), ConnectionError> {
    conn.write_packet(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic,
        packet_id: None,
        payload: payload.into(),
    }))
    .await
}

fn twin_error(rid: &str, status: u16, code: u32, message: &str) -> (String, Vec<u8>) {
    (
        format!("$iothub/twin/res/{status}/?$rid={rid}"),
        json!({"errorCode": code, "message": message})
            .to_string()
            .into_bytes(),
    )
}

/// Telemetry messages handled (stored and acknowledged) together at most.
const MAX_BATCH: usize = 64;

/// Store a batch of telemetry messages durably (concurrently, so one group commit can take
/// them all); `Err(reason)` closes the connection without acknowledging any.
async fn store_telemetry(
    ctx: &Context,
    hub: &str,
    device_id: &str,
    module_id: Option<&str>,
    prefix: &str,
    batch: &[Publish],
) -> Result<(), &'static str> {
    let mut appends = Vec::with_capacity(batch.len());
    for p in batch {
        if p.payload.len() > MAX_TELEMETRY {
            warn!(
                size = p.payload.len(),
                "telemetry message over 256 KB; closing"
            );
            return Err("telemetry message too large");
        }
        let bag = p.topic.strip_prefix(prefix).unwrap_or_default();
        appends.push(
            ctx.events
                .append(telemetry_event(hub, device_id, module_id, bag, p)),
        );
    }
    for result in futures_util::future::join_all(appends).await {
        if let Err(e) = result {
            warn!(error = %e, "telemetry could not be stored; closing without acknowledging");
            return Err("event log unavailable");
        }
    }
    Ok(())
}

/// Handle a device publish other than telemetry (twin requests, method answers);
/// `Err(reason)` closes the connection.
async fn handle_publish(
    ctx: &Context,
    hub: &str,
    device_id: &str,
    module_id: Option<&str>,
    p: &Publish,
) -> Result<Option<(String, Vec<u8>)>, &'static str> {
    let identity = match module_id {
        Some(m) => muster_hub::modules::module_identity(device_id, m),
        None => device_id.to_owned(),
    };
    let (prefix, query) = p.topic.split_once('?').unwrap_or((p.topic.as_str(), ""));
    let props = topic::parse_property_bag(query);
    let rid = props
        .iter()
        .find(|(k, _)| k == "$rid")
        .map(|(_, v)| muster_auth::sas::percent_encode(v))
        .unwrap_or_default();
    if prefix == TWIN_GET {
        return Ok(Some(match ctx.registry.device_twin(hub, &identity).await {
            Ok(view) => (
                format!("$iothub/twin/res/200/?$rid={rid}"),
                view.to_string().into_bytes(),
            ),
            Err(e) => twin_error(
                &rid,
                e.status(),
                u32::from(e.status()) * 1000 + 4,
                &e.public_message(),
            ),
        }));
    }
    if prefix == TWIN_REPORTED {
        let patch: Value = match serde_json::from_slice(&p.payload) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "reported patch is not JSON");
                return Ok(Some(twin_error(
                    &rid,
                    400,
                    400_004,
                    &format!("the patch is not valid JSON: {e}"),
                )));
            }
        };
        return Ok(Some(
            match ctx.registry.patch_reported(hub, &identity, &patch).await {
                Ok(version) => (
                    format!("$iothub/twin/res/204/?$rid={rid}&$version={version}"),
                    Vec::new(),
                ),
                Err(e) => {
                    warn!(error = %e, "reported patch refused");
                    twin_error(
                        &rid,
                        e.status(),
                        u32::from(e.status()) * 1000 + 4,
                        &e.public_message(),
                    )
                }
            },
        ));
    }
    if let Some(rest) = prefix.strip_prefix("$iothub/methods/res/") {
        let status = rest.trim_end_matches('/').parse::<u16>().unwrap_or(500);
        let payload = if p.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&p.payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&p.payload).into_owned()))
        };
        let rid = props
            .iter()
            .find(|(k, _)| k == "$rid")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !ctx
            .sessions
            .complete_method(&docs::key(hub, &identity), &rid, (status, payload))
        {
            debug!(rid, "method response for no waiting call (timed out?)");
        }
        return Ok(None);
    }
    warn!(
        topic = p.topic,
        "publish outside the device's topics; closing"
    );
    Err("publish outside the device's topics")
}

#[cfg(test)]
mod tests {
    use super::{allowed_filter, parse_username, strip_port};

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
        assert_eq!(strip_port("localhost:18883"), "localhost");
        assert!(allowed_filter(
            "devices/d1/messages/devicebound/#",
            "d1",
            None
        ));
        assert!(!allowed_filter(
            "devices/d2/messages/devicebound/#",
            "d1",
            None
        ));
        assert!(!allowed_filter(
            "devices/d1/messages/devicebound/#",
            "d1",
            Some("m1")
        ));
        assert!(allowed_filter("$iothub/methods/POST/#", "d1", Some("m1")));
        assert!(!allowed_filter("#", "d1", None));
    }
}
