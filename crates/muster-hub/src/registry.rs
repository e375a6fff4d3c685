//! The device registry and the service side of twins, over the store.
//!
//! Devices and twins live under `{hub}/{deviceId}` (see [`crate::docs::key`]), indexed by hub.
//! Responses use IoT Hub's shapes: a `Device` with its `etag`, a `Twin` combining the twin
//! document with the device's status, connection state and authentication type.

use std::sync::Arc;

use base64::Engine as _;
use muster_auth::Secret;
use muster_store::{Change, Collection, Precondition, Store, StoreError, Write};
use serde_json::{Map, Value, json};
use tracing::info;

use crate::docs::{self, DeviceAuth};
use crate::model::{Device, Twin, typed};
use crate::query::Shape;
use crate::twin::{self, Limits, Section, TwinError};
use muster_types::{DeviceId, ModuleId, time_fmt};

/// IoT Hub error categories, with the `ErrorCode` names the service SDKs recognise.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// 400 ArgumentInvalid.
    #[error("{0}")]
    InvalidInput(String),
    /// 404 DeviceNotFound.
    #[error("device '{0}' not found")]
    DeviceNotFound(String),
    /// 404 DeviceNotOnline (a direct method for a device that is not connected).
    #[error("device '{0}' is not online")]
    DeviceNotOnline(String),
    /// 504 GatewayTimeoutError (the device did not answer a method in time).
    #[error("device '{0}' did not answer in time")]
    GatewayTimeout(String),
    /// 403 DeviceMaximumQueueDepthExceeded (50 cloud-to-device messages pending).
    #[error("device '{0}' already has 50 cloud-to-device messages pending")]
    QueueFull(String),
    /// 409 DeviceAlreadyExists.
    #[error("device '{0}' already exists")]
    DeviceAlreadyExists(String),
    /// 404 ModuleNotFound (`deviceId/moduleId`).
    #[error("module '{0}' not found")]
    ModuleNotFound(String),
    /// 409 ModuleAlreadyExistsOnDevice (`deviceId/moduleId`).
    #[error("module '{0}' already exists")]
    ModuleAlreadyExists(String),
    /// 401 IotHubUnauthorizedAccess (the reason is logged by the caller, not returned).
    #[error("unauthorized")]
    Unauthorized,
    /// 412 PreconditionFailed.
    #[error("the etag does not match (If-Match precondition failed)")]
    PreconditionFailed,
    /// 400 for twin rule violations (size, depth, names); 413 when too large.
    #[error(transparent)]
    Twin(#[from] TwinError),
    /// 412 DeviceMessageLockLost: the lock token of a cloud-to-device message is unknown or
    /// has expired (the message was delivered again, completed or expired meanwhile).
    #[error("the lock token of this cloud-to-device message is unknown or has expired")]
    MessageLockLost,
    /// 413 MessageTooLarge: a device-to-cloud message over 256 KB.
    #[error("{0}")]
    MessageTooLarge(String),
    /// 500: the system has no randomness for a new key.
    #[error("cannot generate a key: the system has no randomness")]
    NoRandomness,
    /// 500.
    /// Something other than a device or module does not exist (a consumer group, a route, …).
    #[error("{0}")]
    NotFound(String),
    /// Something other than a device or module exists already.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("internal storage error")]
    Store(#[source] StoreError),
    /// 500: a stored document does not have the shape it should.
    #[error("a stored identity or twin is unreadable: {0}")]
    Corrupt(String),
    /// 503 ServiceUnavailable: the node that holds the device's connection cannot be reached
    /// (the cluster's bus is down); retry.
    #[error("the device's node cannot be reached now: {0}")]
    Unavailable(String),
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PreconditionFailed { .. } => Self::PreconditionFailed,
            StoreError::Conflict { key, .. } => {
                Self::DeviceAlreadyExists(key.rsplit('/').next().unwrap_or_default().to_owned())
            }
            other => Self::Store(other),
        }
    }
}

impl HubError {
    /// HTTP status.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidInput(_) => 400,
            Self::Twin(TwinError::TooLarge { .. }) | Self::MessageTooLarge(_) => 413,
            Self::Twin(_) => 400,
            Self::Unauthorized => 401,
            Self::DeviceNotFound(_)
            | Self::DeviceNotOnline(_)
            | Self::ModuleNotFound(_)
            | Self::NotFound(_) => 404,
            Self::GatewayTimeout(_) => 504,
            Self::Unavailable(_) => 503,
            Self::QueueFull(_) => 403,
            Self::DeviceAlreadyExists(_)
            | Self::ModuleAlreadyExists(_)
            | Self::AlreadyExists(_) => 409,
            Self::PreconditionFailed | Self::MessageLockLost => 412,
            Self::Store(_) | Self::NoRandomness | Self::Corrupt(_) => 500,
        }
    }

    /// IoT Hub `ErrorCode` name.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) | Self::Twin(_) => "ArgumentInvalid",
            Self::Unauthorized => "IotHubUnauthorizedAccess",
            Self::DeviceNotFound(_) => "DeviceNotFound",
            Self::DeviceNotOnline(_) => "DeviceNotOnline",
            Self::GatewayTimeout(_) => "GatewayTimeoutError",
            Self::Unavailable(_) => "ServiceUnavailable",
            Self::QueueFull(_) => "DeviceMaximumQueueDepthExceeded",
            Self::DeviceAlreadyExists(_) => "DeviceAlreadyExists",
            Self::ModuleNotFound(_) => "ModuleNotFound",
            Self::ModuleAlreadyExists(_) => "ModuleAlreadyExistsOnDevice",
            Self::PreconditionFailed => "PreconditionFailed",
            Self::MessageLockLost => "DeviceMessageLockLost",
            Self::MessageTooLarge(_) => "MessageTooLarge",
            Self::NotFound(_) => "NotFound",
            Self::AlreadyExists(_) => "Conflict",
            Self::Store(_) | Self::NoRandomness | Self::Corrupt(_) => "ServerError",
        }
    }

    /// Message safe to show the caller.
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(_) | Self::NoRandomness | Self::Corrupt(_) => {
                "Internal server error".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// The registry of one server (all its hubs).
#[derive(Clone)]
pub struct Registry {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    time_fmt::azure(time::OffsetDateTime::now_utc())
}

/// Check a device id against IoT Hub's rules ([`muster_types::DeviceId`]).
///
/// # Errors
/// [`HubError::InvalidInput`] naming the rule.
pub fn check_device_id(id: &str) -> Result<DeviceId, HubError> {
    DeviceId::new(id).map_err(|e| HubError::InvalidInput(e.to_string()))
}

/// Check a module id against IoT Hub's rules ([`muster_types::ModuleId`]).
///
/// # Errors
/// [`HubError::InvalidInput`] naming the rule.
pub fn check_module_id(id: &str) -> Result<ModuleId, HubError> {
    ModuleId::new(id).map_err(|e| HubError::InvalidInput(e.to_string()))
}

pub(crate) fn precondition(header: Option<&str>) -> Precondition {
    match header.map(|h| h.trim().trim_matches('"')) {
        None | Some("") => Precondition::None,
        Some("*") => Precondition::Exists,
        Some(e) => Precondition::IfMatch(e.to_owned()),
    }
}

fn thumbprint(v: Option<&Value>) -> Result<Option<String>, HubError> {
    match v.and_then(Value::as_str).map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => {
            let t = t.replace(':', "").to_ascii_uppercase();
            if (t.len() == 40 || t.len() == 64) && t.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(Some(t))
            } else {
                Err(HubError::InvalidInput(
                    "x509 thumbprints are 40 (SHA-1) or 64 (SHA-256) hex digits".into(),
                ))
            }
        }
    }
}

fn sas_key(v: Option<&Value>) -> Result<Secret, HubError> {
    match v.and_then(Value::as_str).filter(|k| !k.is_empty()) {
        None => Secret::generate().map_err(|_| HubError::NoRandomness),
        Some(k) => {
            let n = base64::engine::general_purpose::STANDARD
                .decode(k)
                .map_err(|_| HubError::InvalidInput("symmetric keys must be base64".into()))?
                .len();
            if (16..=64).contains(&n) {
                Ok(Secret::new(k))
            } else {
                Err(HubError::InvalidInput(
                    "symmetric keys must be 16 to 64 bytes".into(),
                ))
            }
        }
    }
}

/// Normalise the `authentication` of a device body (keys generated when empty, type inferred
/// from thumbprints as the Node SDK expects).
pub(crate) fn authentication(body: &Value) -> Result<Value, HubError> {
    let auth = body
        .get("authentication")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let thumbs = auth.get("x509Thumbprint");
    let primary_thumb = thumbprint(thumbs.and_then(|t| t.get("primaryThumbprint")))?;
    let secondary_thumb = thumbprint(thumbs.and_then(|t| t.get("secondaryThumbprint")))?;
    let kind = auth
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if primary_thumb.is_some() {
                "selfSigned".into()
            } else {
                "sas".into()
            }
        });
    let auth = match kind.as_str() {
        "sas" => {
            let keys = auth.get("symmetricKey");
            DeviceAuth::Sas {
                primary: sas_key(keys.and_then(|k| k.get("primaryKey")))?,
                secondary: sas_key(keys.and_then(|k| k.get("secondaryKey")))?,
            }
        }
        "selfSigned" => DeviceAuth::SelfSigned {
            primary: Some(primary_thumb.ok_or_else(|| {
                HubError::InvalidInput(
                    "selfSigned authentication needs x509Thumbprint.primaryThumbprint".into(),
                )
            })?),
            secondary: secondary_thumb,
        },
        "certificateAuthority" => DeviceAuth::CertificateAuthority,
        "none" => DeviceAuth::None,
        other => {
            return Err(HubError::InvalidInput(format!(
                "unknown authentication type '{other}'"
            )));
        }
    };
    Ok(auth.to_json())
}

/// The collection holding an identity: `deviceId` (a device) or `deviceId/moduleId` (a module;
/// device ids cannot contain `/`).
pub(crate) fn identity_collection(id: &str) -> Collection {
    if id.contains('/') {
        Collection::Modules
    } else {
        Collection::Devices
    }
}

/// The not-found error for an identity.
pub(crate) fn not_found(id: &str) -> HubError {
    if id.contains('/') {
        HubError::ModuleNotFound(id.to_owned())
    } else {
        HubError::DeviceNotFound(id.to_owned())
    }
}

impl Registry {
    /// A registry over `store` with Azure's default twin limits.
    #[must_use]
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            limits: Limits::default(),
        }
    }

    /// Create a device (no `If-Match`) or update one (`If-Match`: etag or `*`).
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn put_device(
        &self,
        hub: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Device, HubError> {
        check_device_id(id)?;
        if let Some(claimed) = body.get("deviceId").and_then(Value::as_str)
            && claimed != id
        {
            return Err(HubError::InvalidInput(
                "deviceId in the body differs from the one in the path".into(),
            ));
        }
        let key = docs::key(hub, id);
        let key_for_view = key.clone();
        let existing = self.store.get(Collection::Devices, &key).await?;
        let pre = precondition(if_match);
        let status = match body.get("status").and_then(Value::as_str) {
            None | Some("enabled") => "enabled",
            Some("disabled") => "disabled",
            Some(other) => return Err(HubError::InvalidInput(format!("unknown status '{other}'"))),
        };
        let iot_edge = body
            .pointer("/capabilities/iotEdge")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let auth = authentication(body)?;
        let stamp = now();
        let (doc, precondition) = match (&existing, pre) {
            (Some(_), Precondition::None) => {
                return Err(HubError::DeviceAlreadyExists(id.to_owned()));
            }
            (Some(r), p) => {
                let mut d = r.body.as_object().cloned().unwrap_or_default();
                if d.get("status").and_then(Value::as_str) != Some(status) {
                    d.insert("statusUpdatedTime".into(), json!(stamp));
                }
                d.insert("status".into(), json!(status));
                d.insert(
                    "statusReason".into(),
                    body.get("statusReason").cloned().unwrap_or(Value::Null),
                );
                d.insert("authentication".into(), auth);
                d.insert("capabilities".into(), json!({"iotEdge": iot_edge}));
                (Value::Object(d), p)
            }
            (None, Precondition::IfMatch(_) | Precondition::Exists) => {
                return Err(HubError::DeviceNotFound(id.to_owned()));
            }
            (None, _) => {
                let mut d = docs::device(
                    None,
                    id,
                    &DeviceAuth::None,
                    iot_edge,
                    time::OffsetDateTime::now_utc(),
                );
                if let Some(o) = d.as_object_mut() {
                    o.insert("authentication".into(), auth);
                    o.insert("status".into(), json!(status));
                }
                (d, Precondition::IfNoneMatch)
            }
        };
        let hub_index = Some(hub.to_ascii_lowercase());
        let mut writes = vec![Write::Put {
            collection: Collection::Devices,
            key: key.clone(),
            index: hub_index.clone(),
            body: doc.clone(),
            precondition,
        }];
        if existing.is_none() {
            writes.push(Write::Put {
                collection: Collection::Twins,
                key,
                index: hub_index,
                body: docs::twin(id, None, None, time::OffsetDateTime::now_utc()),
                precondition: Precondition::None,
            });
        }
        let etags = self.store.write_batch(writes).await?;
        info!(
            hub,
            device_id = id,
            created = existing.is_none(),
            "device identity stored"
        );
        self.written_view(key_for_view, doc, &etags).await
    }

    /// One device.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`].
    pub async fn get_device(&self, hub: &str, id: &str) -> Result<Device, HubError> {
        let r = self
            .store
            .get(Collection::Devices, &docs::key(hub, id))
            .await?
            .ok_or_else(|| HubError::DeviceNotFound(id.to_owned()))?;
        typed(self.view(r).await?)
    }

    /// Delete a device and its twin.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`], [`HubError::PreconditionFailed`].
    pub async fn delete_device(
        &self,
        hub: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let key = docs::key(hub, id);
        let pre = match precondition(if_match) {
            Precondition::None => Precondition::Exists,
            p => p,
        };
        let writes = vec![
            Write::Delete {
                collection: Collection::Devices,
                key: key.clone(),
                precondition: pre,
            },
            Write::Delete {
                collection: Collection::Twins,
                key: key.clone(),
                precondition: Precondition::None,
            },
            Write::Delete {
                collection: Collection::Sessions,
                key: key.clone(),
                precondition: Precondition::None,
            },
            crate::activity::forget(&key),
        ];
        match self.store.write_batch(writes).await {
            Ok(_) => {
                self.delete_modules_of(hub, id).await?;
                // A device created again under this id must not receive the old one's messages.
                let queue = docs::key(hub, id);
                for r in self
                    .store
                    .list(
                        Collection::C2dMessages,
                        Some(&queue),
                        None,
                        crate::c2d::MAX_C2D_QUEUE * 4,
                    )
                    .await?
                {
                    self.store
                        .delete(Collection::C2dMessages, &r.key, Precondition::None)
                        .await?;
                }
                info!(hub, device_id = id, "device identity deleted");
                Ok(())
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                if self
                    .store
                    .get(Collection::Devices, &docs::key(hub, id))
                    .await?
                    .is_none()
                {
                    Err(HubError::DeviceNotFound(id.to_owned()))
                } else {
                    Err(HubError::PreconditionFailed)
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `top` devices of a hub, by id.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_devices(&self, hub: &str, top: usize) -> Result<Vec<Device>, HubError> {
        let records = self
            .store
            .list(
                Collection::Devices,
                Some(&hub.to_ascii_lowercase()),
                None,
                top.clamp(1, 10_000),
            )
            .await?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            out.push(typed(self.view(r).await?)?);
        }
        Ok(out)
    }

    /// Counts for `/statistics/devices`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn statistics(&self, hub: &str) -> Result<Value, HubError> {
        let (mut total, mut enabled) = (0u64, 0u64);
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(
                    Collection::Devices,
                    Some(&hub.to_ascii_lowercase()),
                    after.as_deref(),
                    1000,
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for r in &page {
                total += 1;
                if r.body.get("status").and_then(Value::as_str) == Some("enabled") {
                    enabled += 1;
                }
            }
        }
        Ok(
            json!({"totalDeviceCount": total, "enabledDeviceCount": enabled, "disabledDeviceCount": total - enabled}),
        )
    }

    /// The twin record of an identity (created when missing) and the identity's record.
    async fn load_twin_records(
        &self,
        hub: &str,
        id: &str,
    ) -> Result<(muster_store::Record, muster_store::Record), HubError> {
        let key = docs::key(hub, id);
        let identity = self
            .store
            .get(identity_collection(id), &key)
            .await?
            .ok_or_else(|| not_found(id))?;
        let twin = match self.store.get(Collection::Twins, &key).await? {
            Some(t) => t,
            None => {
                let body = docs::twin(id, None, None, time::OffsetDateTime::now_utc());
                self.store
                    .put(
                        Collection::Twins,
                        &key,
                        Some(&hub.to_ascii_lowercase()),
                        &body,
                        Precondition::IfNoneMatch,
                    )
                    .await?
            }
        };
        Ok((twin, identity))
    }

    /// The twin record and the identity's service view (for the service's twin view; devices'
    /// own twin requests need only the record).
    async fn load_twin(
        &self,
        hub: &str,
        id: &str,
    ) -> Result<(muster_store::Record, Value), HubError> {
        let (twin, identity) = self.load_twin_records(hub, id).await?;
        Ok((twin, self.view(identity).await?))
    }

    /// The service view of a twin.
    #[must_use]
    pub fn twin_view(twin: &Value, etag: &str, device: &Value) -> Value {
        let mut v: Map<String, Value> = Map::new();
        v.insert(
            "deviceId".into(),
            twin.get("deviceId").cloned().unwrap_or(Value::Null),
        );
        if let Some(m) = twin.get("moduleId") {
            v.insert("moduleId".into(), m.clone());
        }
        v.insert("etag".into(), json!(etag));
        v.insert(
            "deviceEtag".into(),
            device.get("etag").cloned().unwrap_or(Value::Null),
        );
        v.insert(
            "version".into(),
            twin.get("version").cloned().unwrap_or(json!(1)),
        );
        v.insert(
            "tags".into(),
            twin.get("tags").cloned().unwrap_or_else(|| json!({})),
        );
        v.insert(
            "properties".into(),
            twin.get("properties").cloned().unwrap_or_else(|| json!({})),
        );
        for k in [
            "status",
            "statusReason",
            "statusUpdateTime",
            "connectionState",
            "lastActivityTime",
            "cloudToDeviceMessageCount",
        ] {
            let source = if k == "statusUpdateTime" {
                "statusUpdatedTime"
            } else {
                k
            };
            v.insert(k.into(), device.get(source).cloned().unwrap_or(Value::Null));
        }
        let auth = device
            .pointer("/authentication/type")
            .and_then(Value::as_str)
            .unwrap_or("sas");
        v.insert("authenticationType".into(), json!(auth));
        v.insert(
            "x509Thumbprint".into(),
            device
                .pointer("/authentication/x509Thumbprint")
                .cloned()
                .unwrap_or(Value::Null),
        );
        v.insert(
            "capabilities".into(),
            device
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({"iotEdge": false})),
        );
        Value::Object(v)
    }

    /// `GET /twins/{id}`.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`].
    pub async fn get_twin(&self, hub: &str, id: &str) -> Result<Twin, HubError> {
        let (twin, device) = self.load_twin(hub, id).await?;
        typed(Self::twin_view(&twin.body, &twin.etag, &device))
    }

    /// `PATCH /twins/{id}` (merge tags and desired) or `PUT /twins/{id}` (replace them). Returns
    /// the full twin and, when desired properties changed, the notification for the device.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn update_twin(
        &self,
        hub: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(Twin, Option<Value>), HubError> {
        if !body.is_object() {
            return Err(HubError::Twin(TwinError::NotAnObject { what: "the twin" }));
        }
        let wanted = match precondition(if_match) {
            Precondition::IfMatch(e) => Some(e),
            _ => None,
        };
        let stamp = now();
        let tags = body.get("tags").filter(|t| !t.is_null());
        let desired = body.pointer("/properties/desired").filter(|d| !d.is_null());
        let limits = &self.limits;
        let (notification, saved, identity) = self
            .change_twin(hub, id, |twin, etag| {
                if wanted.is_some() && wanted.as_deref() != etag {
                    return Err(HubError::PreconditionFailed);
                }
                if replace {
                    return Ok(twin::replace(twin, tags, desired, &stamp, limits)?);
                }
                if let Some(t) = tags {
                    twin::patch_tags(twin, t, limits)?;
                }
                match desired {
                    Some(d) => {
                        let version =
                            twin::patch_properties(twin, Section::Desired, d, &stamp, limits)?;
                        Ok(Some(twin::desired_notification(d, version)))
                    }
                    None => Ok(None),
                }
            })
            .await?;
        let device = self.view(identity).await?;
        let twin = saved.body;
        info!(
            hub,
            device_id = id,
            desired_changed = notification.is_some(),
            "twin updated by a service"
        );
        Ok((
            typed(Self::twin_view(&twin, &saved.etag, &device))?,
            notification,
        ))
    }
}

impl Registry {
    /// The stored device document (without etag) if it exists.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn device_document(&self, hub: &str, id: &str) -> Result<Option<Value>, HubError> {
        Ok(self
            .store
            .get(identity_collection(id), &docs::key(hub, id))
            .await?
            .map(|r| r.body))
    }

    /// The device's own view of its twin (`{"desired":…, "reported":…}`).
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`].
    pub async fn device_twin(&self, hub: &str, id: &str) -> Result<Value, HubError> {
        let (twin, _) = self.load_twin_records(hub, id).await?;
        Ok(twin::device_view(&twin.body))
    }

    /// Apply a device's reported-properties patch; returns the new reported `$version`.
    /// Retries on a concurrent write so versions stay exact.
    ///
    /// # Errors
    /// [`HubError::Twin`] for rule violations, [`HubError::DeviceNotFound`].
    pub async fn patch_reported(
        &self,
        hub: &str,
        id: &str,
        patch: &Value,
    ) -> Result<u64, HubError> {
        let stamp = now();
        let limits = &self.limits;
        let (version, _, _) = self
            .change_twin(hub, id, |twin, _| {
                Ok(twin::patch_properties(
                    twin,
                    Section::Reported,
                    patch,
                    &stamp,
                    limits,
                )?)
            })
            .await?;
        Ok(version)
    }

    /// Change a device's or module's twin with `step` as one atomic read-decide-write
    /// ([`muster_store::Store::modify`]: a row lock where the store is shared by several
    /// nodes), so concurrent writers on any node keep `$version` exact without retrying. The
    /// step is shown the twin (made on first use) and its etag (`None` when it is new); an
    /// error from it writes nothing. Returns its answer, the twin as written and the identity.
    async fn change_twin<T: Send>(
        &self,
        hub: &str,
        id: &str,
        mut step: impl FnMut(&mut Value, Option<&str>) -> Result<T, HubError> + Send,
    ) -> Result<(T, muster_store::Record, muster_store::Record), HubError> {
        let key = docs::key(hub, id);
        let identity = self
            .store
            .get(identity_collection(id), &key)
            .await?
            .ok_or_else(|| not_found(id))?;
        let index = hub.to_ascii_lowercase();
        let created = time::OffsetDateTime::now_utc();
        let mut outcome: Option<Result<T, HubError>> = None;
        let written = self
            .store
            .modify(Collection::Twins, &key, &mut |current| {
                let (mut body, etag) = match current {
                    Some(r) => (r.body.clone(), Some(r.etag.as_str())),
                    None => (docs::twin(id, None, None, created), None),
                };
                match step(&mut body, etag) {
                    Ok(answer) => {
                        outcome = Some(Ok(answer));
                        Change::Put {
                            index: Some(
                                current
                                    .and_then(|r| r.index.clone())
                                    .unwrap_or_else(|| index.clone()),
                            ),
                            body,
                        }
                    }
                    Err(e) => {
                        outcome = Some(Err(e));
                        Change::Keep
                    }
                }
            })
            .await?;
        match (outcome, written) {
            (Some(Ok(answer)), Some(record)) => Ok((answer, record, identity)),
            (Some(Err(e)), _) => Err(e),
            _ => Err(HubError::PreconditionFailed),
        }
    }
}

impl Registry {
    /// Write `body` over `record` unless someone changed it since it was read; `Ok(false)` on
    /// such a lost race (the caller re-reads and retries).
    pub(crate) async fn write_back(
        &self,
        collection: Collection,
        hub: &str,
        record: &muster_store::Record,
        body: &Value,
    ) -> Result<bool, HubError> {
        match self
            .store
            .put(
                collection,
                &record.key,
                Some(
                    record
                        .index
                        .clone()
                        .unwrap_or_else(|| hub.to_ascii_lowercase())
                        .as_str(),
                ),
                body,
                Precondition::IfMatch(record.etag.clone()),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::PreconditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Registry {
    /// Run a query over a hub's twins: a page of matching twins (by device id, after
    /// `continuation`) or, for `COUNT()`, one row with the count.
    ///
    /// # Errors
    /// [`HubError::InvalidInput`] with the parse error.
    pub async fn query(
        &self,
        hub: &str,
        text: &str,
        max_items: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), HubError> {
        let q = crate::query::parse(text)
            .map_err(|e| HubError::InvalidInput(format!("invalid query: {e}")))?;
        let shape = q.shape();
        let index = hub.to_ascii_lowercase();
        let limit = max_items.clamp(1, 1000);
        let mut out = Vec::new();
        let mut groups: std::collections::BTreeMap<String, (Vec<Value>, u64)> =
            std::collections::BTreeMap::new();
        // Modules are indexed by their device, so a hub's modules are the keys under `{hub}/`.
        let (collection, index, prefix) = match q.source {
            crate::query::Source::Devices => (Collection::Devices, Some(index), None),
            crate::query::Source::Modules => (Collection::Modules, None, Some(format!("{index}/"))),
        };
        let mut after = continuation
            .map(|c| docs::key(hub, c))
            .or_else(|| prefix.clone());
        loop {
            let mut devices = self
                .store
                .list(collection, index.as_deref(), after.as_deref(), 500)
                .await?;
            let Some(last) = devices.last() else { break };
            after = Some(last.key.clone());
            let page_len = devices.len();
            if let Some(p) = &prefix {
                devices.retain(|r| r.key.starts_with(p.as_str()));
            }
            let done = devices.len() < page_len;
            for d in &devices {
                let twin = self.store.get(Collection::Twins, &d.key).await?;
                let (body, etag) = twin.map_or((Value::Null, String::new()), |t| (t.body, t.etag));
                let device = self.view(d.clone()).await?;
                let view = Self::twin_view(&body, &etag, &device);
                if !q.selects(&view) {
                    continue;
                }
                match shape {
                    Shape::Count | Shape::Groups => {
                        let key = q.group_key(&view);
                        let entry = groups
                            .entry(Value::Array(key.clone()).to_string())
                            .or_insert((key, 0));
                        entry.1 += 1;
                    }
                    Shape::Twins | Shape::Projection => {
                        // The continuation names the identity: `deviceId[/moduleId]`.
                        let id = d.key.split_once('/').map(|(_, id)| id.to_owned());
                        let row = if shape == Shape::Twins {
                            view
                        } else {
                            q.project(&view)
                        };
                        out.push((id, row));
                        if out.len() > limit {
                            out.pop();
                            let next = out.last().and_then(|(id, _)| id.clone());
                            return Ok((out.into_iter().map(|(_, r)| r).collect(), next));
                        }
                    }
                }
            }
            if done {
                break;
            }
        }
        Ok(match shape {
            Shape::Count => (
                vec![q.group_row(&[], groups.values().map(|(_, n)| n).sum())],
                None,
            ),
            Shape::Groups => (
                groups.values().map(|(k, n)| q.group_row(k, *n)).collect(),
                None,
            ),
            Shape::Twins | Shape::Projection => (out.into_iter().map(|(_, r)| r).collect(), None),
        })
    }
}
