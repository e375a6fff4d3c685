//! Bulk regeneration of device and module symmetric keys (IoT Hub's
//! `POST /devices/keys/regenerate`, which `az iot hub device-identity renew-key` calls): new
//! random keys for the primary, the secondary or both keys of SAS identities, returned with the
//! identities, and one error entry per identity that could not be renewed.

use muster_auth::Secret;
use muster_store::Precondition;
use serde_json::{Value, json};
use tracing::info;

use crate::docs::{self, DeviceAuth};
use crate::registry::{HubError, Registry, identity_collection};

/// Which keys to renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    /// `primaryKey`.
    Primary,
    /// `secondaryKey`.
    Secondary,
    /// `both`.
    Both,
}

impl KeyChoice {
    /// From IoT Hub's `policyKey`.
    ///
    /// # Errors
    /// [`HubError::InvalidInput`] for anything else.
    pub fn parse(text: &str) -> Result<Self, HubError> {
        match text {
            "primaryKey" | "primary" => Ok(Self::Primary),
            "secondaryKey" | "secondary" => Ok(Self::Secondary),
            "both" => Ok(Self::Both),
            other => Err(HubError::InvalidInput(format!(
                "policyKey '{other}' is not primaryKey, secondaryKey or both"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Primary => "primaryKey",
            Self::Secondary => "secondaryKey",
            Self::Both => "both",
        }
    }
}

/// The outcome: IoT Hub's `BulkRegenerateKeyResult` and whether every identity was renewed.
#[derive(Debug, Clone, PartialEq)]
pub struct Regenerated {
    /// `{"policyKey", "rotatedKeys": [{"id","moduleId","primaryKey","secondaryKey"}],
    /// "errors": [{"id","moduleId","errorCode","errorStatus"}]}`.
    pub result: Value,
    /// Identities renewed.
    pub rotated: usize,
    /// Identities that could not be.
    pub failed: usize,
}

impl Registry {
    /// Renew the chosen keys of each `(deviceId, moduleId)`.
    ///
    /// # Errors
    /// Storage failures; per-identity problems are entries of `errors`.
    pub async fn regenerate_keys(
        &self,
        hub: &str,
        choice: KeyChoice,
        identities: &[(String, Option<String>)],
    ) -> Result<Regenerated, HubError> {
        let (mut rotated, mut errors) = (Vec::new(), Vec::new());
        for (device, module) in identities {
            let entry = |e: &HubError| json!({"id": device, "moduleId": module, "errorCode": e.code(), "errorStatus": e.public_message()});
            match self
                .regenerate_one(hub, choice, device, module.as_deref())
                .await
            {
                Ok((primary, secondary)) => rotated.push(json!({
                    "id": device,
                    "moduleId": module,
                    "primaryKey": primary.expose(),
                    "secondaryKey": secondary.expose(),
                })),
                Err(HubError::Store(e)) => return Err(HubError::Store(e)),
                Err(e) => errors.push(entry(&e)),
            }
        }
        info!(
            hub,
            renewed = rotated.len(),
            failed = errors.len(),
            "symmetric keys regenerated"
        );
        Ok(Regenerated {
            rotated: rotated.len(),
            failed: errors.len(),
            result: json!({"policyKey": choice.name(), "rotatedKeys": rotated, "errors": errors}),
        })
    }

    async fn regenerate_one(
        &self,
        hub: &str,
        choice: KeyChoice,
        device: &str,
        module: Option<&str>,
    ) -> Result<(Secret, Secret), HubError> {
        let id = match module {
            Some(m) => crate::modules::module_identity(device, m),
            None => device.to_owned(),
        };
        let record = self
            .store
            .get(identity_collection(&id), &docs::key(hub, &id))
            .await?
            .ok_or_else(|| crate::registry::not_found(&id))?;
        let auth = DeviceAuth::from_json(record.body.get("authentication").unwrap_or(&Value::Null));
        let DeviceAuth::Sas { primary, secondary } = auth else {
            return Err(HubError::InvalidInput(format!(
                "'{id}' does not authenticate with symmetric keys"
            )));
        };
        let fresh = || Secret::generate().map_err(|_| HubError::NoRandomness);
        let (primary, secondary) = match choice {
            KeyChoice::Primary => (fresh()?, secondary),
            KeyChoice::Secondary => (primary, fresh()?),
            KeyChoice::Both => (fresh()?, fresh()?),
        };
        let mut body = record.body.clone();
        if let Some(o) = body.as_object_mut() {
            let auth = DeviceAuth::Sas {
                primary: primary.clone(),
                secondary: secondary.clone(),
            };
            o.insert("authentication".into(), auth.to_json());
        }
        self.store
            .put(
                identity_collection(&id),
                &record.key,
                record.index.as_deref(),
                &body,
                Precondition::IfMatch(record.etag),
            )
            .await?;
        Ok((primary, secondary))
    }
}
