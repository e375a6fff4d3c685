//! The hub's typed domain: [`Device`], [`Module`] and [`Twin`] in IoT Hub's service shapes.
//!
//! They serialize to exactly the JSON the service SDKs and the REST API use, so the management
//! API returns them as they are. Identities are stored as JSON documents (the store holds
//! documents); the registry reads them into these types. Twin properties and tags stay JSON
//! values: they are the user's free-form data.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::docs::DeviceAuth;
use muster_types::time_fmt::NEVER;

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// It may.
    #[default]
    Enabled,
    /// It is refused (and its connection closed).
    Disabled,
}

/// Whether a device or module holds a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConnectionState {
    /// No connection.
    #[default]
    Disconnected,
    /// Connected.
    Connected,
}

/// A device's capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// An IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// The `authentication` object, read and written through [`DeviceAuth`] (keys are
/// [`muster_auth::Secret`], so `Debug` never shows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication(pub DeviceAuth);

impl Serialize for Authentication {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Authentication {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(DeviceAuth::from_json(&Value::deserialize(d)?)))
    }
}

fn never() -> String {
    NEVER.to_owned()
}

/// A device identity (IoT Hub's `Device`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Device id.
    pub device_id: String,
    /// Distinguishes devices created again under the same id.
    #[serde(default)]
    pub generation_id: String,
    /// Changes when the identity is written (not on connects).
    #[serde(default)]
    pub etag: String,
    /// Enabled or disabled.
    #[serde(default)]
    pub status: DeviceStatus,
    /// Why it is disabled, as the operator wrote it.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// When the status last changed.
    #[serde(default = "never")]
    pub status_updated_time: String,
    /// Connected or not.
    #[serde(default)]
    pub connection_state: ConnectionState,
    /// When the connection state last changed.
    #[serde(default = "never")]
    pub connection_state_updated_time: String,
    /// Last activity (written at most once a minute per session).
    #[serde(default = "never")]
    pub last_activity_time: String,
    /// Cloud-to-device messages pending.
    #[serde(default)]
    pub cloud_to_device_message_count: u64,
    /// How it authenticates.
    pub authentication: Authentication,
    /// Its capabilities.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<String>,
}

/// A module identity (IoT Hub's `Module`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Module {
    /// Its device.
    pub device_id: String,
    /// Module id.
    pub module_id: String,
    /// Who manages it (free text).
    #[serde(default)]
    pub managed_by: Option<String>,
    /// Distinguishes modules created again under the same id.
    #[serde(default)]
    pub generation_id: String,
    /// Changes when the identity is written (not on connects).
    #[serde(default)]
    pub etag: String,
    /// Connected or not.
    #[serde(default)]
    pub connection_state: ConnectionState,
    /// When the connection state last changed.
    #[serde(default = "never")]
    pub connection_state_updated_time: String,
    /// Last activity.
    #[serde(default = "never")]
    pub last_activity_time: String,
    /// Always 0 (modules receive no cloud-to-device messages).
    #[serde(default)]
    pub cloud_to_device_message_count: u64,
    /// How it authenticates.
    pub authentication: Authentication,
}

/// Desired and reported properties, each with `$version` and `$metadata`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TwinProperties {
    /// Set by services.
    #[serde(default)]
    pub desired: Value,
    /// Set by the device.
    #[serde(default)]
    pub reported: Value,
}

/// A device or module twin as services see it (IoT Hub's `Twin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Device id.
    pub device_id: String,
    /// Module id, for a module twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// The twin's etag.
    pub etag: String,
    /// The identity's etag.
    #[serde(default)]
    pub device_etag: Option<String>,
    /// Increases with every change.
    pub version: u64,
    /// Service-side tags.
    #[serde(default)]
    pub tags: Value,
    /// Desired and reported properties.
    #[serde(default)]
    pub properties: TwinProperties,
    /// The identity's status (devices only).
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    /// The identity's status reason.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// When the status last changed.
    #[serde(default)]
    pub status_update_time: Option<String>,
    /// Connected or not.
    #[serde(default)]
    pub connection_state: ConnectionState,
    /// Last activity.
    #[serde(default)]
    pub last_activity_time: Option<String>,
    /// Cloud-to-device messages pending.
    #[serde(default)]
    pub cloud_to_device_message_count: Option<u64>,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    pub authentication_type: String,
    /// The identity's thumbprints.
    #[serde(default)]
    pub x509_thumbprint: Value,
    /// The identity's capabilities.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

/// Read a stored or merged JSON view into a typed value.
pub(crate) fn typed<T: for<'de> Deserialize<'de>>(
    view: Value,
) -> Result<T, crate::registry::HubError> {
    serde_json::from_value(view).map_err(|e| crate::registry::HubError::Corrupt(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn devices_keep_iot_hubs_shape_and_hide_keys() {
        let stored = json!({
            "deviceId": "d1", "generationId": "631", "etag": "e", "status": "disabled",
            "statusReason": "stolen", "statusUpdatedTime": NEVER,
            "connectionState": "Connected", "connectionStateUpdatedTime": NEVER,
            "lastActivityTime": NEVER, "cloudToDeviceMessageCount": 0,
            "authentication": {"symmetricKey": {"primaryKey": "c2VjcmV0c2VjcmV0c2VjcmV0", "secondaryKey": "c2VjcmV0c2VjcmV0c2VjcmV0"},
                "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}, "type": "sas"},
            "capabilities": {"iotEdge": false}, "createdTime": NEVER,
        });
        let d: Device = typed(stored.clone()).unwrap();
        assert_eq!(d.status, DeviceStatus::Disabled);
        assert_eq!(d.connection_state, ConnectionState::Connected);
        assert_eq!(serde_json::to_value(&d).unwrap(), stored);
        assert!(
            !format!("{d:?}").contains("c2VjcmV0"),
            "Debug never shows keys"
        );
    }
}
