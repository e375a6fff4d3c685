//! The SQLite backend passes the conformance suite, survives reopening, and resolves racing
//! creates to exactly one winner.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use muster_store::sqlite::SqliteStore;
use muster_store::{Collection, Precondition, Store, StoreError};
use serde_json::json;

#[tokio::test]
async fn conformance_in_memory() {
    muster_store::conformance::run(&SqliteStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn conformance_on_disk_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("muster.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        muster_store::conformance::run(&store).await;
        store
            .put(
                Collection::CaCertificates,
                "root",
                None,
                &json!({"kept": true}),
                Precondition::None,
            )
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let r = store
        .get(Collection::CaCertificates, "root")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.body, json!({"kept": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_have_one_winner() {
    let store = SqliteStore::in_memory().unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.put(
                Collection::Devices,
                "hub/dev",
                Some("hub"),
                &json!({"writer": i}),
                Precondition::IfNoneMatch,
            )
            .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
}
