//! The telemetry event log on JetStream, shared by every node of a cluster
//! ([`muster_store::events::EventLog`]): a device's message is acknowledged once JetStream
//! stored it, and any node reads every device's telemetry.
//!
//! # Layout (`../shared/spec/scale-out.md` §2.4)
//! One stream per cluster, `MUSTER_<ns>_EVENTS`, retention by age (the hub's event retention).
//! Each hub's Event Hubs partitions are subjects, `muster.<ns>.ev.<hub>.<p>`; events routed only
//! to custom endpoints go to `muster.<ns>.ev.<hub>.r`. A handful of subjects per hub, never one
//! per device: the device id travels in the event. Every append carries a `Nats-Msg-Id`, so a
//! publish the client repeats after a reconnect is stored once.
//!
//! # Numbers
//! An event's offset and its sequence number in its partition are both its stream sequence:
//! increasing in each partition, with gaps (other partitions', other hubs' events). Event Hubs
//! clients only compare and resume from them; neither they nor muster's readers assume `+1`.
//!
//! # Encoding
//! The message body is a 4-byte big-endian length, the event's metadata as JSON (device,
//! module, properties, system properties, enqueued time, routes, the appending node), then the
//! payload unchanged.
//!
//! # Custom endpoints
//! Every node runs the routing workers, and all read the one log: each feeds the custom
//! endpoints with the events it appended itself (its own devices' telemetry), with its own
//! cursors, so an event is delivered once. Events a node appended but had not delivered when it
//! died wait for that node id to come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_trait::async_trait;
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::StreamExt as _;
use muster_store::StoreError;
use muster_store::events::{Event, EventLog, NewEvent, PartitionInfo, Start};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::escape;

/// How often a node looks for events other nodes appended (the watch readers wait on).
const POLL: Duration = Duration::from_millis(100);
/// How long a read waits for the next message of a consumer before it returns what it has.
const READ_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LogError(String);

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(Box::new(LogError(e.to_string())))
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    d: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
    #[serde(default)]
    p: Vec<(String, String)>,
    #[serde(default)]
    s: Vec<(String, String)>,
    e: String,
    t: i64,
    #[serde(default)]
    r: Vec<String>,
    /// The node that appended it (custom endpoints are fed by that node).
    #[serde(default)]
    o: String,
}

fn encode(event: &NewEvent, origin: &str) -> Result<Bytes, StoreError> {
    let meta = serde_json::to_vec(&Meta {
        d: event.device_id.clone(),
        m: event.module_id.clone(),
        p: event.properties.clone(),
        s: event.system_properties.clone(),
        e: event.enqueued.clone(),
        t: event.enqueued_ms,
        r: event.endpoints.clone(),
        o: origin.to_owned(),
    })
    .map_err(backend)?;
    let len = u32::try_from(meta.len()).map_err(backend)?;
    let mut out = BytesMut::with_capacity(4 + meta.len() + event.body.len());
    out.put_u32(len);
    out.put_slice(&meta);
    out.put_slice(&event.body);
    Ok(out.freeze())
}

/// The event in a stored message, or `None` (logged) when it is not one of ours.
fn decode(hub: &str, subject: &str, sequence: u64, payload: &[u8]) -> Option<Event> {
    decode_from(hub, subject, sequence, payload).map(|(event, _)| event)
}

/// [`decode`], with the node that appended the event.
fn decode_from(hub: &str, subject: &str, sequence: u64, payload: &[u8]) -> Option<(Event, String)> {
    let (len, rest) = payload.split_at_checked(4)?;
    let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
    let (meta, body) = rest.split_at_checked(len)?;
    let meta: Meta = match serde_json::from_slice(meta) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, subject, sequence, "unreadable event in the log");
            return None;
        }
    };
    let last = subject.rsplit('.').next().unwrap_or("r");
    let partition = last.parse::<u32>().ok();
    let seq_i64 = i64::try_from(sequence).unwrap_or(i64::MAX);
    let origin = meta.o;
    Some((
        Event {
            sequence,
            partition_sequence: partition.map_or(-1, |_| seq_i64),
            event: NewEvent {
                hub: hub.to_owned(),
                device_id: meta.d,
                module_id: meta.m,
                properties: meta.p,
                system_properties: meta.s,
                body: body.to_vec(),
                enqueued: meta.e,
                enqueued_ms: meta.t,
                partition: partition.unwrap_or(0),
                built_in: partition.is_some(),
                endpoints: meta.r,
            },
        },
        origin,
    ))
}

/// The shared event log of one cluster.
#[derive(Clone)]
pub struct JetStreamLog {
    js: jetstream::Context,
    stream: stream::Stream,
    cursors: kv::Store,
    prefix: String,
    node: String,
    msg_ids: String,
    next_id: Arc<AtomicU64>,
    latest: watch::Receiver<u64>,
    latest_tx: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl JetStreamLog {
    /// Open (creating if needed) the log of cluster `namespace`, keeping events for
    /// `retention`; `node` names this node's message ids.
    ///
    /// # Errors
    /// [`crate::JoinError::Bucket`] when JetStream refuses the stream or the cursor bucket.
    pub(crate) async fn open(
        js: &jetstream::Context,
        namespace: &str,
        node: &str,
        instance: &str,
        retention: Duration,
        replicas: usize,
    ) -> Result<Self, crate::JoinError> {
        let ns = escape(namespace);
        let name = format!("MUSTER_{ns}_EVENTS");
        let refused = |reason: String| crate::JoinError::Bucket {
            bucket: name.clone(),
            reason,
        };
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("muster.{ns}.ev.>")],
                max_age: retention,
                storage: stream::StorageType::File,
                num_replicas: replicas.max(1),
                duplicate_window: Duration::from_secs(120).min(retention),
                allow_direct: true,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| refused(e.to_string()))?;
        let last = stream
            .info()
            .await
            .map_err(|e| refused(e.to_string()))?
            .state
            .last_sequence;
        let cursors = crate::bucket(
            js,
            &format!("MUSTER_{ns}_CURSORS"),
            Duration::ZERO,
            replicas,
        )
        .await?;
        let (tx, rx) = watch::channel(last);
        let log = Self {
            js: js.clone(),
            stream,
            cursors,
            prefix: format!("muster.{ns}.ev"),
            node: node.to_owned(),
            msg_ids: format!("{node}/{instance}/"),
            next_id: Arc::new(AtomicU64::new(1)),
            latest: rx,
            latest_tx: Arc::new(tx),
        };
        log.watch_others();
        Ok(log)
    }

    /// Follow the stream's last sequence, for appends made by other nodes.
    fn watch_others(&self) {
        let stream = self.stream.clone();
        let tx = Arc::downgrade(&self.latest_tx);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let Some(tx) = tx.upgrade() else { return };
                match stream.get_info().await {
                    Ok(info) => {
                        let last = info.state.last_sequence;
                        tx.send_if_modified(|v| {
                            let newer = last > *v;
                            if newer {
                                *v = last;
                            }
                            newer
                        });
                    }
                    Err(e) => debug!(error = %e, "cannot read the event stream's state"),
                }
            }
        });
    }

    /// Delivery cursors are per node: each node feeds the endpoints with its own events.
    fn cursor_key(&self, key: &str) -> String {
        escape(&format!("{}/{key}", self.node))
    }

    fn hub_subject(&self, hub: &str) -> String {
        format!("{}.{}", self.prefix, escape(&hub.to_ascii_lowercase()))
    }

    /// Read events on `filter` from stream sequence `from` on: up to `limit` that `keep`
    /// accepts, stopping at the end of what is stored, or at stream sequence `until`.
    async fn scan(
        &self,
        hub: &str,
        filter: String,
        from: u64,
        until: Option<u64>,
        limit: usize,
        keep: impl Fn(&Event, &str) -> bool + Send,
    ) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // The first matching message, if any: an empty answer costs one request, not a
        // consumer.
        let first = match self
            .stream
            .direct_get_next_for_subject(filter.clone(), Some(from.max(1)))
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(backend(e)),
        };
        if until.is_some_and(|u| first.sequence > u) {
            return Ok(out);
        }
        if let Some((event, origin)) =
            decode_from(hub, first.subject.as_str(), first.sequence, &first.payload)
            && keep(&event, &origin)
        {
            out.push(event);
        }
        if out.len() >= limit {
            return Ok(out);
        }
        let consumer = self
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: filter,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first.sequence + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        let mut messages = consumer.messages().await.map_err(backend)?;
        loop {
            let Ok(next) = tokio::time::timeout(READ_WAIT, messages.next()).await else {
                break;
            };
            let Some(message) = next else { break };
            let message = message.map_err(backend)?;
            let info = message.info().map_err(backend)?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if until.is_some_and(|u| sequence > u) {
                break;
            }
            if let Some((event, origin)) =
                decode_from(hub, message.subject.as_str(), sequence, &message.payload)
                && keep(&event, &origin)
            {
                out.push(event);
            }
            if out.len() >= limit || pending == 0 || until.is_some_and(|u| sequence >= u) {
                break;
            }
        }
        Ok(out)
    }

    async fn edge(
        &self,
        subject: &str,
        first: bool,
    ) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
        let got = if first {
            self.stream
                .direct_get_next_for_subject(subject.to_owned(), Some(1))
                .await
        } else {
            self.stream
                .direct_get_last_for_subject(subject.to_owned())
                .await
        };
        match got {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }
}

#[async_trait]
impl EventLog for JetStreamLog {
    async fn append(&self, event: NewEvent) -> Result<u64, StoreError> {
        let subject = if event.built_in {
            format!("{}.{}", self.hub_subject(&event.hub), event.partition)
        } else {
            format!("{}.r", self.hub_subject(&event.hub))
        };
        let mut headers = async_nats::HeaderMap::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}{id}", self.msg_ids).as_str(),
        );
        let started = std::time::Instant::now();
        let ack = self
            .js
            .publish_with_headers(subject, headers, encode(&event, &self.node)?)
            .await
            .map_err(backend)?
            .await
            .map_err(backend)?;
        muster_metrics::metrics().commit(1, started.elapsed());
        self.latest_tx.send_if_modified(|v| {
            let newer = ack.sequence > *v;
            if newer {
                *v = ack.sequence;
            }
            newer
        });
        Ok(ack.sequence)
    }

    async fn read(
        &self,
        hub: &str,
        after: u64,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if *self.latest.borrow() <= after {
            return Ok(Vec::new());
        }
        let filter = format!("{}.*", self.hub_subject(hub));
        let device = device.map(str::to_owned);
        self.scan(hub, filter, after + 1, None, limit, move |e, _| {
            e.event.built_in && device.as_deref().is_none_or(|d| e.event.device_id == d)
        })
        .await
    }

    async fn read_partition(
        &self,
        hub: &str,
        partition: u32,
        start: Start,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let filter = format!("{}.{partition}", self.hub_subject(hub));
        let (from, min_ms) = match start {
            Start::Offset { offset, inclusive }
            | Start::Sequence {
                sequence: offset,
                inclusive,
            } => {
                let at = u64::try_from(offset.max(0)).unwrap_or(0);
                (
                    if inclusive || offset < 0 {
                        at.max(1)
                    } else {
                        at + 1
                    },
                    None,
                )
            }
            Start::Enqueued { millis, inclusive } => {
                (1, Some(if inclusive { millis } else { millis + 1 }))
            }
        };
        self.scan(hub, filter, from, None, limit, move |e, _| {
            min_ms.is_none_or(|m| e.event.enqueued_ms >= m)
        })
        .await
    }

    async fn read_routed(
        &self,
        hub: &str,
        endpoint: &str,
        after: u64,
        window: u64,
        limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError> {
        let latest = *self.latest.borrow();
        let until = latest.min(after.saturating_add(window));
        if until <= after {
            return Ok((Vec::new(), after));
        }
        let filter = format!("{}.>", self.hub_subject(hub));
        let endpoint = endpoint.to_ascii_lowercase();
        // Each node feeds the custom endpoints with the events it appended (its own devices'),
        // so N nodes reading one log deliver each event once.
        let node = self.node.clone();
        let events = self
            .scan(
                hub,
                filter,
                after + 1,
                Some(until),
                limit,
                move |e, origin| {
                    origin == node
                        && e.event
                            .endpoints
                            .iter()
                            .any(|r| r.eq_ignore_ascii_case(&endpoint))
                },
            )
            .await?;
        // Full page: resume after the last one returned; otherwise everything up to `until`
        // was looked at.
        let reached = if events.len() >= limit {
            events.last().map_or(until, |e| e.sequence)
        } else {
            until
        };
        Ok((events, reached))
    }

    async fn progress(&self, key: &str) -> Result<u64, StoreError> {
        match self.cursors.get(self.cursor_key(key)).await {
            Ok(Some(v)) => Ok(std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)),
            Ok(None) => Ok(0),
            Err(e) => Err(backend(e)),
        }
    }

    async fn set_progress(&self, key: &str, position: u64) -> Result<(), StoreError> {
        self.cursors
            .put(self.cursor_key(key), position.to_string().into())
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn partition_info(&self, hub: &str, partition: u32) -> Result<PartitionInfo, StoreError> {
        let subject = format!("{}.{partition}", self.hub_subject(hub));
        let Some(last) = self.edge(&subject, false).await? else {
            let next = i64::try_from(*self.latest.borrow() + 1).unwrap_or(i64::MAX);
            return Ok(PartitionInfo {
                begin_sequence: next,
                last_sequence: -1,
                last_offset: -1,
                last_enqueued_ms: 0,
                is_empty: true,
            });
        };
        let first = self.edge(&subject, true).await?;
        let last_seq = i64::try_from(last.sequence).unwrap_or(i64::MAX);
        let last_ms = decode(hub, last.subject.as_str(), last.sequence, &last.payload)
            .map_or(0, |e| e.event.enqueued_ms);
        Ok(PartitionInfo {
            begin_sequence: first
                .map_or(last_seq, |f| i64::try_from(f.sequence).unwrap_or(i64::MAX)),
            last_sequence: last_seq,
            last_offset: last_seq,
            last_enqueued_ms: last_ms,
            is_empty: false,
        })
    }

    fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_envelope() {
        let event = NewEvent {
            hub: "hub.local".into(),
            device_id: "d1".into(),
            module_id: Some("m".into()),
            properties: vec![("temperatureAlert".into(), "true".into())],
            system_properties: vec![("content-type".into(), "application/json".into())],
            body: b"{\"t\":31.2}".to_vec(),
            enqueued: "2026-12-05T00:00:00.000Z".into(),
            enqueued_ms: 1_796_000_000_000,
            partition: 3,
            built_in: true,
            endpoints: vec!["hook".into()],
        };
        let bytes = encode(&event, "n1").unwrap();
        let (back, origin) =
            decode_from("hub.local", "muster.x.ev.hub=2Elocal.3", 42, &bytes).unwrap();
        assert_eq!(origin, "n1");
        assert_eq!(back.sequence, 42);
        assert_eq!(back.partition_sequence, 42);
        assert_eq!(back.event, event);
        let routed = decode("hub.local", "muster.x.ev.hub=2Elocal.r", 43, &bytes).unwrap();
        assert_eq!(routed.partition_sequence, -1);
        assert!(!routed.event.built_in);
        assert!(decode("h", "s.1", 1, b"\x00\x00").is_none());
        assert!(decode("h", "s.1", 1, b"\x00\x00\x00\xffxx").is_none());
    }
}
