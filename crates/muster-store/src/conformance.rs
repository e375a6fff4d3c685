//! The behaviour every [`Store`](crate::Store) backend must show. A backend's tests call
//! [`run`] with a fresh, empty store.

use serde_json::json;

use crate::{Collection, Precondition, Store, StoreError, Write};

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
