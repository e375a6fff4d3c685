//! # muster-hub
//!
//! The IoT hub's rules, independent of any wire protocol.
//!
//! # Layout
//! - [`twin`]: device twins — merge patches with `null` deleting, `$version` per section,
//!   `$metadata` with `$lastUpdated`/`$lastUpdatedVersion` per leaf, the twin's own `version`,
//!   Azure's limits (32 KB desired and reported, 8 KB tags, depth ≤ 10, key rules), and the
//!   views devices and services see.
//! - [`docs`]: the device-identity and twin documents (IoT Hub's `Device` and `Twin` shapes) as
//!   stored; provisioning creates them through this module.
//! - [`modules`]: module identities (`deviceId/moduleId`) and persistent MQTT sessions.
//! - [`query`]: the IoT Hub query language subset (`SELECT … FROM devices WHERE … GROUP BY …`).
//! - [`registry`]: the device registry and service-side twin operations over the store, with
//!   IoT Hub's error codes.
//! - [`time_fmt`]: Azure's timestamp format.

pub mod docs;
pub mod modules;
pub mod query;
pub mod registry;
pub mod time_fmt;
pub mod twin;
