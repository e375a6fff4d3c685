//! Live connections: who holds each identity's connection on this node and how to reach it.
//! (The subscriptions of persistent MQTT sessions are durable, in the registry.)
//!
//! Ownership: the map, sharded by identity, is touched only when a device connects or
//! disconnects and when a service needs to reach one device (a desired patch, a method call,
//! new mail, a kick) — never per telemetry message. Each session owns its socket; others reach
//! it through a bounded channel of [`Outbound`] events, so a slow device cannot stall a service
//! call (a full channel drops the notification; devices read their twin again on reconnect).
//!
//! The events are domain events: each transport decides how to put them on its wire (MQTT
//! topics, AMQP links).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
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

#[derive(Debug)]
struct Entry {
    generation: u64,
    tx: mpsc::Sender<Outbound>,
    kick: CancellationToken,
}

/// A live session's handles: its events and the token that ends it (a newer connection of the
/// same identity, or the identity deleted or disabled).
#[derive(Debug)]
pub struct Registration {
    /// Distinguishes this connection from a later one of the same identity.
    pub generation: u64,
    /// Events for the session.
    pub rx: mpsc::Receiver<Outbound>,
    /// Cancelled when the session must end.
    pub kicked: CancellationToken,
}

/// A direct method's answer: the device's status and JSON payload.
pub type MethodReply = (u16, Value);

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
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(QUEUE);
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
            Ok(live) => live.get(key).map(|e| e.tx.clone()),
            Err(_) => None,
        };
        tx.is_some_and(|tx| tx.try_send(event).is_ok())
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

    /// Close the identity's connection (deleted or disabled).
    pub fn kick(&self, key: &str) {
        if let Ok(mut live) = self.shard(key).lock()
            && let Some(e) = live.remove(key)
        {
            e.kick.cancel();
        }
    }
}
