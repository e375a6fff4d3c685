//! The one error type of `muster-mqtt`.
//!
//! Every decode error is a protocol violation after which an MQTT server closes the connection
//! (MQTT 3.1.1 §4.8); the messages fit on one log line. Encode errors use the same variants for
//! the same rules, so what [`crate::encode()`] writes, [`crate::decode()`] reads back.

/// Why bytes could not be decoded as MQTT 3.1.1, or a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes break the packet format (trailing bytes, bad varint, reserved bits, ...).
    #[error("malformed MQTT packet: {0}")]
    Malformed(&'static str),
    /// A field (named here) runs past the end of its packet: a length prefix or fixed-size field
    /// that the packet's remaining length has no room for.
    #[error("malformed MQTT packet: {0} runs past the end of the packet")]
    Truncated(&'static str),
    /// The whole packet (fixed header included) would exceed the configured limit.
    #[error("MQTT packet of {size} bytes exceeds the limit of {max} bytes")]
    PacketTooLarge {
        /// Size of the whole packet in bytes, fixed header included.
        size: usize,
        /// The limit that was passed to [`crate::check`] / [`crate::decode()`].
        max: usize,
    },
    /// A remaining length above [`crate::MAX_REMAINING_LENGTH`] cannot be encoded.
    #[error("MQTT remaining length {0} exceeds the maximum of 268435455")]
    RemainingLengthTooLarge(usize),
    /// A packet type this codec does not handle (PUBREC, PUBREL, PUBCOMP: QoS 2 flows).
    #[error("unsupported MQTT packet type {0}")]
    UnsupportedPacket(u8),
    /// CONNECT names a protocol or level other than "MQTT" level 4 (or "MQIsdp" level 3).
    ///
    /// When `name` is "MQTT" but `level` is not 4, a server answers CONNACK 0x01
    /// ([`crate::ConnectReturnCode::UnacceptableProtocolVersion`]) before closing.
    #[error("unsupported MQTT protocol {name:?} level {level}")]
    InvalidProtocol {
        /// The protocol name as sent (lossily decoded).
        name: String,
        /// The protocol level as sent.
        level: u8,
    },
    /// A string is not valid UTF-8 or contains U+0000.
    #[error("MQTT string is not valid UTF-8 or contains U+0000")]
    InvalidUtf8,
    /// The fixed header flags are not the ones the specification requires for this packet type.
    #[error("invalid fixed header flags {flags:#06b} for MQTT packet type {packet_type}")]
    InvalidFlags {
        /// The packet type (upper nibble of the first byte).
        packet_type: u8,
        /// The flags (lower nibble of the first byte).
        flags: u8,
    },
    /// A QoS field holds 3 (or any value above 2).
    #[error("invalid MQTT QoS {0}")]
    InvalidQoS(u8),
    /// A packet identifier is 0, which MQTT 3.1.1 forbids.
    #[error("MQTT packet identifier 0 is not allowed")]
    ZeroPacketId,
    /// A topic name or filter breaks the topic rules (empty, misplaced or forbidden wildcard).
    #[error("invalid MQTT topic: {0}")]
    InvalidTopic(&'static str),
    /// A length-prefixed string or binary field is longer than 65535 bytes.
    #[error("MQTT field of {0} bytes exceeds 65535 bytes")]
    FieldTooLong(usize),
}
