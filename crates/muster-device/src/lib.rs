//! # muster-device
//!
//! An async device client for muster (and Azure IoT): provision with the Device Provisioning
//! Service over MQTT, AMQP or HTTPS, then talk to the assigned hub over MQTT or AMQP (each also
//! through a WebSocket on port 443) — twin, reported properties, telemetry, direct methods,
//! cloud-to-device messages — with an X.509 certificate or a shared access key. Built for fleets: each hub client is one tokio task fed by bounded
//! channels, with no thread per device and no global lock.
//!
//! # Layout
//! - [`identity`]: [`Identity`] (client certificate chain + key from PEM or PKCS#12, common
//!   name, thumbprints) and [`TrustRoots`] (a PEM trust bundle, or the webpki roots).
//! - [`dps`]: [`ProvisioningClient`] — register, poll, honour `retry-after`, retry throttling,
//!   typed refusals carrying Azure's `errorCode`.
//! - [`hub`]: [`HubClient`] — one connection task per device with keep-alive, reconnect with
//!   backoff, persistent sessions and SAS token renewal; [`HubEvent`]s for what the hub sends.
//! - [`simulate`]: the classic DPS lab's simulated device (follows `telemetryDelay`, sends
//!   readings with `temperatureAlert`), reporting what it does as [`simulate::SimEvent`]s.
//! - [`fleet`]: many devices as a load generator — provisioning storm, connect storm,
//!   telemetry, desired-patch fan-out — with HDR-histogram latencies.
//! - [`handshake`]: the mutual-TLS handshake rate on loopback, the bound for storms.
//! - [`error`]: the one [`Error`] type.
//! - `connection` (private): one MQTT-over-TLS connection on top of `muster-mqtt`'s codec.
//! - `amqp` (private): DPS and the hub over AMQP 1.0 (fe2o3-amqp's client), behind the same
//!   [`ProvisioningClient`] and [`HubClient`].
//!
//! # Example
//! ```no_run
//! use muster_device::{
//!     DpsCredentials, HubClient, HubCredentials, HubEvent, HubOptions, Identity, Message,
//!     ProvisioningClient, ProvisioningOptions, TrustRoots,
//! };
//!
//! # async fn run() -> Result<(), muster_device::Error> {
//! let identity = Identity::from_pem_files("certs/simulated-device1.pem",
//!     Some("certs/simulated-device1.key.pem".as_ref()))?;
//! let trust = TrustRoots::from_pem_file("muster-data/tls/ca.pem")?;
//!
//! let mut options = ProvisioningOptions::new("localhost", "0ne0012345A",
//!     DpsCredentials::X509(identity.clone()));
//! options.trust = trust.clone();
//! let registration = ProvisioningClient::new(options)?.register().await?;
//!
//! let mut options = HubOptions::for_registration(&registration, HubCredentials::X509(identity));
//! options.trust = trust;
//! let (client, mut events) = HubClient::connect(options).await?;
//! let twin = client.get_twin().await?;
//! client.patch_reported(&serde_json::json!({"firmware": "1.0"})).await?;
//! client.send_telemetry(Message::json(&serde_json::json!({"temperature": 21.5}))).await?;
//! while let Some(event) = events.recv().await {
//!     if let HubEvent::MethodCall { rid, .. } = event {
//!         client.respond_method(&rid, 200, &serde_json::json!({"ok": true})).await?;
//!     }
//! }
//! # let _ = twin;
//! # Ok(())
//! # }
//! ```

mod amqp;
mod connection;
pub mod dps;
pub mod error;
pub mod fleet;
pub mod handshake;
pub mod hub;
pub mod identity;
pub mod simulate;
pub mod soak;

pub use dps::{DpsCredentials, ProvisioningClient, ProvisioningOptions, Registration, Transport};
pub use error::Error;
pub use hub::{
    HubClient, HubCredentials, HubEvent, HubEvents, HubOptions, HubTransport, Message,
    ReconnectPolicy, Twin,
};
pub use identity::{Identity, TrustRoots};
pub use muster_auth::Secret;
pub use muster_mqtt::ConnectReturnCode;

/// What this client calls itself on the wire (`ClientVersion`, `DeviceClientType`, HTTP).
pub const USER_AGENT: &str = concat!("muster-device/", env!("CARGO_PKG_VERSION"));

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
