//! Fixtures: a real muster server on ephemeral ports in a temporary data directory (real TLS),
//! an operator REST client signing with the server's policy keys, and helpers to set up
//! enrollment groups and read what the server saw. Adapted from muster-server's test fixture.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "shared test fixture; each test binary uses part of it"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use muster_device::{
    DpsCredentials, HubEvent, HubEvents, Identity, ProvisioningClient, ProvisioningOptions,
    Registration, Transport, TrustRoots,
};
use muster_server::Running;
use muster_server::config::Config;
use muster_test_support::{Pki, TestCert};
use reqwest::Method;
use serde_json::{Value, json};

pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestServer {
    /// A server whose DPS answers `retry-after: 0`, so registrations do not wait.
    pub async fn start() -> Self {
        Self::start_with(|c| c.dps.retry_after = 0).await
    }

    /// Start with a configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            mqtt_port: 0,
            https_port: 0,
            hostnames: vec!["localhost".into()],
            ..Config::default()
        };
        adjust(&mut config);
        let running = muster_server::start(config.clone()).await.unwrap();
        Self {
            running,
            dir,
            config,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    pub fn id_scope(&self) -> String {
        self.running.info["idScope"].as_str().unwrap().to_owned()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("tls/ca.pem")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_path()).unwrap()
    }

    pub fn trust(&self) -> TrustRoots {
        TrustRoots::from_pem_file(self.ca_path()).unwrap()
    }

    pub fn mqtt_port(&self) -> u16 {
        self.running.mqtt_addr.port()
    }

    pub fn https_port(&self) -> u16 {
        self.running.https_addr.port()
    }

    /// Provisioning options for this server and transport.
    pub fn provisioning(
        &self,
        credentials: DpsCredentials,
        transport: Transport,
    ) -> ProvisioningOptions {
        let mut options = ProvisioningOptions::new("localhost", self.id_scope(), credentials);
        options.transport = transport;
        options.port = Some(match transport {
            Transport::Mqtt => self.mqtt_port(),
            Transport::Https => self.https_port(),
        });
        options.trust = self.trust();
        options.timeout = Duration::from_secs(20);
        options
    }

    pub async fn register(
        &self,
        credentials: DpsCredentials,
        transport: Transport,
    ) -> Result<Registration, muster_device::Error> {
        ProvisioningClient::new(self.provisioning(credentials, transport))?
            .register()
            .await
    }

    /// The DPS management API (`provisioningserviceowner`).
    pub fn dps_rest(&self) -> Rest {
        let cs = self.running.info["dpsConnectionString"].as_str().unwrap();
        Rest::new(cs, &self.ca_pem(), self.running.https_addr)
    }

    /// The hub service API (`iothubowner`).
    pub fn hub_rest(&self) -> Rest {
        let cs = self.running.info["hubConnectionString"].as_str().unwrap();
        Rest::new(cs, &self.ca_pem(), self.running.https_addr)
    }

    /// A verified CA `root-ca` and an X.509 group `lab` trusting it, with an initial twin.
    pub async fn x509_group(&self, pki: &Pki) {
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
    pub async fn symmetric_group(&self) -> muster_device::Secret {
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
    pub async fn set_group_status(&self, status: &str) {
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

/// Operator REST client signing each request with a policy key, like the Azure service SDKs.
pub struct Rest {
    pub client: reqwest::Client,
    pub base: String,
    pub key_name: String,
    pub key: String,
    pub host: String,
}

impl Rest {
    pub fn new(connection_string: &str, ca_pem: &[u8], addr: SocketAddr) -> Self {
        let cs =
            muster_auth::connection_string::ConnectionString::parse(connection_string).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
            .resolve("localhost", addr)
            .build()
            .unwrap();
        Self {
            client,
            base: format!("https://localhost:{}", addr.port()),
            key_name: cs.key_name.clone().unwrap(),
            key: cs.key.unwrap().expose().to_owned(),
            host: cs.host_name,
        }
    }

    pub fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        muster_auth::sas::make_token(
            &self.host,
            &muster_auth::Secret::new(self.key.clone()),
            Some(&self.key_name),
            now + 600,
        )
        .unwrap()
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(
                method,
                format!("{}{path}?api-version=2021-04-12", self.base),
            )
            .header("authorization", self.token());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, body)
    }

    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Value {
        let (status, body) = self.send(method.clone(), path, body, headers).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        body
    }

    /// Queue a cloud-to-device message.
    pub async fn send_c2d(&self, device: &str, body: &[u8], headers: &[(&str, &str)]) -> u16 {
        let mut req = self
            .client
            .post(format!(
                "{}/devices/{device}/messages/devicebound",
                self.base
            ))
            .header("authorization", self.token())
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// Read `n` events of `device` from the event stream, from the beginning.
    pub async fn read_events(&self, device: &str, n: usize) -> Vec<Value> {
        let mut resp = self
            .client
            .get(format!(
                "{}/messages/events?from=earliest&deviceId={device}",
                self.base
            ))
            .header("authorization", self.token())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while text.lines().count() < n {
            let chunk = tokio::time::timeout_at(deadline, resp.chunk())
                .await
                .expect("events within 10 s")
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Upload a CA and complete proof of possession through the REST API.
    pub async fn upload_verified_ca(&self, name: &str, ca_pem: &str, ca_key_pem: &str) {
        let path = format!("/certificates/{name}");
        let up = self
            .ok(
                Method::PUT,
                &path,
                Some(json!({"properties": {"certificate": ca_pem}})),
                &[],
            )
            .await;
        let etag = format!("\"{}\"", up["etag"].as_str().unwrap());
        let coded = self
            .ok(
                Method::POST,
                &format!("{path}/generateVerificationCode"),
                None,
                &[("if-match", &etag)],
            )
            .await;
        let code = coded["properties"]["verificationCode"].as_str().unwrap();
        let issuer = muster_pki::Issuer::new(
            muster_pki::read_certificate(ca_pem.as_bytes()).unwrap(),
            muster_pki::read_private_key(ca_key_pem.as_bytes(), None).unwrap(),
        )
        .unwrap();
        let now = muster_test_support::OffsetDateTime::now_utc();
        let proof = issuer
            .issue(
                &muster_pki::Request {
                    common_name: code.to_owned(),
                    organization: None,
                    profile: muster_pki::Profile::Verification,
                    not_before: now - muster_test_support::Duration::minutes(1),
                    not_after: now + muster_test_support::Duration::hours(1),
                },
                muster_pki::Algorithm::EcdsaP256,
            )
            .unwrap();
        let etag = format!("\"{}\"", coded["etag"].as_str().unwrap());
        let verified = self
            .ok(
                Method::POST,
                &format!("{path}/verify"),
                Some(json!({"certificate": proof.certificate.to_pem()})),
                &[("if-match", &etag)],
            )
            .await;
        assert_eq!(verified["properties"]["isVerified"], true);
    }
}
