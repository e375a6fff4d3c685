//! The embedded SQLite backend.
//!
//! One connection in WAL mode, owned by a mutex and used from `spawn_blocking`: SQLite allows
//! one writer at a time anyway, and the documents are small, so the lock is held for
//! microseconds. Schema changes are numbered migrations tracked in `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::{Collection, Precondition, Record, Store, StoreError, Write, new_etag};

const MIGRATIONS: &[&str] = &[
    // 1: one document table; the secondary index serves "registrations of a group" and
    // "devices of a hub".
    "CREATE TABLE documents (
        collection TEXT NOT NULL,
        key        TEXT NOT NULL,
        idx        TEXT,
        etag       TEXT NOT NULL,
        body       TEXT NOT NULL,
        PRIMARY KEY (collection, key)
     ) WITHOUT ROWID;
     CREATE INDEX documents_by_index ON documents (collection, idx, key);",
];

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

#[derive(Debug, thiserror::Error)]
#[error("the SQLite connection lock was poisoned by a panic")]
struct Poisoned;

impl SqliteStore {
    /// Open (creating if needed) the database file and bring its schema up to date.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        Self::init(conn)
    }

    /// A private in-memory database (tests).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when SQLite fails.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        let tx = conn.transaction().map_err(backend)?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let n = i64::try_from(i).unwrap_or(i64::MAX) + 1;
            if n > version {
                tx.execute_batch(sql).map_err(backend)?;
                tx.pragma_update(None, "user_version", n).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| backend(Poisoned))?;
            f(&mut guard)
        })
        .await
        .map_err(backend)?
    }
}

fn read(
    conn: &Connection,
    collection: Collection,
    key: &str,
) -> Result<Option<Record>, StoreError> {
    conn.query_row(
        "SELECT key, idx, etag, body FROM documents WHERE collection = ?1 AND key = ?2",
        params![collection.name(), key],
        row_to_record,
    )
    .optional()
    .map_err(backend)?
    .transpose()
}

type RowResult = Result<Record, StoreError>;

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let key: String = row.get(0)?;
    let index: Option<String> = row.get(1)?;
    let etag: String = row.get(2)?;
    let body: String = row.get(3)?;
    Ok(serde_json::from_str::<Value>(&body)
        .map(|body| Record {
            key,
            index,
            body,
            etag,
        })
        .map_err(backend))
}

fn check(
    current: Option<&Record>,
    collection: Collection,
    key: &str,
    precondition: &Precondition,
) -> Result<(), StoreError> {
    let failed = || StoreError::PreconditionFailed {
        collection: collection.name(),
        key: key.to_owned(),
    };
    match (precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::IfMatch(etag), Some(r)) if &r.etag == etag => Ok(()),
        (Precondition::IfMatch(_) | Precondition::Exists, None) => Err(failed()),
        (Precondition::IfMatch(_), Some(_)) => Err(failed()),
        (Precondition::Exists, Some(_)) => Ok(()),
        (Precondition::IfNoneMatch, None) => Ok(()),
        (Precondition::IfNoneMatch, Some(_)) => Err(StoreError::Conflict {
            collection: collection.name(),
            key: key.to_owned(),
        }),
    }
}

fn apply(conn: &Connection, write: &Write) -> Result<String, StoreError> {
    match write {
        Write::Put {
            collection,
            key,
            index,
            body,
            precondition,
        } => {
            check(
                read(conn, *collection, key)?.as_ref(),
                *collection,
                key,
                precondition,
            )?;
            let etag = new_etag();
            let text = serde_json::to_string(body).map_err(backend)?;
            conn.execute(
                "INSERT INTO documents (collection, key, idx, etag, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (collection, key) DO UPDATE SET idx = excluded.idx, etag = excluded.etag, body = excluded.body",
                params![collection.name(), key, index, etag, text],
            )
            .map_err(backend)?;
            Ok(etag)
        }
        Write::Delete {
            collection,
            key,
            precondition,
        } => {
            check(
                read(conn, *collection, key)?.as_ref(),
                *collection,
                key,
                precondition,
            )?;
            conn.execute(
                "DELETE FROM documents WHERE collection = ?1 AND key = ?2",
                params![collection.name(), key],
            )
            .map_err(backend)?;
            Ok(String::new())
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, collection: Collection, key: &str) -> Result<Option<Record>, StoreError> {
        let key = key.to_owned();
        self.with(move |c| read(c, collection, &key)).await
    }

    async fn put(
        &self,
        collection: Collection,
        key: &str,
        index: Option<&str>,
        body: &Value,
        precondition: Precondition,
    ) -> Result<Record, StoreError> {
        let write = Write::Put {
            collection,
            key: key.to_owned(),
            index: index.map(str::to_owned),
            body: body.clone(),
            precondition,
        };
        let record = Record {
            key: key.to_owned(),
            index: index.map(str::to_owned),
            body: body.clone(),
            etag: String::new(),
        };
        let etag = self
            .with(move |c| {
                let tx = c.transaction().map_err(backend)?;
                let etag = apply(&tx, &write)?;
                tx.commit().map_err(backend)?;
                Ok(etag)
            })
            .await?;
        Ok(Record { etag, ..record })
    }

    async fn delete(
        &self,
        collection: Collection,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.with(move |c| {
            let tx = c.transaction().map_err(backend)?;
            let existed = read(&tx, collection, &key)?.is_some();
            apply(
                &tx,
                &Write::Delete {
                    collection,
                    key: key.clone(),
                    precondition,
                },
            )?;
            tx.commit().map_err(backend)?;
            Ok(existed)
        })
        .await
    }

    async fn list(
        &self,
        collection: Collection,
        index: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let index = index.map(str::to_owned);
        let after = after.unwrap_or("").to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT key, idx, etag, body FROM documents
                     WHERE collection = ?1 AND (?2 IS NULL OR idx = ?2) AND key > ?3
                     ORDER BY key LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![collection.name(), index, after, limit],
                    row_to_record,
                )
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(backend)??);
            }
            Ok(out)
        })
        .await
    }

    async fn count(&self, collection: Collection) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM documents WHERE collection = ?1")
                .map_err(backend)?
                .query_row(params![collection.name()], |r| r.get(0))
                .map_err(backend)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<String>, StoreError> {
        self.with(move |c| {
            let tx = c.transaction().map_err(backend)?;
            let etags = writes
                .iter()
                .map(|w| apply(&tx, w))
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().map_err(backend)?;
            Ok(etags)
        })
        .await
    }
}
