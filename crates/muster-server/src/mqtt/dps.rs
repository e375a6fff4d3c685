//! A DPS session over MQTT (wire facts: spec §1).
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

pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    ctx: &Context,
    connect: &muster_mqtt::Connect,
    peer: Result<Vec<muster_pki::Certificate>, String>,
    scope: &str,
    registration_id: &str,
    shutdown: &CancellationToken,
) {
    if !scope.eq_ignore_ascii_case(&ctx.id_scope) {
        warn!(scope, "DPS connection for an unknown ID scope");
        let _ = conn
            .write_packet(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
            }))
            .await;
        return;
    }
    let password = match connect.password.as_deref().map(std::str::from_utf8) {
        Some(Ok(p)) => Some(p.to_owned()),
        Some(Err(_)) => {
            warn!("DPS password is not UTF-8");
            let _ = conn
                .write_packet(&Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::BadUserNameOrPassword,
                }))
                .await;
            return;
        }
        None => None,
    };
    let chain = match peer {
        Ok(chain) => chain,
        Err(reason) => {
            // Unparseable certificates are a refusal at registration time, with the reason logged.
            warn!(reason, "client certificate cannot be parsed");
            Vec::new()
        }
    };
    if conn
        .write_packet(&Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }))
        .await
        .is_err()
    {
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
        Some(std::time::Duration::from_millis(
            u64::from(connect.keep_alive) * 1500,
        ))
    } else {
        Some(MAX_IDLE)
    };

    loop {
        let next = async {
            match keep_alive {
                Some(limit) => tokio::time::timeout(limit, conn.read_packet()).await.ok(),
                None => Some(conn.read_packet().await),
            }
        };
        let packet = tokio::select! {
            () = shutdown.cancelled() => return,
            p = next => p,
        };
        let packet = match packet {
            None => {
                info!("keep-alive expired; closing");
                return;
            }
            Some(Ok(Some(p))) => p,
            Some(Ok(None)) => return,
            Some(Err(e)) => {
                warn!(error = %e, "closing DPS connection");
                return;
            }
        };
        let result = match packet {
            Packet::Subscribe(sub) => {
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
                conn.write_packet(&Packet::SubAck(SubAck {
                    packet_id: sub.packet_id,
                    return_codes,
                }))
                .await
            }
            Packet::Unsubscribe(u) => conn.write_packet(&Packet::UnsubAck(u.packet_id)).await,
            Packet::PingReq => conn.write_packet(&Packet::PingResp).await,
            Packet::Disconnect => return,
            Packet::PubAck(_) => Ok(()),
            Packet::Publish(p) => {
                if p.qos == QoS::ExactlyOnce {
                    warn!(topic = p.topic, "QoS 2 is not supported; closing");
                    return;
                }
                let own_topic =
                    p.topic.starts_with(REGISTER_PREFIX) || p.topic.starts_with(POLL_PREFIX);
                if !own_topic {
                    warn!(
                        topic = p.topic,
                        "publish to a topic outside this device's DPS topics; closing"
                    );
                    return;
                }
                if let Some(id) = p.packet_id
                    && p.qos == QoS::AtLeastOnce
                    && conn.write_packet(&Packet::PubAck(id)).await.is_err()
                {
                    return;
                }
                let Some(reply) =
                    handle_publish(ctx, &p, registration_id, &chain, password.as_deref()).await
                else {
                    warn!(
                        topic = p.topic,
                        "publish to a topic outside this device's DPS topics; closing"
                    );
                    return;
                };
                let (rid, reply) = reply;
                respond(conn, &rid, &reply).await
            }
            other => {
                warn!(
                    packet = other.name(),
                    "unexpected packet from a DPS client; closing"
                );
                return;
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "write failed; closing");
            return;
        }
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
