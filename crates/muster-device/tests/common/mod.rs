//! Fixtures for the device client's tests: the shared server and REST fixture
//! (`muster-test-server`), plus provisioning options, enrollment groups and event helpers.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "shared test fixture; each test binary uses part of it"
)]

use std::time::Duration;

use muster_device::{
    DpsCredentials, HubEvent, HubEvents, Identity, ProvisioningClient, ProvisioningOptions,
    Registration, Transport, TrustRoots,
};
use muster_test_support::{Pki, TestCert};
use reqwest::Method;
use serde_json::json;

pub use muster_test_server::TestServer;

/// What the device client's tests add to the shared server fixture.
pub trait DeviceFixture {
    /// The server's trust bundle for device clients.
    fn trust(&self) -> TrustRoots;
    /// Provisioning options for this server and transport.
    fn provisioning(
        &self,
        credentials: DpsCredentials,
        transport: Transport,
    ) -> ProvisioningOptions;
    /// Register a device.
    async fn register(
        &self,
        credentials: DpsCredentials,
        transport: Transport,
    ) -> Result<Registration, muster_device::Error>;
    /// A verified CA `root-ca` and an X.509 group `lab` trusting it, with an initial twin.
    async fn x509_group(&self, pki: &Pki);
    /// A symmetric-key group `sensors`; returns its primary key.
    async fn symmetric_group(&self) -> muster_device::Secret;
    /// Set the `lab` group's provisioning status.
    async fn set_group_status(&self, status: &str);
}

impl DeviceFixture for TestServer {
    fn trust(&self) -> TrustRoots {
        TrustRoots::from_pem_file(self.ca_path()).unwrap()
    }

    /// Provisioning options for this server and transport.
    fn provisioning(
        &self,
        credentials: DpsCredentials,
        transport: Transport,
    ) -> ProvisioningOptions {
        let mut options = ProvisioningOptions::new("localhost", self.id_scope(), credentials);
        options.transport = transport;
        options.port = Some(match transport {
            Transport::Mqtt => self.mqtt_port(),
            Transport::Https => self.https_port(),
            Transport::Amqp => self.amqp_port(),
            Transport::MqttWs | Transport::AmqpWs => self.https_port(),
        });
        options.trust = self.trust();
        options.timeout = Duration::from_secs(20);
        options
    }

    async fn register(
        &self,
        credentials: DpsCredentials,
        transport: Transport,
    ) -> Result<Registration, muster_device::Error> {
        ProvisioningClient::new(self.provisioning(credentials, transport))?
            .register()
            .await
    }

    /// A verified CA `root-ca` and an X.509 group `lab` trusting it, with an initial twin.
    async fn x509_group(&self, pki: &Pki) {
        let rest = self.dps_rest();
        rest.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
            .await;
        rest.ok(
            Method::PUT,
            "/enrollmentGroups/lab",
            Some(json!({
                "enrollmentGroupId": "lab",
                "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
                "provisioningStatus": "enabled",
                "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
                "allocationPolicy": "hashed",
                "initialTwin": {"properties": {"desired": {"telemetryDelay": "1"}}},
                "capabilities": {"iotEdge": false}
            })),
            &[],
        )
        .await;
    }

    /// A symmetric-key group `sensors`; returns its primary key.
    async fn symmetric_group(&self) -> muster_device::Secret {
        let rest = self.dps_rest();
        rest.ok(
            Method::PUT,
            "/enrollmentGroups/sensors",
            Some(json!({"enrollmentGroupId": "sensors", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}})),
            &[],
        )
        .await;
        let attestation = rest
            .ok(
                Method::POST,
                "/enrollmentgroups/sensors/attestationmechanism",
                None,
                &[],
            )
            .await;
        muster_device::Secret::new(attestation["symmetricKey"]["primaryKey"].as_str().unwrap())
    }

    /// Set the `lab` group's provisioning status.
    async fn set_group_status(&self, status: &str) {
        let rest = self.dps_rest();
        let mut group = rest
            .ok(Method::GET, "/enrollmentGroups/lab", None, &[])
            .await;
        group["provisioningStatus"] = json!(status);
        let etag = format!("\"{}\"", group["etag"].as_str().unwrap());
        rest.ok(
            Method::PUT,
            "/enrollmentGroups/lab",
            Some(group),
            &[("if-match", &etag)],
        )
        .await;
    }
}

/// The identity of a test leaf with its issuing intermediate.
pub fn identity(leaf: &TestCert, pki: &Pki) -> Identity {
    let chain = format!("{}{}", leaf.pem, pki.intermediate.cert.pem);
    Identity::from_pem(chain.as_bytes(), Some(leaf.key_pem.as_bytes())).unwrap()
}

/// The next event within 10 s (panics when the stream ends or nothing comes).
pub async fn next_event(events: &mut HubEvents) -> HubEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the event stream ended")
}

/// Skip events until one matches.
pub async fn wait_for(events: &mut HubEvents, what: impl Fn(&HubEvent) -> bool) -> HubEvent {
    loop {
        let event = next_event(events).await;
        if what(&event) {
            return event;
        }
    }
}
