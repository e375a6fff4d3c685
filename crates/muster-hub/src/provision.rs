//! What provisioning asks of the hub: create or update the identity of a device it assigned,
//! with the twin the enrollment's policy calls for.
//!
//! The DPS owns the *decision* (which hub, migrate or reset, the initial twin); it reaches this
//! code through a trait of its own that the server's wiring implements, as Azure's DPS calls a
//! hub's registry. The rules here are the hub's:
//! - an existing identity keeps its status, generation and history; only its authentication
//!   and capabilities change (an operator's disable survives re-provisioning);
//! - an identity moved from another hub starts from the identity and twin it had there, which
//!   are removed from the old hub;
//! - the twin is kept when the device already has one, unless the policy resets it to the
//!   initial twin.

use muster_store::{Collection, Precondition, StoreError, Write};
use serde_json::Value;
use tracing::info;

use crate::docs::{self, DeviceAuth};
use crate::registry::{HubError, Registry};

/// The identity and twin provisioning assigns.
#[derive(Debug, Clone)]
pub struct Assignment<'a> {
    /// The hub's host name.
    pub hub: &'a str,
    /// The device id.
    pub device_id: &'a str,
    /// Its authentication in the hub.
    pub auth: DeviceAuth,
    /// IoT Edge capability.
    pub iot_edge: bool,
    /// The initial twin's tags.
    pub initial_tags: Option<&'a Value>,
    /// The initial twin's desired properties.
    pub initial_desired: Option<&'a Value>,
    /// Replace any existing twin with the initial one.
    pub reset_twin: bool,
    /// The hub and device id the device had before, when it moves to another hub (its identity
    /// and twin migrate unless `reset_twin`).
    pub moved_from: Option<(&'a str, &'a str)>,
}

impl Registry {
    /// Create or update the identity of a provisioned device (see the module docs). Concurrent
    /// writes to the same identity are retried.
    ///
    /// # Errors
    /// Storage failures; [`HubError::PreconditionFailed`] when the identity keeps changing.
    pub async fn provision(&self, a: &Assignment<'_>) -> Result<(), HubError> {
        for attempt in 0..16 {
            match self.provision_once(a).await {
                Err(HubError::PreconditionFailed | HubError::DeviceAlreadyExists(_)) => {
                    muster_store::race_backoff(attempt).await;
                }
                other => return other,
            }
        }
        Err(HubError::PreconditionFailed)
    }

    async fn provision_once(&self, a: &Assignment<'_>) -> Result<(), HubError> {
        let now = time::OffsetDateTime::now_utc();
        let key = docs::key(a.hub, a.device_id);
        let source = a.moved_from.map(|(hub, id)| docs::key(hub, id));
        let existing_device = self.store.get(Collection::Devices, &key).await?;
        let existing_twin = self.store.get(Collection::Twins, &key).await?;
        let (old_device, old_twin) = match &source {
            Some(k) => (
                self.store.get(Collection::Devices, k).await?,
                self.store.get(Collection::Twins, k).await?,
            ),
            None => (None, None),
        };
        let base = existing_device
            .as_ref()
            .or(old_device.as_ref())
            .map(|r| &r.body);
        let device = docs::device(base, a.device_id, &a.auth, a.iot_edge, now);
        let initial = || docs::twin(a.device_id, a.initial_tags, a.initial_desired, now);
        let twin = if a.reset_twin {
            Some(initial())
        } else if existing_twin.is_some() {
            None
        } else if let Some(old) = &old_twin {
            Some(old.body.clone())
        } else {
            Some(initial())
        };
        let index = Some(a.hub.to_ascii_lowercase());
        let mut writes = vec![Write::Put {
            collection: Collection::Devices,
            key: key.clone(),
            index: index.clone(),
            body: device,
            precondition: existing_device
                .as_ref()
                .map_or(Precondition::IfNoneMatch, |r| {
                    Precondition::IfMatch(r.etag.clone())
                }),
        }];
        if let Some(twin) = twin {
            writes.push(Write::Put {
                collection: Collection::Twins,
                key,
                index,
                body: twin,
                precondition: Precondition::None,
            });
        }
        if let Some(old) = source {
            for collection in [
                Collection::Devices,
                Collection::Twins,
                Collection::Connections,
            ] {
                writes.push(Write::Delete {
                    collection,
                    key: old.clone(),
                    precondition: Precondition::None,
                });
            }
        }
        match self.store.write_batch(writes).await {
            Ok(_) => {
                info!(
                    hub = a.hub,
                    device_id = a.device_id,
                    created = existing_device.is_none(),
                    moved = a.moved_from.is_some(),
                    "provisioned device identity stored"
                );
                Ok(())
            }
            Err(StoreError::PreconditionFailed { .. } | StoreError::Conflict { .. }) => {
                Err(HubError::PreconditionFailed)
            }
            Err(e) => Err(e.into()),
        }
    }
}
