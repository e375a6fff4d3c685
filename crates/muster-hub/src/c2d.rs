//! The cloud-to-device mailbox: a durable queue per device, with IoT Hub's settlement model.
//!
//! - A service queues a message ([`Registry::enqueue_c2d`]): at most 64 KB, at most 50 pending
//!   per device, each with an expiry.
//! - A device's transport *receives* messages ([`Registry::receive_c2d`]): each comes with a
//!   lock token and stays locked — invisible to other receives — until it is settled or the
//!   lock expires.
//! - The device settles with the lock token: **complete** removes the message, **abandon**
//!   unlocks it for another delivery, **reject** removes it without delivery (IoT Hub
//!   dead-letters it). A message delivered more than [`MAX_DELIVERY_COUNT`] times is dropped
//!   the same way; expired messages are dropped when a receive meets them.
//!
//! MQTT completes on PUBACK and abandons what is unacknowledged when the connection ends;
//! AMQP and HTTPS devices settle explicitly with the same calls.

use std::time::Duration;

use base64::Engine as _;
use muster_store::{Collection, Precondition, StoreError};
use serde_json::{Value, json};
use tracing::{debug, info};

use crate::docs;
use crate::registry::{HubError, Registry};

/// A cloud-to-device message.
#[derive(Debug, Clone, PartialEq)]
pub struct C2dMessage {
    /// `iothub-messageid`.
    pub message_id: String,
    /// `iothub-correlationid`.
    pub correlation_id: Option<String>,
    /// `iothub-ack` (full, positive, negative, none).
    pub ack: Option<String>,
    /// Expiry, Unix seconds.
    pub expiry_unix: i64,
    /// Application properties.
    pub properties: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A received, locked message.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Settles this delivery (complete, abandon, reject).
    pub lock_token: String,
    /// How many times the message has been delivered, this one included.
    pub delivery_count: u32,
    /// The message.
    pub message: C2dMessage,
}

/// Messages a device may have pending.
pub const MAX_C2D_QUEUE: usize = 50;
/// Largest C2D body.
pub const MAX_C2D_SIZE: usize = 64 * 1024;
/// Deliveries after which an unsettled message is dropped (IoT Hub's default
/// `maxDeliveryCount`).
pub const MAX_DELIVERY_COUNT: u32 = 10;

impl C2dMessage {
    fn to_json(&self) -> Value {
        json!({
            "messageId": self.message_id,
            "correlationId": self.correlation_id,
            "ack": self.ack,
            "expiryUnix": self.expiry_unix,
            "properties": self.properties.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "body": base64::engine::general_purpose::STANDARD.encode(&self.body),
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let pair = |p: &Value| {
            Some((
                p.get(0)?.as_str()?.to_owned(),
                p.get(1)?.as_str()?.to_owned(),
            ))
        };
        Some(Self {
            message_id: v.get("messageId")?.as_str()?.to_owned(),
            correlation_id: v
                .get("correlationId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ack: v.get("ack").and_then(Value::as_str).map(str::to_owned),
            expiry_unix: v.get("expiryUnix")?.as_i64()?,
            properties: v
                .get("properties")?
                .as_array()?
                .iter()
                .filter_map(pair)
                .collect(),
            body: base64::engine::general_purpose::STANDARD
                .decode(v.get("body")?.as_str()?)
                .ok()?,
        })
    }
}

fn now_millis() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// A lock token names the message (its key within the device's queue) and one lock on it.
fn lock_token(message_key: &str) -> String {
    let name = message_key.rsplit('/').next().unwrap_or_default();
    format!("{name}.{}", docs::random_suffix())
}

impl Registry {
    /// Queue a cloud-to-device message (durably) for a device.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`], [`HubError::InvalidInput`] over 64 KB,
    /// [`HubError::QueueFull`] with 50 pending.
    pub async fn enqueue_c2d(
        &self,
        hub: &str,
        id: &str,
        message: &C2dMessage,
    ) -> Result<(), HubError> {
        if message.body.len() > MAX_C2D_SIZE {
            return Err(HubError::InvalidInput(
                "cloud-to-device messages are limited to 64 KB".into(),
            ));
        }
        let queue = docs::key(hub, id);
        if self.store.get(Collection::Devices, &queue).await?.is_none() {
            return Err(HubError::DeviceNotFound(id.to_owned()));
        }
        let live = self.c2d_queued(&queue).await?;
        if live >= MAX_C2D_QUEUE {
            return Err(HubError::QueueFull(id.to_owned()));
        }
        let order = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let key = format!("{queue}/{order:024}-{}", docs::random_suffix());
        self.store
            .put(
                Collection::C2dMessages,
                &key,
                Some(&queue),
                &message.to_json(),
                Precondition::IfNoneMatch,
            )
            .await?;
        muster_metrics::metrics().c2d_enqueued.inc();
        info!(
            hub,
            device_id = id,
            message_id = message.message_id,
            "cloud-to-device message queued"
        );
        Ok(())
    }

    /// Lock and return up to `max` pending messages of a device, oldest first, each locked for
    /// `lock_for`. Locked messages are skipped; expired ones and ones delivered too often are
    /// dropped.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn receive_c2d(
        &self,
        hub: &str,
        id: &str,
        max: usize,
        lock_for: Duration,
    ) -> Result<Vec<Delivery>, HubError> {
        let queue = docs::key(hub, id);
        let now = now_millis();
        let until = now.saturating_add(i64::try_from(lock_for.as_millis()).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        let records = self
            .store
            .list(
                Collection::C2dMessages,
                Some(&queue),
                None,
                MAX_C2D_QUEUE * 2,
            )
            .await?;
        for r in records {
            if out.len() >= max {
                break;
            }
            let locked_until = r
                .body
                .get("lockedUntil")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if locked_until > now {
                continue;
            }
            let count = r
                .body
                .get("deliveryCount")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0);
            let message = C2dMessage::from_json(&r.body)
                .filter(|m| m.expiry_unix.saturating_mul(1000) > now && count < MAX_DELIVERY_COUNT);
            let Some(message) = message else {
                debug!(key = r.key, "dropping an expired or undeliverable message");
                self.store
                    .delete(
                        Collection::C2dMessages,
                        &r.key,
                        Precondition::IfMatch(r.etag),
                    )
                    .await
                    .or_else(ignore_race)?;
                continue;
            };
            let token = lock_token(&r.key);
            let mut body = r.body.clone();
            if let Some(o) = body.as_object_mut() {
                o.insert("lockToken".into(), json!(token));
                o.insert("lockedUntil".into(), json!(until));
                o.insert("deliveryCount".into(), json!(count + 1));
            }
            // A concurrent receive that locked it first wins.
            if self
                .write_back(Collection::C2dMessages, hub, &r, &body)
                .await?
            {
                out.push(Delivery {
                    lock_token: token,
                    delivery_count: count + 1,
                    message,
                });
            }
        }
        Ok(out)
    }

    /// How many unexpired messages wait in the queue of the identity stored under `key`.
    pub(crate) async fn c2d_queued(&self, key: &str) -> Result<usize, HubError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok(self
            .store
            .list(Collection::C2dMessages, Some(key), None, MAX_C2D_QUEUE * 2)
            .await?
            .iter()
            .filter(|r| {
                r.body
                    .get("expiryUnix")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    > now
            })
            .count())
    }

    /// Cloud-to-device messages waiting across every hub and device.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn c2d_depth(&self) -> Result<u64, HubError> {
        Ok(self.store.count(Collection::C2dMessages).await?)
    }

    /// Remove every message queued for a device (`az iot device c2d-message purge`); returns
    /// how many were removed.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`]; storage failures.
    pub async fn purge_c2d(&self, hub: &str, id: &str) -> Result<usize, HubError> {
        self.get_device(hub, id).await?;
        let queue = docs::key(hub, id);
        let records = self
            .store
            .list(
                Collection::C2dMessages,
                Some(&queue),
                None,
                MAX_C2D_QUEUE * 4,
            )
            .await?;
        let mut purged = 0;
        for r in records {
            if self
                .store
                .delete(Collection::C2dMessages, &r.key, Precondition::None)
                .await?
            {
                purged += 1;
            }
        }
        info!(hub, device_id = id, purged, "cloud-to-device queue purged");
        Ok(purged)
    }

    /// The message a lock token names, if the lock is still held.
    async fn locked(
        &self,
        hub: &str,
        id: &str,
        lock_token: &str,
    ) -> Result<muster_store::Record, HubError> {
        let name = lock_token
            .rsplit_once('.')
            .map(|(n, _)| n)
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or(HubError::MessageLockLost)?;
        let key = format!("{}/{name}", docs::key(hub, id));
        let record = self
            .store
            .get(Collection::C2dMessages, &key)
            .await?
            .ok_or(HubError::MessageLockLost)?;
        let held = record.body.get("lockToken").and_then(Value::as_str) == Some(lock_token)
            && record
                .body
                .get("lockedUntil")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > now_millis();
        if held {
            Ok(record)
        } else {
            Err(HubError::MessageLockLost)
        }
    }

    /// The device accepted a message: remove it.
    ///
    /// # Errors
    /// [`HubError::MessageLockLost`] when the lock is unknown or expired.
    pub async fn complete_c2d(
        &self,
        hub: &str,
        id: &str,
        lock_token: &str,
    ) -> Result<Option<C2dMessage>, HubError> {
        let r = self.locked(hub, id, lock_token).await?;
        // Changed or gone since the lock was checked: another delivery owns it now. A storage
        // failure stays a storage failure.
        let deleted = self
            .store
            .delete(
                Collection::C2dMessages,
                &r.key,
                Precondition::IfMatch(r.etag),
            )
            .await
            .or_else(ignore_race)?;
        if deleted {
            Ok(C2dMessage::from_json(&r.body))
        } else {
            Err(HubError::MessageLockLost)
        }
    }

    /// The device refused a message: remove it without delivering it again.
    ///
    /// # Errors
    /// [`HubError::MessageLockLost`] when the lock is unknown or expired.
    pub async fn reject_c2d(
        &self,
        hub: &str,
        id: &str,
        lock_token: &str,
    ) -> Result<Option<C2dMessage>, HubError> {
        let message = self.complete_c2d(hub, id, lock_token).await?;
        info!(
            hub,
            device_id = id,
            "cloud-to-device message rejected by the device"
        );
        Ok(message)
    }

    /// The device gave a message back: unlock it for another delivery.
    ///
    /// # Errors
    /// [`HubError::MessageLockLost`] when the lock is unknown or expired.
    pub async fn abandon_c2d(&self, hub: &str, id: &str, lock_token: &str) -> Result<(), HubError> {
        let r = self.locked(hub, id, lock_token).await?;
        let mut body = r.body.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("lockToken");
            o.insert("lockedUntil".into(), json!(0));
        }
        if self
            .write_back(Collection::C2dMessages, hub, &r, &body)
            .await?
        {
            Ok(())
        } else {
            Err(HubError::MessageLockLost)
        }
    }
}

fn ignore_race(e: StoreError) -> Result<bool, StoreError> {
    match e {
        StoreError::PreconditionFailed { .. } => Ok(false),
        other => Err(other),
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

    use super::*;

    async fn registry_with_device() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
        let registry = Registry::new(store);
        registry
            .put_device("hub", "d", &json!({"deviceId": "d"}), None)
            .await
            .unwrap();
        (dir, registry)
    }

    fn message(id: &str, expiry_unix: i64) -> C2dMessage {
        C2dMessage {
            message_id: id.into(),
            correlation_id: None,
            ack: None,
            expiry_unix,
            properties: vec![("k".into(), "v".into())],
            body: b"hello".to_vec(),
        }
    }

    fn in_an_hour() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp() + 3600
    }

    #[tokio::test]
    async fn locks_hide_messages_until_settled() {
        let (_dir, r) = registry_with_device().await;
        r.enqueue_c2d("hub", "d", &message("m1", in_an_hour()))
            .await
            .unwrap();
        r.enqueue_c2d("hub", "d", &message("m2", in_an_hour()))
            .await
            .unwrap();
        let lock = Duration::from_secs(60);
        let first = r.receive_c2d("hub", "d", 10, lock).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].message.message_id, "m1", "oldest first");
        assert_eq!(first[0].message.properties, vec![("k".into(), "v".into())]);
        assert!(
            r.receive_c2d("hub", "d", 10, lock)
                .await
                .unwrap()
                .is_empty(),
            "locked"
        );

        r.complete_c2d("hub", "d", &first[0].lock_token)
            .await
            .unwrap();
        assert!(matches!(
            r.complete_c2d("hub", "d", &first[0].lock_token).await,
            Err(HubError::MessageLockLost)
        ));
        r.abandon_c2d("hub", "d", &first[1].lock_token)
            .await
            .unwrap();
        let again = r.receive_c2d("hub", "d", 10, lock).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message.message_id, "m2");
        assert_eq!(again[0].delivery_count, 2);
        assert!(
            matches!(
                r.complete_c2d("hub", "d", &first[1].lock_token).await,
                Err(HubError::MessageLockLost)
            ),
            "the first lock on m2 is gone"
        );
        r.reject_c2d("hub", "d", &again[0].lock_token)
            .await
            .unwrap();
        assert!(
            r.receive_c2d("hub", "d", 10, lock)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            r.complete_c2d("hub", "d", "garbage").await,
            Err(HubError::MessageLockLost)
        ));
    }

    #[tokio::test]
    async fn expired_locks_and_messages() {
        let (_dir, r) = registry_with_device().await;
        r.enqueue_c2d("hub", "d", &message("old", 1)).await.unwrap();
        r.enqueue_c2d("hub", "d", &message("m", in_an_hour()))
            .await
            .unwrap();
        let got = r.receive_c2d("hub", "d", 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1, "the expired message is dropped");
        // A zero-length lock has already expired: the message is delivered again and the old
        // lock no longer settles it.
        let again = r
            .receive_c2d("hub", "d", 10, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert!(matches!(
            r.complete_c2d("hub", "d", &got[0].lock_token).await,
            Err(HubError::MessageLockLost)
        ));
        r.complete_c2d("hub", "d", &again[0].lock_token)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_message_delivered_too_often_is_dropped() {
        let (_dir, r) = registry_with_device().await;
        r.enqueue_c2d("hub", "d", &message("m", in_an_hour()))
            .await
            .unwrap();
        for n in 1..=MAX_DELIVERY_COUNT {
            let got = r
                .receive_c2d("hub", "d", 1, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(got[0].delivery_count, n);
            r.abandon_c2d("hub", "d", &got[0].lock_token).await.unwrap();
        }
        assert!(
            r.receive_c2d("hub", "d", 1, Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn limits() {
        let (_dir, r) = registry_with_device().await;
        let mut big = message("big", in_an_hour());
        big.body = vec![0; MAX_C2D_SIZE + 1];
        assert!(matches!(
            r.enqueue_c2d("hub", "d", &big).await,
            Err(HubError::InvalidInput(_))
        ));
        for i in 0..MAX_C2D_QUEUE {
            r.enqueue_c2d("hub", "d", &message(&i.to_string(), in_an_hour()))
                .await
                .unwrap();
        }
        assert!(matches!(
            r.enqueue_c2d("hub", "d", &message("x", in_an_hour())).await,
            Err(HubError::QueueFull(_))
        ));
        assert!(matches!(
            r.enqueue_c2d("hub", "nobody", &message("x", in_an_hour()))
                .await,
            Err(HubError::DeviceNotFound(_))
        ));
    }
}
