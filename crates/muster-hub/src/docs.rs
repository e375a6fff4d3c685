//! The documents provisioning writes into a hub's registry: a device identity (IoT Hub's
//! `Device` shape) and its twin (`Twin` shape with `$version` and `$metadata`). The hub crate
//! owns their life after creation.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::time_fmt::{self, NEVER};

/// How a device authenticates to its hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// X.509 leaf pinned by thumbprints (`selfSigned`): primary SHA-1, secondary SHA-256 of the
    /// same certificate, so either form matches.
    SelfSigned {
        /// SHA-1 thumbprint.
        sha1: String,
        /// SHA-256 thumbprint.
        sha256: String,
    },
    /// SAS with these keys (`sas`).
    Sas {
        /// Primary key.
        primary: String,
        /// Secondary key.
        secondary: String,
    },
}

impl DeviceAuth {
    /// The `authentication` object.
    #[must_use]
    pub fn to_json(&self) -> Value {
        match self {
            Self::SelfSigned { sha1, sha256 } => json!({
                "symmetricKey": {"primaryKey": null, "secondaryKey": null},
                "x509Thumbprint": {"primaryThumbprint": sha1, "secondaryThumbprint": sha256},
                "type": "selfSigned",
            }),
            Self::Sas { primary, secondary } => json!({
                "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
                "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
                "type": "sas",
            }),
        }
    }
}

/// Storage key of a device or twin: `{hub}/{deviceId}`.
#[must_use]
pub fn key(hub: &str, device_id: &str) -> String {
    format!("{}/{device_id}", hub.to_ascii_lowercase())
}

/// A new device identity, or `existing` with its authentication replaced (status, generation
/// and activity are kept: an operator's disable survives re-provisioning).
#[must_use]
pub fn device(
    existing: Option<&Value>,
    device_id: &str,
    auth: &DeviceAuth,
    iot_edge: bool,
    now: OffsetDateTime,
) -> Value {
    if let Some(Value::Object(existing)) = existing {
        let mut d = existing.clone();
        d.insert("authentication".into(), auth.to_json());
        d.insert("capabilities".into(), json!({"iotEdge": iot_edge}));
        return Value::Object(d);
    }
    let mut generation = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut generation);
    let generation_id: String = generation.iter().map(|b| format!("{}", b % 10)).collect();
    json!({
        "deviceId": device_id,
        "generationId": format!("63{generation_id}"),
        "connectionState": "Disconnected",
        "status": "enabled",
        "statusReason": null,
        "connectionStateUpdatedTime": NEVER,
        "statusUpdatedTime": NEVER,
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": 0,
        "authentication": auth.to_json(),
        "capabilities": {"iotEdge": iot_edge},
        "createdTime": time_fmt::azure(now),
    })
}

/// A new twin holding `tags` and `desired` (from an enrollment's initial twin), version 1.
#[must_use]
pub fn twin(
    device_id: &str,
    tags: Option<&Value>,
    desired: Option<&Value>,
    now: OffsetDateTime,
) -> Value {
    let stamp = time_fmt::azure(now);
    let mut desired = match desired {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let metadata = metadata_for(&Value::Object(desired.clone()), &stamp, 1);
    desired.insert("$metadata".into(), metadata);
    desired.insert("$version".into(), json!(1));
    json!({
        "deviceId": device_id,
        "version": 1,
        "tags": tags.cloned().unwrap_or_else(|| json!({})),
        "properties": {
            "desired": Value::Object(desired),
            "reported": {"$metadata": {"$lastUpdated": stamp}, "$version": 1},
        },
    })
}

/// `$metadata` for an object: `$lastUpdated` at every level, `$lastUpdatedVersion` on leaves.
fn metadata_for(value: &Value, stamp: &str, version: u64) -> Value {
    let mut m = Map::new();
    m.insert("$lastUpdated".into(), json!(stamp));
    m.insert("$lastUpdatedVersion".into(), json!(version));
    if let Value::Object(obj) = value {
        for (k, v) in obj {
            if k.starts_with('$') {
                continue;
            }
            let child = if v.is_object() {
                metadata_for(v, stamp, version)
            } else {
                json!({"$lastUpdated": stamp, "$lastUpdatedVersion": version})
            };
            m.insert(k.clone(), child);
        }
    }
    Value::Object(m)
}

/// Eight random hex characters (uniqueness within one nanosecond).
#[must_use]
pub fn random_suffix() -> String {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
