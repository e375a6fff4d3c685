//! Azure IoT Hub's MQTT topic grammar for devices and modules (docs/wire-protocol.md §3): the filters a device
//! subscribes to, the topics it publishes on, and the topics the hub answers on. Both the
//! server and the device client build and read topics here, so each shape exists once. Pure
//! string grammar: what a topic *means* for a hub is decided in `muster-hub`.

use crate::topic::{encode_property_bag, parse_property_bag};

/// Twin responses: `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// Desired-property changes: `$iothub/twin/PATCH/properties/desired/?$version={v}`.
pub const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Direct-method requests: `$iothub/methods/POST/{name}/?$rid={rid}`.
pub const METHOD_REQUESTS: &str = "$iothub/methods/POST/#";
/// Prefix of twin responses.
pub const TWIN_RESPONSE_PREFIX: &str = "$iothub/twin/res/";
/// Prefix of desired-property changes.
pub const DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";
/// Prefix of method requests.
pub const METHOD_PREFIX: &str = "$iothub/methods/POST/";
/// A twin GET request (`?$rid=` follows).
pub const TWIN_GET: &str = "$iothub/twin/GET/";
/// A reported-properties patch (`?$rid=` follows).
pub const TWIN_REPORTED: &str = "$iothub/twin/PATCH/properties/reported/";

/// A topic filter a device subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription<'a> {
    /// [`TWIN_RESPONSES`].
    TwinResponses,
    /// [`DESIRED_PATCHES`].
    DesiredPatches,
    /// [`METHOD_REQUESTS`].
    MethodRequests,
    /// `devices/{id}/messages/devicebound/#`.
    CloudToDevice {
        /// The device the filter names.
        device_id: &'a str,
    },
    /// Anything else.
    Other,
}

/// Read a subscription filter.
#[must_use]
pub fn subscription(filter: &str) -> Subscription<'_> {
    match filter {
        TWIN_RESPONSES => Subscription::TwinResponses,
        DESIRED_PATCHES => Subscription::DesiredPatches,
        METHOD_REQUESTS => Subscription::MethodRequests,
        _ => filter
            .strip_prefix("devices/")
            .and_then(|rest| rest.strip_suffix("/messages/devicebound/#"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map_or(Subscription::Other, |device_id| {
                Subscription::CloudToDevice { device_id }
            }),
    }
}

/// The cloud-to-device filter of a device.
#[must_use]
pub fn c2d_filter(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/#")
}

/// What a device publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePublish<'a> {
    /// Telemetry: `devices/{id}[/modules/{mid}]/messages/events/{bag}`.
    Telemetry {
        /// Device id from the topic.
        device_id: &'a str,
        /// Module id from the topic.
        module_id: Option<&'a str>,
        /// The decoded property bag.
        properties: Vec<(String, String)>,
    },
    /// `$iothub/twin/GET/?$rid={rid}`.
    TwinGet {
        /// Request id (decoded).
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
    TwinReported {
        /// Request id (decoded).
        rid: String,
    },
    /// `$iothub/methods/res/{status}/?$rid={rid}`.
    MethodResponse {
        /// The device's status (500 when unreadable).
        status: u16,
        /// Request id (decoded).
        rid: String,
    },
    /// Anything else.
    Other,
}

fn rid_of(query: &str) -> String {
    parse_property_bag(query)
        .into_iter()
        .find(|(k, _)| k == "$rid")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Read a device's publish topic.
#[must_use]
pub fn device_publish(topic: &str) -> DevicePublish<'_> {
    if let Some(rest) = topic.strip_prefix("devices/") {
        let (device_id, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let (module_id, rest) = match rest.strip_prefix("modules/") {
            Some(r) => {
                let (m, r) = r.split_once('/').unwrap_or((r, ""));
                (Some(m), r)
            }
            None => (None, rest),
        };
        if let Some(bag) = rest.strip_prefix("messages/events/")
            && !device_id.is_empty()
            && module_id.is_none_or(|m| !m.is_empty())
        {
            return DevicePublish::Telemetry {
                device_id,
                module_id,
                properties: parse_property_bag(bag.trim_end_matches('/')),
            };
        }
        return DevicePublish::Other;
    }
    let (path, query) = topic.split_once('?').unwrap_or((topic, ""));
    match path {
        TWIN_GET => DevicePublish::TwinGet { rid: rid_of(query) },
        TWIN_REPORTED => DevicePublish::TwinReported { rid: rid_of(query) },
        _ => match path.strip_prefix("$iothub/methods/res/") {
            Some(status) => DevicePublish::MethodResponse {
                status: status.trim_end_matches('/').parse().unwrap_or(500),
                rid: rid_of(query),
            },
            None => DevicePublish::Other,
        },
    }
}

/// A value percent-encoded for a topic (keys such as `$rid` stay literal, as the SDKs write
/// and expect them).
fn value(v: &str) -> String {
    encode_property_bag([(v, "")])
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
#[must_use]
pub fn twin_response(status: u16, rid: &str, version: Option<u64>) -> String {
    let rid = value(rid);
    match version {
        Some(v) => format!("{TWIN_RESPONSE_PREFIX}{status}/?$rid={rid}&$version={v}"),
        None => format!("{TWIN_RESPONSE_PREFIX}{status}/?$rid={rid}"),
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version={version}`.
#[must_use]
pub fn desired_patch(version: u64) -> String {
    format!("{DESIRED_PREFIX}?$version={version}")
}

/// `$iothub/methods/POST/{name}/?$rid={rid}`.
#[must_use]
pub fn method_request(name: &str, rid: &str) -> String {
    format!("{METHOD_PREFIX}{}/?$rid={}", value(name), value(rid))
}

/// `$iothub/methods/res/{status}/?$rid={rid}`.
#[must_use]
pub fn method_response(status: u16, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={}", value(rid))
}

/// `devices/{id}/messages/devicebound/{bag}`.
#[must_use]
pub fn c2d_topic<I, K, V>(device_id: &str, properties: I) -> String
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    format!(
        "devices/{device_id}/messages/devicebound/{}",
        encode_property_bag(properties)
    )
}

/// `devices/{id}[/modules/{mid}]/messages/events/{bag}`.
#[must_use]
pub fn telemetry_topic<I, K, V>(device_id: &str, module_id: Option<&str>, properties: I) -> String
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let bag = encode_property_bag(properties);
    match module_id {
        Some(m) => format!("devices/{device_id}/modules/{m}/messages/events/{bag}"),
        None => format!("devices/{device_id}/messages/events/{bag}"),
    }
}

/// Azure's property-bag keys for system properties, and the names IoT Hub's event stream gives
/// them.
pub const SYSTEM_KEYS: [(&str, &str); 10] = [
    ("$.mid", "message-id"),
    ("$.cid", "correlation-id"),
    ("$.uid", "user-id"),
    ("$.ct", "content-type"),
    ("$.ce", "content-encoding"),
    ("$.exp", "absolute-expiry-time"),
    ("$.to", "to"),
    ("$.on", "iothub-outputname"),
    ("$.ifid", "iothub-interface-id"),
    ("$.sub", "dt-subject"),
];

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn subscriptions() {
        assert_eq!(subscription(TWIN_RESPONSES), Subscription::TwinResponses);
        assert_eq!(
            subscription("devices/d1/messages/devicebound/#"),
            Subscription::CloudToDevice { device_id: "d1" }
        );
        assert_eq!(
            subscription("devices/+/messages/devicebound/#"),
            Subscription::CloudToDevice { device_id: "+" }
        );
        assert_eq!(subscription("#"), Subscription::Other);
        assert_eq!(
            subscription("devices/a/b/messages/devicebound/#"),
            Subscription::Other
        );
        assert_eq!(c2d_filter("d1"), "devices/d1/messages/devicebound/#");
    }

    #[test]
    fn publishes() {
        assert_eq!(
            device_publish("devices/d1/messages/events/$.ct=application%2Fjson&a=1"),
            DevicePublish::Telemetry {
                device_id: "d1",
                module_id: None,
                properties: vec![
                    ("$.ct".into(), "application/json".into()),
                    ("a".into(), "1".into())
                ],
            }
        );
        assert_eq!(
            device_publish("devices/d1/modules/m1/messages/events/"),
            DevicePublish::Telemetry {
                device_id: "d1",
                module_id: Some("m1"),
                properties: vec![],
            }
        );
        assert_eq!(
            device_publish("$iothub/twin/GET/?$rid=a%20b"),
            DevicePublish::TwinGet { rid: "a b".into() }
        );
        assert_eq!(
            device_publish("$iothub/twin/PATCH/properties/reported/?$rid=7"),
            DevicePublish::TwinReported { rid: "7".into() }
        );
        assert_eq!(
            device_publish("$iothub/methods/res/404/?$rid=9"),
            DevicePublish::MethodResponse {
                status: 404,
                rid: "9".into()
            }
        );
        assert_eq!(
            device_publish("devices/d1/messages/other"),
            DevicePublish::Other
        );
        assert_eq!(
            device_publish("devices//messages/events/"),
            DevicePublish::Other
        );
        assert_eq!(device_publish("foo"), DevicePublish::Other);
    }

    #[test]
    fn builders_round_trip() {
        assert_eq!(
            twin_response(200, "a b", None),
            "$iothub/twin/res/200/?$rid=a%20b"
        );
        assert_eq!(
            twin_response(204, "1", Some(3)),
            "$iothub/twin/res/204/?$rid=1&$version=3"
        );
        assert_eq!(
            device_publish(&twin_response(204, "1", Some(3)).replace("twin/res/204", "twin/GET")),
            DevicePublish::TwinGet { rid: "1".into() }
        );
        assert_eq!(
            desired_patch(4),
            "$iothub/twin/PATCH/properties/desired/?$version=4"
        );
        assert_eq!(
            method_request("re boot", "r1"),
            "$iothub/methods/POST/re%20boot/?$rid=r1"
        );
        assert_eq!(
            device_publish(&method_response(200, "x&y")),
            DevicePublish::MethodResponse {
                status: 200,
                rid: "x&y".into()
            }
        );
        assert_eq!(
            telemetry_topic("d", Some("m"), [("k", "v")]),
            "devices/d/modules/m/messages/events/k=v"
        );
        assert_eq!(
            c2d_topic("d", [("$.mid", "1")]),
            "devices/d/messages/devicebound/%24.mid=1"
        );
    }
}
