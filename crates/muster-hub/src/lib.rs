//! # muster-hub
//!
//! The IoT hub's rules, independent of any wire protocol.
//!
//! # Layout
//! - [`twin`]: device twins — merge patches with `null` deleting, `$version` per section,
//!   `$metadata` with `$lastUpdated`/`$lastUpdatedVersion` per leaf, the twin's own `version`,
//!   Azure's limits (32 KB desired and reported, 8 KB tags, depth ≤ 10, key rules), and the
//!   views devices and services see.

pub mod twin;
