//! # muster-dps
//!
//! The Device Provisioning Service's rules, independent of any wire protocol: CA certificates
//! and their proof of possession, enrollment groups and individual enrollments, attestation of a
//! registering device (X.509 chain or SAS), allocation to a hub, re-provisioning, and
//! registration records. The server crate turns MQTT and HTTPS requests into calls here.
//!
//! # Layout
//! - [`model`]: Azure's JSON shapes (enrollment groups, individual enrollments, registration
//!   states).
//! - [`error`]: [`DpsError`] with Azure's numeric codes.
//! - [`ca`]: CA certificates: upload, verification code, proof of possession.
//! - [`enrollment`]: validation and storage of groups and individual enrollments.
//! - [`custom`]: the custom-allocation webhook contract ([`custom::CustomAllocator`]).
//! - [`registration`]: attestation, allocation, re-provisioning and registration records.
//! - [`assign`]: the [`assign::HubRegistry`] seam through which an assigned device is created in
//!   its hub; the server's wiring implements it, so this crate never touches hub storage.
//!
//! Timestamps use `muster_types::time_fmt` (re-exported here as [`time_fmt`]).

pub mod assign;
pub mod ca;
pub mod custom;
pub mod enrollment;
pub mod error;
pub mod model;
pub mod registration;

use std::sync::Arc;

pub use error::DpsError;
use muster_store::Store;
pub use muster_types::time_fmt;
use time::OffsetDateTime;

/// A logical IoT hub this server hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// Host name devices connect to; also the hub's name in enrollments (`iotHubs`).
    pub hostname: String,
    /// Allocation weight for hashed allocation (≥ 1).
    pub weight: u32,
}

/// Static configuration of the provisioning service.
#[derive(Debug, Clone)]
pub struct DpsConfig {
    /// The ID scope devices put in front of their registration id.
    pub id_scope: String,
    /// The hubs devices can be assigned to, in configuration order.
    pub hubs: Vec<Hub>,
}

/// A clock, injected so tests control time.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The provisioning service.
#[derive(Clone)]
pub struct Dps {
    store: Arc<dyn Store>,
    config: Arc<DpsConfig>,
    clock: Clock,
    allocator: Option<Arc<dyn custom::CustomAllocator>>,
    hubs: Arc<dyn assign::HubRegistry>,
}

impl std::fmt::Debug for Dps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dps")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Dps {
    /// A service over `store` with the system clock, assigning devices through `hubs`.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        config: DpsConfig,
        hubs: Arc<dyn assign::HubRegistry>,
    ) -> Self {
        Self::with_clock(store, config, hubs, Arc::new(OffsetDateTime::now_utc))
    }

    /// A service with an injected clock.
    #[must_use]
    pub fn with_clock(
        store: Arc<dyn Store>,
        config: DpsConfig,
        hubs: Arc<dyn assign::HubRegistry>,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            config: Arc::new(config),
            clock,
            allocator: None,
            hubs,
        }
    }

    /// Enable custom allocation through `allocator` (without one, `custom` enrollments are
    /// refused at creation).
    #[must_use]
    pub fn with_allocator(mut self, allocator: Arc<dyn custom::CustomAllocator>) -> Self {
        self.allocator = Some(allocator);
        self
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DpsConfig {
        &self.config
    }

    fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }

    fn hub(&self, hostname: &str) -> Option<&Hub> {
        self.config
            .hubs
            .iter()
            .find(|h| h.hostname.eq_ignore_ascii_case(hostname))
    }
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Continuation token for the next page; `None` on the last page.
    pub continuation: Option<String>,
}

/// Check the device id an enrollment assigns: the hub's rules ([`muster_types::DeviceId`]), not a
/// registration id's.
///
/// # Errors
/// [`DpsError::InvalidInput`].
pub fn check_device_id(id: &str) -> Result<(), DpsError> {
    muster_types::DeviceId::new(id)
        .map(|_| ())
        .map_err(|e| DpsError::InvalidInput(e.to_string()))
}

/// Check an id used in paths ([`muster_types::RegistrationId`]'s rules): 1–128 letters, digits,
/// `-`, `.`, `_`, `:`.
///
/// # Errors
/// [`DpsError::InvalidInput`].
pub fn check_id(what: &str, id: &str) -> Result<(), DpsError> {
    muster_types::RegistrationId::new(id)
        .map(|_| ())
        .map_err(|e| DpsError::InvalidInput(e.to_string().replacen("registration id", what, 1)))
}
