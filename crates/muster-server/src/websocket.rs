//! MQTT and AMQP over WebSockets on the HTTPS port (docs/wire-protocol.md §8;
//! `../shared/spec/azure-amqp-wire.md` §9).
//!
//! Every SDK's WebSocket option dials 443: `/$iothub/websocket` (hub and DPS clients),
//! `/$servicebus/websocket/` (the Python service SDK) and `/` (.NET DPS). The upgrade carries no
//! credentials: the TLS client certificate of the HTTPS handshake, the MQTT CONNECT password or
//! the AMQP CBS token do, exactly as on 8883 and 5671. The subprotocol picks the protocol
//! (`mqtt` or `AMQPWSB10`); the answer names the one chosen, and an upgrade offering neither
//! is refused with 400.
//!
//! Inside, the binary messages of each direction are one byte stream (`muster_ws::ByteStream`): a
//! packet or frame may span messages and a message may hold several. Unmasked client frames
//! are accepted (paho answers pings and closes unmasked) and no pings are sent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use crate::Context;
use crate::rest::PeerChain;

/// What a tunnel needs from its HTTPS connection (set per connection by the listener).
#[derive(Debug, Clone)]
pub(crate) struct Tunnels {
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// One permit per open tunnel (hyper lets go of the HTTPS connection's own permit once it
    /// has upgraded).
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
}

/// The paths the SDKs upgrade on.
pub(crate) const PATHS: [&str; 4] = [
    "/$iothub/websocket",
    "/$servicebus/websocket/",
    "/$servicebus/websocket",
    "/",
];

/// The protocols a tunnel can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Mqtt,
    Amqp,
}

impl Protocol {
    fn from_offer(offer: &str) -> Option<(Self, &'static str)> {
        offer.split(',').map(str::trim).find_map(|p| {
            if p.eq_ignore_ascii_case("mqtt") {
                Some((Self::Mqtt, "mqtt"))
            } else if p.eq_ignore_ascii_case("AMQPWSB10") {
                Some((Self::Amqp, "AMQPWSB10"))
            } else {
                None
            }
        })
    }
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    warn!(reason, "WebSocket upgrade refused");
    (status, reason.to_owned()).into_response()
}

/// `GET` on a tunnel path: switch protocols, then run an MQTT or AMQP connection inside.
pub(crate) async fn upgrade(
    State(ctx): State<Arc<Context>>,
    Extension(chain): Extension<PeerChain>,
    Extension(tunnels): Extension<Tunnels>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    let wants_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this path only takes WebSocket upgrades (Upgrade: websocket)",
        );
    }
    let Some(key) = headers.get("sec-websocket-key").map(HeaderValue::as_bytes) else {
        return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    let accept = muster_ws::derive_accept_key(key);
    let offer = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let Some((protocol, name)) = Protocol::from_offer(&offer) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer mqtt or AMQPWSB10",
        );
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned));
    let Ok(permit) = Arc::clone(&tunnels.permits).try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open tunnels; try again later",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = tunnels.tracker.clone();
    let task = async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return debug!(error = %e, "WebSocket upgrade did not complete"),
        };
        let stream = muster_ws::accept(TokioIo::new(upgraded)).await;
        let chain = Ok(chain.0.as_ref().clone());
        let _open = muster_metrics::metrics().connection(
            "websocket",
            match protocol {
                Protocol::Mqtt => "mqtt",
                Protocol::Amqp => "amqp",
            },
        );
        match protocol {
            Protocol::Mqtt => {
                crate::mqtt::session(stream, chain, &ctx, &tunnels.shutdown).await;
            }
            Protocol::Amqp => {
                let sni = host.map(|h| h.rsplit_once(':').map_or(h.clone(), |(h, _)| h.to_owned()));
                crate::amqp::connection(
                    stream,
                    chain,
                    sni,
                    ctx,
                    tunnels.shutdown,
                    tunnels.tracker.clone(),
                )
                .await;
            }
        }
    };
    tracker.spawn(task.instrument(tracing::info_span!("websocket", protocol = name)));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-protocol", HeaderValue::from_static(name));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    response
}
