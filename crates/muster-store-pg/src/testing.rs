//! A throw-away database per test on the server named by `MUSTER_TEST_POSTGRES`, for this
//! crate's tests and for every other crate's tests that run against PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test support fails loudly"
)]

use tokio_postgres::NoTls;

/// A database made for one test; [`TestDatabase::drop`] removes it.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    admin: String,
    name: String,
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at MUSTER_TEST_POSTGRES={url}: {e}"));
    tokio::spawn(connection);
    client
}

impl TestDatabase {
    /// A fresh database, or `None` (with a line saying how to switch the test on) when
    /// `MUSTER_TEST_POSTGRES` is not set.
    ///
    /// # Panics
    /// When the server cannot be reached or refuses to create the database.
    pub async fn create(label: &str) -> Option<Self> {
        let Ok(admin) = std::env::var("MUSTER_TEST_POSTGRES") else {
            eprintln!(
                "skipped: set MUSTER_TEST_POSTGRES=postgres://postgres@127.0.0.1/postgres to run against PostgreSQL"
            );
            return None;
        };
        let name = format!(
            "muster_test_{label}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        // A linguistic (ICU) collation where the server has one, so that a query relying on
        // the database's collation for byte order fails here as it would on such a server.
        let client = connect(&admin).await;
        let icu = format!(
            "CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0"
        );
        if client.batch_execute(&icu).await.is_err() {
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
        }
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("MUSTER_TEST_POSTGRES needs a database path: {admin}"),
        };
        Some(Self { url, admin, name })
    }

    /// One number from a query on the test database.
    ///
    /// # Panics
    /// When the statement fails.
    pub async fn scalar(&self, sql: &str) -> i64 {
        connect(&self.url)
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Run statements on the test database.
    ///
    /// # Panics
    /// When the statement fails.
    pub async fn execute(&self, sql: &str) {
        connect(&self.url).await.batch_execute(sql).await.unwrap();
    }

    /// Drop the database (closing whatever connections are left).
    ///
    /// # Panics
    /// When the statement fails.
    pub async fn drop(self) {
        connect(&self.admin)
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}
