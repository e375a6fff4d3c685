//! Several nodes as one hub: the seam between the hub core and the bus that links the nodes.
//!
//! A device's connection lives on one node, but a service call may arrive at any node. The
//! hub core keeps its local [`Presence`](crate::presence::Presence) and, when a [`Cluster`] is
//! attached, also tells the cluster which identities this node holds, and asks it to reach
//! identities held elsewhere: a desired-property patch or new mail, a direct method, a kick
//! (disabled, deleted, or taken over by a newer connection on another node).
//!
//! Single node: no cluster; everything stays in the process. Several nodes: `muster-bus-nats`
//! implements this trait on NATS (presence in a KV bucket whose revision fences takeovers,
//! signals on per-node subjects), and serves the other nodes' requests from this node's
//! presence.

use std::time::Duration;

use async_trait::async_trait;

use crate::presence::{MethodOutcome, Outbound};

/// The bus between the nodes could not carry a request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BusError(pub String);

/// The other nodes, as the hub core sees them. Keys are identity keys (`{hub}/{deviceId}` or
/// `{hub}/{deviceId}/{moduleId}`).
#[async_trait]
pub trait Cluster: Send + Sync + std::fmt::Debug + 'static {
    /// This node's name.
    fn node(&self) -> &str;

    /// A session of `key` began on this node: record that this node holds the identity, and
    /// close the session another node held (takeover). Returns once the old node let go or
    /// could not be reached.
    async fn claim(&self, key: &str);

    /// No session of `key` is left on this node: forget the claim, unless another node took
    /// the identity over meanwhile.
    async fn release(&self, key: &str);

    /// Hand `event` to the node holding `key` (never this one); `false` when no node does.
    async fn deliver(&self, key: &str, event: &Outbound) -> bool;

    /// Call a direct method on the node holding `key` (never this one).
    ///
    /// # Errors
    /// [`BusError`] when the bus cannot carry the call.
    async fn call_method(
        &self,
        key: &str,
        name: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<MethodOutcome, BusError>;

    /// Close the session of `key` wherever another node holds it.
    async fn kick(&self, key: &str);

    /// The node holding `key`, if any node does (this one included).
    async fn owner(&self, key: &str) -> Option<String>;

    /// Whether this node reaches the bus now.
    fn connected(&self) -> bool;

    /// Tell the other nodes that what they cached of `kind` (`routing`) for `key` (a hub) has
    /// changed in the store (best effort: a node that misses it reads again after a restart).
    async fn invalidate(&self, kind: &str, key: &str);
}
