//! The seams between the domain crates, joined here: provisioning assigns devices through the
//! hub core ([`HubAssigner`] implements `muster_dps::assign::HubRegistry`), and the hub
//! validates certificate-authority devices against the DPS's verified CAs ([`DpsCas`]
//! implements `muster_hub::auth::CaSource`).

use async_trait::async_trait;
use muster_dps::assign::{AssignError, Assignment, DeviceCredential, HubRegistry};
use muster_hub::docs::DeviceAuth;
use muster_hub::provision;

/// Provisioning's view of this server's hubs.
#[derive(Debug, Clone)]
pub struct HubAssigner(pub muster_hub::registry::Registry);

#[async_trait]
impl HubRegistry for HubAssigner {
    async fn assign(&self, a: &Assignment<'_>) -> Result<(), AssignError> {
        let auth = match a.credential {
            DeviceCredential::X509 { sha1, sha256 } => DeviceAuth::SelfSigned {
                primary: Some(sha1.clone()),
                secondary: Some(sha256.clone()),
            },
            DeviceCredential::SymmetricKey { primary, secondary } => DeviceAuth::Sas {
                primary: primary.clone(),
                secondary: secondary.clone(),
            },
        };
        self.0
            .provision(&provision::Assignment {
                hub: a.hub,
                device_id: a.device_id,
                auth,
                iot_edge: a.iot_edge,
                initial_tags: a.initial_tags,
                initial_desired: a.initial_desired,
                reset_twin: a.reset_twin,
                moved_from: a.moved_from,
            })
            .await
            .map_err(|e| AssignError(Box::new(e)))
    }
}

/// The server's assigner: through the hub core once the server is built (so a provisioned
/// device's new identity is a lifecycle event where routes ask for those), through the
/// registry before.
#[derive(Debug, Clone)]
pub(crate) struct LiveAssigner {
    pub(crate) registry: muster_hub::registry::Registry,
    pub(crate) context: std::sync::Arc<std::sync::OnceLock<std::sync::Weak<crate::Context>>>,
}

#[async_trait]
impl HubRegistry for LiveAssigner {
    async fn assign(&self, a: &Assignment<'_>) -> Result<(), AssignError> {
        let auth = match a.credential {
            DeviceCredential::X509 { sha1, sha256 } => DeviceAuth::SelfSigned {
                primary: Some(sha1.clone()),
                secondary: Some(sha256.clone()),
            },
            DeviceCredential::SymmetricKey { primary, secondary } => DeviceAuth::Sas {
                primary: primary.clone(),
                secondary: secondary.clone(),
            },
        };
        let assignment = provision::Assignment {
            hub: a.hub,
            device_id: a.device_id,
            auth,
            iot_edge: a.iot_edge,
            initial_tags: a.initial_tags,
            initial_desired: a.initial_desired,
            reset_twin: a.reset_twin,
            moved_from: a.moved_from,
        };
        let result = match self.context.get().and_then(std::sync::Weak::upgrade) {
            Some(ctx) => ctx.hub.provision(&assignment).await,
            None => self.registry.provision(&assignment).await,
        };
        result.map_err(|e| AssignError(Box::new(e)))
    }
}

/// The hub's source of verified CA certificates: the DPS's CA store.
#[derive(Debug)]
pub struct DpsCas(pub muster_dps::Dps);

#[async_trait]
impl muster_hub::auth::CaSource for DpsCas {
    async fn verified_cas(
        &self,
    ) -> Result<Vec<muster_pki::Certificate>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self
            .0
            .list_certificates()
            .await?
            .into_iter()
            .filter(|c| c.is_verified)
            .map(|c| c.certificate)
            .collect())
    }
}
