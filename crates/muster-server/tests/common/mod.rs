//! Fixtures for end-to-end tests: a real server on ephemeral ports in a temporary data
//! directory, an authenticated REST client, and a minimal MQTT-over-TLS device client built on
//! muster-mqtt.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "shared test fixture; each test binary uses part of it"
)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use muster_mqtt::{Connect, Packet, Publish, QoS, Subscribe};
use muster_server::Running;
use muster_server::config::Config;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_at(IpAddr::from([127, 0, 0, 1]), 0).await
    }

    pub async fn start_at(bind: IpAddr, mqtt_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, bind, mqtt_port).await
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

    pub async fn start_in(dir: tempfile::TempDir, bind: IpAddr, mqtt_port: u16) -> Self {
        let config = Config {
            data_dir: dir.path().join("data"),
            bind,
            mqtt_port,
            https_port: 0,
            hostnames: vec!["localhost".into()],
            ..Config::default()
        };
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

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    pub fn id_scope(&self) -> String {
        self.running.info["idScope"].as_str().unwrap().to_owned()
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir().join("tls/ca.pem")).unwrap()
    }

    pub fn rest(&self) -> Rest {
        let cs = self.running.info["dpsConnectionString"].as_str().unwrap();
        Rest::new(cs, &self.ca_pem(), self.running.https_addr)
    }

    pub async fn mqtt(
        &self,
        client_id: &str,
        username: &str,
        password: Option<&str>,
        identity: Option<(&str, &str)>,
    ) -> Mqtt {
        Mqtt::connect(
            self.running.mqtt_addr,
            &self.ca_pem(),
            client_id,
            username,
            password,
            identity,
        )
        .await
    }
}

/// REST client signing each request with a policy key, like the Azure service SDKs.
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

    /// Create a SAS device `id` and return a one-hour device token for `localhost`.
    pub async fn sas_device(&self, id: &str) -> String {
        let d = self
            .ok(
                reqwest::Method::PUT,
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
        let exp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 3600;
        muster_auth::sas::make_token(&format!("localhost/devices/{id}"), &key, None, exp).unwrap()
    }

    pub fn token(&self) -> String {
        let exp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 600;
        muster_auth::sas::make_token(
            &self.host,
            &muster_auth::Secret::new(self.key.clone()),
            Some(&self.key_name),
            exp,
        )
        .unwrap()
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
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

    pub async fn ok(
        &self,
        method: reqwest::Method,
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

    /// Upload a CA and complete proof of possession through the REST API.
    pub async fn upload_verified_ca(&self, name: &str, ca_pem: &str, ca_key_pem: &str) {
        use reqwest::Method;
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
        let now = time::OffsetDateTime::now_utc();
        let proof = issuer
            .issue(
                &muster_pki::Request {
                    common_name: code.to_owned(),
                    organization: None,
                    profile: muster_pki::Profile::Verification,
                    not_before: now - time::Duration::minutes(1),
                    not_after: now + time::Duration::hours(1),
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

/// A bare MQTT 3.1.1 client over TLS.
pub struct Mqtt {
    pub stream: TlsStream<TcpStream>,
    buf: BytesMut,
    pub connack: muster_mqtt::ConnAck,
}

pub fn tls_client(ca_pem: &[u8], identity: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in muster_pki::read_certificates(ca_pem).unwrap() {
        roots.add(CertificateDer::from(c.der().to_vec())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain_pem, key_pem)) => {
            let chain = muster_pki::read_certificates(chain_pem.as_bytes())
                .unwrap()
                .iter()
                .map(|c| CertificateDer::from(c.der().to_vec()))
                .collect();
            let key = muster_pki::read_private_key(key_pem.as_bytes(), None).unwrap();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key.der().to_vec().into()))
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

impl Mqtt {
    pub async fn tls(
        addr: SocketAddr,
        ca_pem: &[u8],
        identity: Option<(&str, &str)>,
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tls_client(ca_pem, identity)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    pub async fn connect(
        addr: SocketAddr,
        ca_pem: &[u8],
        client_id: &str,
        username: &str,
        password: Option<&str>,
        identity: Option<(&str, &str)>,
    ) -> Self {
        Self::connect_opts(addr, ca_pem, client_id, username, password, identity, false).await
    }

    pub async fn connect_opts(
        addr: SocketAddr,
        ca_pem: &[u8],
        client_id: &str,
        username: &str,
        password: Option<&str>,
        identity: Option<(&str, &str)>,
        clean_session: bool,
    ) -> Self {
        let stream = Self::tls(addr, ca_pem, identity).await;
        let mut m = Self {
            stream,
            buf: BytesMut::new(),
            connack: muster_mqtt::ConnAck {
                session_present: false,
                code: muster_mqtt::ConnectReturnCode::Accepted,
            },
        };
        m.send(&Packet::Connect(Connect {
            protocol_level: 4,
            client_id: client_id.to_owned(),
            clean_session,
            keep_alive: 60,
            username: Some(username.to_owned()),
            password: password.map(|p| p.as_bytes().to_vec()),
            will: None,
        }))
        .await;
        match m.recv().await {
            Some(Packet::ConnAck(c)) => m.connack = c,
            other => panic!("expected CONNACK, got {other:?}"),
        }
        m
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        muster_mqtt::encode(p, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or `None` when the server closed the connection (5 s limit).
    pub async fn recv(&mut self) -> Option<Packet> {
        let fut = async {
            loop {
                if let Some(p) = muster_mqtt::decode(&mut self.buf, 1 << 20).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("no packet within 5 s")
    }

    pub async fn subscribe(&mut self, filter: &str) -> Vec<muster_mqtt::SubAckReturnCode> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(filter.to_owned(), QoS::AtLeastOnce)],
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(s)) => s.return_codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], packet_id: u16) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_owned(),
            packet_id: Some(packet_id),
            payload: payload.to_vec().into(),
        }))
        .await;
    }

    /// Wait for the next PUBLISH from the server, skipping PUBACKs.
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(Packet::PubAck(_)) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// DPS register then poll until assigned or failed; returns (register reply, final reply).
    pub async fn dps_register(
        &mut self,
        registration_id: &str,
        payload: Value,
    ) -> (String, Value, Option<(String, Value)>) {
        let codes = self.subscribe("$dps/registrations/res/#").await;
        assert_eq!(
            codes,
            vec![muster_mqtt::SubAckReturnCode::Success(QoS::AtLeastOnce)]
        );
        let body = json!({"registrationId": registration_id, "payload": payload}).to_string();
        self.publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            body.as_bytes(),
            10,
        )
        .await;
        let reply = self.next_publish().await;
        let first: Value = serde_json::from_slice(&reply.payload).unwrap();
        if reply.topic.starts_with("$dps/registrations/res/200/") {
            // Answered at once (immediate_result): the answer is the result.
            return (
                reply.topic.clone(),
                first.clone(),
                Some((reply.topic, first)),
            );
        }
        if !reply.topic.starts_with("$dps/registrations/res/202/") {
            return (reply.topic, first, None);
        }
        let op = first["operationId"].as_str().unwrap().to_owned();
        self.publish(
            &format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}"),
            b" ",
            11,
        )
        .await;
        let polled = self.next_publish().await;
        let second: Value = serde_json::from_slice(&polled.payload).unwrap();
        (reply.topic, first, Some((polled.topic, second)))
    }
}

pub fn dps_username(scope: &str, registration_id: &str) -> String {
    format!(
        "{scope}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion=muster-tests"
    )
}
