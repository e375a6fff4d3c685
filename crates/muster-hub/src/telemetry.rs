//! Device-to-cloud messages: what a device sent, whatever the transport, and how it becomes an
//! event in the built-in event log.
//!
//! A transport reads a message's system properties from its own wire form (MQTT's `$.mid`
//! property-bag keys, AMQP's message properties) into [`SystemProperty`] values; the hub names
//! them as IoT Hub's event stream does (`message-id`, `content-type`, …), adds the properties
//! only it may set (`iothub-connection-device-id`, `iothub-enqueuedtime`, …), enforces the
//! 256 KB limit and appends durably. A transport acknowledges a message only after
//! [`crate::Hub::ingest`] returned `Ok`.

use muster_store::events::NewEvent;
use muster_types::time_fmt;

use crate::identity::Identity;

/// IoT Hub's device-to-cloud message limit.
pub const MAX_TELEMETRY: usize = 256 * 1024;

/// A system property a device may set on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemProperty {
    /// `message-id`.
    MessageId,
    /// `correlation-id`.
    CorrelationId,
    /// `user-id`.
    UserId,
    /// `content-type`.
    ContentType,
    /// `content-encoding`.
    ContentEncoding,
    /// `absolute-expiry-time`.
    AbsoluteExpiryTime,
    /// `to`.
    To,
    /// `iothub-outputname` (modules' outputs).
    OutputName,
    /// `iothub-interface-id` (IoT Plug and Play).
    InterfaceId,
    /// `dt-subject` (IoT Plug and Play components).
    Subject,
}

impl SystemProperty {
    /// The name the event stream gives it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::MessageId => "message-id",
            Self::CorrelationId => "correlation-id",
            Self::UserId => "user-id",
            Self::ContentType => "content-type",
            Self::ContentEncoding => "content-encoding",
            Self::AbsoluteExpiryTime => "absolute-expiry-time",
            Self::To => "to",
            Self::OutputName => "iothub-outputname",
            Self::InterfaceId => "iothub-interface-id",
            Self::Subject => "dt-subject",
        }
    }
}

/// One device-to-cloud message as the device sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// System properties the device set.
    pub system: Vec<(SystemProperty, String)>,
    /// Application properties.
    pub properties: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why telemetry was not stored; nothing of the batch is acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A message is over 256 KB.
    #[error("a telemetry message of {size} bytes is over the 256 KB limit")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The event log failed.
    #[error("the event log is unavailable")]
    Unavailable(#[source] muster_store::StoreError),
}

/// The event for `message` from `sender`, enqueued at `now`, in its device's partition of
/// `partitions`.
#[must_use]
pub fn to_event(
    sender: &Identity,
    message: Telemetry,
    now: time::OffsetDateTime,
    partitions: u32,
) -> NewEvent {
    let enqueued = time_fmt::azure(now);
    let mut system = vec![
        (
            "iothub-connection-device-id".to_owned(),
            sender.device_id.to_string(),
        ),
        ("iothub-enqueuedtime".to_owned(), enqueued.clone()),
        ("iothub-message-source".to_owned(), "Telemetry".to_owned()),
    ];
    if let Some(m) = &sender.module_id {
        system.push(("iothub-connection-module-id".to_owned(), m.to_string()));
    }
    system.extend(
        message
            .system
            .into_iter()
            .map(|(p, v)| (p.name().to_owned(), v)),
    );
    NewEvent {
        hub: sender.hub.clone(),
        device_id: sender.device_id.to_string(),
        module_id: sender.module_id.as_ref().map(ToString::to_string),
        properties: message.properties,
        system_properties: system,
        body: message.body,
        enqueued,
        enqueued_ms: i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
        partition: muster_store::events::partition_of(sender.device_id.as_str(), partitions),
        built_in: true,
        endpoints: Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use muster_types::{DeviceId, ModuleId};

    use super::*;

    #[test]
    fn the_hub_sets_the_connection_properties() {
        let sender = Identity::new(
            "Hub.Local",
            DeviceId::new("d1").unwrap(),
            Some(ModuleId::new("m1").unwrap()),
        );
        let message = Telemetry {
            system: vec![
                (SystemProperty::MessageId, "42".into()),
                (SystemProperty::ContentType, "application/json".into()),
            ],
            properties: vec![("temperatureAlert".into(), "true".into())],
            body: b"{}".to_vec(),
        };
        let at = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        let e = to_event(&sender, message, at, 4);
        assert_eq!(e.hub, "hub.local");
        assert_eq!(e.module_id.as_deref(), Some("m1"));
        let get = |k: &str| {
            e.system_properties
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("message-id"), Some("42"));
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("iothub-connection-device-id"), Some("d1"));
        assert_eq!(get("iothub-connection-module-id"), Some("m1"));
        assert_eq!(
            get("iothub-enqueuedtime"),
            Some("2026-01-02T03:04:05.0000000Z")
        );
        assert_eq!(
            e.properties,
            vec![("temperatureAlert".into(), "true".into())]
        );
        assert_eq!(e.enqueued_ms, at.unix_timestamp() * 1000);
        assert_eq!(e.partition, muster_store::events::partition_of("d1", 4));
    }
}
