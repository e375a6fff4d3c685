//! # muster-ws
//!
//! MQTT and AMQP over WebSockets, as the Azure SDKs tunnel them through port 443
//! (`docs/wire-protocol.md` §8): the binary messages of each direction form one byte stream —
//! a packet or frame may span messages and a message may hold several — so the MQTT and AMQP
//! code runs unchanged on top of [`ByteStream`].
//!
//! - [`ByteStream`]: `AsyncRead + AsyncWrite` over a tungstenite WebSocket, either role.
//! - [`connect`]: the client side of the upgrade (path, subprotocol), for muster's devices.
//! - [`server_config`]: what a server accepts (unmasked frames from paho, bounded messages).

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

pub use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The subprotocol of MQTT tunnels.
pub const MQTT: &str = "mqtt";
/// The subprotocol of AMQP tunnels.
pub const AMQP: &str = "AMQPWSB10";
/// The path hub and DPS clients upgrade on.
pub const IOTHUB_PATH: &str = "/$iothub/websocket";

/// Largest WebSocket message or frame accepted.
pub const MAX_MESSAGE: usize = 2 * 1024 * 1024;

/// The server side's settings: unmasked client frames are accepted (paho 1.6 answers pings and
/// closes unmasked), messages and frames are bounded.
#[must_use]
pub fn server_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .accept_unmasked_frames(true)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A server-side stream over an upgraded connection.
pub async fn accept<S>(io: S) -> ByteStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ByteStream::new(WebSocketStream::from_raw_socket(io, Role::Server, Some(server_config())).await)
}

/// Why a client upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The handshake failed (HTTP status other than 101, bad accept key, I/O).
    #[error("the WebSocket upgrade failed")]
    Handshake(#[source] tokio_tungstenite::tungstenite::Error),
    /// The server did not choose the subprotocol asked for.
    #[error("the server chose subprotocol {} instead of the one asked for", .0.as_deref().unwrap_or("none"))]
    Subprotocol(Option<String>),
}

/// Upgrade `io` (a TLS stream to `host`) at `path` with `subprotocol`, as the SDKs do.
///
/// # Errors
/// [`ConnectError`].
pub async fn connect<S>(
    io: S,
    host: &str,
    path: &str,
    subprotocol: &str,
) -> Result<ByteStream<S>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = format!("wss://{host}{path}");
    let mut request = url.into_client_request().map_err(ConnectError::Handshake)?;
    if let Ok(v) = subprotocol.parse() {
        request.headers_mut().insert("sec-websocket-protocol", v);
    }
    let (ws, response) = tokio_tungstenite::client_async(request, io)
        .await
        .map_err(ConnectError::Handshake)?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if chosen.as_deref() != Some(subprotocol) {
        return Err(ConnectError::Subprotocol(chosen));
    }
    Ok(ByteStream::new(ws))
}

/// The binary messages of a WebSocket as one byte stream.
pub struct ByteStream<S> {
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
    /// Wrap a WebSocket.
    #[must_use]
    pub fn new(ws: WebSocketStream<S>) -> Self {
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
