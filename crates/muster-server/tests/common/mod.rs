//! Fixtures for the server's end-to-end tests: the shared server and REST fixture
//! (`muster-test-server`) and a minimal MQTT-over-TLS device client built on muster-mqtt.

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
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use muster_mqtt::{Connect, Packet, Publish, QoS, Subscribe};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub use muster_test_server::{Rest, TestServer};

/// What the server's own tests add to the shared fixture.
pub trait ServerFixture {
    /// The DPS management API (`provisioningserviceowner`).
    fn rest(&self) -> Rest;
    /// A bare MQTT client connected to the server.
    async fn mqtt(
        &self,
        client_id: &str,
        username: &str,
        password: Option<&str>,
        identity: Option<(&str, &str)>,
    ) -> Mqtt;
}

impl ServerFixture for TestServer {
    fn rest(&self) -> Rest {
        self.dps_rest()
    }

    async fn mqtt(
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
