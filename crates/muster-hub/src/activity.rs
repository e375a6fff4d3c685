//! Connection state and activity: `connectionState`, `connectionStateUpdatedTime` and
//! `lastActivityTime`.
//!
//! They are kept in their own record ([`Collection::Connections`], under the identity's key),
//! not in the identity document, so that — as in IoT Hub — a device's `etag` changes only when
//! its identity is written. A service that reads a device, changes its status and writes it
//! back with `If-Match` therefore succeeds even if the device connected in between. Every view
//! of a device, module or twin merges the state back in.

use muster_store::{Collection, Precondition, Record, StoreError, Write};
use muster_types::time_fmt::{self, NEVER};
use serde_json::{Value, json};

use crate::docs;
use crate::registry::{HubError, Registry, identity_collection};

const FIELDS: [&str; 3] = [
    "connectionState",
    "connectionStateUpdatedTime",
    "lastActivityTime",
];

/// Put the state (or the never-connected defaults) into an identity view.
pub(crate) fn merge(body: &mut Value, state: Option<&Value>) {
    let Some(o) = body.as_object_mut() else {
        return;
    };
    for field in FIELDS {
        let value = state
            .and_then(|s| s.get(field))
            .cloned()
            .unwrap_or_else(|| {
                json!(if field == "connectionState" {
                    "Disconnected"
                } else {
                    NEVER
                })
            });
        o.insert(field.into(), value);
    }
}

/// The write that removes an identity's state (with the identity).
pub(crate) fn forget(key: &str) -> Write {
    Write::Delete {
        collection: Collection::Connections,
        key: key.to_owned(),
        precondition: Precondition::None,
    }
}

impl Registry {
    /// An identity record as the API shows it: its document with `etag` and its connection
    /// state.
    pub(crate) async fn view(&self, record: Record) -> Result<Value, HubError> {
        let state = self.store.get(Collection::Connections, &record.key).await?;
        // Devices have a cloud-to-device queue; modules have none.
        let queued = if record.body.get("moduleId").is_none() {
            self.c2d_queued(&record.key).await?
        } else {
            0
        };
        let mut body = record.body;
        if let Some(o) = body.as_object_mut() {
            o.insert("etag".into(), json!(record.etag));
            o.insert("cloudToDeviceMessageCount".into(), json!(queued));
        }
        merge(&mut body, state.as_ref().map(|s| &s.body));
        Ok(body)
    }

    /// The typed view of an identity just written (`etags` from its batch, the identity's
    /// first).
    pub(crate) async fn written_view<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: String,
        body: Value,
        etags: &[String],
    ) -> Result<T, HubError> {
        let etag = etags.first().cloned().unwrap_or_default();
        let record = Record {
            key,
            index: None,
            body,
            etag,
        };
        crate::model::typed(self.view(record).await?)
    }

    /// Record a connection change (`connected` = `Some`) or only activity (`None`). An identity
    /// that does not exist (deleted meanwhile) is ignored. The identity's etag is untouched.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn record_activity(
        &self,
        hub: &str,
        id: &str,
        connected: Option<bool>,
    ) -> Result<(), HubError> {
        let key = docs::key(hub, id);
        if self
            .store
            .get(identity_collection(id), &key)
            .await?
            .is_none()
        {
            return Ok(());
        }
        for _ in 0..8 {
            let current = self.store.get(Collection::Connections, &key).await?;
            let mut state = current
                .as_ref()
                .map_or_else(|| json!({}), |r| r.body.clone());
            let stamp = time_fmt::azure(time::OffsetDateTime::now_utc());
            if let Some(o) = state.as_object_mut() {
                if let Some(c) = connected {
                    let text = if c { "Connected" } else { "Disconnected" };
                    o.insert("connectionState".into(), json!(text));
                    o.insert("connectionStateUpdatedTime".into(), json!(stamp));
                }
                o.insert("lastActivityTime".into(), json!(stamp));
            }
            let pre = current.as_ref().map_or(Precondition::IfNoneMatch, |r| {
                Precondition::IfMatch(r.etag.clone())
            });
            let index = hub.to_ascii_lowercase();
            match self
                .store
                .put(Collection::Connections, &key, Some(&index), &state, pre)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::PreconditionFailed { .. } | StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// After a start: every identity still marked `Connected` holds no connection (the
    /// previous process ended without recording the disconnect, e.g. `kill -9`), except those
    /// `is_live` names (connected since this start). Marks the rest `Disconnected`; returns how
    /// many.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn reset_stale_connections(
        &self,
        is_live: impl Fn(&str) -> bool + Send + Sync,
    ) -> Result<u64, HubError> {
        let mut reset = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(Collection::Connections, None, after.as_deref(), 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for r in page {
                if r.body.get("connectionState").and_then(Value::as_str) != Some("Connected")
                    || is_live(&r.key)
                {
                    continue;
                }
                let mut state = r.body.clone();
                if let Some(o) = state.as_object_mut() {
                    o.insert("connectionState".into(), json!("Disconnected"));
                    let stamp = time_fmt::azure(time::OffsetDateTime::now_utc());
                    o.insert("connectionStateUpdatedTime".into(), json!(stamp));
                }
                // A device that connects meanwhile changes the etag: its write wins.
                let pre = Precondition::IfMatch(r.etag.clone());
                match self
                    .store
                    .put(
                        Collection::Connections,
                        &r.key,
                        r.index.as_deref(),
                        &state,
                        pre,
                    )
                    .await
                {
                    Ok(_) => reset += 1,
                    Err(StoreError::PreconditionFailed { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(reset)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use std::sync::Arc;

    use muster_store::sqlite::SqliteStore;
    use serde_json::json;

    use crate::model::ConnectionState;
    use crate::registry::Registry;

    #[tokio::test]
    async fn stale_connections_are_reset_but_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
        let registry = Registry::new(store);
        for id in ["gone", "live", "never"] {
            registry
                .put_device("hub", id, &json!({"deviceId": id}), None)
                .await
                .unwrap();
        }
        registry
            .put_module("hub", "gone", "m", &json!({}), None)
            .await
            .unwrap();
        for id in ["gone", "live", "gone/m"] {
            registry
                .record_activity("hub", id, Some(true))
                .await
                .unwrap();
        }
        let reset = registry
            .reset_stale_connections(|key| key == "hub/live")
            .await
            .unwrap();
        assert_eq!(
            reset, 2,
            "the device and the module that lost their connection"
        );
        let state = |id| {
            let registry = &registry;
            async move {
                registry
                    .get_device("hub", id)
                    .await
                    .unwrap()
                    .connection_state
            }
        };
        assert_eq!(state("gone").await, ConnectionState::Disconnected);
        assert_eq!(state("live").await, ConnectionState::Connected);
        assert_eq!(state("never").await, ConnectionState::Disconnected);
        let module = registry.get_module("hub", "gone", "m").await.unwrap();
        assert_eq!(module.connection_state, ConnectionState::Disconnected);
    }

    #[tokio::test]
    async fn connecting_leaves_the_identity_etag_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
        let registry = Registry::new(store);
        let before = registry
            .put_device("hub", "d", &json!({"deviceId": "d"}), None)
            .await
            .unwrap();
        registry
            .record_activity("hub", "d", Some(true))
            .await
            .unwrap();
        registry.record_activity("hub", "d", None).await.unwrap();
        let connected = registry.get_device("hub", "d").await.unwrap();
        assert_eq!(connected.connection_state, ConnectionState::Connected);
        assert_eq!(connected.etag, before.etag);
        let twin = registry.get_twin("hub", "d").await.unwrap();
        assert_eq!(twin.connection_state, ConnectionState::Connected);
        // The service pattern: read, change status, write back with the etag read before.
        registry
            .put_device(
                "hub",
                "d",
                &json!({"deviceId": "d", "status": "disabled"}),
                Some(&before.etag),
            )
            .await
            .unwrap();
        registry.delete_device("hub", "d", None).await.unwrap();
        registry
            .record_activity("hub", "d", Some(false))
            .await
            .unwrap();
        assert_eq!(
            registry.reset_stale_connections(|_| false).await.unwrap(),
            0,
            "a deleted device leaves no connection state behind"
        );
    }
}
