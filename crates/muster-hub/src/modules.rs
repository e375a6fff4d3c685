//! Module identities (IoT Hub's `Module` shape) and persistent MQTT sessions.
//!
//! A module lives under a device: its identity is `deviceId/moduleId` (device ids cannot
//! contain `/`), stored in [`Collection::Modules`] with the device as index, and its twin sits
//! beside device twins under the same key. Everything that takes an identity id — twins,
//! reported patches, activity — therefore works for modules unchanged. Deleting the device
//! deletes its modules.

use muster_store::{Collection, Precondition, StoreError, Write};
use serde_json::{Value, json};
use tracing::info;

use crate::docs;
use crate::model::{Module, typed};
use crate::registry::{
    HubError, Registry, authentication, check_device_id, check_module_id, precondition,
};
use muster_types::time_fmt;

/// The identity id of a module.
#[must_use]
pub fn module_identity(device_id: &str, module_id: &str) -> String {
    format!("{device_id}/{module_id}")
}

impl Registry {
    /// Create a module (no `If-Match`) or update its authentication (`If-Match`). The device
    /// must exist.
    ///
    /// # Errors
    /// [`HubError`]: `DeviceNotFound`, `ModuleAlreadyExists`, `ModuleNotFound`, bad input.
    pub async fn put_module(
        &self,
        hub: &str,
        device_id: &str,
        module_id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Module, HubError> {
        check_device_id(device_id)?;
        check_module_id(module_id)?;
        for (field, expected) in [("deviceId", device_id), ("moduleId", module_id)] {
            if let Some(claimed) = body.get(field).and_then(Value::as_str)
                && claimed != expected
            {
                return Err(HubError::InvalidInput(format!(
                    "{field} in the body differs from the one in the path"
                )));
            }
        }
        if self
            .store
            .get(Collection::Devices, &docs::key(hub, device_id))
            .await?
            .is_none()
        {
            return Err(HubError::DeviceNotFound(device_id.to_owned()));
        }
        let id = module_identity(device_id, module_id);
        let key = docs::key(hub, &id);
        let key_for_view = key.clone();
        let existing = self.store.get(Collection::Modules, &key).await?;
        let auth = authentication(body)?;
        let pre = precondition(if_match);
        let (doc, pre) = match (&existing, pre) {
            (Some(_), Precondition::None) => return Err(HubError::ModuleAlreadyExists(id)),
            (Some(r), p) => {
                let mut d = r.body.as_object().cloned().unwrap_or_default();
                d.insert("authentication".into(), auth);
                if let Some(m) = body.get("managedBy") {
                    d.insert("managedBy".into(), m.clone());
                }
                (Value::Object(d), p)
            }
            (None, Precondition::IfMatch(_) | Precondition::Exists) => {
                return Err(HubError::ModuleNotFound(id));
            }
            (None, _) => {
                let mut generation = [0u8; 8];
                let _ = aws_lc_rs::rand::fill(&mut generation);
                let generation: String = generation.iter().map(|b| format!("{}", b % 10)).collect();
                (
                    json!({
                        "deviceId": device_id,
                        "moduleId": module_id,
                        "managedBy": body.get("managedBy").cloned().unwrap_or(Value::Null),
                        "generationId": format!("63{generation}"),
                        "cloudToDeviceMessageCount": 0,
                        "authentication": auth,
                    }),
                    Precondition::IfNoneMatch,
                )
            }
        };
        let mut writes = vec![Write::Put {
            collection: Collection::Modules,
            key: key.clone(),
            index: Some(docs::key(hub, device_id)),
            body: doc.clone(),
            precondition: pre,
        }];
        if existing.is_none() {
            let mut twin = docs::twin(device_id, None, None, time::OffsetDateTime::now_utc());
            if let Some(o) = twin.as_object_mut() {
                o.insert("moduleId".into(), json!(module_id));
            }
            writes.push(Write::Put {
                collection: Collection::Twins,
                key,
                index: Some(hub.to_ascii_lowercase()),
                body: twin,
                precondition: Precondition::None,
            });
        }
        let etags = match self.store.write_batch(writes).await {
            Ok(e) => e,
            Err(StoreError::Conflict { .. }) => return Err(HubError::ModuleAlreadyExists(id)),
            Err(e) => return Err(e.into()),
        };
        info!(
            hub,
            device_id,
            module_id,
            created = existing.is_none(),
            "module identity stored"
        );
        self.written_view(key_for_view, doc, &etags).await
    }

    /// One module.
    ///
    /// # Errors
    /// [`HubError::ModuleNotFound`].
    pub async fn get_module(
        &self,
        hub: &str,
        device_id: &str,
        module_id: &str,
    ) -> Result<Module, HubError> {
        let id = module_identity(device_id, module_id);
        let r = self
            .store
            .get(Collection::Modules, &docs::key(hub, &id))
            .await?
            .ok_or(HubError::ModuleNotFound(id))?;
        typed(self.view(r).await?)
    }

    /// A device's modules, by id.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`].
    pub async fn list_modules(&self, hub: &str, device_id: &str) -> Result<Vec<Module>, HubError> {
        let device = docs::key(hub, device_id);
        if self
            .store
            .get(Collection::Devices, &device)
            .await?
            .is_none()
        {
            return Err(HubError::DeviceNotFound(device_id.to_owned()));
        }
        let records = self
            .store
            .list(Collection::Modules, Some(&device), None, 10_000)
            .await?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            out.push(typed(self.view(r).await?)?);
        }
        Ok(out)
    }

    /// Delete a module, its twin and its session (`If-Match`: etag or `*`).
    ///
    /// # Errors
    /// [`HubError::ModuleNotFound`], [`HubError::PreconditionFailed`].
    pub async fn delete_module(
        &self,
        hub: &str,
        device_id: &str,
        module_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let id = module_identity(device_id, module_id);
        let key = docs::key(hub, &id);
        let pre = match precondition(if_match) {
            Precondition::None => Precondition::Exists,
            p => p,
        };
        let writes = vec![
            Write::Delete {
                collection: Collection::Modules,
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
                info!(hub, device_id, module_id, "module identity deleted");
                Ok(())
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                if self
                    .store
                    .get(Collection::Modules, &docs::key(hub, &id))
                    .await?
                    .is_none()
                {
                    Err(HubError::ModuleNotFound(id))
                } else {
                    Err(HubError::PreconditionFailed)
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Delete every module of a device (the device is being deleted).
    pub(crate) async fn delete_modules_of(
        &self,
        hub: &str,
        device_id: &str,
    ) -> Result<(), HubError> {
        let device = docs::key(hub, device_id);
        for r in self
            .store
            .list(Collection::Modules, Some(&device), None, 10_000)
            .await?
        {
            for collection in [
                Collection::Modules,
                Collection::Twins,
                Collection::Sessions,
                Collection::Connections,
            ] {
                self.store
                    .delete(collection, &r.key, Precondition::None)
                    .await?;
            }
        }
        Ok(())
    }

    /// The subscriptions saved for a CleanSession=0 session of an identity, if any.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn session(&self, hub: &str, id: &str) -> Result<Option<Vec<String>>, HubError> {
        Ok(self
            .store
            .get(Collection::Sessions, &docs::key(hub, id))
            .await?
            .map(|r| {
                r.body
                    .get("subscriptions")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            }))
    }

    /// Save a persistent session's subscriptions (they survive reconnects and restarts).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn save_session(
        &self,
        hub: &str,
        id: &str,
        subscriptions: &[String],
    ) -> Result<(), HubError> {
        self.store
            .put(
                Collection::Sessions,
                &docs::key(hub, id),
                Some(&hub.to_ascii_lowercase()),
                &json!({"subscriptions": subscriptions, "savedTime": time_fmt::azure(time::OffsetDateTime::now_utc())}),
                Precondition::None,
            )
            .await?;
        Ok(())
    }

    /// Drop a session's saved state (CleanSession=1).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn forget_session(&self, hub: &str, id: &str) -> Result<(), HubError> {
        self.store
            .delete(
                Collection::Sessions,
                &docs::key(hub, id),
                Precondition::None,
            )
            .await?;
        Ok(())
    }
}
