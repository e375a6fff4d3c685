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

/// Initial read buffer.
const INITIAL_READ: usize = 512;
/// Buffers above this size are released once empty.
const KEEP_AT_MOST: usize = 16 * 1024;

pub(crate) struct Connection<S> {
    stream: S,
    buffer: BytesMut,
    max_packet: usize,
    out: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(crate) fn new(stream: S, max_packet: usize) -> Self {
        // Small to start with: an idle device costs its buffers; packets larger than this
        // grow them, and `shrink` gives the space back once they are handled.
        Self {
            stream,
            buffer: BytesMut::with_capacity(INITIAL_READ),
            max_packet,
            out: BytesMut::new(),
        }
    }

    /// The next packet; `Ok(None)` on a clean end of stream between packets.
    pub(crate) async fn read_packet(&mut self) -> Result<Option<Packet>, ConnectionError> {
        loop {
            if let Some(packet) = muster_mqtt::decode(&mut self.buffer, self.max_packet)? {
                if self.buffer.is_empty() && self.buffer.capacity() > KEEP_AT_MOST {
                    self.buffer = BytesMut::with_capacity(INITIAL_READ);
                }
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

    /// The next packet already in the read buffer, without reading the socket.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<Packet>, ConnectionError> {
        Ok(muster_mqtt::decode(&mut self.buffer, self.max_packet)?)
    }

    /// Add a packet to the output without sending it (see [`Connection::flush`]).
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        muster_mqtt::encode(packet, &mut self.out)?;
        Ok(())
    }

    /// Send everything queued, in one write (one TLS record for many small packets).
    pub(crate) async fn flush(&mut self) -> Result<(), ConnectionError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        if self.out.capacity() > KEEP_AT_MOST {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Write one packet (after anything queued) and flush.
    pub(crate) async fn write_packet(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Close the write side politely.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
