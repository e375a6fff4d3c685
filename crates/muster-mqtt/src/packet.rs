//! MQTT 3.1.1 control packets as plain data.
//!
//! Decoded packets have passed every check of [`crate::decode()`]; packets built by hand are
//! checked again by [`crate::encode()`].

use bytes::Bytes;

use crate::Error;

/// The largest remaining length the 4-byte variable length encoding can carry (MQTT 3.1.1 §2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Packet type numbers (upper nibble of the fixed header's first byte).
pub(crate) mod kind {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGREQ: u8 = 12;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
}

/// One MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client → server: open a session.
    Connect(Connect),
    /// Server → client: answer to CONNECT.
    ConnAck(ConnAck),
    /// Either way: an application message.
    Publish(Publish),
    /// Either way: acknowledges a QoS 1 PUBLISH with this packet identifier.
    PubAck(u16),
    /// Client → server: subscribe to topic filters.
    Subscribe(Subscribe),
    /// Server → client: answer to SUBSCRIBE.
    SubAck(SubAck),
    /// Client → server: drop subscriptions.
    Unsubscribe(Unsubscribe),
    /// Server → client: acknowledges the UNSUBSCRIBE with this packet identifier.
    UnsubAck(u16),
    /// Client → server: keep-alive ping.
    PingReq,
    /// Server → client: answer to PINGREQ.
    PingResp,
    /// Client → server: clean disconnect (the will is discarded).
    Disconnect,
}

impl Packet {
    /// The packet type number (1–14) of the fixed header.
    #[must_use]
    pub fn packet_type(&self) -> u8 {
        match self {
            Self::Connect(_) => kind::CONNECT,
            Self::ConnAck(_) => kind::CONNACK,
            Self::Publish(_) => kind::PUBLISH,
            Self::PubAck(_) => kind::PUBACK,
            Self::Subscribe(_) => kind::SUBSCRIBE,
            Self::SubAck(_) => kind::SUBACK,
            Self::Unsubscribe(_) => kind::UNSUBSCRIBE,
            Self::UnsubAck(_) => kind::UNSUBACK,
            Self::PingReq => kind::PINGREQ,
            Self::PingResp => kind::PINGRESP,
            Self::Disconnect => kind::DISCONNECT,
        }
    }

    /// The packet's name as the specification spells it ("CONNECT", "PUBLISH", ...), for logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck(_) => "PUBACK",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::SubAck(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::UnsubAck(_) => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// QoS 0: fire and forget.
    AtMostOnce = 0,
    /// QoS 1: acknowledged with PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: four-way handshake; decoded so a server can refuse it, otherwise unsupported.
    ExactlyOnce = 2,
}

impl QoS {
    /// The wire value (0, 1 or 2).
    #[must_use]
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for QoS {
    type Error = Error;

    /// 0, 1 and 2 are QoS levels; anything else is [`Error::InvalidQoS`].
    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Ok(Self::ExactlyOnce),
            other => Err(Error::InvalidQoS(other)),
        }
    }
}

/// CONNECT: the first packet of every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 4 for MQTT 3.1.1 (protocol name "MQTT"); 3 for MQTT 3.1 (protocol name "MQIsdp").
    pub protocol_level: u8,
    /// The client identifier; may be empty (a server then decides whether to reject it).
    pub client_id: String,
    /// Whether the session starts afresh.
    pub clean_session: bool,
    /// Keep-alive interval in seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// The user name, if the username flag is set.
    pub username: Option<String>,
    /// The password, if the password flag is set (only allowed together with a user name).
    pub password: Option<Vec<u8>>,
    /// The last will, if the will flag is set.
    pub will: Option<Will>,
}

/// The last-will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic name the will is published to (no wildcards).
    pub topic: String,
    /// The will message.
    pub payload: Bytes,
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will message is retained.
    pub retain: bool,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// Whether the connection was accepted, and why not.
    pub code: ConnectReturnCode,
}

/// CONNACK return code (MQTT 3.1.1 §3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectReturnCode {
    /// 0: connection accepted.
    Accepted = 0,
    /// 1: the server does not support the requested protocol level.
    UnacceptableProtocolVersion = 1,
    /// 2: the client identifier is not allowed.
    IdentifierRejected = 2,
    /// 3: the MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 4: the user name or password is malformed or wrong.
    BadUserNameOrPassword = 4,
    /// 5: the client is not authorized to connect.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The wire value (0–5).
    #[must_use]
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for ConnectReturnCode {
    type Error = Error;

    /// 0–5 are return codes; anything else is [`Error::Malformed`].
    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            0 => Ok(Self::Accepted),
            1 => Ok(Self::UnacceptableProtocolVersion),
            2 => Ok(Self::IdentifierRejected),
            3 => Ok(Self::ServerUnavailable),
            4 => Ok(Self::BadUserNameOrPassword),
            5 => Ok(Self::NotAuthorized),
            _ => Err(Error::Malformed("unknown CONNACK return code")),
        }
    }
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag; only allowed with QoS > 0.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Whether the broker should retain the message.
    pub retain: bool,
    /// Topic name: non-empty, no `+` or `#`.
    pub topic: String,
    /// Packet identifier: present (and non-zero) iff `qos` is above 0.
    pub packet_id: Option<u16>,
    /// The application payload (may be empty).
    pub payload: Bytes,
}

/// SUBSCRIBE: one or more topic filters with their requested QoS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero), echoed by SUBACK.
    pub packet_id: u16,
    /// At least one (filter, requested QoS); every filter passes [`crate::topic::valid_filter`].
    pub filters: Vec<(String, QoS)>,
}

/// SUBACK: one return code per filter of the SUBSCRIBE it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// At least one return code, in the order of the SUBSCRIBE's filters.
    pub return_codes: Vec<SubAckReturnCode>,
}

/// The result of one subscription in a SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubAckReturnCode {
    /// Subscribed with this maximum QoS (0x00, 0x01, 0x02).
    Success(QoS),
    /// Refused (0x80).
    Failure,
}

impl SubAckReturnCode {
    /// The wire value (0x00–0x02 or 0x80).
    #[must_use]
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Success(qos) => qos.as_u8(),
            Self::Failure => 0x80,
        }
    }
}

impl TryFrom<u8> for SubAckReturnCode {
    type Error = Error;

    /// 0x00–0x02 and 0x80 are return codes; anything else is [`Error::Malformed`].
    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            0x80 => Ok(Self::Failure),
            0..=2 => QoS::try_from(value).map(Self::Success),
            _ => Err(Error::Malformed("unknown SUBACK return code")),
        }
    }
}

/// UNSUBSCRIBE: one or more topic filters to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero), echoed by UNSUBACK.
    pub packet_id: u16,
    /// At least one filter; every filter passes [`crate::topic::valid_filter`].
    pub filters: Vec<String>,
}
