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
    /// Enqueued time, Unix seconds (for retention).
    pub enqueued_unix: i64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the log (1, 2, 3, …).
    pub sequence: u64,
    /// The message.
    pub event: NewEvent,
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

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    latest: &watch::Sender<u64>,
    retention: Duration,
) {
    let mut last_sweep = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = (|| -> rusqlite::Result<Vec<u64>> {
            let tx = conn.transaction()?;
            let mut seqs = Vec::with_capacity(batch.len());
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO events (hub, device_id, module_id, enqueued, enqueued_unix, properties, system_properties, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for (e, _) in &batch {
                    stmt.execute(params![
                        e.hub,
                        e.device_id,
                        e.module_id,
                        e.enqueued,
                        e.enqueued_unix,
                        props_json(&e.properties),
                        props_json(&e.system_properties),
                        e.body
                    ])?;
                    seqs.push(u64::try_from(tx.last_insert_rowid()).unwrap_or(0));
                }
            }
            tx.commit()?;
            Ok(seqs)
        })();
        match result {
            Ok(seqs) => {
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
            let conn = reader.lock().map_err(|_| backend(Message("event log reader poisoned".into())))?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, hub, device_id, module_id, enqueued, enqueued_unix, properties, system_properties, body
                     FROM events WHERE hub = ?1 AND seq > ?2 AND (?3 IS NULL OR device_id = ?3) ORDER BY seq LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![hub, after, device, limit], |r| {
                    Ok(Event {
                        sequence: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        event: NewEvent {
                            hub: r.get(1)?,
                            device_id: r.get(2)?,
                            module_id: r.get(3)?,
                            enqueued: r.get(4)?,
                            enqueued_unix: r.get(5)?,
                            properties: props_from(&r.get::<_, String>(6)?),
                            system_properties: props_from(&r.get::<_, String>(7)?),
                            body: r.get(8)?,
                        },
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
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
