//! Connected hub devices: who holds each device's connection and how to reach it. (The
//! subscriptions of CleanSession=0 sessions are durable, in the registry.)
//!
//! Ownership: the map, sharded by device, is touched only when a device connects or
//! disconnects and when a service needs to reach one device (a desired patch, a kick) — never
//! per telemetry message. Each
//! session owns its socket; others reach it through a bounded channel, so a slow device cannot
//! stall a service call (a full channel drops the notification; the device re-reads its twin
//! on reconnect).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Something for a connected device's session to do.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// Publish this (if the device subscribed to a matching filter).
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// New cloud-to-device messages are queued: deliver what is pending.
    Mail,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    tx: mpsc::Sender<Outbound>,
    kick: CancellationToken,
}

/// A live session's handles.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) generation: u64,
    pub(crate) rx: mpsc::Receiver<Outbound>,
    pub(crate) kicked: CancellationToken,
}

/// A direct method's answer: the device's status and JSON payload.
pub(crate) type MethodReply = (u16, serde_json::Value);

/// Shards of the live map: connects, disconnects and service calls for different devices
/// rarely contend for the same lock.
const SHARDS: usize = 32;

#[derive(Debug)]
pub(crate) struct Sessions {
    live: [Mutex<HashMap<String, Entry>>; SHARDS],
    /// Direct-method calls awaiting the device's response, by `{session key}/{rid}`.
    methods: Mutex<HashMap<String, tokio::sync::oneshot::Sender<MethodReply>>>,
    next: std::sync::atomic::AtomicU64,
}

const QUEUE: usize = 64;

impl Default for Sessions {
    fn default() -> Self {
        Self {
            live: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            methods: Mutex::default(),
            next: std::sync::atomic::AtomicU64::default(),
        }
    }
}

impl Sessions {
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

    /// Take over `key`: a previous connection of the same device is closed.
    pub(crate) fn register(&self, key: &str) -> Registration {
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
    pub(crate) fn unregister(&self, key: &str, generation: u64) {
        if let Ok(mut live) = self.shard(key).lock()
            && live.get(key).is_some_and(|e| e.generation == generation)
        {
            live.remove(key);
        }
    }

    /// Queue a message for a connected device; `false` when it is not connected or its queue is
    /// full.
    pub(crate) fn send(&self, key: &str, message: Outbound) -> bool {
        let tx = match self.shard(key).lock() {
            Ok(live) => live.get(key).map(|e| e.tx.clone()),
            Err(_) => None,
        };
        tx.is_some_and(|tx| tx.try_send(message).is_ok())
    }

    /// Whether a device is connected.
    pub(crate) fn is_connected(&self, key: &str) -> bool {
        self.shard(key).lock().is_ok_and(|l| l.contains_key(key))
    }

    /// Register a pending method call; the receiver gets the device's response.
    pub(crate) fn expect_method(
        &self,
        key: &str,
        rid: &str,
    ) -> tokio::sync::oneshot::Receiver<MethodReply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
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
    pub(crate) fn complete_method(&self, key: &str, rid: &str, reply: MethodReply) -> bool {
        let waiting = self
            .methods
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&format!("{key}/{rid}")));
        waiting.is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Close the device's connection (deleted or disabled).
    pub(crate) fn kick(&self, key: &str) {
        if let Ok(mut live) = self.shard(key).lock()
            && let Some(e) = live.remove(key)
        {
            e.kick.cancel();
        }
    }
}
