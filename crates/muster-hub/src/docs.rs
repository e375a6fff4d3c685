//! The documents provisioning writes into a hub's registry: a device identity (IoT Hub's
//! `Device` shape) and its twin (`Twin` shape with `$version` and `$metadata`). The hub crate
//! owns their life after creation.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use muster_auth::Secret;
use muster_types::time_fmt::{self, NEVER};

/// How a device or module authenticates to its hub (the identity's `authentication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// X.509 leaf pinned by thumbprints (`selfSigned`). Provisioning stores the SHA-1
    /// thumbprint as primary and the SHA-256 one of the same certificate as secondary, so
    /// either form matches.
    SelfSigned {
        /// Primary thumbprint (upper-case hex).
        primary: Option<String>,
        /// Secondary thumbprint (upper-case hex).
        secondary: Option<String>,
    },
    /// SAS with these keys (`sas`). `Debug` never prints them.
    Sas {
        /// Primary key.
        primary: Secret,
        /// Secondary key.
        secondary: Secret,
    },
    /// An X.509 chain to a verified CA, CN = device id (`certificateAuthority`).
    CertificateAuthority,
    /// No credentials (`none`): the identity cannot connect.
    None,
}

impl DeviceAuth {
    /// IoT Hub's name of the type: `selfSigned`, `sas`, `certificateAuthority` or `none`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SelfSigned { .. } => "selfSigned",
            Self::Sas { .. } => "sas",
            Self::CertificateAuthority => "certificateAuthority",
            Self::None => "none",
        }
    }

    /// The `authentication` object.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let (keys, thumbs) = match self {
            Self::SelfSigned { primary, secondary } => (
                json!({"primaryKey": null, "secondaryKey": null}),
                json!({"primaryThumbprint": primary, "secondaryThumbprint": secondary}),
            ),
            Self::Sas { primary, secondary } => (
                json!({"primaryKey": primary.expose(), "secondaryKey": secondary.expose()}),
                json!({"primaryThumbprint": null, "secondaryThumbprint": null}),
            ),
            Self::CertificateAuthority | Self::None => (
                json!({"primaryKey": null, "secondaryKey": null}),
                json!({"primaryThumbprint": null, "secondaryThumbprint": null}),
            ),
        };
        json!({"symmetricKey": keys, "x509Thumbprint": thumbs, "type": self.kind()})
    }

    /// Read a stored `authentication` object (an unknown or missing type reads as `sas`, as
    /// IoT Hub defaults it).
    #[must_use]
    pub fn from_json(v: &Value) -> Self {
        let text = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match v.get("type").and_then(Value::as_str).unwrap_or("sas") {
            "selfSigned" => Self::SelfSigned {
                primary: text("/x509Thumbprint/primaryThumbprint"),
                secondary: text("/x509Thumbprint/secondaryThumbprint"),
            },
            "certificateAuthority" => Self::CertificateAuthority,
            "none" => Self::None,
            _ => Self::Sas {
                primary: Secret::new(text("/symmetricKey/primaryKey").unwrap_or_default()),
                secondary: Secret::new(text("/symmetricKey/secondaryKey").unwrap_or_default()),
            },
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
        "status": "enabled",
        "statusReason": null,
        "statusUpdatedTime": NEVER,
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
