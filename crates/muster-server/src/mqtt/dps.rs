//! A DPS session over MQTT (wire facts: docs/wire-protocol.md §1).
//!
//! The device subscribes to `$dps/registrations/res/#`, publishes a register request on
//! `$dps/registrations/PUT/iotdps-register/?$rid=…`, then polls on
//! `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=…&operationId=…`. Answers go to
//! `$dps/registrations/res/{status}/?$rid=…[&retry-after=N]` — `$rid` first, because the Python
//! SDK only reads what follows it.

use muster_dps::registration::Credential;
use muster_mqtt::{
    ConnAck, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckReturnCode, topic,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Context;
use crate::device_api::{self, Reply};
use muster_mqtt::framed::Framed as Connection;

const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/";
const POLL_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";
/// Longest silence accepted from a DPS client that asked for no keep-alive.
const MAX_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    code: ConnectReturnCode,
) {
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
    });
    let _ = conn.write_packet(&ack).await;
}

pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    ctx: &Context,
    connect: &muster_mqtt::Connect,
    peer: Result<Vec<muster_pki::Certificate>, String>,
    scope: &str,
    registration_id: &str,
    shutdown: &CancellationToken,
) {
    // An unknown ID scope is answered on the response topic (401002 naming the scope), as Azure
    // does, so the device can say which of its inputs to check.
    let unknown_scope = (!scope.eq_ignore_ascii_case(&ctx.id_scope)).then(|| {
        warn!(scope, "DPS connection for an unknown ID scope");
        scope.to_owned()
    });
    let password = match connect.password.as_deref().map(std::str::from_utf8) {
        Some(Ok(p)) => Some(p.to_owned()),
        Some(Err(_)) => {
            warn!("DPS password is not UTF-8");
            return refuse(conn, ConnectReturnCode::BadUserNameOrPassword).await;
        }
        None => None,
    };
    let chain = peer.unwrap_or_else(|reason| {
        // Unparseable certificates are a refusal at registration time, with the reason logged.
        warn!(reason, "client certificate cannot be parsed");
        Vec::new()
    });
    let accepted = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ConnectReturnCode::Accepted,
    });
    if conn.write_packet(&accepted).await.is_err() {
        return;
    }
    debug!(
        x509 = !chain.is_empty(),
        sas = password.is_some(),
        "DPS session started"
    );
    // Keep-alive is enforced at 1.5× the client's value; a client that asks for none still may
    // not idle longer than a DPS exchange needs.
    let keep_alive = if connect.keep_alive > 0 {
        std::time::Duration::from_millis(u64::from(connect.keep_alive) * 1500)
    } else {
        MAX_IDLE
    };
    let mut session = DpsSession {
        conn,
        ctx,
        registration_id,
        chain,
        password,
        unknown_scope,
    };
    session.serve(keep_alive, shutdown).await;
}

/// One DPS client connection after CONNACK.
struct DpsSession<'a, S> {
    conn: &'a mut Connection<S>,
    ctx: &'a Context,
    registration_id: &'a str,
    chain: Vec<muster_pki::Certificate>,
    password: Option<String>,
    /// The ID scope the device named, when it is not this service's.
    unknown_scope: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> DpsSession<'_, S> {
    /// Packets until the client leaves, breaks the protocol or goes quiet; then the
    /// connection closes.
    async fn serve(&mut self, keep_alive: std::time::Duration, shutdown: &CancellationToken) {
        loop {
            let next = tokio::time::timeout(keep_alive, self.conn.read_packet());
            let packet = tokio::select! {
                () = shutdown.cancelled() => return,
                p = next => p,
            };
            let packet = match packet {
                Err(_) => return info!("keep-alive expired; closing"),
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => return warn!(error = %e, "closing DPS connection"),
            };
            if let Err(reason) = self.handle(packet).await {
                return debug!(reason, "closing DPS connection");
            }
        }
    }

    async fn write(&mut self, packet: &Packet) -> Result<(), &'static str> {
        self.conn.write_packet(packet).await.map_err(|e| {
            debug!(error = %e, "write failed");
            "write failed"
        })
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), &'static str> {
        match packet {
            Packet::Subscribe(sub) => self.on_subscribe(&sub).await,
            Packet::Unsubscribe(u) => self.write(&Packet::UnsubAck(u.packet_id)).await,
            Packet::PingReq => self.write(&Packet::PingResp).await,
            Packet::Disconnect => Err("the client disconnected"),
            Packet::PubAck(_) => Ok(()),
            Packet::Publish(p) => self.on_publish(p).await,
            other => {
                warn!(
                    packet = other.name(),
                    "unexpected packet from a DPS client; closing"
                );
                Err("unexpected packet")
            }
        }
    }

    async fn on_subscribe(&mut self, sub: &muster_mqtt::Subscribe) -> Result<(), &'static str> {
        let return_codes = sub
            .filters
            .iter()
            .map(|(filter, qos)| {
                if filter == RESPONSE_FILTER {
                    SubAckReturnCode::Success((*qos).min(QoS::AtLeastOnce))
                } else {
                    warn!(filter, "DPS subscription to a foreign topic refused");
                    SubAckReturnCode::Failure
                }
            })
            .collect();
        let ack = Packet::SubAck(SubAck {
            packet_id: sub.packet_id,
            return_codes,
        });
        self.write(&ack).await
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), &'static str> {
        if p.qos == QoS::ExactlyOnce {
            warn!(topic = p.topic, "QoS 2 is not supported; closing");
            return Err("QoS 2");
        }
        let own_topic = p.topic.starts_with(REGISTER_PREFIX) || p.topic.starts_with(POLL_PREFIX);
        if !own_topic {
            warn!(
                topic = p.topic,
                "publish to a topic outside this device's DPS topics; closing"
            );
            return Err("foreign topic");
        }
        if let (Some(id), QoS::AtLeastOnce) = (p.packet_id, p.qos) {
            self.write(&Packet::PubAck(id)).await?;
        }
        let reply = match &self.unknown_scope {
            Some(scope) => p.topic.split_once('?').map(|(_, query)| {
                let rid = topic::parse_property_bag(query)
                    .into_iter()
                    .find(|(k, _)| k == "$rid")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                let refusal = muster_dps::DpsError::UnknownScope(scope.clone());
                (rid, device_api::error_reply(&refusal))
            }),
            None => {
                handle_publish(
                    self.ctx,
                    &p,
                    self.registration_id,
                    &self.chain,
                    self.password.as_deref(),
                )
                .await
            }
        };
        let Some((rid, reply)) = reply else {
            warn!(
                topic = p.topic,
                "publish to a topic outside this device's DPS topics; closing"
            );
            return Err("foreign topic");
        };
        respond(self.conn, &rid, &reply).await.map_err(|e| {
            debug!(error = %e, "write failed");
            "write failed"
        })
    }
}

/// Returns `None` for topics a DPS client may not publish to.
async fn handle_publish(
    ctx: &Context,
    p: &Publish,
    registration_id: &str,
    chain: &[muster_pki::Certificate],
    password: Option<&str>,
) -> Option<(String, Reply)> {
    let (prefix, query) = p.topic.split_once('?')?;
    let props = topic::parse_property_bag(query);
    let get = |k: &str| {
        props
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let rid = get("$rid").unwrap_or_default();
    if prefix == REGISTER_PREFIX {
        let credential = match (password, chain.is_empty()) {
            (Some(token), _) => Credential::Sas(token),
            (None, false) => Credential::X509(chain),
            (None, true) => Credential::None,
        };
        let reply = device_api::register(
            &ctx.dps,
            &ctx.operations,
            ctx.rate_limit.as_ref(),
            (ctx.retry_after, ctx.immediate_result),
            registration_id,
            credential,
            &p.payload,
        )
        .await;
        Some((rid, reply))
    } else if prefix == POLL_PREFIX {
        let op = get("operationId").unwrap_or_default();
        Some((rid, device_api::poll(&ctx.operations, registration_id, &op)))
    } else {
        None
    }
}

async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    rid: &str,
    reply: &Reply,
) -> Result<(), muster_mqtt::framed::FramedError> {
    let mut topic = format!(
        "$dps/registrations/res/{}/?$rid={}",
        reply.status,
        muster_auth::sas::percent_encode(rid)
    );
    if let Some(secs) = reply.retry_after {
        topic.push_str(&format!("&retry-after={secs}"));
    }
    let payload = crate::json::to_ascii_json(&reply.body);
    conn.write_packet(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic,
        packet_id: None,
        payload: payload.into_bytes().into(),
    }))
    .await
}
