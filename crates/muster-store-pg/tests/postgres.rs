//! The PostgreSQL backend against a real server: the conformance suite, races between three
//! pools (three nodes), migrations that run once when nodes start together, and reopening.
//!
//! PostgreSQL runs beside the tests in CI: `MUSTER_TEST_POSTGRES=postgres://postgres@127.0.0.1/postgres`
//! (a role that may create databases) switches these on. Each test makes its own database and
//! drops it afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests fail loudly"
)]

use std::sync::Arc;

use muster_store::{Collection, Precondition, Store};
use muster_store_pg::PgStore;
use serde_json::json;

use muster_store_pg::testing::TestDatabase;

#[tokio::test]
async fn conformance() {
    let Some(db) = TestDatabase::create("conformance").await else {
        return;
    };
    let store = PgStore::connect(&db.url, 4).await.unwrap();
    muster_store::conformance::run(&store).await;
    db.drop().await;
}

/// Three pools on one database stand for three nodes: racing creates, racing replaces and
/// concurrent read-modify-writes resolve in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_between_three_nodes() {
    let Some(db) = TestDatabase::create("races").await else {
        return;
    };
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..3 {
        stores.push(Arc::new(PgStore::connect(&db.url, 4).await.unwrap()));
    }
    muster_store::conformance::races(&stores).await;
    db.drop().await;
}

/// Nodes that start together migrate once; a restart finds the schema and the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_once_and_data_survives_reconnect() {
    let Some(db) = TestDatabase::create("migrate").await else {
        return;
    };
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let url = db.url.clone();
        starts.spawn(async move { PgStore::connect(&url, 2).await });
    }
    let mut first = None;
    while let Some(started) = starts.join_next().await {
        first.get_or_insert(started.unwrap().unwrap());
    }
    let store = first.unwrap();
    store
        .put(
            Collection::Devices,
            "hub/d1",
            Some("hub"),
            &json!({"deviceId": "d1", "nul": "a\u{0}b"}),
            Precondition::IfNoneMatch,
        )
        .await
        .unwrap();
    drop(store);
    let reopened = PgStore::connect(&db.url, 2).await.unwrap();
    let got = reopened
        .get(Collection::Devices, "hub/d1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.body, json!({"deviceId": "d1", "nul": "a\u{0}b"}));
    assert_eq!(db.scalar("SELECT count(*) FROM muster_schema").await, 1);
    db.drop().await;
}

/// A database migrated by a newer muster is refused with a message that says so.
#[tokio::test]
async fn newer_schema_refused() {
    let Some(db) = TestDatabase::create("newer").await else {
        return;
    };
    drop(PgStore::connect(&db.url, 1).await.unwrap());
    db.execute("INSERT INTO muster_schema (version) VALUES (999)")
        .await;
    let e = PgStore::connect(&db.url, 1).await.unwrap_err().to_string();
    assert!(e.contains("schema version 999"), "{e}");
    db.drop().await;
}

/// A server that is not there fails fast with the address, not after a hang.
#[tokio::test]
async fn unreachable_server_fails_fast() {
    let started = std::time::Instant::now();
    let e = PgStore::connect("postgres://muster:pw@127.0.0.1:1/muster", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("127.0.0.1:1"), "{e}");
    assert!(!e.contains("pw@"), "password shown: {e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
