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

/// Racing writers on the one handle a server holds (a data dir has one server, and its store
/// one connection), from many tasks at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_between_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(SqliteStore::open(&dir.path().join("muster.db")).unwrap());
    muster_store::conformance::races(&[
        std::sync::Arc::clone(&store),
        std::sync::Arc::clone(&store),
        store,
    ])
    .await;
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
        enqueued_ms: i64::try_from(time_now()).unwrap() * 1000 + i64::try_from(n).unwrap(),
        partition: muster_store::events::partition_of(device, 4),
        built_in: true,
        endpoints: vec![],
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

fn partition_event(device: &str, n: i64, partition: u32) -> muster_store::events::NewEvent {
    muster_store::events::NewEvent {
        hub: "hub.local".into(),
        device_id: device.into(),
        module_id: None,
        properties: vec![],
        system_properties: vec![],
        body: format!("{n}").into_bytes(),
        enqueued: "2026-01-01T00:00:00.0000000Z".into(),
        enqueued_ms: 1_700_000_000_000 + n,
        partition,
        built_in: true,
        endpoints: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_number_their_events_and_read_from_every_start_position() {
    use muster_store::events::{EventLog, SqliteEventLog, Start};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let log = SqliteEventLog::open(&path, std::time::Duration::from_secs(86_400)).unwrap();
        let empty = log.partition_info("hub.local", 1).await.unwrap();
        assert!(empty.is_empty);
        assert_eq!((empty.begin_sequence, empty.last_sequence), (0, -1));
        // Two partitions interleaved: each numbers its own events from 0.
        for n in 0..10 {
            log.append(partition_event("a", n, u32::try_from(n % 2).unwrap()))
                .await
                .unwrap();
        }
        let p1 = log
            .read_partition(
                "hub.local",
                1,
                Start::Offset {
                    offset: -1,
                    inclusive: false,
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(
            p1.iter().map(|e| e.partition_sequence).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(
            p1.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![2, 4, 6, 8, 10],
            "offsets are the log's own positions"
        );
        let from_seq = |sequence, inclusive| Start::Sequence {
            sequence,
            inclusive,
        };
        let got = log
            .read_partition("hub.local", 1, from_seq(2, false), 100)
            .await
            .unwrap();
        assert_eq!(got.first().unwrap().partition_sequence, 3);
        let got = log
            .read_partition("hub.local", 1, from_seq(2, true), 100)
            .await
            .unwrap();
        assert_eq!(got.first().unwrap().partition_sequence, 2);
        let got = log
            .read_partition(
                "hub.local",
                0,
                Start::Enqueued {
                    millis: 1_700_000_000_004,
                    inclusive: true,
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.event.body.clone()).collect::<Vec<_>>(),
            vec![b"4".to_vec(), b"6".to_vec(), b"8".to_vec()]
        );
        let got = log
            .read_partition(
                "hub.local",
                0,
                Start::Offset {
                    offset: 3,
                    inclusive: true,
                },
                2,
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 2, "the limit holds");
        assert_eq!(got[0].sequence, 3);
        let info = log.partition_info("hub.local", 1).await.unwrap();
        assert!(!info.is_empty);
        assert_eq!(
            (info.begin_sequence, info.last_sequence, info.last_offset),
            (0, 4, 10)
        );
        assert_eq!(info.last_enqueued_ms, 1_700_000_000_009);
    }
    // Numbers continue after a restart.
    let log = SqliteEventLog::open(&path, std::time::Duration::from_secs(86_400)).unwrap();
    log.append(partition_event("a", 10, 1)).await.unwrap();
    let info = log.partition_info("hub.local", 1).await.unwrap();
    assert_eq!(info.last_sequence, 5);
}

#[test]
fn a_device_keeps_its_partition() {
    use muster_store::events::partition_of;
    assert_eq!(partition_of("device-1", 4), partition_of("device-1", 4));
    let spread: std::collections::HashSet<u32> = (0..100)
        .map(|i| partition_of(&format!("device-{i}"), 4))
        .collect();
    assert_eq!(spread.len(), 4, "100 devices use every partition");
    assert_eq!(partition_of("x", 1), 0);
}
