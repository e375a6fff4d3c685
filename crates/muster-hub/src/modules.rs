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
use crate::registry::{HubError, Registry, authentication, check_device_id, precondition};
use crate::time_fmt::{self, NEVER};

/// The identity id of a module.
#[must_use]
pub fn module_identity(device_id: &str, module_id: &str) -> String {
    format!("{device_id}/{module_id}")
}

fn with_etag(mut body: Value, etag: &str) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.insert("etag".into(), json!(etag));
    }
    body
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
    ) -> Result<Value, HubError> {
        check_device_id(device_id)?;
        check_device_id(module_id)
            .map_err(|_| HubError::InvalidInput(format!("invalid module id '{module_id}'")))?;
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
                        "connectionState": "Disconnected",
                        "connectionStateUpdatedTime": NEVER,
                        "lastActivityTime": NEVER,
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
        Ok(with_etag(doc, etags.first().map_or("", String::as_str)))
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
    ) -> Result<Value, HubError> {
        let id = module_identity(device_id, module_id);
        let r = self
            .store
            .get(Collection::Modules, &docs::key(hub, &id))
            .await?
            .ok_or(HubError::ModuleNotFound(id))?;
        Ok(with_etag(r.body, &r.etag))
    }

    /// A device's modules, by id.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`].
    pub async fn list_modules(&self, hub: &str, device_id: &str) -> Result<Vec<Value>, HubError> {
        let device = docs::key(hub, device_id);
        if self
            .store
            .get(Collection::Devices, &device)
            .await?
            .is_none()
        {
            return Err(HubError::DeviceNotFound(device_id.to_owned()));
        }
        Ok(self
            .store
            .list(Collection::Modules, Some(&device), None, 10_000)
            .await?
            .into_iter()
            .map(|r| with_etag(r.body, &r.etag))
            .collect())
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
                key,
                precondition: Precondition::None,
            },
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
            for collection in [Collection::Modules, Collection::Twins, Collection::Sessions] {
                self.store
                    .delete(collection, &r.key, Precondition::None)
                    .await?;
            }
        }
        Ok(())
    }

    /// After a start: every device or module still marked `Connected` holds no connection
    /// (the previous process ended without recording the disconnect, e.g. `kill -9`), except
    /// those `is_live` names (connected since this start). Marks the rest `Disconnected`;
    /// returns how many.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn reset_stale_connections(
        &self,
        is_live: impl Fn(&str) -> bool + Send + Sync,
    ) -> Result<u64, HubError> {
        let mut reset = 0;
        for collection in [Collection::Devices, Collection::Modules] {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .list(collection, None, after.as_deref(), 500)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.key.clone());
                for r in page {
                    if r.body.get("connectionState").and_then(Value::as_str) != Some("Connected")
                        || is_live(&r.key)
                    {
                        continue;
                    }
                    let mut d = r.body.clone();
                    if let Some(o) = d.as_object_mut() {
                        o.insert("connectionState".into(), json!("Disconnected"));
                        o.insert(
                            "connectionStateUpdatedTime".into(),
                            json!(time_fmt::azure(time::OffsetDateTime::now_utc())),
                        );
                    }
                    // A device that connects meanwhile changes the etag: its write wins.
                    match self
                        .store
                        .put(
                            collection,
                            &r.key,
                            r.index.as_deref(),
                            &d,
                            Precondition::IfMatch(r.etag.clone()),
                        )
                        .await
                    {
                        Ok(_) => reset += 1,
                        Err(StoreError::PreconditionFailed { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(reset)
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use std::sync::Arc;

    use muster_store::sqlite::SqliteStore;
    use serde_json::json;

    use crate::registry::Registry;

    #[tokio::test]
    async fn stale_connections_are_reset_but_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
        let registry = Registry::new(store);
        for id in ["gone", "live", "never"] {
            registry
                .put_device("hub", id, &json!({"deviceId": id}), None)
                .await
                .unwrap();
        }
        registry
            .put_module("hub", "gone", "m", &json!({}), None)
            .await
            .unwrap();
        for id in ["gone", "live", "gone/m"] {
            registry
                .record_activity("hub", id, Some(true))
                .await
                .unwrap();
        }
        let reset = registry
            .reset_stale_connections(|key| key == "hub/live")
            .await
            .unwrap();
        assert_eq!(
            reset, 2,
            "the device and the module that lost their connection"
        );
        let state = |d: serde_json::Value| d["connectionState"].as_str().unwrap().to_owned();
        assert_eq!(
            state(registry.get_device("hub", "gone").await.unwrap()),
            "Disconnected"
        );
        assert_eq!(
            state(registry.get_device("hub", "live").await.unwrap()),
            "Connected"
        );
        assert_eq!(
            state(registry.get_device("hub", "never").await.unwrap()),
            "Disconnected"
        );
        assert_eq!(
            state(registry.get_module("hub", "gone", "m").await.unwrap()),
            "Disconnected"
        );
    }
}
