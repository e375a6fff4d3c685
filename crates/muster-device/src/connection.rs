//! One MQTT connection to a DPS or hub endpoint, over TLS or through a WebSocket tunnel on
//! 443: owns the stream and a persistent read buffer, reads and writes whole packets. Reading is cancel-safe (partial packets stay in
//! the buffer), so a connection task can `select!` between the socket and its other inputs.

use std::sync::Arc;

use muster_mqtt::framed::{Framed, FramedError};
use muster_mqtt::{ConnAck, Connect, ConnectReturnCode, Packet};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// Largest packet accepted from the server: C2D messages are at most 64 KB and twins 2×32 KB,
/// so this leaves ample room while bounding what a broken server can make us buffer.
const MAX_PACKET: usize = 1 << 20;

/// Where to connect and how to secure it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Arc<ClientConfig>,
    /// Local address to connect from (a fleet spreads over 127.0.0.x to have more ports).
    pub(crate) local_address: Option<std::net::IpAddr>,
    /// Tunnel through a WebSocket (`/$iothub/websocket`) with this subprotocol.
    pub(crate) websocket: Option<&'static str>,
}

/// A connection's byte stream: TLS, or a WebSocket tunnel inside TLS.
pub(crate) trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + std::fmt::Debug
{
}

impl<T> Io for T where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + std::fmt::Debug
{
}

/// A boxed [`Io`].
pub(crate) type BoxIo = Box<dyn Io>;

impl Endpoint {
    /// TLS, then the WebSocket upgrade when the endpoint tunnels.
    pub(crate) async fn open_stream(&self) -> Result<BoxIo, Error> {
        let tls = self.open_tls().await?;
        match self.websocket {
            None => Ok(Box::new(tls)),
            Some(subprotocol) => {
                let host = format!("{}:{}", self.host, self.port);
                let ws = muster_ws::connect(tls, &host, muster_ws::IOTHUB_PATH, subprotocol)
                    .await
                    .map_err(|e| Error::Protocol(muster_types::report(&e)))?;
                Ok(Box::new(ws))
            }
        }
    }

    /// TCP connect (every address the name resolves to, in turn) and TLS handshake.
    pub(crate) async fn open_tls(&self) -> Result<TlsStream<TcpStream>, Error> {
        let server_name = ServerName::try_from(self.host.clone()).map_err(|e| {
            Error::InvalidOptions(format!("'{}' is not a valid host name: {e}", self.host))
        })?;
        let addr = || format!("{}:{}", self.host, self.port);
        let tcp = match self.local_address {
            None => TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| Error::Connect {
                    addr: addr(),
                    source,
                })?,
            Some(local) => {
                let remote = tokio::net::lookup_host((self.host.as_str(), self.port))
                    .await
                    .map_err(|source| Error::Connect {
                        addr: addr(),
                        source,
                    })?
                    .find(|a| a.is_ipv4() == local.is_ipv4())
                    .ok_or_else(|| Error::Connect {
                        addr: addr(),
                        source: std::io::Error::other(format!(
                            "no address of the same family as {local}"
                        )),
                    })?;
                let socket = if local.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .and_then(|s| {
                    s.bind(std::net::SocketAddr::new(local, 0))?;
                    Ok(s)
                })
                .map_err(|source| Error::Connect {
                    addr: addr(),
                    source,
                })?;
                socket
                    .connect(remote)
                    .await
                    .map_err(|source| Error::Connect {
                        addr: addr(),
                        source,
                    })?
            }
        };
        // Small request/response packets: do not wait to coalesce them.
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(Arc::clone(&self.tls))
            .connect(server_name, tcp)
            .await
            .map_err(|source| Error::Tls {
                host: self.host.clone(),
                source,
            })
    }
}

#[derive(Debug)]
pub(crate) struct Connection {
    framed: Framed<BoxIo>,
}

fn protocol(e: FramedError) -> Error {
    match e {
        FramedError::Io(e) => Error::Io(e),
        FramedError::Protocol(e) => Error::Protocol(e.to_string()),
        FramedError::Truncated => {
            Error::Protocol("the server closed the connection in the middle of a packet".to_owned())
        }
    }
}

impl Connection {
    /// Connect, send `connect` and wait for the CONNACK. A refusal is [`Error::Refused`].
    pub(crate) async fn open(
        endpoint: &Endpoint,
        connect: Connect,
    ) -> Result<(Self, ConnAck), Error> {
        let stream = endpoint.open_stream().await?;
        let mut conn = Self {
            framed: Framed::with_read_capacity(stream, MAX_PACKET, 4096),
        };
        conn.write_packet(&Packet::Connect(connect)).await?;
        match conn.read_packet().await? {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Accepted => {
                Ok((conn, ack))
            }
            Some(Packet::ConnAck(ack)) => Err(Error::Refused { code: ack.code }),
            Some(other) => Err(Error::Protocol(format!(
                "the server answered CONNECT with {} instead of CONNACK",
                other.name()
            ))),
            None => Err(Error::Protocol(
                "the server closed the connection before CONNACK".to_owned(),
            )),
        }
    }

    /// The next packet; `Ok(None)` when the server closed the connection between packets.
    pub(crate) async fn read_packet(&mut self) -> Result<Option<Packet>, Error> {
        self.framed.read_packet().await.map_err(protocol)
    }

    /// Write one packet and flush.
    pub(crate) async fn write_packet(&mut self, packet: &Packet) -> Result<(), Error> {
        self.framed.write_packet(packet).await.map_err(protocol)
    }

    /// Send DISCONNECT (best effort) and close the TLS session.
    pub(crate) async fn disconnect(mut self) {
        let _ = self.write_packet(&Packet::Disconnect).await;
        self.framed.shutdown().await;
    }
}
