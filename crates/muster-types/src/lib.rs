//! # muster-types
//!
//! The small vocabulary every muster crate shares, each validated in exactly one place:
//!
//! - [`DeviceId`], [`ModuleId`] (IoT Hub identity names) and [`RegistrationId`] (a DPS
//!   registration), each a string that is known to follow its rules once constructed;
//! - [`duration`]: one grammar for durations in configuration files and on the command line
//!   (`500ms`, `1.5s`, `10s`, `2m`, `1h`, `1d`, or plain seconds);
//! - [`time_fmt`]: Azure's timestamp text;
//! - [`report()`]: an error and its causes on one line, each once.
//!
//! Nothing here does I/O.

pub mod duration;
pub mod id;
pub mod report;
pub mod time_fmt;

pub use duration::parse_duration;
pub use id::{DeviceId, IdError, ModuleId, RegistrationId};
pub use report::report;
