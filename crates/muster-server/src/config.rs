//! Server configuration: typed, layered (defaults ← TOML file ← command-line flags), checked
//! once after loading. Durations are written with units (`10s`, `2m`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The commented default configuration (`muster config default`).
pub const DEFAULT_CONFIG: &str = r#"# muster server configuration. Every value shown is the default.

# Where certificates, keys, the ID scope and the database live.
data_dir = "./muster-data"

# Address both listeners bind to.
bind = "127.0.0.1"

# MQTT over TLS for devices (DPS and hub share it; the Azure SDKs require 8883).
mqtt_port = 8883

# AMQP 1.0 over TLS for devices, DPS and service clients (the Azure SDKs require 5671).
amqp_port = 5671

# HTTPS for the management REST API and DPS registration over HTTPS (Node SDKs need 443).
# It asks every client for a certificate (devices authenticate with one).
https_port = 8443

# HTTPS for browsers (the portal) and management tools: the same API, but the TLS handshake does
# not ask for a client certificate, so a browser shows no certificate picker.
portal_port = 8444

# Prometheus metrics over plain HTTP at http://ADDRESS/metrics, without authentication: bind it to
# a private address. Unset, /metrics is served only on the HTTPS port, to a caller with a hub or
# DPS policy's SAS token.
# metrics_bind = "127.0.0.1:9464"

# Where durable state lives: "sqlite" keeps it in DIR/muster.db (one node); a PostgreSQL URL,
# postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, keeps it in that database, which several
# nodes can share (docs/cluster.md). The password is never logged.
store = "sqlite"
# Connections each node keeps to PostgreSQL.
store_pool_size = 16

# Several nodes as one hub (docs/cluster.md): the NATS server (with JetStream) that carries
# which node holds each device and the signals between nodes, e.g. "nats://127.0.0.1:4222".
# Needs a PostgreSQL store. Unset: one node.
# bus = "nats://127.0.0.1:4222"
# This node's name on the bus (letters, digits, '-', '_'); defaults to the machine's host name.
# node_id = "node-1"
# Replicas of the bus's buckets: 1 for one NATS server, 3 for a NATS cluster.
bus_replicas = 1

# Host names the server certificate covers. The first is the provisioning host and the host of
# the default hub, returned to devices as `assignedHub`; each name is one logical hub.
hostnames = ["localhost"]

[limits]
# Open connections accepted at once (MQTT and HTTPS each).
max_connections = 100000
# Time allowed for the TLS handshake plus the MQTT CONNECT packet.
connect_timeout = "10s"
# Largest MQTT packet accepted (bytes); larger ones close the connection before buffering.
max_packet_size = 300000
# Largest HTTP request body accepted (bytes).
max_body_size = 1048576
# How long shutdown waits for connections to finish.
shutdown_grace = "5s"

[dps]
# Answer a registration that completes at once with its result (200, "assigned": one round
# trip, which both official SDKs accept). false: always answer 202 "assigning" first and let
# the device poll, as Azure does (the Python SDK then waits a fixed 2 s).
immediate_result = true
# Seconds a device is told to wait before polling a registration (retry-after).
retry_after = 1
# Registrations accepted per second for the ID scope; more are answered 429 with retry-after
# (the SDKs retry). 0 = no limit.
rate_limit = 0

[hub]
# How long device-to-cloud messages stay readable in the built-in event log.
event_retention = "1d"
# Partitions of each hub's built-in Event Hubs-compatible endpoint (1-32). A device's messages
# always go to the same partition (a hash of its id); changing the count moves devices.
partitions = 4

[portal]
# A portal session ends after this long without a request, and this long after sign-in.
session_idle = "30m"
session_lifetime = "8h"
# Failed sign-ins allowed per client address per minute; more are refused for the minute.
sign_in_attempts_per_minute = 5
"#;

/// Listener and resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections accepted at once per listener.
    pub max_connections: usize,
    /// TLS handshake + CONNECT deadline.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Largest MQTT packet.
    pub max_packet_size: usize,
    /// Largest HTTP body.
    pub max_body_size: usize,
    /// Shutdown drain deadline.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 300_000,
            max_body_size: 1 << 20,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// DPS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpsSettings {
    /// Answer an `assigned` registration at once instead of `202 assigning` + poll.
    pub immediate_result: bool,
    /// `retry-after` seconds.
    pub retry_after: u32,
    /// Registrations per second (0 = unlimited).
    pub rate_limit: u32,
}

impl Default for DpsSettings {
    fn default() -> Self {
        Self {
            immediate_result: true,
            retry_after: 1,
            rate_limit: 0,
        }
    }
}

/// Hub settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSettings {
    /// How long events are kept.
    #[serde(deserialize_with = "duration")]
    pub event_retention: Duration,
    /// Partitions of the built-in endpoint.
    pub partitions: u32,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            event_retention: Duration::from_secs(86_400),
            partitions: muster_hub::hub::DEFAULT_PARTITIONS,
        }
    }
}

/// Portal settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalSettings {
    /// A session ends after this long without a request.
    #[serde(deserialize_with = "duration")]
    pub session_idle: Duration,
    /// A session ends this long after sign-in.
    #[serde(deserialize_with = "duration")]
    pub session_lifetime: Duration,
    /// Failed sign-ins allowed per client address per minute.
    pub sign_in_attempts_per_minute: u32,
}

impl Default for PortalSettings {
    fn default() -> Self {
        Self {
            session_idle: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(8 * 3600),
            sign_in_attempts_per_minute: 5,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Bind address.
    pub bind: IpAddr,
    /// MQTT port (0 = any free port).
    pub mqtt_port: u16,
    /// AMQP port (0 = any free port).
    pub amqp_port: u16,
    /// HTTPS port (0 = any free port).
    pub https_port: u16,
    /// Portal HTTPS port, without client-certificate requests (0 = any free port).
    pub portal_port: u16,
    /// Plain-HTTP address for `/metrics` (no authentication), if any.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// `sqlite` (the data dir's database) or a PostgreSQL URL.
    pub store: String,
    /// PostgreSQL connections per node.
    pub store_pool_size: usize,
    /// NATS URL of the cluster bus, if several nodes form one hub.
    pub bus: Option<String>,
    /// This node's name on the bus.
    pub node_id: Option<String>,
    /// Replicas of the bus's KV buckets.
    pub bus_replicas: usize,
    /// Host names; the first is the DPS host and the default hub.
    pub hostnames: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// DPS settings.
    pub dps: DpsSettings,
    /// Hub settings.
    pub hub: HubSettings,
    /// Portal settings.
    pub portal: PortalSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./muster-data"),
            bind: IpAddr::from([127, 0, 0, 1]),
            mqtt_port: 8883,
            amqp_port: 5671,
            https_port: 8443,
            portal_port: 8444,
            metrics_bind: None,
            store: "sqlite".to_owned(),
            store_pool_size: 16,
            bus: None,
            node_id: None,
            bus_replicas: 1,
            hostnames: vec!["localhost".to_owned()],
            limits: Limits::default(),
            dps: DpsSettings::default(),
            hub: HubSettings::default(),
            portal: PortalSettings::default(),
        }
    }
}

/// A configuration problem, in one line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Parse TOML (missing keys take their defaults) and check it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            toml::from_str(text).map_err(|e| ConfigError(e.to_string().replace('\n', " ")))?;
        config.check()?;
        Ok(config)
    }

    /// Check values that parse but make no sense.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.hostnames.is_empty() {
            return Err(ConfigError(
                "hostnames must list at least one host name".into(),
            ));
        }
        for h in &self.hostnames {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
            if !ok {
                return Err(ConfigError(format!("'{h}' is not a valid host name")));
            }
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError(
                "limits.max_connections must be at least 1".into(),
            ));
        }
        if !(1024..=268_435_455).contains(&self.limits.max_packet_size) {
            return Err(ConfigError(
                "limits.max_packet_size must be between 1024 and 268435455".into(),
            ));
        }
        if self.limits.connect_timeout.is_zero() {
            return Err(ConfigError(
                "limits.connect_timeout must be positive".into(),
            ));
        }
        if self.store != "sqlite" && !muster_store_pg::is_postgres_url(&self.store) {
            return Err(ConfigError(format!(
                "store must be \"sqlite\" or postgres://USER@HOST/DATABASE, not '{}'",
                muster_store_pg::redact(&self.store)
            )));
        }
        if !(1..=1024).contains(&self.store_pool_size) {
            return Err(ConfigError(
                "store_pool_size must be between 1 and 1024".into(),
            ));
        }
        if let Some(bus) = &self.bus {
            if !(bus.starts_with("nats://") || bus.starts_with("tls://")) {
                return Err(ConfigError(format!(
                    "bus must be a NATS URL, nats://HOST:PORT, not '{bus}'"
                )));
            }
            if self.store == "sqlite" {
                return Err(ConfigError(
                    "bus joins several nodes, which must share a PostgreSQL store: set store = \"postgres://…\" too".into(),
                ));
            }
        }
        if let Some(node) = &self.node_id
            && !(1..=64).contains(&node.len())
        {
            return Err(ConfigError(format!(
                "node_id '{node}' must be 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if !matches!(self.bus_replicas, 1 | 3 | 5) {
            return Err(ConfigError("bus_replicas must be 1, 3 or 5".into()));
        }
        if !(1..=32).contains(&self.hub.partitions) {
            return Err(ConfigError(
                "hub.partitions must be between 1 and 32 (IoT Hub allows 2 to 32)".into(),
            ));
        }
        Ok(())
    }

    /// The provisioning host (first host name).
    #[must_use]
    pub fn dps_host(&self) -> &str {
        self.hostnames.first().map_or("localhost", String::as_str)
    }
}

pub use muster_types::parse_duration;

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// This node's name on the bus: `node_id`, else the machine's host name (dots and other
/// characters a NATS subject cannot carry become '-').
#[must_use]
pub fn node_id(config: &Config) -> String {
    if let Some(id) = &config.node_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "muster".to_owned());
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "muster".to_owned()
    } else {
        id
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        let parsed = Config::from_toml(DEFAULT_CONFIG).unwrap();
        let def = Config::default();
        assert_eq!(parsed.data_dir, def.data_dir);
        assert_eq!(parsed.bind, def.bind);
        assert_eq!(parsed.mqtt_port, def.mqtt_port);
        assert_eq!(parsed.https_port, def.https_port);
        assert_eq!(parsed.hostnames, def.hostnames);
        assert_eq!(parsed.limits.connect_timeout, def.limits.connect_timeout);
        assert_eq!(parsed.limits.max_packet_size, def.limits.max_packet_size);
        assert_eq!(parsed.dps.retry_after, def.dps.retry_after);
        assert_eq!(parsed.dps.rate_limit, def.dps.rate_limit);
        assert_eq!(parsed.hub.event_retention, def.hub.event_retention);
        assert_eq!(parsed.portal.session_idle, def.portal.session_idle);
        assert_eq!(parsed.portal.session_lifetime, def.portal.session_lifetime);
        assert_eq!(
            parsed.portal.sign_in_attempts_per_minute,
            def.portal.sign_in_attempts_per_minute
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            Config::from_toml("mqtt_prot = 1")
                .unwrap_err()
                .to_string()
                .contains("mqtt_prot")
        );
        assert!(
            Config::from_toml("hostnames = []")
                .unwrap_err()
                .to_string()
                .contains("hostnames")
        );
        assert!(Config::from_toml("[limits]\nconnect_timeout = \"ten\"").is_err());
        assert!(Config::from_toml("hostnames = [\"bad host\"]").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    }
}
