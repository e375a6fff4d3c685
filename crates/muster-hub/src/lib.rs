//! # muster-hub
//!
//! The IoT hub's rules, independent of any wire protocol. Every transport (MQTT today; AMQP,
//! WebSockets and HTTPS device APIs next), the management API and the portal call [`Hub`], so
//! each rule exists once.
//!
//! # Layout
//! - [`hub`]: [`Hub`], the entry point: authentication, connection state, telemetry, twins,
//!   cloud-to-device messages, direct methods, identity changes that close connections.
//! - [`auth`]: authentication from what a transport saw (SAS token, client certificate chain);
//!   verified CAs come through the [`auth::CaSource`] trait.
//! - [`identity`]: [`identity::Identity`] and authorization in domain terms.
//! - [`presence`]: live sessions on this node and the [`presence::Outbound`] events that reach
//!   them.
//! - [`telemetry`]: device-to-cloud messages and their events.
//! - [`c2d`]: the cloud-to-device mailbox with lock tokens (complete, abandon, reject, expiry).
//! - [`feedback`]: delivery feedback records for services that asked for them (`iothub-ack`).
//! - [`methods`]: direct-method calls and their limits.
//! - [`activity`]: connection state, kept out of the identity etag.
//! - [`model`]: the typed domain — [`model::Device`], [`model::Module`], [`model::Twin`] in IoT
//!   Hub's service shapes.
//! - [`twin`]: device twins — merge patches with `null` deleting, `$version` per section,
//!   `$metadata` with `$lastUpdated`/`$lastUpdatedVersion` per leaf, the twin's own `version`,
//!   Azure's limits (32 KB desired and reported, 8 KB tags, depth ≤ 10, key rules), and the
//!   views devices and services see.
//! - [`docs`]: the device-identity and twin documents (IoT Hub's `Device` and `Twin` shapes) as
//!   stored, and [`docs::DeviceAuth`].
//! - [`provision`]: what provisioning asks of the hub (create or update an assigned device).
//! - [`keys`]: bulk regeneration of symmetric keys.
//! - [`modules`]: module identities (`deviceId/moduleId`) and persistent MQTT sessions.
//! - [`query`]: the IoT Hub query language subset (`SELECT … FROM devices WHERE … GROUP BY …`).
//! - [`registry`]: the device registry and service-side twin operations over the store, with
//!   IoT Hub's error codes.

pub mod activity;
pub mod auth;
pub mod c2d;
pub mod cluster;
pub mod docs;
pub mod eventhub;
pub mod feedback;
pub mod hub;
pub mod identity;
pub mod keys;
pub mod methods;
pub mod model;
pub mod modules;
pub mod presence;
pub mod provision;
pub mod query;
pub mod registry;
pub mod routing;
pub mod telemetry;
pub mod throughput;
pub mod twin;

pub use hub::{Hub, Settlement};
pub use identity::{Action, Identity, Target};
pub use model::{Device, Module, Twin};
/// Azure's timestamp format (from `muster-types`).
pub use muster_types::time_fmt;
