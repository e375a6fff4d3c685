//! # muster-test-server
//!
//! The one fixture every end-to-end test uses (dev-only; never part of the binary): a real
//! muster server on ephemeral ports in a temporary data directory, with real TLS, and
//! [`Rest`], a client of its management API signing each request with one of the server's
//! policy keys, as the Azure service SDKs do. The server's and the device client's tests both
//! build on it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fixture fails loudly"
)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use muster_server::Running;
use muster_server::config::Config;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// A running server and its data directory.
#[derive(Debug)]
pub struct TestServer {
    /// The server.
    pub running: Running,
    /// Holds the data directory (`data/` inside it).
    pub dir: tempfile::TempDir,
    /// The configuration it runs with.
    pub config: Config,
}

/// With `MUSTER_TEST_STORE=postgres` (and `MUSTER_TEST_POSTGRES` naming a server), every test
/// server keeps its state in PostgreSQL instead of SQLite: a database of its own, made on first
/// start and found again on a restart in the same directory (its URL is kept beside the data
/// directory). CI runs the end-to-end suites once more this way, with `MUSTER_TEST_BUS` naming
/// a NATS server too, so each test server is a one-node cluster whose telemetry goes to
/// JetStream.
async fn shared_store(dir: &std::path::Path) -> Option<String> {
    if std::env::var("MUSTER_TEST_STORE").ok()?.as_str() != "postgres" {
        return None;
    }
    let marker = dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return Some(url);
    }
    let db = muster_store_pg::testing::TestDatabase::create("e2e")
        .await
        .expect("MUSTER_TEST_STORE=postgres needs MUSTER_TEST_POSTGRES");
    std::fs::write(&marker, &db.url).unwrap();
    Some(db.url)
}

impl TestServer {
    /// A server on 127.0.0.1 with ephemeral ports.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server bound to `bind` with MQTT on `mqtt_port` (0: ephemeral).
    pub async fn start_at(bind: IpAddr, mqtt_port: u16) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), bind, mqtt_port).await
    }

    /// A server in an existing directory (a restart).
    pub async fn start_in(dir: tempfile::TempDir, bind: IpAddr, mqtt_port: u16) -> Self {
        Self::start_configured(dir, |c| {
            c.bind = bind;
            c.mqtt_port = mqtt_port;
        })
        .await
    }

    /// Start with a configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_configured(tempfile::tempdir().unwrap(), adjust).await
    }

    async fn start_configured(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: dir.path().join("data"),
            mqtt_port: 0,
            amqp_port: 0,
            https_port: 0,
            portal_port: 0,
            hostnames: vec!["localhost".into()],
            ..Config::default()
        };
        let chosen = match config.store.as_str() {
            "sqlite" => shared_store(dir.path()).await,
            _ => None,
        };
        if let Some(url) = &chosen {
            config.store.clone_from(url);
        }
        adjust(&mut config);
        // With MUSTER_TEST_BUS as well, a one-node cluster: the bus and the event log on
        // JetStream (unless the test set up a store or a bus of its own).
        if chosen.is_some_and(|url| config.store == url)
            && config.bus.is_none()
            && let Ok(bus) = std::env::var("MUSTER_TEST_BUS")
        {
            config.bus = Some(bus);
            config.node_id = Some("e2e".to_owned());
        }
        let running = muster_server::start(config.clone()).await.unwrap();
        Self {
            running,
            dir,
            config,
        }
    }

    /// Stop and hand back the directory (for restart tests).
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.shutdown();
        self.running.wait().await;
        self.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// The ID scope.
    pub fn id_scope(&self) -> String {
        self.running.info["idScope"].as_str().unwrap().to_owned()
    }

    /// The trust bundle devices and clients use.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("tls/ca.pem")
    }

    /// The trust bundle's PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_path()).unwrap()
    }

    /// The MQTT port.
    pub fn mqtt_port(&self) -> u16 {
        self.running.mqtt_addr.port()
    }

    /// The AMQP port.
    pub fn amqp_port(&self) -> u16 {
        self.running.amqp_addr.port()
    }

    /// The HTTPS port.
    pub fn https_port(&self) -> u16 {
        self.running.https_addr.port()
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

    /// The hub service API signing with another of the hub's policies (`service`,
    /// `registryRead`, …).
    pub fn policy_rest(&self, policy: &str) -> Rest {
        let state: Value =
            serde_json::from_slice(&std::fs::read(self.data_dir().join("state.json")).unwrap())
                .unwrap();
        let key = state["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == policy)
            .unwrap()["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut rest = self.hub_rest();
        rest.key_name = policy.to_owned();
        rest.key = key;
        rest
    }
}

/// A management client signing each request with a policy key, like the Azure service SDKs.
#[derive(Debug, Clone)]
pub struct Rest {
    /// The HTTP client (trusting the server's CA; `localhost` resolves to the server).
    pub client: reqwest::Client,
    /// `https://localhost:{port}`.
    pub base: String,
    /// The policy (`skn`).
    pub key_name: String,
    /// Its key.
    pub key: String,
    /// The host name tokens are made for.
    pub host: String,
}

impl Rest {
    /// A client for the server at `addr` from a connection string.
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

    /// A ten-minute token for the policy.
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

    /// One request; the status, headers and JSON body (`null` when empty or not JSON).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, Value) {
        let mut req = self
            .client
            .request(
                method,
                format!("{}{path}?api-version=2021-10-01", self.base),
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
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, headers, body)
    }

    /// A request that must succeed (2xx); its JSON body.
    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Value {
        let (status, _, body) = self.send(method.clone(), path, body, headers).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        body
    }

    /// Create a SAS device `id` and return a one-hour device token for `localhost`.
    pub async fn sas_device(&self, id: &str) -> String {
        let d = self
            .ok(
                Method::PUT,
                &format!("/devices/{id}"),
                Some(json!({"deviceId": id})),
                &[],
            )
            .await;
        let key = muster_auth::Secret::new(
            d["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .unwrap(),
        );
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        muster_auth::sas::make_token(&format!("localhost/devices/{id}"), &key, None, exp).unwrap()
    }

    /// Queue a cloud-to-device message; the status.
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

    /// Read `n` events from the event stream from `from` (`earliest`, `latest` or a sequence
    /// number), optionally of one device.
    pub async fn read_events_from(&self, from: &str, device: Option<&str>, n: usize) -> Vec<Value> {
        let device = device.map(|d| format!("&deviceId={d}")).unwrap_or_default();
        let mut resp = self
            .client
            .get(format!("{}/messages/events?from={from}{device}", self.base))
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
            .take(n)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Read `n` events of `device` from the beginning of the stream.
    pub async fn read_events(&self, device: &str, n: usize) -> Vec<Value> {
        self.read_events_from("earliest", Some(device), n).await
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
