//! # muster-mqtt
//!
//! A pure, bounded MQTT 3.1.1 codec: bytes in, [`Packet`]s out, and back. No I/O, no clock, no
//! hub or provisioning rules — the server and clients own the sockets and decide what a topic
//! means; [`iothub`] only spells Azure IoT Hub's topic grammar, so server and device client
//! share one copy of it.
//!
//! # Layout
//! - [`packet`]: the [`Packet`] enum and its parts ([`Connect`], [`ConnAck`], [`Publish`],
//!   [`Subscribe`], [`SubAck`], [`Unsubscribe`], [`QoS`], return codes).
//! - [`decode`](mod@decode): two-phase decoding. [`check`] reads only the fixed header and says
//!   whether a whole packet is buffered (or refuses it as too large before its body arrives);
//!   [`decode()`] then splits off exactly that packet and parses it through a bounded reader
//!   that never reads past it. Incomplete input is `Ok(None)`, never an error; no input can make
//!   it panic.
//! - [`encode`](mod@encode): [`encode()`] for every packet, refusing what the decoder would
//!   refuse.
//! - [`topic`]: topic filter matching and validation, and Azure IoT property bags
//!   (`a=1&b=x%20y`).
//! - [`iothub`]: Azure IoT Hub's device topics (filters, publishes, responses) as data.
//! - [`error`]: the one [`Error`] type, one loggable line per variant.
//! - `framed` (feature `tokio`): `Framed`, whole packets over an async byte stream with
//!   cancel-safe reads, shared by the server's sessions and the device client.
//!
//! QoS 2 is not supported by muster: a QoS 2 PUBLISH decodes (with [`QoS::ExactlyOnce`]) so the
//! server can decide to close, and PUBREC/PUBREL/PUBCOMP are [`Error::UnsupportedPacket`].

pub mod decode;
pub mod encode;
pub mod error;
#[cfg(feature = "tokio")]
pub mod framed;
pub mod iothub;
pub mod packet;
pub mod topic;

pub use decode::{check, decode};
pub use encode::encode;
pub use error::Error;
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, MAX_REMAINING_LENGTH, Packet, Publish, QoS, SubAck,
    SubAckReturnCode, Subscribe, Unsubscribe, Will,
};
