//! The SQLite backend passes the conformance suite, survives reopening, and resolves racing
//! creates to exactly one winner.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_appends_in_order_reads_from_any_point_and_survives_reopen() {
    use muster_store::events::{EventLog, NewEvent, SqliteEventLog};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let event = |device: &str, n: usize| NewEvent {
        hub: "hub.local".into(),
        device_id: device.into(),
        module_id: None,
        properties: vec![(
            "temperatureAlert".into(),
            if n.is_multiple_of(2) { "true" } else { "false" }.into(),
        )],
        system_properties: vec![("message-id".into(), format!("m{n}"))],
        body: format!("{{\"n\":{n}}}").into_bytes(),
        enqueued: "2026-01-01T00:00:00.0000000Z".into(),
        enqueued_unix: i64::try_from(time_now()).unwrap(),
    };
    {
        let log = SqliteEventLog::open(&path, std::time::Duration::from_secs(86_400)).unwrap();
        let mut watch = log.subscribe();
        // Concurrent appenders share commits; every one gets a distinct sequence number.
        let mut tasks = Vec::new();
        for n in 0..200_usize {
            let log = log.clone();
            let device = if n.is_multiple_of(3) { "d1" } else { "d2" };
            tasks.push(tokio::spawn(async move {
                log.append(event(device, n)).await.unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
        assert_eq!(log.latest(), 200);
        watch.changed().await.unwrap();
        let all = log.read("hub.local", 0, None, 1000).await.unwrap();
        assert_eq!(all.len(), 200);
        assert!(all.windows(2).all(|w| w[0].sequence < w[1].sequence));
        let d1 = log.read("hub.local", 0, Some("d1"), 1000).await.unwrap();
        assert_eq!(d1.len(), 67);
        let tail = log.read("hub.local", 195, None, 10).await.unwrap();
        assert_eq!(tail.len(), 5);
        assert!(log.read("other.hub", 0, None, 10).await.unwrap().is_empty());
    }
    let log = SqliteEventLog::open(&path, std::time::Duration::from_secs(86_400)).unwrap();
    assert_eq!(
        log.latest(),
        200,
        "sequence numbers continue after a restart"
    );
    let first = log.read("hub.local", 0, None, 1).await.unwrap();
    assert_eq!(first[0].event.system_properties[0].0, "message-id");
    assert_eq!(log.append(event("d1", 1)).await.unwrap(), 201);
}

fn time_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
