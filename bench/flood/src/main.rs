//! `flood`: drive an MQTT broker with QoS 1 publishes from many TLS client-certificate devices
//! on one thread, as lean as a load generator can be, so that the broker is what is measured.
//!
//! It shares no code with muster's device client (`muster device fleet`): hand-encoded MQTT
//! 3.1.1 packets, one `tokio` task per device on a current-thread runtime, rustls, and a write
//! buffer per device that carries every publish a batch of PUBACKs makes room for in one TLS
//! write.
//!
//! ```text
//! flood --host localhost --port 8883 --ca ca.pem --identities DIR --prefix tele- \
//!       --devices 1000 --in-flight 8 --duration 10 --payload-bytes 256
//! ```
//!
//! Identities are `DIR/{prefix}{i}.pem` (leaf, then its chain) and `DIR/{prefix}{i}.key.pem`,
//! as `muster device fleet --identity-dir` writes them. The username is
//! `{host}/{id}/?api-version=2021-04-12` (IoT Hub's form; brokers without authentication ignore
//! it) and the topic `devices/{id}/messages/events/`. Prints one JSON object: devices
//! connected, messages acknowledged within the duration, the rate, and this process's CPU
//! time per message.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool: its report and its usage"
)]

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

struct Options {
    host: String,
    port: u16,
    ca: String,
    identities: String,
    prefix: String,
    devices: usize,
    in_flight: u16,
    duration: Duration,
    payload_bytes: usize,
    connect_concurrency: usize,
    source_addresses: u8,
    /// The broker's process, to report its CPU time per message over the same window.
    server_pid: Option<u32>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "flood: {problem}\nusage: flood --host H --port P --ca CA.pem --identities DIR [--prefix P] [--devices N] [--in-flight K] [--duration SECONDS] [--payload-bytes B] [--connect-concurrency C] [--source-addresses N] [--server-pid PID]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        host: "localhost".into(),
        port: 8883,
        ca: String::new(),
        identities: String::new(),
        prefix: "tele-".into(),
        devices: 100,
        in_flight: 8,
        duration: Duration::from_secs(10),
        payload_bytes: 256,
        connect_concurrency: 64,
        source_addresses: 1,
        server_pid: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: '{v}' is not a number")))
        };
        match flag.as_str() {
            "--host" => o.host = value,
            "--port" => o.port = u16::try_from(number(&value)).unwrap_or_else(|_| usage("--port")),
            "--ca" => o.ca = value,
            "--identities" => o.identities = value,
            "--prefix" => o.prefix = value,
            "--devices" => o.devices = usize::try_from(number(&value)).unwrap_or(0),
            "--in-flight" => {
                o.in_flight = u16::try_from(number(&value))
                    .ok()
                    .filter(|k| (1..=1000).contains(k))
                    .unwrap_or_else(|| usage("--in-flight must be 1 to 1000"));
            }
            "--duration" => o.duration = Duration::from_secs(number(&value)),
            "--payload-bytes" => o.payload_bytes = usize::try_from(number(&value)).unwrap_or(0),
            "--connect-concurrency" => {
                o.connect_concurrency = usize::try_from(number(&value)).unwrap_or(1).max(1);
            }
            "--source-addresses" => {
                o.source_addresses = u8::try_from(number(&value)).unwrap_or(1).max(1);
            }
            "--server-pid" => o.server_pid = u32::try_from(number(&value)).ok(),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if o.ca.is_empty() || o.identities.is_empty() {
        usage("--ca and --identities are required");
    }
    o
}

/// MQTT's variable-length "remaining length".
fn put_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = u8::try_from(n % 128).unwrap_or(0);
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn connect_packet(client_id: &str, username: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4); // 3.1.1
    body.push(0x82); // username, clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    put_str(&mut body, client_id);
    put_str(&mut body, username);
    let mut out = vec![0x10];
    put_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Append one QoS 1 PUBLISH of `payload` with packet id `id`.
fn put_publish(out: &mut Vec<u8>, topic: &str, id: u16, payload: &[u8]) {
    out.push(0x32);
    put_length(out, 2 + topic.len() + 2 + payload.len());
    put_str(out, topic);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Complete packets at the front of `buf`: (first byte, body range); how many bytes they use.
fn packets(buf: &[u8], found: &mut Vec<(u8, usize, usize)>) -> usize {
    let mut at = 0;
    while let Some(&first) = buf.get(at) {
        let mut len = 0usize;
        let mut shift = 0;
        let mut i = at + 1;
        let complete_header = loop {
            let Some(&b) = buf.get(i) else { break false };
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break true;
            }
            if shift > 21 {
                break false;
            }
        };
        if !complete_header || buf.len() < i + len {
            break;
        }
        found.push((first, i, i + len));
        at = i + len;
    }
    at
}

#[derive(Default)]
struct Totals {
    connected: Cell<u64>,
    failed: Cell<u64>,
    acked: Cell<u64>,
    /// Acknowledged after the duration (the last window drained): counted for CPU per message.
    drained: Cell<u64>,
}

async fn device(
    index: usize,
    o: Rc<Options>,
    totals: Rc<Totals>,
    connect_slots: Rc<tokio::sync::Semaphore>,
    start: Rc<tokio::sync::watch::Receiver<Option<Instant>>>,
) -> Result<(), String> {
    let id = format!("{}{index}", o.prefix);
    let cert = format!("{}/{id}.pem", o.identities);
    let key = format!("{}/{id}.key.pem", o.identities);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| format!("{cert}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{key}: {e}"))?;
    let permit = connect_slots.acquire().await.map_err(|e| e.to_string())?;
    let addr = tokio::net::lookup_host((o.host.as_str(), o.port))
        .await
        .map_err(|e| e.to_string())?
        .find(SocketAddr::is_ipv4)
        .ok_or("no IPv4 address")?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if o.source_addresses > 1 {
        let n = u8::try_from(index % usize::from(o.source_addresses)).unwrap_or(0) + 1;
        socket
            .bind(SocketAddr::new(IpAddr::from([127, 0, 0, n]), 0))
            .map_err(|e| e.to_string())?;
    }
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(o.host.clone()).map_err(|e| e.to_string())?;
    let config = client_config(&o.ca, Some((chain, key)))?;
    let mut stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let username = format!("{}/{id}/?api-version=2021-04-12", o.host);
    stream
        .write_all(&connect_packet(&id, &username))
        .await
        .map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .await
        .map_err(|e| format!("CONNACK: {e}"))?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(format!("refused: CONNACK {connack:02x?}"));
    }
    drop(permit);
    totals.connected.set(totals.connected.get() + 1);

    // Wait for every device, then go.
    let mut go = (*start).clone();
    let began = loop {
        if let Some(t) = *go.borrow() {
            break t;
        }
        if go.changed().await.is_err() {
            return Ok(());
        }
    };
    let deadline = began + o.duration;
    let topic = format!("devices/{id}/messages/events/");
    let payload = vec![b'x'; o.payload_bytes];
    let mut out = Vec::with_capacity(usize::from(o.in_flight) * (payload.len() + topic.len() + 8));
    let mut next_id = 1u16;
    for _ in 0..o.in_flight {
        put_publish(&mut out, &topic, next_id, &payload);
        next_id = next_id % 65_000 + 1;
    }
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut outstanding = u32::from(o.in_flight);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0usize;
    let mut found = Vec::new();
    while outstanding > 0 {
        let wait = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or(Duration::ZERO)
            + Duration::from_secs(5);
        let Some(room) = buf.get_mut(filled..) else {
            return Err("read buffer overrun".into());
        };
        let n = match tokio::time::timeout(wait, stream.read(room)).await {
            Ok(Ok(0)) => return Err("the broker closed the connection".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => break,
        };
        filled += n;
        found.clear();
        let used = packets(buf.get(..filled).unwrap_or_default(), &mut found);
        let now = Instant::now();
        out.clear();
        for &(first, _, _) in &found {
            if first >> 4 == 4 {
                outstanding -= 1;
                if now < deadline {
                    totals.acked.set(totals.acked.get() + 1);
                    put_publish(&mut out, &topic, next_id, &payload);
                    next_id = next_id % 65_000 + 1;
                    outstanding += 1;
                } else {
                    totals.drained.set(totals.drained.get() + 1);
                }
            }
        }
        buf.copy_within(used..filled, 0);
        filled -= used;
        if filled == buf.len() {
            return Err("a packet larger than the read buffer".into());
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
        }
    }
    let _ = stream.write_all(&[0xe0, 0]).await;
    let _ = stream.shutdown().await;
    Ok(())
}

fn client_config(
    ca: &str,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots
            .add(c.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// User + system CPU seconds of a process (`self` or a pid).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11usize, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn main() {
    let o = Rc::new(options());
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("cannot start the runtime: {e}")));
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&runtime, async move {
        if let Err(e) = client_config(&o.ca, None) {
            usage(&e);
        }
        let totals = Rc::new(Totals::default());
        let slots = Rc::new(tokio::sync::Semaphore::new(o.connect_concurrency));
        let (go, start) = tokio::sync::watch::channel(None);
        let start = Rc::new(start);
        let mut tasks = tokio::task::JoinSet::new();
        let mut first_error = None;
        for i in 0..o.devices {
            tasks.spawn_local(device(
                i,
                Rc::clone(&o),
                Rc::clone(&totals),
                Rc::clone(&slots),
                Rc::clone(&start),
            ));
        }
        // Start when every device has connected or failed.
        let settled = || totals.connected.get() + totals.failed.get() >= o.devices as u64;
        while !settled() {
            match tokio::time::timeout(Duration::from_millis(20), tasks.join_next()).await {
                Ok(Some(Ok(Err(e)))) => {
                    totals.failed.set(totals.failed.get() + 1);
                    first_error.get_or_insert(e);
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
        let server = o.server_pid.map(|p| p.to_string());
        let server_before = server.as_deref().map(cpu_seconds);
        let cpu_before = cpu_seconds("self");
        let began = Instant::now();
        let _ = go.send(Some(began));
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                totals.failed.set(totals.failed.get() + 1);
                first_error.get_or_insert(e);
            }
        }
        let cpu = cpu_seconds("self") - cpu_before;
        let server_cpu = server
            .as_deref()
            .map(cpu_seconds)
            .zip(server_before)
            .map(|(after, before)| after - before);
        let seconds = o.duration.as_secs_f64();
        let acked = totals.acked.get();
        let handled = acked + totals.drained.get();
        #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
        let (rate, us) = (
            acked as f64 / seconds,
            if handled > 0 { cpu * 1e6 / handled as f64 } else { 0.0 },
        );
        #[allow(clippy::cast_precision_loss, reason = "a ratio for display")]
        let server_part = server_cpu
            .map(|c| {
                let per = if handled > 0 { c * 1e6 / handled as f64 } else { 0.0 };
                format!(",\"serverCpuSeconds\":{c:.2},\"serverCpuUsPerMessage\":{per:.1}")
            })
            .unwrap_or_default();
        let error = first_error
            .map(|e| format!(",\"firstError\":\"{}\"", e.replace(['"', '\\'], "'")))
            .unwrap_or_default();
        format!(
            "{{\"devices\":{},\"connected\":{},\"failed\":{},\"acked\":{acked},\"seconds\":{seconds},\"messagesPerSec\":{rate:.1},\"cpuSeconds\":{cpu:.2},\"cpuUsPerMessage\":{us:.1}{server_part}{error}}}",
            o.devices,
            totals.connected.get(),
            totals.failed.get(),
        )
    });
    println!("{report}");
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn packets_are_framed_and_encoded_as_mqtt_says() {
        let mut out = Vec::new();
        put_publish(&mut out, "t", 7, &[b'x'; 200]);
        // 2 + 1 + 2 + 200 = 205 = 0xcd 0x01.
        assert_eq!(&out[..3], &[0x32, 0xcd, 0x01]);
        let mut wire = vec![0x40, 2, 0, 7];
        wire.extend_from_slice(&out);
        wire.extend_from_slice(&[0x40, 2]); // incomplete
        let mut found = Vec::new();
        let used = packets(&wire, &mut found);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], (0x40, 2, 4));
        assert_eq!(used, 4 + out.len());
        let c = connect_packet("d", "u");
        assert_eq!(c[0], 0x10);
        assert_eq!(usize::from(c[1]), c.len() - 2);
    }
}
