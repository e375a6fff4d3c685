//! The built-in event log: device-to-cloud messages in arrival order, each with a sequence
//! number, readable from any point for as long as the retention keeps it.
//!
//! Durability with group commit: one writer thread owns the log's connection
//! (`synchronous=FULL`), drains every append queued behind the first, writes them in one
//! transaction — one fsync for the batch — and only then answers each appender. A device's
//! QoS 1 message is acknowledged after its append returns, so an acknowledged message survives
//! `kill -9` and power loss, while a busy hub pays one fsync per batch, not per message.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, params};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::StoreError;

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Hub host name.
    pub hub: String,
    /// Sending device.
    pub device_id: String,
    /// Sending module, if any.
    pub module_id: Option<String>,
    /// Application properties.
    pub properties: Vec<(String, String)>,
    /// System properties (`message-id`, `content-type`, …).
    pub system_properties: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Enqueued time, Azure format.
    pub enqueued: String,
    /// Enqueued time, Unix milliseconds (start positions, retention).
    pub enqueued_ms: i64,
    /// The Event Hubs partition the message belongs to (the hub chooses it from the device
    /// id, so one device's messages stay in order).
    pub partition: u32,
    /// Routed to the built-in endpoint: only these are numbered in their partition and read
    /// by Event Hubs consumers and the event stream.
    pub built_in: bool,
    /// The custom routing endpoints it goes to.
    pub endpoints: Vec<String>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the log (1, 2, 3, …), across partitions; the Event Hubs offset.
    pub sequence: u64,
    /// Position in its partition (0, 1, 2, …); the Event Hubs sequence number (`-1` for an
    /// event not routed to the built-in endpoint).
    pub partition_sequence: i64,
    /// The message.
    pub event: NewEvent,
}

/// Where a partition reader starts, as the Event Hubs start positions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After (or at, when inclusive) an offset; offset `-1` is the start of the partition.
    Offset {
        /// The offset (an [`Event::sequence`]).
        offset: i64,
        /// Include the event at the offset itself.
        inclusive: bool,
    },
    /// After (or at) a sequence number of the partition.
    Sequence {
        /// The sequence number (an [`Event::partition_sequence`]).
        sequence: i64,
        /// Include the event with that number.
        inclusive: bool,
    },
    /// Enqueued after (or at) a time, Unix milliseconds.
    Enqueued {
        /// The time.
        millis: i64,
        /// Include events enqueued at exactly that millisecond.
        inclusive: bool,
    },
}

/// What a partition holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionInfo {
    /// The oldest sequence number still kept (the next one to be written, when empty).
    pub begin_sequence: i64,
    /// The newest sequence number, `-1` when the partition never held anything.
    pub last_sequence: i64,
    /// The newest event's offset, `-1` when none.
    pub last_offset: i64,
    /// The newest event's enqueued time, Unix milliseconds (0 when none).
    pub last_enqueued_ms: i64,
    /// No event is kept.
    pub is_empty: bool,
}

/// The event log interface.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug + 'static {
    /// Append durably; returns the sequence number.
    async fn append(&self, event: NewEvent) -> Result<u64, StoreError>;
    /// Up to `limit` events of `hub` with a sequence number above `after`, optionally only from
    /// one device.
    async fn read(
        &self,
        hub: &str,
        after: u64,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// Up to `limit` events of one partition of `hub` from `start`, in partition order.
    async fn read_partition(
        &self,
        hub: &str,
        partition: u32,
        start: Start,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// Up to `limit` events of `hub` routed to custom endpoint `endpoint`, looking at the log's
    /// positions after `after` up to `after + window`; returns them and the last position looked
    /// at (a reader resumes there even when nothing matched).
    async fn read_routed(
        &self,
        hub: &str,
        endpoint: &str,
        after: u64,
        window: u64,
        limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError>;
    /// A delivery cursor (0 when never saved).
    async fn progress(&self, key: &str) -> Result<u64, StoreError>;
    /// Save a delivery cursor.
    async fn set_progress(&self, key: &str, position: u64) -> Result<(), StoreError>;
    /// What partition `partition` of `hub` holds.
    async fn partition_info(&self, hub: &str, partition: u32) -> Result<PartitionInfo, StoreError>;
    /// The last sequence number written (0 when empty).
    fn latest(&self) -> u64;
    /// Notified with the latest sequence number after every commit.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

type Job = (NewEvent, oneshot::Sender<Result<u64, String>>);

/// SQLite event log in its own database file.
#[derive(Debug, Clone)]
pub struct SqliteEventLog {
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    latest: watch::Receiver<u64>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

const BATCH: usize = 512;

impl SqliteEventLog {
    /// Open (creating) the log at `path`; events older than `retention` are deleted in the
    /// background.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the file cannot be opened.
    pub fn open(path: &Path, retention: Duration) -> Result<Self, StoreError> {
        let writer = Connection::open(path).map_err(backend)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        writer
            .pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        // Delivery positions are saved through the reader connection: wait for its short
        // transactions instead of failing an append with SQLITE_BUSY.
        writer
            .busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS events (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    hub TEXT NOT NULL,
                    device_id TEXT NOT NULL,
                    module_id TEXT,
                    enqueued TEXT NOT NULL,
                    enqueued_unix INTEGER NOT NULL,
                    properties TEXT NOT NULL,
                    system_properties TEXT NOT NULL,
                    body BLOB NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS events_by_time ON events (enqueued_unix);",
            )
            .map_err(backend)?;
        migrate(&writer).map_err(backend)?;
        let last: i64 = writer
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(backend)?;
        let reader = Connection::open(path).map_err(backend)?;
        reader
            .busy_timeout(Duration::from_secs(5))
            .map_err(backend)?;
        let (latest_tx, latest) = watch::channel(u64::try_from(last).unwrap_or(0));
        let (jobs, rx) = mpsc::channel::<Job>(4096);
        let reader = Arc::new(Mutex::new(reader));
        // The writer thread closes both connections, one after the other, once the last handle
        // is gone: SQLite can deadlock when two connections to one file close at the same time
        // on different threads (seen in tests that drop a log while its writer winds down).
        let last_reader = Arc::clone(&reader);
        std::thread::Builder::new()
            .name("muster-event-log".into())
            .spawn(move || {
                writer_loop(writer, rx, &latest_tx, retention);
                drop(last_reader);
            })
            .map_err(backend)?;
        Ok(Self {
            jobs,
            reader,
            latest,
        })
    }
}

/// Partitions given to events written before the log had partitions.
const LEGACY_PARTITIONS: u32 = 4;

/// Add the partition columns to a log made by an older muster, and place its events: each in
/// its device's partition of the default count, numbered in arrival order.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_partition = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'partition'")?
        .exists([])?;
    if !has_partition {
        conn.execute_batch(
            "ALTER TABLE events ADD COLUMN partition INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE events ADD COLUMN pseq INTEGER DEFAULT 0;
             ALTER TABLE events ADD COLUMN enqueued_ms INTEGER NOT NULL DEFAULT 0;
             UPDATE events SET enqueued_ms = enqueued_unix * 1000;",
        )?;
        let rows: Vec<(i64, String, String)> = conn
            .prepare("SELECT seq, hub, device_id FROM events ORDER BY seq")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut next: std::collections::HashMap<(String, u32), i64> = Default::default();
        let mut update =
            conn.prepare("UPDATE events SET partition = ?1, pseq = ?2 WHERE seq = ?3")?;
        for (seq, hub, device) in rows {
            let p = partition_of(&device, LEGACY_PARTITIONS);
            let n = next.entry((hub, p)).or_insert(0);
            update.execute(params![p, *n, seq])?;
            *n += 1;
        }
    }
    let has_routes = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'routes'")?
        .exists([])?;
    if !has_routes {
        conn.execute_batch("ALTER TABLE events ADD COLUMN routes TEXT;")?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS progress (key TEXT PRIMARY KEY, position INTEGER NOT NULL);",
    )?;
    // The next sequence number per partition outlives the events (retention may empty a
    // partition; its numbers never go back).
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS events_by_partition ON events (hub, partition, pseq);
         CREATE TABLE IF NOT EXISTS partitions (
            hub TEXT NOT NULL,
            partition INTEGER NOT NULL,
            next INTEGER NOT NULL,
            PRIMARY KEY (hub, partition)
         );
         INSERT OR IGNORE INTO partitions (hub, partition, next)
            SELECT hub, partition, MAX(pseq) + 1 FROM events GROUP BY hub, partition;",
    )
}

/// The partition of a device's messages: FNV-1a of the device id, modulo `partitions`.
/// Stable across versions and machines (a log written by one node is read by another).
#[must_use]
pub fn partition_of(device_id: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in device_id.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

fn props_json(pairs: &[(String, String)]) -> String {
    let m: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(m).to_string()
}

fn props_from(text: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        _ => Vec::new(),
    }
}

// `+hub` keeps SQLite off the (hub, partition, pseq) index for these two reads: with it, the
// planner took every event of the hub through that index and sorted them by seq for each
// batch, O(log size) per page read; a 1.8-million-event log served the event stream at a few
// hundred events a second. Without it the read is a range of the rowid (seq), O(batch).
const READ_SQL: &str = "SELECT seq, hub, device_id, module_id, enqueued, enqueued_ms, properties, system_properties, body, partition, pseq, routes
     FROM events WHERE +hub = ?1 AND seq > ?2 AND (?3 IS NULL OR device_id = ?3) AND pseq IS NOT NULL ORDER BY seq LIMIT ?4";
const READ_ROUTED_SQL: &str = "SELECT seq, hub, device_id, module_id, enqueued, enqueued_ms, properties, system_properties, body, partition, pseq, routes
     FROM events WHERE seq > ?1 AND seq <= ?2 AND +hub = ?3 AND routes LIKE ?4 ORDER BY seq LIMIT ?5";

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    latest: &watch::Sender<u64>,
    retention: Duration,
) {
    let mut last_sweep = std::time::Instant::now();
    // The next sequence number per (hub, partition), loaded on first use.
    let mut next_pseq: std::collections::HashMap<(String, u32), i64> = Default::default();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        // Partition numbers advance only when the batch commits.
        let mut numbering = std::collections::HashMap::new();
        let result = (|| -> rusqlite::Result<Vec<u64>> {
            // IMMEDIATE: take the write lock first. A deferred transaction that reads (the
            // partition counters) before writing fails at once with SQLITE_BUSY_SNAPSHOT when
            // another connection (delivery positions) committed in between.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut seqs = Vec::with_capacity(batch.len());
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO events (hub, device_id, module_id, enqueued, enqueued_unix, properties, system_properties, body, partition, pseq, enqueued_ms, routes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
                let mut last = tx.prepare_cached(
                    "SELECT COALESCE((SELECT next FROM partitions WHERE hub = ?1 AND partition = ?2), 0)",
                )?;
                for (e, _) in &batch {
                    let pseq = if e.built_in {
                        let key = (e.hub.clone(), e.partition);
                        let pseq = match numbering.get(&key).or_else(|| next_pseq.get(&key)) {
                            Some(n) => *n,
                            None => {
                                last.query_row(params![e.hub, e.partition], |r| r.get::<_, i64>(0))?
                            }
                        };
                        numbering.insert(key, pseq + 1);
                        Some(pseq)
                    } else {
                        None
                    };
                    let routes = (!e.endpoints.is_empty())
                        .then(|| format!(",{},", e.endpoints.join(",").to_ascii_lowercase()));
                    stmt.execute(params![
                        e.hub,
                        e.device_id,
                        e.module_id,
                        e.enqueued,
                        e.enqueued_ms.div_euclid(1000),
                        props_json(&e.properties),
                        props_json(&e.system_properties),
                        e.body,
                        e.partition,
                        pseq,
                        e.enqueued_ms,
                        routes
                    ])?;
                    seqs.push(u64::try_from(tx.last_insert_rowid()).unwrap_or(0));
                }
                let mut save = tx.prepare_cached(
                    "INSERT INTO partitions (hub, partition, next) VALUES (?1, ?2, ?3)
                     ON CONFLICT (hub, partition) DO UPDATE SET next = excluded.next",
                )?;
                for ((hub, partition), next) in &numbering {
                    save.execute(params![hub, partition, next])?;
                }
            }
            tx.commit()?;
            Ok(seqs)
        })();
        match result {
            Ok(seqs) => {
                muster_metrics::metrics().commit(batch.len(), started.elapsed());
                next_pseq.extend(numbering);
                if let Some(last) = seqs.last() {
                    latest.send_replace(*last);
                }
                for ((_, ack), seq) in batch.into_iter().zip(seqs) {
                    let _ = ack.send(Ok(seq));
                }
            }
            Err(e) => {
                for (_, ack) in batch {
                    let _ = ack.send(Err(e.to_string()));
                }
            }
        }
        if last_sweep.elapsed() > Duration::from_secs(60) {
            last_sweep = std::time::Instant::now();
            let cutoff = time::OffsetDateTime::now_utc().unix_timestamp()
                - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
            let _ = conn.execute(
                "DELETE FROM events WHERE enqueued_unix < ?1",
                params![cutoff],
            );
        }
    }
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let enqueued_ms: i64 = r.get(5)?;
    let pseq: Option<i64> = r.get(10)?;
    let routes: Option<String> = r.get(11)?;
    Ok(Event {
        sequence: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
        partition_sequence: pseq.unwrap_or(-1),
        event: NewEvent {
            hub: r.get(1)?,
            device_id: r.get(2)?,
            module_id: r.get(3)?,
            enqueued: r.get(4)?,
            enqueued_ms,
            properties: props_from(&r.get::<_, String>(6)?),
            system_properties: props_from(&r.get::<_, String>(7)?),
            body: r.get(8)?,
            partition: r.get(9)?,
            built_in: pseq.is_some(),
            endpoints: routes
                .unwrap_or_default()
                .split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect(),
        },
    })
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append(&self, event: NewEvent) -> Result<u64, StoreError> {
        let (ack, done) = oneshot::channel();
        self.jobs
            .send((event, ack))
            .await
            .map_err(|_| backend(Message("the event log writer has stopped".into())))?;
        done.await
            .map_err(|_| backend(Message("the event log writer has stopped".into())))?
            .map_err(|e| backend(Message(e)))
    }

    async fn read(
        &self,
        hub: &str,
        after: u64,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let reader = Arc::clone(&self.reader);
        let (hub, device) = (hub.to_ascii_lowercase(), device.map(str::to_owned));
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| backend(Message("event log reader poisoned".into())))?;
            let mut stmt = conn.prepare_cached(READ_SQL).map_err(backend)?;
            let rows = stmt
                .query_map(params![hub, after, device, limit], event_row)
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    async fn read_partition(
        &self,
        hub: &str,
        partition: u32,
        start: Start,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let reader = Arc::clone(&self.reader);
        let hub = hub.to_ascii_lowercase();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Each start position is one range condition on the partition's rows.
        let (column, bound) = match start {
            Start::Offset { offset, inclusive } => ("seq", (offset, inclusive)),
            Start::Sequence {
                sequence,
                inclusive,
            } => ("pseq", (sequence, inclusive)),
            Start::Enqueued { millis, inclusive } => ("enqueued_ms", (millis, inclusive)),
        };
        let op = if bound.1 { ">=" } else { ">" };
        let sql = format!(
            "SELECT seq, hub, device_id, module_id, enqueued, enqueued_ms, properties, system_properties, body, partition, pseq, routes
             FROM events WHERE hub = ?1 AND partition = ?2 AND {column} {op} ?3 AND pseq IS NOT NULL ORDER BY pseq LIMIT ?4"
        );
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| backend(Message("event log reader poisoned".into())))?;
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![hub, partition, bound.0, limit], event_row)
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    async fn read_routed(
        &self,
        hub: &str,
        endpoint: &str,
        after: u64,
        window: u64,
        limit: usize,
    ) -> Result<(Vec<Event>, u64), StoreError> {
        let reader = Arc::clone(&self.reader);
        let hub = hub.to_ascii_lowercase();
        let pattern = format!(
            "%,{},%",
            endpoint.to_ascii_lowercase().replace(['%', '_'], "")
        );
        let latest = self.latest();
        let upto = after.saturating_add(window).min(latest).max(after);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (from, to) = (
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::try_from(upto).unwrap_or(i64::MAX),
        );
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| backend(Message("event log reader poisoned".into())))?;
            let mut stmt = conn.prepare_cached(READ_ROUTED_SQL).map_err(backend)?;
            let events = stmt
                .query_map(params![from, to, hub, pattern, limit], event_row)
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            // A full page ends at its last event; otherwise everything up to `upto` was seen.
            let seen = if i64::try_from(events.len()).unwrap_or(i64::MAX) >= limit {
                events.last().map_or(upto, |e| e.sequence)
            } else {
                upto
            };
            Ok((events, seen))
        })
        .await
        .map_err(backend)?
    }

    async fn progress(&self, key: &str) -> Result<u64, StoreError> {
        let reader = Arc::clone(&self.reader);
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| backend(Message("event log reader poisoned".into())))?;
            let position: Option<i64> = conn
                .prepare_cached("SELECT position FROM progress WHERE key = ?1")
                .and_then(|mut s| {
                    s.query_row(params![key], |r| r.get(0))
                        .map(Some)
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(None),
                            e => Err(e),
                        })
                })
                .map_err(backend)?;
            Ok(position.and_then(|p| u64::try_from(p).ok()).unwrap_or(0))
        })
        .await
        .map_err(backend)?
    }

    async fn set_progress(&self, key: &str, position: u64) -> Result<(), StoreError> {
        let reader = Arc::clone(&self.reader);
        let key = key.to_owned();
        let position = i64::try_from(position).unwrap_or(i64::MAX);
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| backend(Message("event log reader poisoned".into())))?;
            conn.prepare_cached(
                "INSERT INTO progress (key, position) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET position = excluded.position",
            )
            .and_then(|mut s| s.execute(params![key, position]))
            .map_err(backend)?;
            Ok(())
        })
        .await
        .map_err(backend)?
    }

    async fn partition_info(&self, hub: &str, partition: u32) -> Result<PartitionInfo, StoreError> {
        let reader = Arc::clone(&self.reader);
        let hub = hub.to_ascii_lowercase();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| backend(Message("event log reader poisoned".into())))?;
            let next: i64 = conn
                .prepare_cached(
                    "SELECT COALESCE((SELECT next FROM partitions WHERE hub = ?1 AND partition = ?2), 0)",
                )
                .and_then(|mut s| s.query_row(params![hub, partition], |r| r.get(0)))
                .map_err(backend)?;
            let first: Option<i64> = conn
                .prepare_cached("SELECT MIN(pseq) FROM events WHERE hub = ?1 AND partition = ?2")
                .and_then(|mut s| s.query_row(params![hub, partition], |r| r.get(0)))
                .map_err(backend)?;
            let last = conn
                .prepare_cached(
                    "SELECT pseq, seq, enqueued_ms FROM events WHERE hub = ?1 AND partition = ?2 ORDER BY pseq DESC LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(params![hub, partition], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    })
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })
                })
                .map_err(backend)?;
            Ok(match (first, last) {
                (Some(begin), Some((pseq, seq, ms))) => PartitionInfo {
                    begin_sequence: begin,
                    last_sequence: pseq,
                    last_offset: seq,
                    last_enqueued_ms: ms,
                    is_empty: false,
                },
                _ => PartitionInfo {
                    begin_sequence: next,
                    last_sequence: next - 1,
                    last_offset: -1,
                    last_enqueued_ms: 0,
                    is_empty: true,
                },
            })
        })
        .await
        .map_err(backend)?
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

    /// The stream's and the routes' reads walk the rowid range, whatever the log's size.
    #[test]
    fn reads_in_sequence_order_use_the_rowid_not_the_partition_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let _log = SqliteEventLog::open(&path, Duration::from_secs(3600)).unwrap();
        let conn = Connection::open(&path).unwrap();
        for (sql, args) in [(READ_SQL, 4), (READ_ROUTED_SQL, 5)] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls: Vec<Option<i64>> = vec![None; args];
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains("INTEGER PRIMARY KEY"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
