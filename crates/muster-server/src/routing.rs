//! Delivery to custom routing endpoints, at least once.
//!
//! The hub core decides where each message goes when it is stored (`muster_hub::routing`);
//! here one worker per (hub, endpoint) reads the durable event log from its saved position,
//! delivers what was routed to its endpoint, and saves the new position only after the
//! endpoint took it. An endpoint that is down is retried with backoff (1 s doubling to 60 s):
//! the log is the buffer, nothing is skipped, and a restart resumes from the saved position.
//! Workers never hold more than one batch, and ingestion never waits for them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_hub::routing::{Endpoint, EndpointKind};
use muster_store::events::Event;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::Context;
use crate::rest::events::event_json;

/// Events delivered per batch.
const BATCH: usize = 256;
/// Log positions looked at per read (so a quiet endpoint's position still moves on).
const WINDOW: u64 = 50_000;
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Run the delivery workers until `shutdown`, following routing changes.
pub(crate) fn spawn(ctx: Arc<Context>, shutdown: CancellationToken, tracker: &TaskTracker) {
    let inner = tracker.clone();
    tracker.spawn(async move { supervise(ctx, shutdown, inner).await });
}

async fn supervise(ctx: Arc<Context>, shutdown: CancellationToken, tracker: TaskTracker) {
    let mut changes = ctx.hub.router().subscribe();
    // (hub, endpoint definition as JSON) → the worker's stop token.
    let mut running: HashMap<(String, String), CancellationToken> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let mut wanted = HashMap::new();
        for hub in ctx.hub.hostnames() {
            let hub = hub.to_ascii_lowercase();
            match ctx.hub.routing(&hub).await {
                Ok(table) => {
                    for e in &table.config.endpoints {
                        let def = serde_json::to_string(e).unwrap_or_default();
                        wanted.insert((hub.clone(), def), e.clone());
                    }
                }
                Err(e) => warn!(hub, error = %e, "routing configuration unreadable"),
            }
        }
        running.retain(|key, stop| {
            let keep = wanted.contains_key(key);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (key, endpoint) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let stop = shutdown.child_token();
            running.insert(key.clone(), stop.clone());
            let ctx = Arc::clone(&ctx);
            tracker.spawn(async move { worker(ctx, key.0, endpoint, stop).await });
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

async fn worker(ctx: Arc<Context>, hub: String, endpoint: Endpoint, stop: CancellationToken) {
    let key = format!("route/{hub}/{}", endpoint.name.to_ascii_lowercase());
    let log = ctx.hub.events();
    let mut sink = match Sink::new(&hub, &endpoint) {
        Ok(s) => s,
        Err(e) => return warn!(endpoint = endpoint.name, error = e, "endpoint cannot start"),
    };
    let mut position = loop {
        match log.progress(&key).await {
            Ok(p) => break p,
            Err(e) => {
                warn!(endpoint = endpoint.name, error = %e, "cannot read the endpoint's position; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    info!(
        hub,
        endpoint = endpoint.name,
        position,
        "routing endpoint started"
    );
    let mut committed = log.subscribe();
    let mut saved = Instant::now();
    loop {
        committed.borrow_and_update();
        let (batch, seen) = match log
            .read_routed(&hub, &endpoint.name, position, WINDOW, BATCH)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(endpoint = endpoint.name, error = %e, "event log read failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        if !batch.is_empty() && !deliver(&mut sink, &endpoint.name, &batch, &stop).await {
            return;
        }
        if seen != position {
            position = seen;
            // After a delivery at once; otherwise (the position only moved past messages for
            // other endpoints) at most once a second: a restart then looks at them again and
            // finds nothing to deliver.
            if !batch.is_empty() || saved.elapsed() >= Duration::from_secs(1) {
                match log.set_progress(&key, position).await {
                    Ok(()) => saved = Instant::now(),
                    Err(e) => {
                        warn!(endpoint = endpoint.name, error = %e, "cannot save the endpoint's position");
                    }
                }
            }
        }
        if batch.is_empty() && position >= log.latest() {
            tokio::select! {
                () = stop.cancelled() => return sink.close().await,
                r = committed.changed() => if r.is_err() { return },
                // File batches close on time even when nothing arrives.
                () = tokio::time::sleep(Duration::from_secs(1)) => sink.tick().await,
            }
        }
    }
}

/// Deliver one batch, retrying with backoff until it is taken; `false` when stopped first.
async fn deliver(sink: &mut Sink, name: &str, batch: &[Event], stop: &CancellationToken) -> bool {
    let mut backoff = Duration::from_secs(1);
    let mut failures = 0_u32;
    loop {
        match sink.send(batch).await {
            Ok(()) => {
                if failures > 0 {
                    info!(
                        endpoint = name,
                        failures, "endpoint reachable again; delivered"
                    );
                }
                debug!(endpoint = name, events = batch.len(), "delivered");
                return true;
            }
            Err(e) => {
                failures += 1;
                warn!(
                    endpoint = name,
                    events = batch.len(),
                    retry_in_s = backoff.as_secs(),
                    error = e,
                    "endpoint delivery failed; the events wait in the log"
                );
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Where a worker delivers.
enum Sink {
    Webhook {
        client: reqwest::Client,
        url: String,
        headers: Vec<(String, String)>,
    },
    File(FileSink),
    Nats {
        url: String,
        subject: String,
        client: Option<async_nats::Client>,
    },
}

impl Sink {
    fn new(hub: &str, endpoint: &Endpoint) -> Result<Self, String> {
        match &endpoint.kind {
            EndpointKind::Webhook { url, headers } => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Self::Webhook {
                    client,
                    url: url.clone(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
            }
            EndpointKind::File {
                directory,
                max_file_bytes,
                max_file_seconds,
            } => Ok(Self::File(FileSink {
                root: PathBuf::from(directory)
                    .join(muster_hub::eventhub::entity_name(hub))
                    .join(&endpoint.name),
                max_bytes: *max_file_bytes,
                max_age: Duration::from_secs(*max_file_seconds),
                current: None,
            })),
            EndpointKind::Nats { url, subject } => Ok(Self::Nats {
                url: url.clone(),
                subject: subject.clone(),
                client: None,
            }),
        }
    }

    async fn send(&mut self, batch: &[Event]) -> Result<(), String> {
        match self {
            Self::Webhook {
                client,
                url,
                headers,
            } => {
                let body: Vec<Value> = batch.iter().map(event_json).collect();
                let mut request = client.post(url.as_str()).json(&body);
                for (k, v) in headers.iter() {
                    request = request.header(k.as_str(), v.as_str());
                }
                // reqwest's errors carry the URL, which may hold a secret: say only what kind.
                let response = request.send().await.map_err(|e| {
                    if e.is_timeout() {
                        "no answer within 30 s".to_owned()
                    } else if e.is_connect() {
                        "cannot connect".to_owned()
                    } else {
                        "the request failed".to_owned()
                    }
                })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("answered HTTP {}", status.as_u16()))
                }
            }
            Self::File(f) => f.append(batch).await,
            Self::Nats {
                url,
                subject,
                client,
            } => {
                if client.is_none() {
                    let options = async_nats::ConnectOptions::new()
                        .connection_timeout(Duration::from_secs(10))
                        .retry_on_initial_connect();
                    let connecting = tokio::time::timeout(
                        Duration::from_secs(10),
                        options.connect(url.as_str()),
                    );
                    *client = Some(
                        connecting
                            .await
                            .map_err(|_| "cannot connect within 10 s".to_owned())?
                            .map_err(|e| format!("cannot connect: {e}"))?,
                    );
                }
                let Some(c) = client.as_ref() else {
                    return Err("not connected".into());
                };
                let published = async {
                    for e in batch {
                        c.publish_with_headers(
                            subject.clone(),
                            nats_headers(e),
                            e.event.body.clone().into(),
                        )
                        .await
                        .map_err(|e| format!("publish failed: {e}"))?;
                    }
                    // The server has them once a flush (PING/PONG) returns.
                    c.flush().await.map_err(|e| format!("flush failed: {e}"))
                };
                match tokio::time::timeout(Duration::from_secs(30), published).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        *client = None;
                        Err(e)
                    }
                    Err(_) => {
                        *client = None;
                        Err("no confirmation within 30 s".into())
                    }
                }
            }
        }
    }

    async fn tick(&mut self) {
        if let Self::File(f) = self {
            f.rotate_if_due().await;
        }
    }

    async fn close(&mut self) {
        if let Self::File(f) = self {
            f.current = None;
        }
    }
}

/// A message's properties as NATS headers: application properties by name, system properties
/// (`iothub-connection-device-id`, `content-type`, …) by theirs, plus the log position.
fn nats_headers(e: &Event) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    let clean = |v: &str| v.replace(['\r', '\n'], " ");
    for (k, v) in e.event.system_properties.iter().chain(&e.event.properties) {
        if !k.is_empty() && k.chars().all(|c| c.is_ascii_graphic() && c != ':') {
            headers.insert(k.as_str(), clean(v).as_str());
        }
    }
    headers.insert("x-opt-offset", e.sequence.to_string().as_str());
    headers
}

/// JSON lines in `{directory}/{hub}/{endpoint}/{YYYY}/{MM}/{DD}/{HH}/{mm}-{first sequence}.json`,
/// a new file past a size or an age, each write synced before its events count as delivered.
struct FileSink {
    root: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    current: Option<OpenFile>,
}

struct OpenFile {
    file: tokio::fs::File,
    size: u64,
    opened: Instant,
}

impl FileSink {
    async fn rotate_if_due(&mut self) {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.size >= self.max_bytes || c.opened.elapsed() >= self.max_age)
        {
            self.current = None;
        }
    }

    async fn append(&mut self, batch: &[Event]) -> Result<(), String> {
        self.rotate_if_due().await;
        let mut text = Vec::new();
        for e in batch {
            serde_json::to_writer(&mut text, &event_json(e)).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        if self.current.is_none() {
            let now = time::OffsetDateTime::now_utc();
            let dir = self.root.join(format!(
                "{:04}/{:02}/{:02}/{:02}",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour()
            ));
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let first = batch.first().map_or(0, |e| e.sequence);
            let path = dir.join(format!("{:02}-{first}.json", now.minute()));
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            self.current = Some(OpenFile {
                file,
                size: 0,
                opened: Instant::now(),
            });
        }
        let Some(current) = self.current.as_mut() else {
            return Err("no file open".into());
        };
        let written = async {
            current.file.write_all(&text).await?;
            current.file.sync_data().await
        }
        .await;
        if let Err(e) = written {
            // Start a fresh file on the retry: this one may end in a partial line.
            self.current = None;
            return Err(format!("cannot write: {e}"));
        }
        current.size += u64::try_from(text.len()).unwrap_or(u64::MAX);
        Ok(())
    }
}
