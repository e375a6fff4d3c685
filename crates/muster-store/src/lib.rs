//! # muster-store
//!
//! Durable state behind one trait, [`Store`], so the domain crates never see SQL and the
//! single-node SQLite backend can be swapped for PostgreSQL without touching them.
//!
//! # Layout
//! - this file: the [`Store`] trait and its contract, [`Collection`], [`Record`],
//!   [`Precondition`], [`Write`], [`StoreError`].
//! - [`sqlite`]: the embedded backend (WAL, migrations by `user_version`).
//! - [`events`]: the built-in event log ([`events::EventLog`]) with group commit.
//! - [`conformance`]: the behaviour every backend must show, as a test suite any backend's tests
//!   call.
//!
//! # Model
//! Each entity is a JSON document in a [`Collection`], under a unique key, with an optional
//! secondary index value (e.g. a registration's enrollment group, a device's hub) and an etag
//! that changes on every write. The domain owns the document shapes; the store owns keys,
//! etags, atomicity and ordering.
//!
//! # Contract
//! - `put` creates or replaces. [`Precondition::IfMatch`] fails with
//!   [`StoreError::PreconditionFailed`] when the record is missing or its etag differs;
//!   [`Precondition::IfNoneMatch`] fails with [`StoreError::Conflict`] when it exists. Each
//!   successful write returns a new etag.
//! - `delete` returns whether a record was removed; `IfMatch` on a missing record is
//!   `PreconditionFailed`.
//! - `write_batch` applies every write or none; preconditions are checked inside the same
//!   transaction, so two racing batches that both say `IfNoneMatch` for one key cannot both win.
//! - `list` returns records ordered by key (byte order), strictly after `after`, at most
//!   `limit`.
//! - `modify` is an atomic read-decide-write of one record: concurrent `modify` calls on one
//!   key, from any node, never lose each other's writes.
//! - Reads see every write that returned before them (read-your-writes on one node).

pub mod conformance;
pub mod events;
pub mod sqlite;

use async_trait::async_trait;
use serde_json::Value;

/// The kinds of documents muster stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    /// CA certificates uploaded for proof of possession (key: name).
    CaCertificates,
    /// DPS enrollment groups (key: enrollment group id).
    EnrollmentGroups,
    /// DPS individual enrollments (key: registration id).
    Enrollments,
    /// DPS registration records (key: registration id; index: enrollment group id).
    Registrations,
    /// Hub device identities (key: `{hub}/{deviceId}`; index: hub).
    Devices,
    /// Device twins (key: `{hub}/{deviceId}`; index: hub).
    Twins,
    /// Cloud-to-device messages awaiting delivery (key: `{hub}/{deviceId}/{order}`; index:
    /// `{hub}/{deviceId}`).
    C2dMessages,
    /// Hub module identities (key: `{hub}/{deviceId}/{moduleId}`; index: `{hub}/{deviceId}`).
    Modules,
    /// Persistent MQTT sessions: the subscriptions of CleanSession=0 clients (key: the
    /// identity's key; index: hub).
    Sessions,
    /// Connection state and last activity of hub devices and modules, apart from their
    /// identity documents so identity etags change only on identity writes (key: the
    /// identity's key; index: hub).
    Connections,
    /// Consumer groups of a hub's built-in endpoint (key: `{hub}/{group, lower case}`; index:
    /// hub).
    ConsumerGroups,
    /// A hub's routing configuration: routes, custom endpoints, enrichments and the fallback
    /// route, one document (key: hub; index: hub).
    Routes,
    /// What the nodes sharing one store share besides documents: the ID scope, the policy
    /// keys and the trust root (key: `identity`), the portal's admin password hash (key:
    /// `portal-admin`).
    Cluster,
}

impl Collection {
    /// Every collection.
    pub const ALL: [Self; 13] = [
        Self::CaCertificates,
        Self::EnrollmentGroups,
        Self::Enrollments,
        Self::Registrations,
        Self::Devices,
        Self::Twins,
        Self::C2dMessages,
        Self::Modules,
        Self::Sessions,
        Self::Connections,
        Self::ConsumerGroups,
        Self::Routes,
        Self::Cluster,
    ];

    /// The stable name used in storage.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::CaCertificates => "ca_certificates",
            Self::EnrollmentGroups => "enrollment_groups",
            Self::Enrollments => "enrollments",
            Self::Registrations => "registrations",
            Self::Devices => "devices",
            Self::Twins => "twins",
            Self::C2dMessages => "c2d_messages",
            Self::Modules => "modules",
            Self::Sessions => "sessions",
            Self::Connections => "connections",
            Self::ConsumerGroups => "consumer_groups",
            Self::Routes => "routes",
            Self::Cluster => "cluster",
        }
    }
}

/// One stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its key.
    pub key: String,
    /// Its secondary index value.
    pub index: Option<String>,
    /// The document.
    pub body: Value,
    /// Opaque version tag; changes on every write.
    pub etag: String,
}

/// A condition on the current state of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    None,
    /// The record exists with this etag.
    IfMatch(String),
    /// The record exists (any etag).
    Exists,
    /// The record does not exist.
    IfNoneMatch,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create or replace.
    Put {
        /// Collection.
        collection: Collection,
        /// Key.
        key: String,
        /// Secondary index value.
        index: Option<String>,
        /// Document.
        body: Value,
        /// Condition.
        precondition: Precondition,
    },
    /// Remove (missing records are fine unless the precondition says otherwise).
    Delete {
        /// Collection.
        collection: Collection,
        /// Key.
        key: String,
        /// Condition.
        precondition: Precondition,
    },
}

/// What a [`Store::modify`] step decided about the record it was shown.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Leave the record as it is; nothing is written.
    Keep,
    /// Create or replace the record with this document and index.
    Put {
        /// Secondary index value.
        index: Option<String>,
        /// Document.
        body: Value,
    },
    /// Remove the record.
    Delete,
}

/// The decision [`Store::modify`] applies: shown the current record (or `None`), it returns
/// what to write. It may run more than once (after a lost race), so it must have no effect
/// beyond its answer and what it records for its caller.
pub type ModifyFn<'a> = dyn FnMut(Option<&Record>) -> Change + Send + 'a;

/// How many times the default [`Store::modify`] re-reads after losing a race before it gives
/// up with [`StoreError::PreconditionFailed`].
pub const MODIFY_ATTEMPTS: usize = 32;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An `IfMatch`/`Exists` precondition did not hold.
    #[error("precondition failed for {collection} '{key}'")]
    PreconditionFailed {
        /// Collection name.
        collection: &'static str,
        /// Key.
        key: String,
    },
    /// An `IfNoneMatch` precondition did not hold.
    #[error("{collection} '{key}' already exists")]
    Conflict {
        /// Collection name.
        collection: &'static str,
        /// Key.
        key: String,
    },
    /// The backend failed.
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The storage interface. See the crate documentation for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Read one record.
    async fn get(&self, collection: Collection, key: &str) -> Result<Option<Record>, StoreError>;

    /// Create or replace one record.
    async fn put(
        &self,
        collection: Collection,
        key: &str,
        index: Option<&str>,
        body: &Value,
        precondition: Precondition,
    ) -> Result<Record, StoreError>;

    /// Remove one record; `Ok(false)` when there was none.
    async fn delete(
        &self,
        collection: Collection,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, StoreError>;

    /// Records in key order after `after`, optionally only those whose index equals `index`.
    async fn list(
        &self,
        collection: Collection,
        index: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// Apply all writes atomically; returns the new etag of each write (empty for deletes).
    async fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<String>, StoreError>;

    /// Read one record, decide with `f`, and write the decision so that no other write to
    /// the key lands between the read and the write. Returns the record as it is afterwards
    /// (`None` when it was deleted or never existed).
    ///
    /// The default reads, decides and writes with an `IfMatch`/`IfNoneMatch` precondition,
    /// re-reading after a lost race (up to [`MODIFY_ATTEMPTS`] times). Backends shared by
    /// several nodes lock the row instead (PostgreSQL `SELECT … FOR UPDATE`), so concurrent
    /// writers queue rather than retry.
    async fn modify(
        &self,
        collection: Collection,
        key: &str,
        f: &mut ModifyFn<'_>,
    ) -> Result<Option<Record>, StoreError> {
        for attempt in 0..MODIFY_ATTEMPTS {
            if attempt > 0 {
                race_backoff(attempt - 1).await;
            }
            let current = self.get(collection, key).await?;
            let precondition = current.as_ref().map_or(Precondition::IfNoneMatch, |r| {
                Precondition::IfMatch(r.etag.clone())
            });
            let written = match f(current.as_ref()) {
                Change::Keep => return Ok(current),
                Change::Put { index, body } => self
                    .put(collection, key, index.as_deref(), &body, precondition)
                    .await
                    .map(Some),
                Change::Delete if current.is_none() => return Ok(None),
                Change::Delete => self
                    .delete(collection, key, precondition)
                    .await
                    .map(|_| None),
            };
            match written {
                Err(StoreError::PreconditionFailed { .. } | StoreError::Conflict { .. }) => {}
                other => return other,
            }
        }
        Err(StoreError::PreconditionFailed {
            collection: collection.name(),
            key: key.to_owned(),
        })
    }

    /// How many records a collection holds. The default pages through [`Store::list`];
    /// backends count in place.
    async fn count(&self, collection: Collection) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut after: Option<String> = None;
        loop {
            let page = self.list(collection, None, after.as_deref(), 1000).await?;
            total += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == 1000 => after = Some(last.key.clone()),
                _ => return Ok(total),
            }
        }
    }
}

/// Wait a short random time before retrying after losing a race to another writer (attempt
/// 0, 1, 2, …): up to 1, 2, 4, … ms, at most 32 ms. Racers that all retried at once would
/// mostly collide again; spread out, one wins per round and the rest see its write.
pub async fn race_backoff(attempt: usize) {
    let ceiling_us: u64 = 1000 << attempt.min(5);
    let mut bytes = [0u8; 8];
    let draw = if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
        u64::from_be_bytes(bytes)
    } else {
        ceiling_us / 2
    };
    tokio::time::sleep(std::time::Duration::from_micros(draw % ceiling_us)).await;
}

/// A new etag: 16 hex characters, random, unique across nodes in practice.
#[must_use]
pub fn new_etag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    let value = if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
        u64::from_be_bytes(bytes)
    } else {
        // Without system randomness, a process-wide counter still makes every etag distinct.
        FALLBACK.fetch_add(1, Ordering::Relaxed) ^ 0x9e37_79b9_7f4a_7c15
    };
    format!("{value:016x}")
}
