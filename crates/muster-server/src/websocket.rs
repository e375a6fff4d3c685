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
//! Inside, the binary messages of each direction are one byte stream ([`ByteStream`]): a
//! packet or frame may span messages and a message may hold several. Unmasked client frames
//! are accepted (paho answers pings and closes unmasked) and no pings are sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
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
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
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
        let config = WebSocketConfig::default()
            .accept_unmasked_frames(true)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let stream = ByteStream::new(ws);
        let chain = Ok(chain.0.as_ref().clone());
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

/// Largest WebSocket message or frame accepted.
const MAX_MESSAGE: usize = 2 * 1024 * 1024;

/// The binary messages of a WebSocket as one byte stream.
pub(crate) struct ByteStream<S> {
    /// In a mutex only to make the stream `Sync` (hyper's upgraded connection is not, and the
    /// MQTT session shares references to its connection across awaits); it is never locked,
    /// as every access has `&mut self`.
    ws: std::sync::Mutex<WebSocketStream<S>>,
    pending: Bytes,
    closed: bool,
}

impl<S> std::fmt::Debug for ByteStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteStream")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<S> ByteStream<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws: std::sync::Mutex::new(ws),
            pending: Bytes::new(),
            closed: false,
        }
    }
}

impl<S: Unpin> ByteStream<S> {
    fn ws(&mut self) -> Pin<&mut WebSocketStream<S>> {
        Pin::new(match self.ws.get_mut() {
            Ok(ws) => ws,
            Err(poisoned) => poisoned.into_inner(),
        })
    }
}

fn io_error(e: tokio_tungstenite::tungstenite::Error) -> std::io::Error {
    std::io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(self.pending.get(..n).unwrap_or_default());
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.ws().poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(text))) => {
                    self.pending = Bytes::from(text.as_bytes().to_vec());
                }
                // Pongs are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.closed = true,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.ws().poll_ready(cx)).map_err(io_error)?;
        self.ws()
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.ws().poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.ws().poll_close(cx).map_err(io_error)
    }
}
