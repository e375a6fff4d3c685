//! One MQTT connection over any async byte stream (feature `tokio`): owns the stream and a
//! persistent read buffer and reads and writes whole packets. The server's sessions and the
//! device client both use it.
//!
//! Reading is cancel-safe (partial data stays in the buffer), so a session can `select!`
//! between the socket and its other inputs. A packet larger than the limit is refused from its
//! fixed header, before its body is buffered. Buffers start small and shrink back once a large
//! packet has been handled, so an idle connection costs little.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Packet;

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    /// Socket error.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// Protocol violation.
    #[error("protocol violation")]
    Protocol(#[from] crate::Error),
    /// The peer closed in the middle of a packet.
    #[error("connection closed in the middle of a packet")]
    Truncated,
}

/// Initial read buffer.
const INITIAL_READ: usize = 512;
/// Buffers above this size are released once empty.
const KEEP_AT_MOST: usize = 16 * 1024;

/// Packets over a byte stream.
#[derive(Debug)]
pub struct Framed<S> {
    stream: S,
    buffer: BytesMut,
    /// The read buffer's size to start with and to return to after a large packet.
    read_capacity: usize,
    max_packet: usize,
    out: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Packets over `stream`, refusing any larger than `max_packet` bytes. The read buffer
    /// starts small (an idle server-side connection costs little).
    pub fn new(stream: S, max_packet: usize) -> Self {
        Self::with_read_capacity(stream, max_packet, INITIAL_READ)
    }

    /// As [`Framed::new`] with a read buffer of `read_capacity` bytes to start with (a client
    /// reading bursts of acknowledgements reads more per call with a larger one).
    pub fn with_read_capacity(stream: S, max_packet: usize, read_capacity: usize) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(read_capacity),
            read_capacity,
            max_packet,
            out: BytesMut::new(),
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The first byte of the next packet (its type and flags) without consuming it, as soon as
    /// it arrives; `Ok(None)` when the stream ends first. Lets a server refuse a connection
    /// whose first packet is not CONNECT before waiting for the rest of it.
    ///
    /// # Errors
    /// [`FramedError::Io`].
    pub async fn peek_first_byte(&mut self) -> Result<Option<u8>, FramedError> {
        while self.buffer.is_empty() {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
        Ok(self.buffer.first().copied())
    }

    /// The next packet; `Ok(None)` on a clean end of stream between packets.
    ///
    /// # Errors
    /// [`FramedError`]: socket errors, protocol violations, a truncated packet.
    pub async fn read_packet(&mut self) -> Result<Option<Packet>, FramedError> {
        loop {
            if let Some(packet) = crate::decode(&mut self.buffer, self.max_packet)? {
                if self.buffer.is_empty() && self.buffer.capacity() > KEEP_AT_MOST {
                    self.buffer = BytesMut::with_capacity(self.read_capacity);
                }
                return Ok(Some(packet));
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(FramedError::Truncated)
                };
            }
        }
    }

    /// The next packet already in the read buffer, without reading the socket.
    ///
    /// # Errors
    /// [`FramedError::Protocol`].
    pub fn next_buffered(&mut self) -> Result<Option<Packet>, FramedError> {
        Ok(crate::decode(&mut self.buffer, self.max_packet)?)
    }

    /// Add a packet to the output without sending it (see [`Framed::flush`]).
    ///
    /// # Errors
    /// [`FramedError::Protocol`] for a packet the codec refuses to encode.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), FramedError> {
        crate::encode(packet, &mut self.out)?;
        Ok(())
    }

    /// Send everything queued, in one write (one TLS record for many small packets).
    ///
    /// # Errors
    /// [`FramedError::Io`].
    pub async fn flush(&mut self) -> Result<(), FramedError> {
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
    ///
    /// # Errors
    /// [`FramedError`].
    pub async fn write_packet(&mut self, packet: &Packet) -> Result<(), FramedError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Close the write side politely.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
