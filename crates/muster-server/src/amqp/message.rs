//! AMQP messages ↔ the hub's domain values, and the small message builders the links share
//! (`../shared/spec/azure-amqp-wire.md` §3, §4, §8.6–8.8).

use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Batch, Body, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use muster_hub::telemetry::{SystemProperty, Telemetry};

/// What every link carries.
pub(crate) type AmqpMessage = Message<Body<Value>>;

/// The bytes of a body: its Data sections joined, a string or binary value, or nothing.
pub(crate) fn body_bytes(body: &Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.clone().into_bytes(),
            Value::Binary(b) => b.to_vec(),
            Value::Null => Vec::new(),
            other => format!("{other:?}").into_bytes(),
        },
        Body::Sequence(_) | Body::Empty => Vec::new(),
    }
}

/// A message id as text (ids are compared and stored as strings).
pub(crate) fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => muster_pki::hex_upper(b).to_ascii_lowercase(),
    }
}

pub(crate) use crate::device_api::{new_uuid, uuid_text};

/// A simple value as the string IoT Hub keeps for properties.
pub(crate) fn simple_text(v: &SimpleValue) -> String {
    match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Float(f) => f.to_string(),
        SimpleValue::Double(f) => f.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Uuid(u) => uuid_text(u.as_inner()),
        SimpleValue::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// An application property as text.
pub(crate) fn app_property(message: &AmqpMessage, name: &str) -> Option<String> {
    message
        .application_properties
        .as_ref()?
        .0
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| simple_text(v))
}

/// A message annotation (symbol key).
pub(crate) fn annotation<'a>(message: &'a AmqpMessage, name: &str) -> Option<&'a Value> {
    message
        .message_annotations
        .as_ref()?
        .0
        .iter()
        .find(|(k, _)| matches!(k, OwnedKey::Symbol(s) if s.as_str() == name))
        .map(|(_, v)| v)
}

/// A device's telemetry message in the hub's terms (`../shared/spec/azure-amqp-wire.md` §4.1).
pub(crate) fn telemetry(message: &AmqpMessage) -> Telemetry {
    let mut system = Vec::new();
    if let Some(p) = &message.properties {
        let mut put = |prop, value: Option<String>| {
            if let Some(v) = value {
                system.push((prop, v));
            }
        };
        put(
            SystemProperty::MessageId,
            p.message_id.as_ref().map(id_text),
        );
        put(
            SystemProperty::CorrelationId,
            p.correlation_id.as_ref().map(id_text),
        );
        put(
            SystemProperty::UserId,
            p.user_id
                .as_ref()
                .map(|u| String::from_utf8_lossy(u).into_owned()),
        );
        put(
            SystemProperty::ContentType,
            p.content_type.as_ref().map(|s| s.as_str().to_owned()),
        );
        put(
            SystemProperty::ContentEncoding,
            p.content_encoding.as_ref().map(|s| s.as_str().to_owned()),
        );
        put(
            SystemProperty::AbsoluteExpiryTime,
            p.absolute_expiry_time.as_ref().map(|t| {
                let at = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(t.milliseconds()) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                muster_types::time_fmt::azure(at)
            }),
        );
    }
    for (name, prop) in [
        ("iothub-interface-id", SystemProperty::InterfaceId),
        ("dt-subject", SystemProperty::Subject),
        ("iothub-outputname", SystemProperty::OutputName),
    ] {
        if let Some(Value::String(v) | Value::Symbol(Symbol(v))) = annotation(message, name) {
            system.push((prop, v.clone()));
        }
    }
    let properties = message
        .application_properties
        .as_ref()
        .map(|a| {
            a.0.iter()
                .filter(|(k, _)| !k.starts_with("iothub-"))
                .map(|(k, v)| (k.clone(), simple_text(v)))
                .collect()
        })
        .unwrap_or_default();
    Telemetry {
        system,
        properties,
        body: body_bytes(&message.body),
    }
}

/// The message format of a .NET telemetry batch: one encoded AMQP message per Data section.
pub(crate) const BATCH_FORMAT: u32 = 0x8001_3700;

/// Why a telemetry delivery is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("a telemetry message is over the 256 KB limit")]
    TooLarge,
    #[error("a message of the batch cannot be decoded: {0}")]
    Undecodable(String),
}

/// The telemetry a delivery carries: itself, or the messages of a batch
/// (message format [`BATCH_FORMAT`], .NET's `SendEventBatchAsync`).
pub(crate) fn telemetry_of(
    message: &AmqpMessage,
    format: Option<u32>,
) -> Result<Vec<Telemetry>, Refusal> {
    use fe2o3_amqp::types::messaging::message::DecodeIntoMessage as _;
    let fits = |m: &Telemetry| m.body.len() <= muster_hub::telemetry::MAX_TELEMETRY;
    if format != Some(BATCH_FORMAT) {
        let one = telemetry(message);
        return if fits(&one) {
            Ok(vec![one])
        } else {
            Err(Refusal::TooLarge)
        };
    }
    let Body::Data(sections) = &message.body else {
        return Err(Refusal::Undecodable("a batch must be Data sections".into()));
    };
    sections
        .iter()
        .map(|section| {
            let reader = serde_amqp::read::SliceReader::new(&section.0);
            let inner = Body::<Value>::decode_message_from_reader(reader)
                .map_err(|e| Refusal::Undecodable(e.to_string()))?;
            let one = telemetry(&inner);
            if fits(&one) {
                Ok(one)
            } else {
                Err(Refusal::TooLarge)
            }
        })
        .collect()
}

/// A Data body.
pub(crate) fn data(bytes: Vec<u8>) -> Body<Value> {
    Body::Data(Batch::new(vec![Data(Binary::from(bytes))]))
}

/// A reply: `correlation-id` = the request's id (same AMQP type), application properties and
/// annotations as given, `body`.
pub(crate) fn reply(
    correlation: Option<MessageId>,
    application: Vec<(&str, SimpleValue)>,
    annotations: Vec<(&str, Value)>,
    body: Body<Value>,
) -> AmqpMessage {
    let properties = Properties {
        correlation_id: correlation,
        ..Properties::default()
    };
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: (!annotations.is_empty()).then(|| {
            MessageAnnotations(
                annotations
                    .into_iter()
                    .map(|(k, v)| (OwnedKey::Symbol(Symbol::from(k)), v))
                    .collect(),
            )
        }),
        properties: Some(properties),
        application_properties: (!application.is_empty()).then(|| {
            ApplicationProperties(
                application
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            )
        }),
        body,
        footer: None,
    }
}

/// A timestamp from Unix milliseconds.
pub(crate) fn timestamp(millis: i64) -> Timestamp {
    Timestamp::from_milliseconds(millis)
}
