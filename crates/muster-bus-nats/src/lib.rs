//! # muster-bus-nats
//!
//! The cluster bus on NATS ([`muster_hub::cluster::Cluster`]): several muster nodes act as one
//! hub. Design and measured figures: `../shared/spec/scale-out.md` §2.3–2.5.
//!
//! # What lives where
//! - **Presence** — which node holds each identity's connection — is a JetStream KV bucket,
//!   `MUSTER_<ns>_PRESENCE`, key = the escaped identity key, value = `{node, instance, since}`.
//!   The entry's revision fences takeovers: a connect `create`s the key; if another node holds
//!   it, this node asks that node to close the session (`kick`), then `update`s with the
//!   revision it read; a node releasing an identity deletes the key only at the revision it
//!   wrote, so a release never erases a newer owner.
//! - **Signals** go to the owning node on its own subjects, `muster.<ns>.node.<node>.{deliver,
//!   method,kick}` (core NATS request/reply, never a subject or a consumer per device). A node
//!   that is gone answers "no responders" at once; its stale presence entry is then removed.
//! - **Liveness**: each node puts `{instance, started, connections}` into `MUSTER_<ns>_NODES`
//!   every few seconds; the bucket's `max_age` drops entries of nodes that stopped.
//!   `muster cluster status` reads it. A second process under a live node name is refused.
//!
//! `<ns>` is the installation's ID scope, shared by every node of one cluster and distinct
//! between clusters, so several clusters (and test runs) share one NATS without meeting.
//!
//! # NATS 2.9
//! Debian ships nats-server 2.9, whose `$JS.API.INFO` async-nats cannot decode when it
//! creates a KV bucket: the buckets' backing streams are created here explicitly (the same
//! configuration `create_key_value` would send) and then opened.

pub mod events;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use muster_hub::cluster::{BusError, Cluster};
use muster_hub::presence::{MethodOutcome, Outbound, Presence};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often a node announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a node's announcement lasts: three missed heartbeats.
pub const NODE_TTL: Duration = Duration::from_secs(15);
/// How long a kick or a delivery may take on the owning node.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the bus could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// NATS could not be reached.
    #[error("cannot reach NATS at {url}: {reason} (is nats-server running, with JetStream: -js?)")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// JetStream refused a bucket.
    #[error(
        "NATS JetStream refused bucket {bucket}: {reason} (is JetStream enabled: nats-server -js?)"
    )]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// The node id cannot name NATS subjects.
    #[error("node id '{0}' must be 1 to 64 letters, digits, '-' or '_'")]
    NodeId(String),
    /// Another live process uses this node id.
    #[error(
        "node id '{node}' is in use by another running node (seen {age_s} s ago); give this node \
         another --node-id, or stop the other one and wait {ttl_s} s"
    )]
    NodeIdInUse {
        /// The id.
        node: String,
        /// Seconds since the other process announced itself.
        age_s: i64,
        /// How long announcements last.
        ttl_s: u64,
    },
}

/// Is `id` usable as a node id (a NATS subject token and a KV key)?
#[must_use]
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An identity key as a KV key and subject-safe token: letters, digits, `-` and `_` stay, every
/// other byte becomes `=XX` (upper-case hex), so distinct keys stay distinct.
#[must_use]
pub fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// What a node does when another announces a change of something it may have cached:
/// `forget(kind, key)`.
pub type Forget = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The presence value: who holds an identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    node: String,
    instance: String,
    since: i64,
}

/// A node's announcement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node id.
    pub node: String,
    /// This process's instance id (a restarted node has a new one).
    pub instance: String,
    /// Start time, Unix milliseconds.
    pub started_ms: i64,
    /// Sessions connected to it.
    pub connections: u64,
    /// Milliseconds since its last announcement (filled in when read).
    #[serde(default)]
    pub age_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Signal {
    Deliver {
        key: String,
        event: WireEvent,
    },
    Method {
        key: String,
        name: String,
        payload: String,
        timeout_ms: u64,
    },
    Kick {
        key: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum WireEvent {
    DesiredPatch { version: u64, patch: Value },
    Mail,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
enum Reply {
    Done { ok: bool },
    Answered { status: u16, payload: Value },
    NotHere,
    TimedOut,
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

async fn live_nodes(nodes: &kv::Store) -> Result<Vec<NodeStatus>, BusError> {
    let mut keys = nodes.keys().await.map_err(|e| BusError(e.to_string()))?;
    let mut out = Vec::new();
    let ttl_ms = i128::try_from(NODE_TTL.as_millis()).unwrap_or(i128::MAX);
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        if let Ok(Some(entry)) = nodes.entry(&key).await
            && entry.operation == kv::Operation::Put
            && let Ok(mut status) = serde_json::from_slice::<NodeStatus>(&entry.value)
        {
            let age = (time::OffsetDateTime::now_utc() - entry.created).whole_milliseconds();
            status.age_ms = i64::try_from(age).unwrap_or(i64::MAX);
            if age <= ttl_ms {
                out.push(status);
            }
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// The live nodes of the cluster `namespace` (its ID scope) on the NATS at `url`, read without
/// joining it (`muster cluster status`).
///
/// # Errors
/// [`JoinError::Connect`] when NATS cannot be reached; an empty list when no node of that
/// cluster ever announced itself.
pub async fn status(url: &str, namespace: &str) -> Result<Vec<NodeStatus>, JoinError> {
    let client = async_nats::ConnectOptions::new()
        .name("muster cluster status")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| JoinError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let js = jetstream::new(client);
    let Ok(nodes) = js
        .get_key_value(format!("MUSTER_{}_NODES", escape(namespace)))
        .await
    else {
        return Ok(Vec::new());
    };
    live_nodes(&nodes).await.map_err(|e| JoinError::Connect {
        url: url.to_owned(),
        reason: e.0,
    })
}

/// The bus of one node.
pub struct NatsCluster {
    client: async_nats::Client,
    js: jetstream::Context,
    namespace: String,
    replicas: usize,
    presence: kv::Store,
    nodes: kv::Store,
    node: String,
    instance: String,
    started_ms: i64,
    subjects: String,
    /// `muster.<ns>.cache`: "what you cached of KIND changed" to every node.
    cache_subjects: String,
    /// Identities this node holds, with the presence revision it wrote.
    claims: std::sync::Mutex<HashMap<String, u64>>,
    next_rid: AtomicU64,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("node", &self.node)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Open (creating if needed) a KV bucket through its backing stream.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, JoinError> {
    let refused = |reason: String| JoinError::Bucket {
        bucket: name.to_owned(),
        reason,
    };
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| refused(e.to_string()))?;
    js.get_key_value(name)
        .await
        .map_err(|e| refused(e.to_string()))
}

impl NatsCluster {
    /// Join the cluster named `namespace` (the ID scope) on the NATS at `url` as `node`;
    /// `replicas` is the KV buckets' replication (3 on a NATS cluster).
    ///
    /// # Errors
    /// [`JoinError`], each saying what to check.
    pub async fn join(
        url: &str,
        node: &str,
        namespace: &str,
        replicas: usize,
    ) -> Result<Arc<Self>, JoinError> {
        if !valid_node_id(node) {
            return Err(JoinError::NodeId(node.to_owned()));
        }
        let client = async_nats::ConnectOptions::new()
            .name(format!("muster node {node}"))
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| JoinError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        let ns = escape(namespace);
        let presence = bucket(
            &js,
            &format!("MUSTER_{ns}_PRESENCE"),
            Duration::ZERO,
            replicas,
        )
        .await?;
        let nodes = bucket(&js, &format!("MUSTER_{ns}_NODES"), NODE_TTL, replicas).await?;
        let cluster = Self {
            client,
            js: js.clone(),
            namespace: namespace.to_owned(),
            replicas,
            presence,
            nodes,
            node: node.to_owned(),
            instance: format!(
                "{}{}",
                muster_hub::docs::random_suffix(),
                muster_hub::docs::random_suffix()
            ),
            started_ms: now_ms(),
            subjects: format!("muster.{ns}.node"),
            cache_subjects: format!("muster.{ns}.cache"),
            claims: std::sync::Mutex::default(),
            next_rid: AtomicU64::new(1),
        };
        if let Ok(Some(entry)) = cluster.nodes.entry(node).await
            && entry.operation == kv::Operation::Put
        {
            let age = time::OffsetDateTime::now_utc() - entry.created;
            if age < time::Duration::try_from(NODE_TTL).unwrap_or(time::Duration::ZERO) {
                return Err(JoinError::NodeIdInUse {
                    node: node.to_owned(),
                    age_s: age.whole_seconds(),
                    ttl_s: NODE_TTL.as_secs(),
                });
            }
        }
        info!(node, namespace, "joined the cluster bus");
        Ok(Arc::new(cluster))
    }

    /// The cluster's shared telemetry event log on JetStream, keeping events for `retention`.
    ///
    /// # Errors
    /// [`JoinError::Bucket`] when JetStream refuses its stream.
    pub async fn event_log(&self, retention: Duration) -> Result<events::JetStreamLog, JoinError> {
        events::JetStreamLog::open(
            &self.js,
            &self.namespace,
            &self.node,
            &self.instance,
            retention,
            self.replicas,
        )
        .await
    }

    /// This process's instance id.
    #[must_use]
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Serve the other nodes' signals from this node's sessions, and announce this node, until
    /// `shutdown`; then withdraw the announcement. `forget(kind, key)` drops what this node
    /// cached when another node announces a change.
    pub async fn serve(
        self: Arc<Self>,
        sessions: Arc<Presence>,
        forget: Forget,
        shutdown: CancellationToken,
    ) {
        let subject = format!("{}.{}.>", self.subjects, self.node);
        let mut inbox = match self.client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, subject, "cannot subscribe to this node's subjects");
                return;
            }
        };
        let cache = format!("{}.>", self.cache_subjects);
        let mut changes = match self.client.subscribe(cache.clone()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, subject = cache, "cannot subscribe to change announcements");
                return;
            }
        };
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = beat.tick() => self.announce(sessions.len()).await,
                change = changes.next() => {
                    let Some(change) = change else { break };
                    let kind = change.subject.as_str().rsplit('.').next().unwrap_or_default().to_owned();
                    let key = String::from_utf8_lossy(&change.payload).into_owned();
                    debug!(kind, key, "another node changed what this node cached");
                    forget(&kind, &key);
                }
                message = inbox.next() => {
                    let Some(message) = message else { break };
                    let this = Arc::clone(&self);
                    let sessions = Arc::clone(&sessions);
                    tokio::spawn(async move { this.answer(&sessions, message).await });
                }
            }
        }
        if let Err(e) = self.nodes.delete(&self.node).await {
            debug!(error = %e, "cannot withdraw this node's announcement");
        }
    }

    async fn announce(&self, connections: usize) {
        let status = NodeStatus {
            node: self.node.clone(),
            instance: self.instance.clone(),
            started_ms: self.started_ms,
            connections: u64::try_from(connections).unwrap_or(u64::MAX),
            age_ms: 0,
        };
        let body = serde_json::to_vec(&status).unwrap_or_default();
        if let Err(e) = self.nodes.put(&self.node, body.into()).await {
            warn!(error = %e, "cannot announce this node on the bus");
        }
    }

    /// The nodes that announced themselves within [`NODE_TTL`].
    ///
    /// # Errors
    /// [`BusError`] when the bucket cannot be read.
    pub async fn live_nodes(&self) -> Result<Vec<NodeStatus>, BusError> {
        live_nodes(&self.nodes).await
    }

    /// Whether the bus is connected now (readiness: a node that cannot reach the others must
    /// not take devices).
    #[must_use]
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn answer(&self, sessions: &Presence, message: async_nats::Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let reply = match serde_json::from_slice::<Signal>(&message.payload) {
            Ok(Signal::Deliver { key, event }) => {
                let event = match event {
                    WireEvent::DesiredPatch { version, patch } => {
                        Outbound::DesiredPatch { version, patch }
                    }
                    WireEvent::Mail => Outbound::Mail,
                };
                Reply::Done {
                    ok: sessions.send(&key, event),
                }
            }
            Ok(Signal::Method {
                key,
                name,
                payload,
                timeout_ms,
            }) => {
                let rid = format!(
                    "{}{}",
                    self.instance.get(..6).unwrap_or("n"),
                    self.next_rid.fetch_add(1, Ordering::Relaxed)
                );
                match sessions
                    .call_method(
                        &key,
                        &rid,
                        &name,
                        payload.into_bytes(),
                        Duration::from_millis(timeout_ms),
                    )
                    .await
                {
                    MethodOutcome::Answered((status, payload)) => {
                        Reply::Answered { status, payload }
                    }
                    MethodOutcome::NotHere => Reply::NotHere,
                    MethodOutcome::TimedOut => Reply::TimedOut,
                }
            }
            Ok(Signal::Kick { key }) => {
                let held = sessions.is_connected(&key);
                sessions.kick(&key);
                if let Ok(mut claims) = self.claims.lock() {
                    claims.remove(&key);
                }
                debug!(key, held, "closed a session another node took over");
                Reply::Done { ok: held }
            }
            Err(e) => {
                warn!(error = %e, subject = %message.subject, "unreadable signal from another node");
                return;
            }
        };
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        if let Err(e) = self.client.publish(reply_to, body.into()).await {
            debug!(error = %e, "cannot answer another node");
        }
    }

    /// Who holds `key`, and the entry's revision; `None` when no node does or the bus cannot
    /// be read (logged).
    async fn holder(&self, key: &str) -> Option<(Holder, u64)> {
        self.try_holder(key).await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read presence from the bus");
            None
        })
    }

    async fn try_holder(&self, key: &str) -> Result<Option<(Holder, u64)>, BusError> {
        match self.presence.entry(escape(key)).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                Ok(serde_json::from_slice::<Holder>(&entry.value)
                    .ok()
                    .map(|h| (h, entry.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(BusError(format!("presence: {e}"))),
        }
    }

    /// Send `signal` to `node`; `Ok(None)` when the node is gone (no responders).
    async fn request(
        &self,
        node: &str,
        signal: &Signal,
        timeout: Duration,
    ) -> Result<Option<Reply>, BusError> {
        let subject = format!(
            "{}.{node}.{}",
            self.subjects,
            match signal {
                Signal::Deliver { .. } => "deliver",
                Signal::Method { .. } => "method",
                Signal::Kick { .. } => "kick",
            }
        );
        let body = serde_json::to_vec(signal).map_err(|e| BusError(e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(Bytes::from(body))
            .timeout(Some(timeout));
        match self.client.send_request(subject, request).await {
            Ok(message) => serde_json::from_slice(&message.payload)
                .map(Some)
                .map_err(|e| BusError(format!("unreadable answer from node {node}: {e}"))),
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(None),
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
                Ok(Some(Reply::TimedOut))
            }
            Err(e) => Err(BusError(format!("node {node}: {e}"))),
        }
    }

    /// The node that held `key` is gone: remove its entry (only at the revision read).
    async fn reclaim(&self, key: &str, revision: u64, node: &str) {
        match self
            .presence
            .delete_expect_revision(escape(key), Some(revision))
            .await
        {
            Ok(()) => info!(
                key,
                node, "removed the presence entry of a node that is gone"
            ),
            Err(e) => debug!(error = %e, key, "presence entry changed meanwhile"),
        }
    }
}

#[async_trait]
impl Cluster for NatsCluster {
    fn node(&self) -> &str {
        &self.node
    }

    async fn claim(&self, key: &str) {
        let kv_key = escape(key);
        let value: Bytes = serde_json::to_vec(&Holder {
            node: self.node.clone(),
            instance: self.instance.clone(),
            since: now_ms(),
        })
        .unwrap_or_default()
        .into();
        for _ in 0..5 {
            match self.presence.create(&kv_key, value.clone()).await {
                Ok(revision) => {
                    if let Ok(mut claims) = self.claims.lock() {
                        claims.insert(key.to_owned(), revision);
                    }
                    return;
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    warn!(error = %e, key, "cannot record this session on the bus; other nodes cannot reach it");
                    return;
                }
            }
            let Ok(Some(entry)) = self.presence.entry(&kv_key).await else {
                continue;
            };
            if entry.operation == kv::Operation::Put
                && let Ok(old) = serde_json::from_slice::<Holder>(&entry.value)
                && old.node != self.node
            {
                // Another node holds the identity: it closes that session (and lets go of
                // its messages in flight) before this node records itself.
                match self
                    .request(
                        &old.node,
                        &Signal::Kick {
                            key: key.to_owned(),
                        },
                        SIGNAL_TIMEOUT,
                    )
                    .await
                {
                    Ok(Some(_)) => info!(
                        key,
                        from = old.node,
                        "took the session over from another node"
                    ),
                    Ok(None) => info!(
                        key,
                        from = old.node,
                        "took the session over from a node that is gone"
                    ),
                    Err(e) => {
                        warn!(error = %e, key, from = old.node, "could not ask the other node to close the session");
                    }
                }
            }
            match self
                .presence
                .update(&kv_key, value.clone(), entry.revision)
                .await
            {
                Ok(revision) => {
                    if let Ok(mut claims) = self.claims.lock() {
                        claims.insert(key.to_owned(), revision);
                    }
                    return;
                }
                Err(e) => debug!(error = %e, key, "presence changed while claiming; again"),
            }
        }
        warn!(
            key,
            "could not claim the session on the bus after several tries"
        );
    }

    async fn release(&self, key: &str) {
        let revision = self.claims.lock().ok().and_then(|mut c| c.remove(key));
        let Some(revision) = revision else {
            return;
        };
        if let Err(e) = self
            .presence
            .delete_expect_revision(escape(key), Some(revision))
            .await
        {
            debug!(error = %e, key, "another node holds the session now");
        }
    }

    async fn deliver(&self, key: &str, event: &Outbound) -> bool {
        let Some((holder, revision)) = self.holder(key).await else {
            return false;
        };
        if holder.node == self.node {
            return false;
        }
        let event = match event {
            Outbound::DesiredPatch { version, patch } => WireEvent::DesiredPatch {
                version: *version,
                patch: patch.clone(),
            },
            Outbound::Mail => WireEvent::Mail,
            Outbound::MethodRequest { .. } => return false,
        };
        let signal = Signal::Deliver {
            key: key.to_owned(),
            event,
        };
        match self.request(&holder.node, &signal, SIGNAL_TIMEOUT).await {
            Ok(Some(Reply::Done { ok })) => ok,
            Ok(None) => {
                self.reclaim(key, revision, &holder.node).await;
                false
            }
            Ok(Some(_)) => false,
            Err(e) => {
                warn!(error = %e, key, "cannot reach the device's node");
                false
            }
        }
    }

    async fn call_method(
        &self,
        key: &str,
        name: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<MethodOutcome, BusError> {
        // A bus that cannot be read is "unavailable" (503), not "offline" (404).
        let Some((holder, revision)) = self.try_holder(key).await? else {
            return Ok(MethodOutcome::NotHere);
        };
        if holder.node == self.node {
            return Ok(MethodOutcome::NotHere);
        }
        let signal = Signal::Method {
            key: key.to_owned(),
            name: name.to_owned(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        // The owning node waits `timeout` for the device; the bus waits a little longer.
        match self
            .request(&holder.node, &signal, timeout + SIGNAL_TIMEOUT)
            .await?
        {
            None => {
                self.reclaim(key, revision, &holder.node).await;
                Ok(MethodOutcome::NotHere)
            }
            Some(Reply::Answered { status, payload }) => {
                Ok(MethodOutcome::Answered((status, payload)))
            }
            Some(Reply::TimedOut) => Ok(MethodOutcome::TimedOut),
            Some(Reply::NotHere | Reply::Done { .. }) => Ok(MethodOutcome::NotHere),
        }
    }

    async fn kick(&self, key: &str) {
        let Some((holder, revision)) = self.holder(key).await else {
            return;
        };
        if holder.node == self.node {
            return;
        }
        let signal = Signal::Kick {
            key: key.to_owned(),
        };
        match self.request(&holder.node, &signal, SIGNAL_TIMEOUT).await {
            Ok(None) => self.reclaim(key, revision, &holder.node).await,
            Ok(Some(_)) => {}
            Err(e) => warn!(error = %e, key, "cannot ask the device's node to close its session"),
        }
    }

    async fn owner(&self, key: &str) -> Option<String> {
        self.holder(key).await.map(|(h, _)| h.node)
    }

    fn connected(&self) -> bool {
        NatsCluster::connected(self)
    }

    async fn invalidate(&self, kind: &str, key: &str) {
        let subject = format!("{}.{}", self.cache_subjects, escape(kind));
        if let Err(e) = self
            .client
            .publish(subject, Bytes::from(key.to_owned()))
            .await
        {
            warn!(error = %e, kind, key, "cannot tell the other nodes of a change");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_keys_apart_and_subject_safe() {
        assert_eq!(escape("hub/dev-1"), "hub=2Fdev-1");
        assert_eq!(escape("h.b/a b*>"), "h=2Eb=2Fa=20b=2A=3E");
        assert_ne!(escape("a=2F"), escape("a/"));
        assert!(
            escape("localhost/é$x")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c))
        );
    }

    #[test]
    fn node_ids() {
        assert!(valid_node_id("n1"));
        assert!(valid_node_id("node_2-east"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a.b"));
        assert!(!valid_node_id("a b"));
        assert!(!valid_node_id(&"x".repeat(65)));
    }

    #[test]
    fn signals_round_trip() {
        let s = Signal::Deliver {
            key: "h/d".into(),
            event: WireEvent::DesiredPatch {
                version: 3,
                patch: serde_json::json!({"a": 1, "$version": 3}),
            },
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"kind\":\"deliver\""), "{text}");
        assert!(matches!(
            serde_json::from_str::<Signal>(&text).unwrap(),
            Signal::Deliver { .. }
        ));
    }
}
