//! # muster-store-pg
//!
//! The [`Store`] trait on PostgreSQL, so that several muster nodes share one system of record
//! (`muster serve --store postgres://…`). The single-node default stays SQLite
//! (`muster_store::sqlite`); both pass the same conformance suite
//! (`muster_store::conformance`).
//!
//! # How the contract is kept across nodes
//! Every guarantee comes from the database, never from a lock in one process:
//! - a create (`IfNoneMatch`) is one `INSERT … ON CONFLICT DO NOTHING RETURNING`: of racing
//!   creates on any nodes exactly one returns a row;
//! - a conditional replace or delete (`IfMatch`, `Exists`) is one `UPDATE`/`DELETE … WHERE
//!   etag = $n`: under Read Committed a second writer waits for the first and then re-checks
//!   the etag against the row the first one wrote;
//! - [`Store::modify`] takes the row lock (`SELECT … FOR UPDATE`) for its read-decide-write,
//!   so writers of a hot document (a twin) queue instead of retrying;
//! - batches run in one transaction.
//!
//! # Schema
//! One `documents` table (collection, key, index, etag, body as `json`), keys in the `"C"`
//! collation so listing is byte order whatever the database's locale. Migrations are embedded
//! and numbered; [`PgStore::connect`] applies the missing ones under an advisory lock, so nodes
//! starting together migrate once. A database migrated by a newer muster is refused.

pub mod testing;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use muster_store::{
    Change, Collection, MODIFY_ATTEMPTS, ModifyFn, Precondition, Record, Store, StoreError, Write,
    new_etag,
};
use serde_json::Value;
use tokio_postgres::{NoTls, Row};
use tracing::info;

/// The schema, one entry per version. Never edit an entry that has shipped; add one.
const MIGRATIONS: &[&str] = &[
    // 1: the document table and its secondary index ("registrations of a group", "devices of
    // a hub").
    r#"CREATE TABLE documents (
        collection text NOT NULL,
        key        text COLLATE "C" NOT NULL,
        idx        text COLLATE "C",
        etag       text NOT NULL,
        body       json NOT NULL,
        PRIMARY KEY (collection, key)
     );
     CREATE INDEX documents_by_index ON documents (collection, idx, key);"#,
];

/// The advisory lock key that serialises migrations across nodes ("muster" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d75_7374_6572;

/// Connections per node unless the URL or the caller says otherwise: PostgreSQL backends are
/// processes, and three nodes of 16 are already 48 of them.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long a caller waits for a pooled connection, or a new connection for its handshake,
/// before the store answers [`StoreError::Backend`] (the REST API turns that into a retryable
/// error): a database that is down must not hang device connects.
const WAIT: Duration = Duration::from_secs(5);

/// Why a [`PgStore`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is not a PostgreSQL connection string.
    #[error(
        "'{url}' is not a PostgreSQL URL ({reason}); use postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    )]
    Url {
        /// The URL with any password removed.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// TLS was required; this build connects without it.
    #[error(
        "the store URL asks for TLS (sslmode={mode}); muster connects to PostgreSQL without TLS: \
         use a private network, a Unix socket (host=/var/run/postgresql) or a TLS-terminating \
         proxy beside muster, and sslmode=disable or prefer"
    )]
    TlsRequired {
        /// The mode asked for.
        mode: String,
    },
    /// The database could not be reached or migrated.
    #[error(
        "PostgreSQL at {url}: {source} (is the server running, does the database exist — createdb \
         NAME — and may this user log in?)"
    )]
    Database {
        /// The URL with any password removed.
        url: String,
        /// The failure.
        #[source]
        source: StoreError,
    },
    /// The database was migrated by a newer muster.
    #[error(
        "the database at {url} has schema version {found}, newer than this muster knows ({known}); \
         run the newer muster, or a fresh database"
    )]
    TooNew {
        /// The URL with any password removed.
        url: String,
        /// Its version.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
}

/// The URL with its password, if any, replaced by `***`, for messages and logs.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Is this a store URL for PostgreSQL (rather than SQLite)?
#[must_use]
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// PostgreSQL-backed [`Store`]. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl PgStore {
    /// Connect a pool of at most `pool_size` connections, check the database answers, and
    /// bring its schema up to date.
    ///
    /// # Errors
    /// [`OpenError`], each saying what to change.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, OpenError> {
        let shown = redact(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| OpenError::Url {
            url: shown.clone(),
            reason: format!("{e}"),
        })?;
        // `prefer` (the default) falls back to a plain connection; `disable` asks for one.
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(OpenError::TlsRequired {
                mode: "require".into(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(WAIT);
        }
        if config.get_application_name().is_none() {
            config.application_name("muster");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| OpenError::Database {
                url: shown.clone(),
                source: backend(e),
            })?;
        let store = Self { pool };
        let version = store
            .migrate()
            .await
            .map_err(|source| OpenError::Database {
                url: shown.clone(),
                source,
            })?;
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version > known {
            return Err(OpenError::TooNew {
                url: shown,
                found: version,
                known,
            });
        }
        info!(url = %shown, schema = version, pool = pool_size, "PostgreSQL store ready");
        Ok(store)
    }

    /// Apply the missing migrations under the advisory lock; returns the schema version found
    /// or reached.
    async fn migrate(&self) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(backend)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS muster_schema (
                 version    bigint PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(backend)?;
        let found: i64 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM muster_schema", &[])
            .await
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)?;
        let mut version = found;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let n = i64::try_from(i).unwrap_or(i64::MAX) + 1;
            if n > version {
                tx.batch_execute(sql).await.map_err(backend)?;
                tx.execute("INSERT INTO muster_schema (version) VALUES ($1)", &[&n])
                    .await
                    .map_err(backend)?;
                info!(version = n, "PostgreSQL schema migrated");
                version = n;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(version)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(backend)
    }

    /// Pool figures for status pages: (connections open, of them idle, callers waiting).
    #[must_use]
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size, s.available, s.waiting)
    }
}

fn to_record(row: &Row) -> Result<Record, StoreError> {
    Ok(Record {
        key: row.try_get(0).map_err(backend)?,
        index: row.try_get(1).map_err(backend)?,
        etag: row.try_get(2).map_err(backend)?,
        body: row.try_get(3).map_err(backend)?,
    })
}

const SELECT: &str =
    "SELECT key, idx, etag, body FROM documents WHERE collection = $1 AND key = $2";

fn failed(collection: Collection, key: &str) -> StoreError {
    StoreError::PreconditionFailed {
        collection: collection.name(),
        key: key.to_owned(),
    }
}

fn conflict(collection: Collection, key: &str) -> StoreError {
    StoreError::Conflict {
        collection: collection.name(),
        key: key.to_owned(),
    }
}

/// One put, as one statement whose row lock decides the precondition. Returns the new etag.
async fn put_on<C: GenericClient + Sync>(
    client: &C,
    collection: Collection,
    key: &str,
    index: Option<&str>,
    body: &Value,
    precondition: &Precondition,
) -> Result<String, StoreError> {
    let etag = new_etag();
    let name = collection.name();
    let changed = match precondition {
        Precondition::None => {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO documents (collection, key, idx, etag, body) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (collection, key) DO UPDATE
                     SET idx = excluded.idx, etag = excluded.etag, body = excluded.body",
                )
                .await
                .map_err(backend)?;
            client
                .execute(&stmt, &[&name, &key, &index, &etag, body])
                .await
                .map_err(backend)?
        }
        Precondition::IfNoneMatch => {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO documents (collection, key, idx, etag, body) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (collection, key) DO NOTHING",
                )
                .await
                .map_err(backend)?;
            let n = client
                .execute(&stmt, &[&name, &key, &index, &etag, body])
                .await
                .map_err(backend)?;
            if n == 0 {
                return Err(conflict(collection, key));
            }
            n
        }
        Precondition::IfMatch(expected) => {
            let stmt = client
                .prepare_cached(
                    "UPDATE documents SET idx = $3, etag = $4, body = $5
                     WHERE collection = $1 AND key = $2 AND etag = $6",
                )
                .await
                .map_err(backend)?;
            client
                .execute(&stmt, &[&name, &key, &index, &etag, body, expected])
                .await
                .map_err(backend)?
        }
        Precondition::Exists => {
            let stmt = client
                .prepare_cached(
                    "UPDATE documents SET idx = $3, etag = $4, body = $5
                     WHERE collection = $1 AND key = $2",
                )
                .await
                .map_err(backend)?;
            client
                .execute(&stmt, &[&name, &key, &index, &etag, body])
                .await
                .map_err(backend)?
        }
    };
    if changed == 0 {
        return Err(failed(collection, key));
    }
    Ok(etag)
}

/// One delete; returns whether a record was removed.
async fn delete_on<C: GenericClient + Sync>(
    client: &C,
    collection: Collection,
    key: &str,
    precondition: &Precondition,
) -> Result<bool, StoreError> {
    let name = collection.name();
    match precondition {
        Precondition::None | Precondition::Exists => {
            let stmt = client
                .prepare_cached("DELETE FROM documents WHERE collection = $1 AND key = $2")
                .await
                .map_err(backend)?;
            let n = client
                .execute(&stmt, &[&name, &key])
                .await
                .map_err(backend)?;
            if n == 0 && *precondition == Precondition::Exists {
                return Err(failed(collection, key));
            }
            Ok(n > 0)
        }
        Precondition::IfMatch(expected) => {
            let stmt = client
                .prepare_cached(
                    "DELETE FROM documents WHERE collection = $1 AND key = $2 AND etag = $3",
                )
                .await
                .map_err(backend)?;
            let n = client
                .execute(&stmt, &[&name, &key, expected])
                .await
                .map_err(backend)?;
            if n == 0 {
                return Err(failed(collection, key));
            }
            Ok(true)
        }
        Precondition::IfNoneMatch => {
            // "Delete it only if it does not exist": nothing to delete, or a conflict.
            let stmt = client.prepare_cached(SELECT).await.map_err(backend)?;
            if client
                .query_opt(&stmt, &[&name, &key])
                .await
                .map_err(backend)?
                .is_some()
            {
                return Err(conflict(collection, key));
            }
            Ok(false)
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, collection: Collection, key: &str) -> Result<Option<Record>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(SELECT).await.map_err(backend)?;
        client
            .query_opt(&stmt, &[&collection.name(), &key])
            .await
            .map_err(backend)?
            .as_ref()
            .map(to_record)
            .transpose()
    }

    async fn put(
        &self,
        collection: Collection,
        key: &str,
        index: Option<&str>,
        body: &Value,
        precondition: Precondition,
    ) -> Result<Record, StoreError> {
        let client = self.client().await?;
        let etag = put_on(&client, collection, key, index, body, &precondition).await?;
        Ok(Record {
            key: key.to_owned(),
            index: index.map(str::to_owned),
            body: body.clone(),
            etag,
        })
    }

    async fn delete(
        &self,
        collection: Collection,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        delete_on(&client, collection, key, &precondition).await
    }

    async fn list(
        &self,
        collection: Collection,
        index: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let client = self.client().await?;
        let after = after.unwrap_or("");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let name = collection.name();
        let rows = match index {
            Some(index) => {
                let stmt = client
                    .prepare_cached(
                        "SELECT key, idx, etag, body FROM documents
                         WHERE collection = $1 AND idx = $2 AND key > $3
                         ORDER BY key LIMIT $4",
                    )
                    .await
                    .map_err(backend)?;
                client
                    .query(&stmt, &[&name, &index, &after, &limit])
                    .await
                    .map_err(backend)?
            }
            None => {
                let stmt = client
                    .prepare_cached(
                        "SELECT key, idx, etag, body FROM documents
                         WHERE collection = $1 AND key > $2
                         ORDER BY key LIMIT $3",
                    )
                    .await
                    .map_err(backend)?;
                client
                    .query(&stmt, &[&name, &after, &limit])
                    .await
                    .map_err(backend)?
            }
        };
        rows.iter().map(to_record).collect()
    }

    async fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<String>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mut etags = Vec::with_capacity(writes.len());
        for write in &writes {
            etags.push(match write {
                Write::Put {
                    collection,
                    key,
                    index,
                    body,
                    precondition,
                } => put_on(&tx, *collection, key, index.as_deref(), body, precondition).await?,
                Write::Delete {
                    collection,
                    key,
                    precondition,
                } => {
                    delete_on(&tx, *collection, key, precondition).await?;
                    String::new()
                }
            });
        }
        tx.commit().await.map_err(backend)?;
        Ok(etags)
    }

    async fn modify(
        &self,
        collection: Collection,
        key: &str,
        f: &mut ModifyFn<'_>,
    ) -> Result<Option<Record>, StoreError> {
        let name = collection.name();
        let mut client = self.client().await?;
        for _ in 0..MODIFY_ATTEMPTS {
            let tx = client.transaction().await.map_err(backend)?;
            let stmt = tx
                .prepare_cached(
                    "SELECT key, idx, etag, body FROM documents
                     WHERE collection = $1 AND key = $2 FOR UPDATE",
                )
                .await
                .map_err(backend)?;
            let current = tx
                .query_opt(&stmt, &[&name, &key])
                .await
                .map_err(backend)?
                .as_ref()
                .map(to_record)
                .transpose()?;
            // A missing row cannot be locked: a create uses IfNoneMatch, and a racing create
            // that got there first sends this step round again with the row it wrote.
            let precondition = if current.is_some() {
                Precondition::Exists
            } else {
                Precondition::IfNoneMatch
            };
            let result = match f(current.as_ref()) {
                Change::Keep => Ok(current),
                Change::Put { index, body } => {
                    put_on(&tx, collection, key, index.as_deref(), &body, &precondition)
                        .await
                        .map(|etag| {
                            Some(Record {
                                key: key.to_owned(),
                                index,
                                body,
                                etag,
                            })
                        })
                }
                Change::Delete => delete_on(&tx, collection, key, &Precondition::None)
                    .await
                    .map(|_| None),
            };
            match result {
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
                Ok(record) => {
                    tx.commit().await.map_err(backend)?;
                    return Ok(record);
                }
            }
        }
        Err(failed(collection, key))
    }

    async fn count(&self, collection: Collection) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT count(*) FROM documents WHERE collection = $1")
            .await
            .map_err(backend)?;
        let n: i64 = client
            .query_one(&stmt, &[&collection.name()])
            .await
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_shown() {
        assert_eq!(
            redact("postgres://muster:s3cret@db.example:5432/muster"),
            "postgres://muster:***@db.example:5432/muster"
        );
        assert_eq!(
            redact("postgres://muster@db/muster"),
            "postgres://muster@db/muster"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("host=/tmp"), "host=/tmp");
    }

    #[test]
    fn postgres_urls() {
        assert!(is_postgres_url("postgres://u@h/d"));
        assert!(is_postgres_url("postgresql://u@h/d"));
        assert!(!is_postgres_url("/var/lib/muster/muster.db"));
    }

    #[tokio::test]
    async fn bad_urls_say_what_to_write() {
        let e = PgStore::connect("postgres://u:pw@h:notaport/d", 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres://USER"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        let e = PgStore::connect("postgres://u@127.0.0.1/d?sslmode=require", 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmode=require"), "{e}");
    }
}
