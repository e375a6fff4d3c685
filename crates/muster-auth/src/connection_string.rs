//! Connection strings: `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` (service) and
//! `HostName=…;DeviceId=…;SharedAccessKey=…` (device).

use std::fmt;

use crate::Secret;

/// A parsed connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `HostName` (may carry `:port`).
    pub host_name: String,
    /// `SharedAccessKeyName` (policy).
    pub key_name: Option<String>,
    /// `DeviceId`.
    pub device_id: Option<String>,
    /// `SharedAccessKey`.
    pub key: Option<Secret>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// Why a connection string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection string: {0}")]
pub struct ConnectionStringError(&'static str);

impl ConnectionString {
    /// Parse `Key=Value;…` (keys case-sensitive as Azure writes them; values may contain `=`).
    ///
    /// # Errors
    /// When `HostName` is missing or a part has no `=`.
    pub fn parse(s: &str) -> Result<Self, ConnectionStringError> {
        let mut cs = Self {
            host_name: String::new(),
            key_name: None,
            device_id: None,
            key: None,
        };
        for part in s.trim().split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or(ConnectionStringError("a part has no '='"))?;
            match k {
                "HostName" => v.clone_into(&mut cs.host_name),
                "SharedAccessKeyName" => cs.key_name = Some(v.to_owned()),
                "DeviceId" => cs.device_id = Some(v.to_owned()),
                "SharedAccessKey" => cs.key = Some(Secret::new(v)),
                _ => {}
            }
        }
        if cs.host_name.is_empty() {
            return Err(ConnectionStringError("HostName is missing"));
        }
        Ok(cs)
    }

    /// Format a service connection string.
    #[must_use]
    pub fn service(host_name: &str, key_name: &str, key: &Secret) -> String {
        format!(
            "HostName={host_name};SharedAccessKeyName={key_name};SharedAccessKey={}",
            key.expose()
        )
    }
}
