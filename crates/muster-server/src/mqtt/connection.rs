//! One MQTT connection: owns the stream and a persistent read buffer; reads and writes whole
//! packets. Reading is cancel-safe (partial data stays in the buffer), and a packet larger than
//! the limit is refused from its fixed header, before its body is buffered.

use bytes::BytesMut;
use muster_mqtt::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Protocol violation.
    #[error("protocol: {0}")]
    Protocol(#[from] muster_mqtt::Error),
    /// The peer closed in the middle of a packet.
    #[error("connection closed in the middle of a packet")]
    Truncated,
}

pub(crate) struct Connection<S> {
    stream: S,
    buffer: BytesMut,
    max_packet: usize,
    out: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(crate) fn new(stream: S, max_packet: usize) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(4096),
            max_packet,
            out: BytesMut::with_capacity(1024),
        }
    }

    /// The next packet; `Ok(None)` on a clean end of stream between packets.
    pub(crate) async fn read_packet(&mut self) -> Result<Option<Packet>, ConnectionError> {
        loop {
            if let Some(packet) = muster_mqtt::decode(&mut self.buffer, self.max_packet)? {
                return Ok(Some(packet));
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
        }
    }

    /// Write one packet and flush.
    pub(crate) async fn write_packet(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        self.out.clear();
        muster_mqtt::encode(packet, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Close the write side politely.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
