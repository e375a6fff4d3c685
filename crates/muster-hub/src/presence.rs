//! Live connections: who holds each identity's connection on this node and how to reach it.
//! (The subscriptions of persistent MQTT sessions are durable, in the registry.)
//!
//! Ownership: the map, sharded by identity, is touched only when a device connects or
//! disconnects and when a service needs to reach one device (a desired patch, a method call,
//! new mail, a kick) — never per telemetry message. Each session owns its socket; others reach
//! it through a bounded [`Mailbox`] of [`Outbound`] events, so a slow device cannot stall a
//! service call (a full mailbox drops the notification; devices read their twin again on
//! reconnect). A mailbox allocates nothing until an event arrives: most devices sit idle, and
//! a channel's up-front buffer (tokio allocates a block of 32 slots) was about 2.5 KiB of every
//! idle device's memory.
//!
//! The events are domain events: each transport decides how to put them on its wire (MQTT
//! topics, AMQP links).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// Something for a connected identity's session to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// The desired properties changed: `patch` holds the changed properties and `$version`.
    DesiredPatch {
        /// The new desired `$version`.
        version: u64,
        /// The patch as the device receives it.
        patch: Value,
    },
    /// A direct method call; answer with [`crate::Hub::complete_method`] and the same `rid`.
    MethodRequest {
        /// Request id.
        rid: String,
        /// Method name.
        name: String,
        /// JSON payload text.
        payload: Vec<u8>,
    },
    /// New cloud-to-device messages are queued: receive what is pending.
    Mail,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<VecDeque<Outbound>>,
    notify: Notify,
    closed: AtomicBool,
}

/// A session's incoming events: what [`Presence::send`] queued for it, in order. Ends (`None`)
/// when the session's entry leaves the presence map: a newer connection took the identity
/// over, or the session unregistered.
#[derive(Debug)]
pub struct Mailbox(Arc<Shared>);

impl Mailbox {
    /// The next event; `None` once the mailbox is closed and empty.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            // A notification sent between this check and the wait is kept as a permit.
            if let Some(event) = self.0.queue.lock().ok().and_then(|mut q| q.pop_front()) {
                return Some(event);
            }
            if self.0.closed.load(Ordering::Acquire) {
                return None;
            }
            self.0.notify.notified().await;
        }
    }
}

/// The sending side, held by the presence map; dropping it closes the mailbox.
#[derive(Debug)]
struct Sender(Arc<Shared>);

impl Sender {
    /// Queue an event; `false` when the mailbox already holds [`QUEUE`] events.
    fn try_send(&self, event: Outbound) -> bool {
        let Ok(mut queue) = self.0.queue.lock() else {
            return false;
        };
        if queue.len() >= QUEUE {
            return false;
        }
        queue.push_back(event);
        drop(queue);
        self.0.notify.notify_one();
        true
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }
}

fn mailbox() -> (Sender, Mailbox) {
    let shared = Arc::new(Shared::default());
    (Sender(Arc::clone(&shared)), Mailbox(shared))
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    tx: Arc<Sender>,
    kick: CancellationToken,
}

/// A live session's handles: its events and the token that ends it (a newer connection of the
/// same identity, or the identity deleted or disabled).
#[derive(Debug)]
pub struct Registration {
    /// Distinguishes this connection from a later one of the same identity.
    pub generation: u64,
    /// Events for the session.
    pub rx: Mailbox,
    /// Cancelled when the session must end.
    pub kicked: CancellationToken,
}

/// A direct method's answer: the device's status and JSON payload.
pub type MethodReply = (u16, Value);

/// How a direct method call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum MethodOutcome {
    /// The device answered.
    Answered(MethodReply),
    /// No session of the identity takes methods here (not connected, or never subscribed).
    NotHere,
    /// The device did not answer in time.
    TimedOut,
}

/// Shards of the live map: connects, disconnects and service calls for different devices
/// rarely contend for the same lock.
const SHARDS: usize = 32;

/// Events a session may have waiting before further ones are dropped.
const QUEUE: usize = 64;

/// The live connections of this node.
#[derive(Debug)]
pub struct Presence {
    live: [Mutex<HashMap<String, Entry>>; SHARDS],
    /// Direct-method calls awaiting the device's response, by `{identity key}/{rid}`; `None`
    /// answers that the session does not take methods.
    methods: Mutex<HashMap<String, oneshot::Sender<Option<MethodReply>>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            live: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            methods: Mutex::default(),
            next: std::sync::atomic::AtomicU64::default(),
        }
    }
}

impl Presence {
    /// The shard holding `key`.
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        let Some(shard) = self.live.get(index) else {
            unreachable!("an index modulo SHARDS is in range")
        };
        shard
    }

    /// Take over `key`: a previous connection of the same identity is closed.
    pub fn register(&self, key: &str) -> Registration {
        let generation = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mailbox();
        let tx = Arc::new(tx);
        let kicked = CancellationToken::new();
        if let Ok(mut live) = self.shard(key).lock()
            && let Some(old) = live.insert(
                key.to_owned(),
                Entry {
                    generation,
                    tx,
                    kick: kicked.clone(),
                },
            )
        {
            old.kick.cancel();
        }
        Registration {
            generation,
            rx,
            kicked,
        }
    }

    /// Forget `key` if `generation` still owns it.
    pub fn unregister(&self, key: &str, generation: u64) {
        if let Ok(mut live) = self.shard(key).lock()
            && live.get(key).is_some_and(|e| e.generation == generation)
        {
            live.remove(key);
        }
    }

    /// Queue an event for a connected identity; `false` when it is not connected or its queue
    /// is full.
    pub fn send(&self, key: &str, event: Outbound) -> bool {
        let tx = match self.shard(key).lock() {
            Ok(live) => live.get(key).map(|e| Arc::clone(&e.tx)),
            Err(_) => None,
        };
        tx.is_some_and(|tx| tx.try_send(event))
    }

    /// How many identities are connected to this node.
    pub fn len(&self) -> usize {
        self.live
            .iter()
            .map(|s| s.lock().map_or(0, |l| l.len()))
            .sum()
    }

    /// Whether no identity is connected to this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an identity is connected to this node.
    pub fn is_connected(&self, key: &str) -> bool {
        self.shard(key).lock().is_ok_and(|l| l.contains_key(key))
    }

    /// Register a pending method call; the receiver gets the device's response.
    pub(crate) fn expect_method(
        &self,
        key: &str,
        rid: &str,
    ) -> oneshot::Receiver<Option<MethodReply>> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.methods.lock() {
            m.insert(format!("{key}/{rid}"), tx);
        }
        rx
    }

    /// Forget a pending call (timed out).
    pub(crate) fn abandon_method(&self, key: &str, rid: &str) {
        if let Ok(mut m) = self.methods.lock() {
            m.remove(&format!("{key}/{rid}"));
        }
    }

    /// Deliver a device's method response; `false` when no call is waiting for it.
    pub(crate) fn complete_method(&self, key: &str, rid: &str, reply: Option<MethodReply>) -> bool {
        let waiting = self
            .methods
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&format!("{key}/{rid}")));
        waiting.is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Call a direct method on the session of `key` on this node and wait up to `timeout` for
    /// its answer. `rid` names the call on the wire.
    pub async fn call_method(
        &self,
        key: &str,
        rid: &str,
        name: &str,
        payload: Vec<u8>,
        timeout: std::time::Duration,
    ) -> MethodOutcome {
        if !self.is_connected(key) {
            return MethodOutcome::NotHere;
        }
        let reply = self.expect_method(key, rid);
        let request = Outbound::MethodRequest {
            rid: rid.to_owned(),
            name: name.to_owned(),
            payload,
        };
        if !self.send(key, request) {
            self.abandon_method(key, rid);
            return MethodOutcome::NotHere;
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(Some(answer))) => MethodOutcome::Answered(answer),
            Ok(Ok(None)) => MethodOutcome::NotHere,
            Ok(Err(_)) | Err(_) => {
                self.abandon_method(key, rid);
                MethodOutcome::TimedOut
            }
        }
    }

    /// Close the identity's connection (deleted or disabled).
    pub fn kick(&self, key: &str) {
        if let Ok(mut live) = self.shard(key).lock()
            && let Some(e) = live.remove(key)
        {
            e.kick.cancel();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mailboxes_keep_order_hold_at_most_queue_events_and_end_with_their_entry() {
        let presence = Presence::default();
        let mut first = presence.register("hub/d1");
        assert!(presence.send("hub/d1", Outbound::Mail));
        assert!(presence.send(
            "hub/d1",
            Outbound::DesiredPatch {
                version: 2,
                patch: Value::Null
            }
        ));
        assert_eq!(first.rx.recv().await, Some(Outbound::Mail));
        assert!(matches!(
            first.rx.recv().await,
            Some(Outbound::DesiredPatch { version: 2, .. })
        ));
        // Bounded: the 65th waiting event is refused.
        for _ in 0..QUEUE {
            assert!(presence.send("hub/d1", Outbound::Mail));
        }
        assert!(!presence.send("hub/d1", Outbound::Mail));
        // A takeover closes the old mailbox once it is drained, and kicks its session.
        let mut second = presence.register("hub/d1");
        assert!(first.kicked.is_cancelled());
        for _ in 0..QUEUE {
            assert_eq!(first.rx.recv().await, Some(Outbound::Mail));
        }
        assert_eq!(first.rx.recv().await, None);
        // A waiting session wakes up when its entry goes.
        let generation = second.generation;
        let waiting = tokio::spawn(async move { second.rx.recv().await });
        tokio::task::yield_now().await;
        presence.unregister("hub/d1", generation);
        assert_eq!(waiting.await.unwrap(), None);
        assert!(!presence.send("hub/d1", Outbound::Mail));
    }
}
