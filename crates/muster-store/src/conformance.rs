//! The behaviour every [`Store`](crate::Store) backend must show. A backend's tests call
//! [`run`] with a fresh, empty store.

use serde_json::json;

use crate::{Change, Collection, Precondition, Store, StoreError, Write};

/// Run the whole suite; panics with a description at the first violation.
///
/// # Panics
/// When the backend breaks the contract (this is a test helper).
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test suite fails loudly"
)]
pub async fn run(store: &dyn Store) {
    writes_and_preconditions(store).await;
    namespaces_and_listing(store).await;
    batches(store).await;
    key_order(store).await;
    modify(store).await;
}

/// Keys list in byte order whatever the database's collation (`B` < `_x` < `a` < `é`).
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test suite fails loudly"
)]
async fn key_order(store: &dyn Store) {
    let c = Collection::ConsumerGroups;
    for key in ["é", "a", "_x", "B"] {
        store
            .put(c, key, None, &json!(key), Precondition::IfNoneMatch)
            .await
            .unwrap();
    }
    let keys: Vec<String> = store
        .list(c, None, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["B", "_x", "a", "é"], "byte order");
    let after: Vec<String> = store
        .list(c, None, Some("_x"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(after, ["a", "é"], "`after` compares bytes too");
}

/// `modify`: create, keep, replace, delete; what the step is shown.
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test suite fails loudly"
)]
async fn modify(store: &dyn Store) {
    let c = Collection::Twins;
    let created = store
        .modify(c, "hub/m", &mut |current| {
            assert!(current.is_none(), "a missing record is shown as None");
            Change::Put {
                index: Some("hub".into()),
                body: json!({"n": 1}),
            }
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.body, json!({"n": 1}));
    assert_eq!(created.index.as_deref(), Some("hub"));
    assert_eq!(
        store.get(c, "hub/m").await.unwrap().unwrap().etag,
        created.etag,
        "the returned record is the stored one"
    );
    let kept = store
        .modify(c, "hub/m", &mut |_| Change::Keep)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.etag, created.etag, "Keep writes nothing");
    let replaced = store
        .modify(c, "hub/m", &mut |current| {
            let n = current.unwrap().body.get("n").unwrap().as_i64().unwrap();
            Change::Put {
                index: Some("hub".into()),
                body: json!({"n": n + 1}),
            }
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.body, json!({"n": 2}));
    assert_ne!(replaced.etag, created.etag);
    assert!(
        store
            .modify(c, "hub/m", &mut |_| Change::Delete)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get(c, "hub/m").await.unwrap().is_none());
    assert!(
        store
            .modify(c, "hub/none", &mut |_| Change::Delete)
            .await
            .unwrap()
            .is_none(),
        "deleting a missing record is fine"
    );
}

/// Races between writers on several handles to one database (several nodes' pools, or one
/// handle several times): exactly one of many racing creates wins, exactly one of many
/// writers holding the same etag wins, and concurrent `modify` increments are all counted.
/// Call with an empty database.
///
/// # Panics
/// When the backend breaks the contract (this is a test helper).
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test suite fails loudly"
)]
pub async fn races(stores: &[std::sync::Arc<dyn Store>]) {
    const TASKS_PER_STORE: usize = 8;
    const INCREMENTS: i64 = 25;
    let c = Collection::Registrations;

    // Racing creates of one key.
    let mut tasks = tokio::task::JoinSet::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..TASKS_PER_STORE {
            let store = std::sync::Arc::clone(store);
            tasks.spawn(async move {
                store
                    .put(
                        c,
                        "race",
                        None,
                        &json!({"by": [s, t]}),
                        Precondition::IfNoneMatch,
                    )
                    .await
            });
        }
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { .. }) => refused += 1,
            Err(e) => panic!("racing create failed: {e}"),
        }
    }
    assert_eq!(won, 1, "one racing create wins");
    assert_eq!(refused, stores.len() * TASKS_PER_STORE - 1);

    // Racing replaces with the same etag.
    let etag = store_get_etag(stores, c, "race").await;
    let mut tasks = tokio::task::JoinSet::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..TASKS_PER_STORE {
            let store = std::sync::Arc::clone(store);
            let etag = etag.clone();
            tasks.spawn(async move {
                store
                    .put(
                        c,
                        "race",
                        None,
                        &json!({"replaced by": [s, t]}),
                        Precondition::IfMatch(etag),
                    )
                    .await
            });
        }
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::PreconditionFailed { .. }) => refused += 1,
            Err(e) => panic!("racing replace failed: {e}"),
        }
    }
    assert_eq!(won, 1, "one writer holding the etag wins");
    assert_eq!(refused, stores.len() * TASKS_PER_STORE - 1);

    // Concurrent read-modify-write: every increment counts.
    let mut tasks = tokio::task::JoinSet::new();
    for store in stores {
        for _ in 0..TASKS_PER_STORE {
            let store = std::sync::Arc::clone(store);
            tasks.spawn(async move {
                for _ in 0..INCREMENTS {
                    store
                        .modify(c, "counter", &mut |current| Change::Put {
                            index: None,
                            body: json!(current.map_or(0, |r| r.body.as_i64().unwrap()) + 1),
                        })
                        .await
                        .unwrap();
                }
            });
        }
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let total = stores
        .first()
        .unwrap()
        .get(c, "counter")
        .await
        .unwrap()
        .unwrap();
    let expected = i64::try_from(stores.len() * TASKS_PER_STORE).unwrap() * INCREMENTS;
    assert_eq!(total.body, json!(expected), "no increment is lost");
}

#[allow(clippy::unwrap_used, reason = "a test suite fails loudly")]
async fn store_get_etag(stores: &[std::sync::Arc<dyn Store>], c: Collection, key: &str) -> String {
    stores
        .first()
        .unwrap()
        .get(c, key)
        .await
        .unwrap()
        .unwrap()
        .etag
}

/// Create, read back, replace, the three preconditions, delete.
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test suite fails loudly"
)]
async fn writes_and_preconditions(store: &dyn Store) {
    let c = Collection::EnrollmentGroups;
    assert!(
        store.get(c, "g1").await.unwrap().is_none(),
        "empty store returns nothing"
    );

    // Create, read back, etag changes on replace.
    let r1 = store
        .put(c, "g1", None, &json!({"v": 1}), Precondition::IfNoneMatch)
        .await
        .unwrap();
    let got = store.get(c, "g1").await.unwrap().unwrap();
    assert_eq!(got.body, json!({"v": 1}));
    assert_eq!(got.etag, r1.etag);
    let r2 = store
        .put(
            c,
            "g1",
            None,
            &json!({"v": 2}),
            Precondition::IfMatch(r1.etag.clone()),
        )
        .await
        .unwrap();
    assert_ne!(r1.etag, r2.etag, "every write changes the etag");

    // Preconditions.
    let stale = store
        .put(
            c,
            "g1",
            None,
            &json!({"v": 3}),
            Precondition::IfMatch(r1.etag.clone()),
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::PreconditionFailed { .. })),
        "stale etag refused"
    );
    let dup = store
        .put(c, "g1", None, &json!({"v": 3}), Precondition::IfNoneMatch)
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict { .. })),
        "create over existing refused"
    );
    let missing = store
        .put(
            c,
            "nope",
            None,
            &json!({}),
            Precondition::IfMatch("x".into()),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::PreconditionFailed { .. })),
        "IfMatch on missing refused"
    );
    assert_eq!(
        store.get(c, "g1").await.unwrap().unwrap().body,
        json!({"v": 2}),
        "failed writes change nothing"
    );

    // Delete.
    assert!(matches!(
        store
            .delete(c, "g1", Precondition::IfMatch(r1.etag.clone()))
            .await,
        Err(StoreError::PreconditionFailed { .. })
    ));
    assert!(
        store
            .delete(c, "g1", Precondition::IfMatch(r2.etag.clone()))
            .await
            .unwrap()
    );
    assert!(!store.delete(c, "g1", Precondition::None).await.unwrap());
    assert!(store.get(c, "g1").await.unwrap().is_none());
}

/// Collections are separate namespaces; listing is in key order, pages with `after` and
/// filters by index.
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test suite fails loudly"
)]
async fn namespaces_and_listing(store: &dyn Store) {
    store
        .put(
            Collection::Enrollments,
            "same",
            None,
            &json!(1),
            Precondition::None,
        )
        .await
        .unwrap();
    store
        .put(
            Collection::Registrations,
            "same",
            None,
            &json!(2),
            Precondition::None,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get(Collection::Enrollments, "same")
            .await
            .unwrap()
            .unwrap()
            .body,
        json!(1)
    );

    // Listing: key order, paging with `after`, index filter.
    let r = Collection::Registrations;
    for (key, group) in [("d3", "ga"), ("d1", "ga"), ("d2", "gb"), ("d4", "ga")] {
        store
            .put(r, key, Some(group), &json!({"id": key}), Precondition::None)
            .await
            .unwrap();
    }
    let keys = |v: Vec<crate::Record>| v.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list(r, None, None, 10).await.unwrap()),
        ["d1", "d2", "d3", "d4", "same"]
    );
    assert_eq!(
        keys(store.list(r, None, Some("d2"), 2).await.unwrap()),
        ["d3", "d4"]
    );
    assert_eq!(
        keys(store.list(r, Some("ga"), None, 10).await.unwrap()),
        ["d1", "d3", "d4"]
    );
    assert_eq!(
        keys(store.list(r, Some("ga"), Some("d1"), 1).await.unwrap()),
        ["d3"]
    );
    // Counting is per collection.
    assert_eq!(store.count(r).await.unwrap(), 5);
    assert_eq!(store.count(Collection::Enrollments).await.unwrap(), 1);
}

/// Batches are all or nothing (after [`namespaces_and_listing`], which leaves `d1`).
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test suite fails loudly"
)]
async fn batches(store: &dyn Store) {
    let r = Collection::Registrations;
    let d = Collection::Devices;
    let failed = store
        .write_batch(vec![
            Write::Put {
                collection: d,
                key: "hub/x".into(),
                index: Some("hub".into()),
                body: json!(1),
                precondition: Precondition::None,
            },
            Write::Put {
                collection: r,
                key: "d1".into(),
                index: None,
                body: json!(0),
                precondition: Precondition::IfNoneMatch,
            },
        ])
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict { .. })));
    assert!(
        store.get(d, "hub/x").await.unwrap().is_none(),
        "a failed batch writes nothing"
    );
    let etags = store
        .write_batch(vec![
            Write::Put {
                collection: d,
                key: "hub/x".into(),
                index: Some("hub".into()),
                body: json!(1),
                precondition: Precondition::IfNoneMatch,
            },
            Write::Delete {
                collection: r,
                key: "d1".into(),
                precondition: Precondition::Exists,
            },
        ])
        .await
        .unwrap();
    assert_eq!(etags.len(), 2);
    assert!(store.get(r, "d1").await.unwrap().is_none());
    assert_eq!(
        store
            .get(d, "hub/x")
            .await
            .unwrap()
            .unwrap()
            .index
            .as_deref(),
        Some("hub")
    );
}
