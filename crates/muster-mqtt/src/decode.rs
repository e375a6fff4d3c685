//! Two-phase decoding: [`check`] the fixed header, then [`decode()`] one whole packet.
//!
//! Incomplete input is `Ok(None)`, not an error: the caller reads more bytes and tries again.
//! [`check`] refuses an oversized packet as soon as its remaining length is known, so a peer
//! cannot make the caller buffer a body it will never accept. [`decode()`] parses the split-off
//! packet through a bounded reader whose every length-prefixed field is checked against the
//! bytes of this packet only; bytes no field consumes are [`Error::Malformed`].

use bytes::{Bytes, BytesMut};

use crate::Error;
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, MAX_REMAINING_LENGTH, Packet, Publish, QoS, SubAck,
    SubAckReturnCode, Subscribe, Unsubscribe, Will, kind,
};
use crate::topic;

/// What the fixed header says.
#[derive(Debug, Clone, Copy)]
struct FixedHeader {
    /// The first byte: packet type (upper nibble) and flags (lower nibble).
    first: u8,
    /// Bytes taken by the fixed header (2–5).
    header_len: usize,
    /// The remaining length: bytes of variable header and payload.
    remaining: usize,
}

/// Reads the fixed header, or `Ok(None)` when it is not all there yet.
fn fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, Error> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    if packet_type == 0 || packet_type == 15 {
        return Err(Error::Malformed("reserved packet type"));
    }
    let mut remaining = 0usize;
    let mut shift = 0u32;
    for (i, &byte) in rest.iter().take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some(FixedHeader {
                first,
                header_len: i + 2,
                remaining,
            }));
        }
        if i == 3 {
            return Err(Error::Malformed("remaining length longer than 4 bytes"));
        }
        shift += 7;
    }
    Ok(None)
}

/// Phase one: is a whole packet buffered at the start of `buf`?
///
/// Reads only the fixed header. Returns `Ok(None)` while the fixed header or the body is still
/// incomplete, `Ok(Some(len))` when the first `len` bytes of `buf` are one whole packet, and
/// [`Error::PacketTooLarge`] as soon as the remaining length says the packet (fixed header
/// included) would exceed `max_packet_size` — even if none of the body has arrived yet.
///
/// # Errors
/// [`Error::Malformed`] for a reserved packet type (0 or 15) or a remaining length that does not
/// end within 4 bytes; [`Error::PacketTooLarge`] as above.
pub fn check(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, Error> {
    let Some(header) = fixed_header(buf)? else {
        return Ok(None);
    };
    // The 4-byte varint cannot exceed MAX_REMAINING_LENGTH, so this cannot overflow.
    let size = header.header_len + header.remaining;
    debug_assert!(header.remaining <= MAX_REMAINING_LENGTH);
    if size > max_packet_size {
        return Err(Error::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok((buf.len() >= size).then_some(size))
}

/// Phase two: take one whole packet off the front of `buf` and parse it.
///
/// Returns `Ok(None)` (leaving `buf` untouched) while the packet is incomplete. Once a whole
/// packet is buffered its bytes are removed from `buf` whether or not it parses, so on success
/// `buf` starts at the next packet. Every error is a protocol violation: close the connection.
///
/// # Errors
/// Everything [`check`] refuses, plus every rule of MQTT 3.1.1 the packet breaks (see [`Error`]).
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, Error> {
    let Some(header) = fixed_header(buf)? else {
        return Ok(None);
    };
    let Some(len) = check(buf, max_packet_size)? else {
        return Ok(None);
    };
    let mut frame = Reader::new(buf.split_to(len).freeze());
    frame.take(header.header_len, "fixed header")?;
    parse(header.first, frame).map(Some)
}

/// Parses one packet from its first byte and its body (exactly `remaining` bytes).
fn parse(first: u8, mut body: Reader) -> Result<Packet, Error> {
    let packet_type = first >> 4;
    let flags = first & 0x0f;
    let expect_flags = |expected: u8| {
        if flags == expected {
            Ok(())
        } else {
            Err(Error::InvalidFlags { packet_type, flags })
        }
    };
    let packet = match packet_type {
        kind::CONNECT => {
            expect_flags(0)?;
            Packet::Connect(parse_connect(&mut body)?)
        }
        kind::CONNACK => {
            expect_flags(0)?;
            let ack_flags = body.u8("CONNACK flags")?;
            if ack_flags & 0xfe != 0 {
                return Err(Error::Malformed("CONNACK reserved flags set"));
            }
            let code = ConnectReturnCode::try_from(body.u8("CONNACK return code")?)?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 0x01 != 0,
                code,
            })
        }
        kind::PUBLISH => Packet::Publish(parse_publish(flags, &mut body)?),
        kind::PUBACK => {
            expect_flags(0)?;
            Packet::PubAck(body.packet_id()?)
        }
        kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
            return Err(Error::UnsupportedPacket(packet_type));
        }
        kind::SUBSCRIBE => {
            expect_flags(0b0010)?;
            let packet_id = body.packet_id()?;
            let mut filters = Vec::new();
            while !body.is_empty() {
                let filter = body.filter()?;
                let options = body.u8("requested QoS")?;
                if options & 0xfc != 0 {
                    return Err(Error::Malformed("SUBSCRIBE reserved option bits set"));
                }
                filters.push((filter, QoS::try_from(options)?));
            }
            if filters.is_empty() {
                return Err(Error::Malformed("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe(Subscribe { packet_id, filters })
        }
        kind::SUBACK => {
            expect_flags(0)?;
            let packet_id = body.packet_id()?;
            let mut return_codes = Vec::new();
            while !body.is_empty() {
                return_codes.push(SubAckReturnCode::try_from(body.u8("SUBACK return code")?)?);
            }
            if return_codes.is_empty() {
                return Err(Error::Malformed("SUBACK without return codes"));
            }
            Packet::SubAck(SubAck {
                packet_id,
                return_codes,
            })
        }
        kind::UNSUBSCRIBE => {
            expect_flags(0b0010)?;
            let packet_id = body.packet_id()?;
            let mut filters = Vec::new();
            while !body.is_empty() {
                filters.push(body.filter()?);
            }
            if filters.is_empty() {
                return Err(Error::Malformed("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe { packet_id, filters })
        }
        kind::UNSUBACK => {
            expect_flags(0)?;
            Packet::UnsubAck(body.packet_id()?)
        }
        kind::PINGREQ => {
            expect_flags(0)?;
            Packet::PingReq
        }
        kind::PINGRESP => {
            expect_flags(0)?;
            Packet::PingResp
        }
        kind::DISCONNECT => {
            expect_flags(0)?;
            Packet::Disconnect
        }
        // 0 and 15 were refused by the fixed header; a nibble has no other values.
        _ => return Err(Error::Malformed("reserved packet type")),
    };
    body.finish()?;
    Ok(packet)
}

/// CONNECT variable header and payload (MQTT 3.1.1 §3.1).
fn parse_connect(body: &mut Reader) -> Result<Connect, Error> {
    let name = body.binary("protocol name")?;
    let level = body.u8("protocol level")?;
    match (name.as_ref(), level) {
        (b"MQTT", 4) | (b"MQIsdp", 3) => {}
        _ => {
            return Err(Error::InvalidProtocol {
                name: String::from_utf8_lossy(&name).into_owned(),
                level,
            });
        }
    }
    let flags = body.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(Error::Malformed("CONNECT reserved flag set"));
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::try_from((flags >> 3) & 0x03)?;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(Error::Malformed("will QoS or retain set without will flag"));
    }
    if password_flag && !username_flag {
        return Err(Error::Malformed("password flag set without username flag"));
    }
    let keep_alive = body.u16("keep alive")?;
    let client_id = body.string("client identifier")?;
    let will = if will_flag {
        let topic = body.string("will topic")?;
        check_topic_name(&topic)?;
        let payload = body.binary("will message")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(body.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(body.binary("password")?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        protocol_level: level,
        client_id,
        clean_session,
        keep_alive,
        username,
        password,
        will,
    })
}

/// PUBLISH variable header and payload (MQTT 3.1.1 §3.3).
fn parse_publish(flags: u8, body: &mut Reader) -> Result<Publish, Error> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::try_from((flags >> 1) & 0x03)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(Error::Malformed("DUP flag set on a QoS 0 PUBLISH"));
    }
    let topic = body.string("topic name")?;
    check_topic_name(&topic)?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(body.packet_id()?)
    };
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: body.rest(),
    })
}

/// The rules for a topic name (PUBLISH, will), as an [`Error::InvalidTopic`].
pub(crate) fn check_topic_name(topic: &str) -> Result<(), Error> {
    if topic.is_empty() {
        Err(Error::InvalidTopic("empty topic name"))
    } else if topic.contains(['+', '#']) {
        Err(Error::InvalidTopic("wildcard in topic name"))
    } else {
        Ok(())
    }
}

/// The rules for an MQTT UTF-8 string (§1.5.3): valid UTF-8 without U+0000.
pub(crate) fn check_string(s: &str) -> Result<(), Error> {
    if s.contains('\0') {
        Err(Error::InvalidUtf8)
    } else {
        Ok(())
    }
}

/// A cursor over the bytes of one packet that never reads past them.
#[derive(Debug)]
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next `n` bytes, or [`Error::Malformed`] naming `what` when fewer are left.
    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, Error> {
        if n > self.buf.len() {
            return Err(Error::Truncated(what));
        }
        Ok(self.buf.split_to(n))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        match *self.take(1, what)?.as_ref() {
            [b] => Ok(b),
            _ => Err(Error::Truncated(what)),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        match *self.take(2, what)?.as_ref() {
            [hi, lo] => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(Error::Truncated(what)),
        }
    }

    /// A non-zero packet identifier.
    fn packet_id(&mut self) -> Result<u16, Error> {
        match self.u16("packet identifier")? {
            0 => Err(Error::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// A 2-byte length followed by that many bytes.
    fn binary(&mut self, what: &'static str) -> Result<Bytes, Error> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// A length-prefixed MQTT UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, Error> {
        let bytes = self.binary(what)?;
        let s = String::from_utf8(bytes.to_vec()).map_err(|_| Error::InvalidUtf8)?;
        check_string(&s)?;
        Ok(s)
    }

    /// A topic filter that passes [`topic::valid_filter`].
    fn filter(&mut self) -> Result<String, Error> {
        let filter = self.string("topic filter")?;
        if topic::valid_filter(&filter) {
            Ok(filter)
        } else {
            Err(Error::InvalidTopic("invalid topic filter"))
        }
    }

    /// Everything left (the PUBLISH payload).
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Refuses bytes that no field consumed.
    fn finish(self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed("trailing bytes after the last field"))
        }
    }
}
