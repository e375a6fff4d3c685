//! A harness for fuzzing the MQTT session and the AMQP connection (feature `fuzzing`; used by
//! `fuzz/`).
//!
//! [`Harness::run`] feeds arbitrary bytes to one DPS or hub session over an in-memory stream,
//! optionally after a valid CONNECT for a SAS device (so the bytes reach the session loop
//! rather than the CONNECT check), and drains whatever the server writes.
//! [`Harness::run_amqp`] does the same for one AMQP connection, optionally after a valid
//! protocol header (plain or SASL). Any panic, hang or unbounded growth is a finding; errors
//! and closed connections are the expected outcome.

#![allow(
    clippy::expect_used,
    reason = "a fuzz harness that cannot set itself up should stop at once"
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use muster_mqtt::{Connect, Packet};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::Context;
use crate::config::Config;

const DEVICE: &str = "fuzz-device";
const KEY: &str = "ZnV6ei1kZXZpY2Uta2V5LWZ1enotZGV2aWNlLWtleQ==";

/// A server context over a scratch data directory, with one SAS device.
#[derive(Debug)]
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    ctx: Arc<Context>,
    hub_connect: Vec<u8>,
    dps_connect: Vec<u8>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

fn encode(p: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    muster_mqtt::encode(p, &mut out).expect("encode CONNECT");
    out.to_vec()
}

impl Harness {
    /// Build the context in `$TMPDIR/muster-fuzz-{pid}` and create the device.
    #[must_use]
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("muster-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config {
            data_dir: dir,
            mqtt_port: 0,
            amqp_port: 0,
            https_port: 0,
            portal_port: 0,
            ..Config::default()
        };
        config.limits.connect_timeout = Duration::from_millis(200);
        let (ctx, _, state) = crate::build_context(&config, None, None, None).expect("context");
        runtime
            .block_on(ctx.hub.put_device(
                "localhost",
                DEVICE,
                &json!({"deviceId": DEVICE, "authentication": {"type": "sas",
                    "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}}}),
                None,
            ))
            .expect("device");
        let token = muster_auth::sas::make_token(
            &format!("localhost/devices/{DEVICE}"),
            &muster_auth::Secret::new(KEY),
            None,
            u64::MAX / 4,
        )
        .expect("token");
        let connect = |client_id: &str, username: String, password: Option<Vec<u8>>| {
            encode(&Packet::Connect(Connect {
                protocol_level: 4,
                client_id: client_id.to_owned(),
                clean_session: false,
                keep_alive: 0,
                username: Some(username),
                password,
                will: None,
            }))
        };
        let hub_connect = connect(
            DEVICE,
            format!("localhost/{DEVICE}/?api-version=2021-04-12"),
            Some(token.into_bytes()),
        );
        let dps_connect = connect(
            DEVICE,
            format!(
                "{}/registrations/{DEVICE}/api-version=2019-03-31",
                state.id_scope
            ),
            None,
        );
        Self {
            runtime,
            ctx,
            hub_connect,
            dps_connect,
        }
    }

    /// One AMQP connection: the first byte picks the preamble (0: raw bytes, 1: the plain AMQP
    /// header, 2 and 3: the SASL header), the rest is sent as is.
    pub fn run_amqp(&self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let mut input = match mode & 3 {
            1 => b"AMQP\x00\x01\x00\x00".to_vec(),
            2 | 3 => b"AMQP\x03\x01\x00\x00".to_vec(),
            _ => Vec::new(),
        };
        input.extend_from_slice(rest);
        let ctx = Arc::clone(&self.ctx);
        self.drive(input, move |server, stop| async move {
            let tracker = tokio_util::task::TaskTracker::new();
            crate::amqp::connection(server, Ok(Vec::new()), None, ctx, stop, tracker.clone()).await;
            tracker.close();
            tracker.wait().await;
        });
    }

    /// Write `input` to a server task on an in-memory stream, drain its answers, and check that
    /// it ends once the input does.
    fn drive<F, Fut>(&self, input: Vec<u8>, serve: F)
    where
        F: FnOnce(tokio::io::DuplexStream, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.block_on(async move {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let shutdown = CancellationToken::new();
            let session = tokio::spawn(serve(server, shutdown.clone()));
            let (mut reader, mut writer) = tokio::io::split(&mut client);
            let write = async {
                let _ = writer.write_all(&input).await;
                let _ = writer.shutdown().await;
            };
            let drain = async {
                let mut sink = vec![0u8; 16 * 1024];
                while let Ok(n) = reader.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let both = async { tokio::join!(write, drain) };
            let finished = tokio::time::timeout(Duration::from_secs(10), both).await;
            shutdown.cancel();
            let ended = tokio::time::timeout(Duration::from_secs(10), session).await;
            assert!(
                finished.is_ok() && ended.is_ok(),
                "the session did not end after its input did"
            );
        });
    }

    /// One session: the first byte picks the preamble (bit 0: hub CONNECT, bit 1: DPS
    /// CONNECT, neither: raw bytes), the rest is sent as is.
    pub fn run(&self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let mut input = match mode & 3 {
            1 | 3 => self.hub_connect.clone(),
            2 => self.dps_connect.clone(),
            _ => Vec::new(),
        };
        input.extend_from_slice(rest);
        let ctx = Arc::clone(&self.ctx);
        self.drive(input, move |server, stop| async move {
            crate::mqtt::session(server, Ok(Vec::new()), &ctx, &stop).await;
        });
    }
}
