//! The seam between provisioning and the hubs it assigns devices to.
//!
//! DPS decides *what* a device gets — which hub, which device id, migrate or reset, the
//! initial twin — and asks a [`HubRegistry`] to make it so, as Azure's DPS calls an IoT hub's
//! registry. The server's wiring implements the trait over its hub core; a later DPS node may
//! implement it by calling hubs served by other nodes. This crate therefore never touches a
//! hub's storage.

use async_trait::async_trait;
use muster_auth::Secret;
use serde_json::Value;

/// How the hub will authenticate the provisioned device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCredential {
    /// The device's leaf certificate, pinned by its thumbprints (upper-case hex).
    X509 {
        /// SHA-1 thumbprint.
        sha1: String,
        /// SHA-256 thumbprint.
        sha256: String,
    },
    /// The device's symmetric keys (for a group, derived from the group's keys).
    SymmetricKey {
        /// Primary key.
        primary: Secret,
        /// Secondary key.
        secondary: Secret,
    },
}

/// One device to create or update in a hub.
#[derive(Debug, Clone)]
pub struct Assignment<'a> {
    /// The hub's host name.
    pub hub: &'a str,
    /// The device id.
    pub device_id: &'a str,
    /// Its credential.
    pub credential: &'a DeviceCredential,
    /// IoT Edge capability.
    pub iot_edge: bool,
    /// The initial twin's tags.
    pub initial_tags: Option<&'a Value>,
    /// The initial twin's desired properties.
    pub initial_desired: Option<&'a Value>,
    /// Replace any existing twin with the initial one (re-provisioning without migration).
    pub reset_twin: bool,
    /// The hub and device id the device had, when it moves to another hub.
    pub moved_from: Option<(&'a str, &'a str)>,
}

/// The hub could not store the device.
#[derive(Debug, thiserror::Error)]
#[error("the hub could not store the device identity")]
pub struct AssignError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The hubs' registries, as provisioning sees them.
#[async_trait]
pub trait HubRegistry: Send + Sync + std::fmt::Debug {
    /// Create or update the device identity and twin of `assignment`. Must be idempotent: a
    /// registration that is retried after a race calls it again with the same assignment.
    ///
    /// # Errors
    /// [`AssignError`] when the hub cannot store the device.
    async fn assign(&self, assignment: &Assignment<'_>) -> Result<(), AssignError>;
}
