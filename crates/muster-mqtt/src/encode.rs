//! Encoding every [`Packet`] to its MQTT 3.1.1 bytes.
//!
//! [`encode()`] first measures and checks the whole packet, then writes it: a packet the decoder
//! would refuse (packet identifier 0, wildcard in a topic name, password without user name,
//! string over 65535 bytes, remaining length over [`MAX_REMAINING_LENGTH`], ...) is an error and
//! leaves `out` as it was.

use bytes::{BufMut, BytesMut};

use crate::Error;
use crate::decode::{check_string, check_topic_name};
use crate::packet::{Connect, MAX_REMAINING_LENGTH, Packet, Publish, QoS};
use crate::topic;

/// Appends the bytes of `packet` to `out`.
///
/// # Errors
/// The packet breaks a rule of MQTT 3.1.1 that [`crate::decode()`] enforces (see [`Error`]);
/// nothing is written then.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), Error> {
    let remaining = body_len(packet)?;
    if remaining > MAX_REMAINING_LENGTH {
        return Err(Error::RemainingLengthTooLarge(remaining));
    }
    let start = out.len();
    out.reserve(5 + remaining);
    out.put_u8(first_byte(packet));
    put_remaining_length(out, remaining);
    let body_start = out.len();
    let result = write_body(packet, out);
    if result.is_err() {
        out.truncate(start);
    } else {
        debug_assert_eq!(
            out.len() - body_start,
            remaining,
            "measured and written lengths differ"
        );
    }
    result
}

/// Packet type and flags.
fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(p) => (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain),
        Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    (packet.packet_type() << 4) | flags
}

/// The variable length encoding of the remaining length (at most 4 bytes once checked).
fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let digit = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            out.put_u8(digit);
            return;
        }
        out.put_u8(digit | 0x80);
    }
}

/// Validates `packet` and returns its remaining length.
fn body_len(packet: &Packet) -> Result<usize, Error> {
    Ok(match packet {
        Packet::Connect(c) => connect_len(c)?,
        Packet::ConnAck(_) => 2,
        Packet::Publish(p) => publish_len(p)?,
        Packet::PubAck(id) | Packet::UnsubAck(id) => {
            nonzero(*id)?;
            2
        }
        Packet::Subscribe(s) => {
            nonzero(s.packet_id)?;
            if s.filters.is_empty() {
                return Err(Error::Malformed("SUBSCRIBE without topic filters"));
            }
            let mut len = 2usize;
            for (filter, _) in &s.filters {
                len = len.saturating_add(filter_len(filter)? + 1);
            }
            len
        }
        Packet::SubAck(s) => {
            nonzero(s.packet_id)?;
            if s.return_codes.is_empty() {
                return Err(Error::Malformed("SUBACK without return codes"));
            }
            2usize.saturating_add(s.return_codes.len())
        }
        Packet::Unsubscribe(u) => {
            nonzero(u.packet_id)?;
            if u.filters.is_empty() {
                return Err(Error::Malformed("UNSUBSCRIBE without topic filters"));
            }
            let mut len = 2usize;
            for filter in &u.filters {
                len = len.saturating_add(filter_len(filter)?);
            }
            len
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    })
}

fn connect_len(c: &Connect) -> Result<usize, Error> {
    let name = protocol_name(c.protocol_level)?;
    if c.password.is_some() && c.username.is_none() {
        return Err(Error::Malformed("password flag set without username flag"));
    }
    let mut len = binary_len(name.as_bytes())? + 1 + 1 + 2 + string_len(&c.client_id)?;
    if let Some(will) = &c.will {
        check_topic_name(&will.topic)?;
        len += string_len(&will.topic)? + binary_len(&will.payload)?;
    }
    if let Some(username) = &c.username {
        len += string_len(username)?;
    }
    if let Some(password) = &c.password {
        len += binary_len(password)?;
    }
    Ok(len)
}

fn publish_len(p: &Publish) -> Result<usize, Error> {
    check_topic_name(&p.topic)?;
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {
            if p.dup {
                return Err(Error::Malformed("DUP flag set on a QoS 0 PUBLISH"));
            }
        }
        (QoS::AtMostOnce, Some(_)) => {
            return Err(Error::Malformed("packet identifier on a QoS 0 PUBLISH"));
        }
        (_, None) => {
            return Err(Error::Malformed(
                "QoS > 0 PUBLISH without packet identifier",
            ));
        }
        (_, Some(id)) => nonzero(id)?,
    }
    let id_len = if p.packet_id.is_some() { 2 } else { 0 };
    Ok((string_len(&p.topic)? + id_len).saturating_add(p.payload.len()))
}

fn protocol_name(level: u8) -> Result<&'static str, Error> {
    match level {
        4 => Ok("MQTT"),
        3 => Ok("MQIsdp"),
        _ => Err(Error::InvalidProtocol {
            name: "MQTT".to_owned(),
            level,
        }),
    }
}

fn nonzero(id: u16) -> Result<(), Error> {
    if id == 0 {
        Err(Error::ZeroPacketId)
    } else {
        Ok(())
    }
}

fn binary_len(bytes: &[u8]) -> Result<usize, Error> {
    if bytes.len() > usize::from(u16::MAX) {
        return Err(Error::FieldTooLong(bytes.len()));
    }
    Ok(2 + bytes.len())
}

fn string_len(s: &str) -> Result<usize, Error> {
    check_string(s)?;
    binary_len(s.as_bytes())
}

fn filter_len(filter: &str) -> Result<usize, Error> {
    let len = string_len(filter)?;
    if !topic::valid_filter(filter) {
        return Err(Error::InvalidTopic("invalid topic filter"));
    }
    Ok(len)
}

/// Writes the variable header and payload of an already validated packet.
fn write_body(packet: &Packet, out: &mut BytesMut) -> Result<(), Error> {
    match packet {
        Packet::Connect(c) => {
            put_binary(out, protocol_name(c.protocol_level)?.as_bytes())?;
            out.put_u8(c.protocol_level);
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0x02;
            }
            if let Some(will) = &c.will {
                flags |= 0x04 | (will.qos.as_u8() << 3);
                if will.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(c.keep_alive);
            put_binary(out, c.client_id.as_bytes())?;
            if let Some(will) = &c.will {
                put_binary(out, will.topic.as_bytes())?;
                put_binary(out, &will.payload)?;
            }
            if let Some(username) = &c.username {
                put_binary(out, username.as_bytes())?;
            }
            if let Some(password) = &c.password {
                put_binary(out, password)?;
            }
        }
        Packet::ConnAck(a) => {
            out.put_u8(u8::from(a.session_present));
            out.put_u8(a.code.as_u8());
        }
        Packet::Publish(p) => {
            put_binary(out, p.topic.as_bytes())?;
            if let Some(id) = p.packet_id {
                out.put_u16(id);
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(id) | Packet::UnsubAck(id) => out.put_u16(*id),
        Packet::Subscribe(s) => {
            out.put_u16(s.packet_id);
            for (filter, qos) in &s.filters {
                put_binary(out, filter.as_bytes())?;
                out.put_u8(qos.as_u8());
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id);
            for code in &s.return_codes {
                out.put_u8(code.as_u8());
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id);
            for filter in &u.filters {
                put_binary(out, filter.as_bytes())?;
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
    Ok(())
}

fn put_binary(out: &mut BytesMut, bytes: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::FieldTooLong(bytes.len()))?;
    out.put_u16(len);
    out.put_slice(bytes);
    Ok(())
}
