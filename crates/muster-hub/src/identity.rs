//! Who is on the other end of a device connection, and what it may do.
//!
//! Authorization is stated in domain terms — "send telemetry as X", "read X's twin", "receive
//! X's cloud-to-device messages" — so each transport maps its own addresses (MQTT topics, AMQP
//! link addresses, HTTPS paths) to an [`Action`] and asks [`Identity::authorize`]. The rule is
//! IoT Hub's: an identity acts only as itself, and modules receive no cloud-to-device messages.

use muster_types::{DeviceId, ModuleId};

use crate::docs;

/// An authenticated device or module of one logical hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The logical hub (its host name, lower case).
    pub hub: String,
    /// The device.
    pub device_id: DeviceId,
    /// The module, for a module identity.
    pub module_id: Option<ModuleId>,
}

/// What an identity wants to do, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send device-to-cloud messages as this device (and module).
    SendTelemetry(Target<'a>),
    /// Read the twin, or patch its reported properties.
    UseTwin(Target<'a>),
    /// Receive desired-property changes.
    ReceiveDesired(Target<'a>),
    /// Receive and answer direct methods.
    ReceiveMethods(Target<'a>),
    /// Receive and settle cloud-to-device messages.
    ReceiveC2d(Target<'a>),
}

/// The identity an action is about, as a transport's address names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Device id from the address.
    pub device_id: &'a str,
    /// Module id from the address, if it names one.
    pub module_id: Option<&'a str>,
}

/// An action the identity may not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{identity}' may not {action}")]
pub struct Forbidden {
    /// The acting identity.
    pub identity: String,
    /// The action, in words.
    pub action: String,
}

impl Identity {
    /// A device or module identity.
    #[must_use]
    pub fn new(hub: &str, device_id: DeviceId, module_id: Option<ModuleId>) -> Self {
        Self {
            hub: hub.to_ascii_lowercase(),
            device_id,
            module_id,
        }
    }

    /// `deviceId` or `deviceId/moduleId`: the id twins, sessions and activity are kept under.
    #[must_use]
    pub fn id(&self) -> String {
        match &self.module_id {
            Some(m) => crate::modules::module_identity(self.device_id.as_str(), m.as_str()),
            None => self.device_id.as_str().to_owned(),
        }
    }

    /// The storage and presence key, `{hub}/{id}`.
    #[must_use]
    pub fn key(&self) -> String {
        docs::key(&self.hub, &self.id())
    }

    /// This identity as an action's target.
    #[must_use]
    pub fn target(&self) -> Target<'_> {
        Target {
            device_id: self.device_id.as_str(),
            module_id: self.module_id.as_ref().map(ModuleId::as_str),
        }
    }

    /// May this identity take `action`?
    ///
    /// # Errors
    /// [`Forbidden`] naming the identity and the action.
    pub fn authorize(&self, action: Action<'_>) -> Result<(), Forbidden> {
        let (target, words) = match action {
            Action::SendTelemetry(t) => (t, "send telemetry as"),
            Action::UseTwin(t) => (t, "use the twin of"),
            Action::ReceiveDesired(t) => (t, "receive the desired properties of"),
            Action::ReceiveMethods(t) => (t, "receive the direct methods of"),
            Action::ReceiveC2d(t) => (t, "receive the cloud-to-device messages of"),
        };
        let modules_allowed = !matches!(action, Action::ReceiveC2d(_));
        let own = target == self.target() && (modules_allowed || self.module_id.is_none());
        if own {
            return Ok(());
        }
        let whom = match target.module_id {
            Some(m) => format!("{}/{m}", target.device_id),
            None => target.device_id.to_owned(),
        };
        let action = if target == self.target() {
            "receive cloud-to-device messages (modules have none)".to_owned()
        } else {
            format!("{words} '{whom}'")
        };
        Err(Forbidden {
            identity: self.id(),
            action,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn device(id: &str) -> Identity {
        Identity::new("Hub", DeviceId::new(id).unwrap(), None)
    }

    fn t<'a>(device_id: &'a str, module_id: Option<&'a str>) -> Target<'a> {
        Target {
            device_id,
            module_id,
        }
    }

    #[test]
    fn a_device_acts_only_as_itself() {
        let d = device("d1");
        assert_eq!(d.key(), "hub/d1");
        for a in [
            Action::SendTelemetry(t("d1", None)),
            Action::UseTwin(t("d1", None)),
            Action::ReceiveDesired(t("d1", None)),
            Action::ReceiveMethods(t("d1", None)),
            Action::ReceiveC2d(t("d1", None)),
        ] {
            assert!(d.authorize(a).is_ok(), "{a:?}");
        }
        let e = d
            .authorize(Action::SendTelemetry(t("d2", None)))
            .unwrap_err();
        assert_eq!(e.to_string(), "'d1' may not send telemetry as 'd2'");
        assert!(d.authorize(Action::UseTwin(t("d1", Some("m")))).is_err());
    }

    #[test]
    fn a_module_has_no_cloud_to_device_messages() {
        let m = Identity::new(
            "hub",
            DeviceId::new("d1").unwrap(),
            Some(ModuleId::new("m1").unwrap()),
        );
        assert_eq!(m.id(), "d1/m1");
        assert!(
            m.authorize(Action::ReceiveMethods(t("d1", Some("m1"))))
                .is_ok()
        );
        assert!(
            m.authorize(Action::SendTelemetry(t("d1", Some("m1"))))
                .is_ok()
        );
        assert!(m.authorize(Action::SendTelemetry(t("d1", None))).is_err());
        let e = m
            .authorize(Action::ReceiveC2d(t("d1", Some("m1"))))
            .unwrap_err();
        assert!(e.to_string().contains("modules have none"), "{e}");
    }
}
