//! Identity names, validated once. A value of these types always follows its rules, so code
//! that holds one never checks again.
//!
//! - IoT Hub device and module ids: 1–128 ASCII letters, digits and
//!   `- . + % _ # * ? ! ( ) , : = @ $ '` (IoT Hub's documented set). `/` is never part of an id,
//!   which is why a module's identity can be written `deviceId/moduleId`.
//! - DPS registration ids: 1–128 ASCII letters, digits and `- . _ :`; case-insensitive, so
//!   [`RegistrationId::key`] is the lower-case form records are stored under.

use std::fmt;

/// An identifier that breaks its kind's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("{kind} is empty")]
    Empty {
        /// "device id", "module id" or "registration id".
        kind: &'static str,
    },
    /// Over the length limit.
    #[error("{kind} '{shown}…' is longer than {max} characters")]
    TooLong {
        /// The kind of id.
        kind: &'static str,
        /// Its first characters.
        shown: String,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{kind} '{shown}' contains '{ch}'; allowed are {allowed}")]
    BadCharacter {
        /// The kind of id.
        kind: &'static str,
        /// The id (at most 140 characters of it).
        shown: String,
        /// The first offending character.
        ch: char,
        /// The allowed set, in words.
        allowed: &'static str,
    },
}

/// The longest id of every kind.
pub const MAX_ID_LEN: usize = 128;

const HUB_SPECIALS: &str = "-.+%_#*?!(),:=@$'";
const HUB_ALLOWED: &str = "ASCII letters, digits and - . + % _ # * ? ! ( ) , : = @ $ '";
const DPS_SPECIALS: &str = "-._:";
const DPS_ALLOWED: &str = "ASCII letters, digits and - . _ :";

fn check(
    kind: &'static str,
    id: &str,
    specials: &str,
    allowed: &'static str,
) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            shown: id.chars().take(40).collect(),
            max: MAX_ID_LEN,
        });
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || specials.contains(*c)))
    {
        Some(ch) => Err(IdError::BadCharacter {
            kind,
            shown: id.chars().take(140).collect(),
            ch,
            allowed,
        }),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $specials:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validate `id`.
            ///
            /// # Errors
            /// [`IdError`] naming the rule it breaks.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                check($kind, &id, $specials, $allowed)?;
                Ok(Self(id))
            }

            /// The id.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// An IoT Hub device id.
    DeviceId,
    "device id",
    HUB_SPECIALS,
    HUB_ALLOWED
);
id_type!(
    /// An IoT Hub module id (the module part of `deviceId/moduleId`).
    ModuleId,
    "module id",
    HUB_SPECIALS,
    HUB_ALLOWED
);
id_type!(
    /// A DPS registration id (an X.509 device's certificate CN, or the id a symmetric-key
    /// device registers with).
    RegistrationId,
    "registration id",
    DPS_SPECIALS,
    DPS_ALLOWED
);

impl RegistrationId {
    /// The case-insensitive key records are stored under (lower case).
    #[must_use]
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_iot_hub() {
        assert!(DeviceId::new("dev-1.a+b%c_#*?!(),:=@$'").is_ok());
        assert!(
            DeviceId::new("d/m")
                .unwrap_err()
                .to_string()
                .contains("'/'")
        );
        assert!(matches!(DeviceId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            DeviceId::new("x".repeat(129)),
            Err(IdError::TooLong { max: 128, .. })
        ));
        assert!(DeviceId::new("x".repeat(128)).is_ok());
        assert!(DeviceId::new("dév").is_err());
        assert!(ModuleId::new("mod 1").is_err());
    }

    #[test]
    fn registration_ids_follow_dps() {
        let r = RegistrationId::new("Sim-Device_1.a:b").unwrap();
        assert_eq!(r.key(), "sim-device_1.a:b");
        let e = RegistrationId::new("dev+1").unwrap_err();
        assert!(e.to_string().contains("contains '+'"), "{e}");
    }
}
