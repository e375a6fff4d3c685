//! [`Hub`]: the one entry point every transport and the management API call. It owns every hub
//! decision — who a device is, what it may do, what happens to its telemetry, twin, messages
//! and methods, and whether it is connected — so a transport only translates bytes to these
//! calls and their results back to bytes.

use std::sync::Arc;
use std::time::Duration;

use muster_store::events::EventLog;
use muster_types::{DeviceId, ModuleId};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::auth::{self, AuthError, Authenticated, CaSource, Credential};
use crate::c2d::{C2dMessage, Delivery};
use crate::cluster::Cluster;
use crate::docs;
use crate::feedback;
use crate::identity::{Action, Identity};
use crate::methods::{MethodCall, MethodResult};
use crate::model::{Device, DeviceStatus, Module, Twin};
use crate::presence::{MethodOutcome, Outbound, Presence, Registration};
use crate::registry::{HubError, Registry};
use crate::routing::{self, Source};
use crate::telemetry::{IngestError, MAX_TELEMETRY, Telemetry, to_event};

/// How often `lastActivityTime` is written at most, per session.
pub const ACTIVITY_INTERVAL: Duration = Duration::from_secs(60);

/// The IoT hub core of one server: its logical hubs, registry, event log and live sessions.
#[derive(Debug)]
pub struct Hub {
    registry: Registry,
    events: Arc<dyn EventLog>,
    presence: Arc<Presence>,
    cluster: Option<Arc<dyn Cluster>>,
    feedback: feedback::Feedback,
    cas: Arc<dyn CaSource>,
    hostnames: Vec<String>,
    resource_hosts: Vec<String>,
    partitions: u32,
    router: routing::Router,
    throughput: crate::throughput::Throughput,
}

/// Event Hubs partitions per hub unless configured otherwise (IoT Hub's default is 4).
pub const DEFAULT_PARTITIONS: u32 = 4;

impl Hub {
    /// A hub core.
    ///
    /// - `hostnames`: the logical hubs' host names, the first being the default;
    /// - `resource_hosts`: every lower-case name or address a SAS token may name for this
    ///   server (the host names, `localhost`, the bind address, …);
    /// - `cas`: where verified CA certificates come from, for `certificateAuthority` devices.
    #[must_use]
    pub fn new(
        registry: Registry,
        events: Arc<dyn EventLog>,
        cas: Arc<dyn CaSource>,
        hostnames: Vec<String>,
        resource_hosts: Vec<String>,
    ) -> Self {
        Self {
            registry,
            events,
            presence: Arc::default(),
            cluster: None,
            feedback: feedback::Feedback::default(),
            cas,
            hostnames,
            resource_hosts,
            partitions: DEFAULT_PARTITIONS,
            router: routing::Router::default(),
            throughput: crate::throughput::Throughput::default(),
        }
    }

    /// Spread each hub's device-to-cloud messages over `partitions` partitions (at least 1).
    #[must_use]
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Join the other nodes of a cluster: sessions are claimed there, and service calls for
    /// identities held by other nodes go through it.
    #[must_use]
    pub fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The cluster this node belongs to, if any.
    #[must_use]
    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.as_ref()
    }

    /// Message routing: its configuration and change notifications.
    #[must_use]
    pub fn router(&self) -> &routing::Router {
        &self.router
    }

    /// The routing table of `hub`.
    ///
    /// # Errors
    /// [`HubError::Store`], [`HubError::Corrupt`].
    pub async fn routing(&self, hub: &str) -> Result<Arc<routing::Table>, HubError> {
        self.router.table(&self.registry, hub).await
    }

    /// Change the routing of `hub` (validated, stored, in effect for the next message).
    ///
    /// # Errors
    /// What `change` returns, [`HubError::InvalidInput`], [`HubError::PreconditionFailed`].
    pub async fn update_routing(
        &self,
        hub: &str,
        change: impl FnOnce(&mut routing::RoutingConfig) -> Result<(), HubError>,
    ) -> Result<routing::RoutingConfig, HubError> {
        let config = self.router.update(&self.registry, hub, change).await?;
        if let Some(cluster) = &self.cluster {
            cluster
                .invalidate("routing", &hub.to_ascii_lowercase())
                .await;
        }
        Ok(config)
    }

    /// The service view of a twin as JSON, for routing (`None` when it cannot be read).
    async fn twin_json(&self, hub: &str, id: &str) -> Option<Value> {
        let twin = self.registry.get_twin(hub, id).await.ok()?;
        serde_json::to_value(twin).ok()
    }

    /// Emit a non-telemetry event of `source` for `device`/`module` when an enabled route
    /// carries that source (IoT Hub makes none otherwise). Stored durably like telemetry.
    async fn emit(
        &self,
        hub: &str,
        device_id: &str,
        module_id: Option<&str>,
        source: Source,
        op_type: &str,
        body: Value,
    ) {
        let table = match self.routing(hub).await {
            Ok(t) if t.carries(source) => t,
            Ok(_) => return,
            Err(e) => {
                return warn!(error = %e, "routing configuration unreadable; event not emitted");
            }
        };
        let id = module_id.map_or_else(|| device_id.to_owned(), |m| format!("{device_id}/{m}"));
        let twin = if table.needs_twin(source) {
            self.twin_json(hub, &id).await
        } else {
            None
        };
        let now = time::OffsetDateTime::now_utc();
        let enqueued = crate::time_fmt::azure(now);
        let hub_name = crate::eventhub::entity_name(hub);
        let mut system = vec![
            (
                "iothub-connection-device-id".to_owned(),
                device_id.to_owned(),
            ),
            ("iothub-enqueuedtime".to_owned(), enqueued.clone()),
            (
                "iothub-message-source".to_owned(),
                source.message_source().to_owned(),
            ),
            ("content-type".to_owned(), "application/json".to_owned()),
            ("content-encoding".to_owned(), "utf-8".to_owned()),
            (
                "correlation-id".to_owned(),
                format!("{}{}", docs::random_suffix(), docs::random_suffix()),
            ),
            ("user-id".to_owned(), hub_name.clone()),
        ];
        let mut properties = vec![
            ("hubName".to_owned(), hub_name),
            ("deviceId".to_owned(), device_id.to_owned()),
            ("operationTimestamp".to_owned(), enqueued.clone()),
            (
                "iothub-message-schema".to_owned(),
                source.schema().to_owned(),
            ),
            ("opType".to_owned(), op_type.to_owned()),
        ];
        if let Some(m) = module_id {
            system.push(("iothub-connection-module-id".to_owned(), m.to_owned()));
            properties.push(("moduleId".to_owned(), m.to_owned()));
        }
        let mut event = muster_store::events::NewEvent {
            hub: hub.to_ascii_lowercase(),
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
            properties,
            system_properties: system,
            body: body.to_string().into_bytes(),
            enqueued,
            enqueued_ms: i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
            partition: muster_store::events::partition_of(device_id, self.partitions),
            built_in: false,
            endpoints: Vec::new(),
        };
        if !route_event(&table, &mut event, twin.as_ref(), source) {
            return;
        }
        match self.events.append(event).await {
            Ok(_) => debug!(device_id, op_type, "routed event stored"),
            Err(e) => {
                warn!(device_id, op_type, error = %e, "routed event lost: the event log is unavailable");
            }
        }
    }

    /// The built-in endpoint's partition count.
    #[must_use]
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The registry (identities, twins, queries).
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The built-in event log.
    #[must_use]
    pub fn events(&self) -> &Arc<dyn EventLog> {
        &self.events
    }

    /// The live sessions of this node (shared: the cluster's bus serves other nodes' requests
    /// from them).
    #[must_use]
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// Device-to-cloud messages per second over the last hour (in memory, for the portal).
    #[must_use]
    pub fn throughput(&self) -> &crate::throughput::Throughput {
        &self.throughput
    }

    /// The logical hubs' host names, the default first.
    #[must_use]
    pub fn hostnames(&self) -> &[String] {
        &self.hostnames
    }

    /// Lower-case names a SAS token may name for this server.
    #[must_use]
    pub fn resource_hosts(&self) -> &[String] {
        &self.resource_hosts
    }

    /// The logical hub a host name addresses (`:port` ignored; the default hub for addresses
    /// and unknown names).
    #[must_use]
    pub fn hub_for_host(&self, host: &str) -> String {
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        self.hostnames
            .iter()
            .find(|h| h.eq_ignore_ascii_case(host))
            .or_else(|| self.hostnames.first())
            .map(|h| h.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// Authenticate a device (or module, with `module_id`) connecting through `host`.
    ///
    /// # Errors
    /// [`AuthError`]: unknown or disabled identity, or credentials that do not prove it.
    pub async fn authenticate(
        &self,
        host: &str,
        device_id: &str,
        module_id: Option<&str>,
        credential: Credential<'_>,
    ) -> Result<Authenticated, AuthError> {
        let device = DeviceId::new(device_id).map_err(AuthError::InvalidId)?;
        let module = module_id
            .map(ModuleId::new)
            .transpose()
            .map_err(AuthError::InvalidId)?;
        let identity = Identity::new(&self.hub_for_host(host), device, module);
        let hub = identity.hub.as_str();
        let doc = self
            .registry
            .device_document(hub, device_id)
            .await?
            .ok_or_else(|| AuthError::UnknownDevice(device_id.to_owned()))?;
        if doc.get("status").and_then(Value::as_str) == Some("disabled") {
            return Err(AuthError::Disabled(device_id.to_owned()));
        }
        let credentials = match &identity.module_id {
            Some(_) => self
                .registry
                .device_document(hub, &identity.id())
                .await?
                .ok_or_else(|| AuthError::UnknownModule(identity.id()))?,
            None => doc,
        };
        let now = time::OffsetDateTime::now_utc();
        let expires = auth::check(
            &identity,
            &credentials,
            credential,
            &self.resource_hosts,
            &self.cas,
            now,
        )
        .await?;
        Ok(Authenticated { identity, expires })
    }

    /// A session of `identity` begins: it takes over from any earlier one (which is closed),
    /// and the identity reads as connected from now on.
    pub async fn connect(&self, identity: &Identity) -> Registration {
        let registration = self.presence.register(&identity.key());
        if let Some(cluster) = &self.cluster {
            cluster.claim(&identity.key()).await;
        }
        let recorded = self
            .registry
            .record_activity(&identity.hub, &identity.id(), Some(true))
            .await;
        if let Err(e) = recorded {
            warn!(error = %e, "cannot record the connection state");
        }
        self.emit_connection(identity, "deviceConnected").await;
        registration
    }

    async fn emit_connection(&self, identity: &Identity, op_type: &str) {
        let body = serde_json::json!({"sequenceNumber": connection_sequence()});
        self.emit(
            &identity.hub,
            identity.device_id.as_str(),
            identity.module_id.as_ref().map(ModuleId::as_str),
            Source::DeviceConnectionStateEvents,
            op_type,
            body,
        )
        .await;
    }

    /// A session ends. Unless a newer session of the same identity took over, the identity
    /// reads as disconnected.
    pub async fn disconnect(&self, identity: &Identity, generation: u64) {
        let key = identity.key();
        self.presence.unregister(&key, generation);
        if self.presence.is_connected(&key) {
            debug!("a newer connection owns the identity");
            return;
        }
        if let Some(cluster) = &self.cluster {
            cluster.release(&key).await;
        }
        let recorded = self
            .registry
            .record_activity(&identity.hub, &identity.id(), Some(false))
            .await;
        if let Err(e) = recorded {
            warn!(error = %e, "cannot record the connection state");
        }
        self.emit_connection(identity, "deviceDisconnected").await;
    }

    /// Note activity of a session (`lastActivityTime`, written at most once per
    /// [`ACTIVITY_INTERVAL`]; `last` is the session's own clock).
    pub async fn touch(&self, identity: &Identity, last: &mut std::time::Instant) {
        if last.elapsed() < ACTIVITY_INTERVAL {
            return;
        }
        *last = std::time::Instant::now();
        let recorded = self
            .registry
            .record_activity(&identity.hub, &identity.id(), None)
            .await;
        if let Err(e) = recorded {
            warn!(error = %e, "cannot record activity");
        }
    }

    /// Store device-to-cloud messages from `sender` durably, all or none. Appends run together
    /// so one group commit takes them all; acknowledge only after `Ok`.
    ///
    /// # Errors
    /// [`IngestError::TooLarge`] (nothing stored), [`IngestError::Unavailable`].
    pub async fn ingest(
        &self,
        sender: &Identity,
        batch: Vec<Telemetry>,
    ) -> Result<(), IngestError> {
        let metrics = muster_metrics::metrics();
        if let Some(m) = batch.iter().find(|m| m.body.len() > MAX_TELEMETRY) {
            metrics.telemetry_refused.inc_by(batch.len() as u64);
            return Err(IngestError::TooLarge { size: m.body.len() });
        }
        let bytes: usize = batch.iter().map(|m| m.body.len()).sum();
        let now = time::OffsetDateTime::now_utc();
        let table = match self.routing(&sender.hub).await {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(error = %e, "routing configuration unreadable; messages take the fallback route");
                None
            }
        };
        let twin = match &table {
            Some(t) if t.needs_twin(Source::DeviceMessages) => {
                self.twin_json(&sender.hub, &sender.id()).await
            }
            _ => None,
        };
        let appends = batch.into_iter().map(|m| {
            let mut event = to_event(sender, m, now, self.partitions);
            if let Some(t) = &table {
                route_event(t, &mut event, twin.as_ref(), Source::DeviceMessages);
            }
            self.events.append(event)
        });
        let mut stored = 0u64;
        let mut failed = None;
        for result in futures_util::future::join_all(appends).await {
            match result {
                Ok(_) => stored += 1,
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            metrics.telemetry_refused.inc_by(stored.max(1));
            return Err(IngestError::Unavailable(e));
        }
        metrics.telemetry_messages.inc_by(stored);
        metrics.telemetry_bytes.inc_by(bytes as u64);
        self.throughput.record(
            &sender.hub,
            stored,
            u64::try_from(now.unix_timestamp()).unwrap_or(0),
        );
        Ok(())
    }

    /// The twin as its device sees it (`{"desired", "reported"}`).
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn device_twin(&self, identity: &Identity) -> Result<Value, HubError> {
        self.registry
            .device_twin(&identity.hub, &identity.id())
            .await
    }

    /// Apply a device's reported-properties patch (JSON text); returns the new reported
    /// `$version`.
    ///
    /// # Errors
    /// [`HubError::InvalidInput`] for text that is not JSON, [`HubError::Twin`] for rule
    /// violations.
    pub async fn report(&self, identity: &Identity, patch: &[u8]) -> Result<u64, HubError> {
        let patch: Value = serde_json::from_slice(patch).map_err(|e| {
            HubError::InvalidInput(format!("the reported patch is not valid JSON: {e}"))
        })?;
        let version = self
            .registry
            .patch_reported(&identity.hub, &identity.id(), &patch)
            .await?;
        if self.carries(&identity.hub, Source::TwinChangeEvents).await {
            let mut reported = patch;
            if let Some(o) = reported.as_object_mut() {
                o.insert("$version".into(), Value::from(version));
            }
            let twin = self.twin_json(&identity.hub, &identity.id()).await;
            let body = serde_json::json!({
                "version": twin.as_ref().and_then(|t| t.get("version")).cloned().unwrap_or(Value::Null),
                "properties": {"reported": reported},
            });
            self.emit(
                &identity.hub,
                identity.device_id.as_str(),
                identity.module_id.as_ref().map(ModuleId::as_str),
                Source::TwinChangeEvents,
                "updateTwin",
                body,
            )
            .await;
        }
        Ok(version)
    }

    async fn carries(&self, hub: &str, source: Source) -> bool {
        self.routing(hub).await.is_ok_and(|t| t.carries(source))
    }

    /// A service's twin update (`PATCH` merges, `PUT` replaces) of a device or module
    /// (`deviceId/moduleId`); a desired change reaches the connected identity at once.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn update_twin(
        &self,
        hub: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<Twin, HubError> {
        let (twin, notification) = self
            .registry
            .update_twin(hub, id, body, if_match, replace)
            .await?;
        if self.carries(hub, Source::TwinChangeEvents).await {
            let (device_id, module_id) = match id.split_once('/') {
                Some((d, m)) => (d, Some(m)),
                None => (id, None),
            };
            let (op, event) = if replace {
                (
                    "replaceTwin",
                    serde_json::to_value(&twin).unwrap_or(Value::Null),
                )
            } else {
                let mut event = serde_json::Map::new();
                event.insert("version".into(), Value::from(twin.version));
                if let Some(tags) = body.get("tags") {
                    event.insert("tags".into(), tags.clone());
                }
                if let Some(desired) = &notification {
                    event.insert("properties".into(), serde_json::json!({"desired": desired}));
                }
                ("updateTwin", Value::Object(event))
            };
            self.emit(
                hub,
                device_id,
                module_id,
                Source::TwinChangeEvents,
                op,
                event,
            )
            .await;
        }
        if let Some(patch) = notification {
            let version = patch.get("$version").and_then(Value::as_u64).unwrap_or(0);
            let event = Outbound::DesiredPatch { version, patch };
            let delivered = self.reach(&docs::key(hub, id), event).await;
            info!(
                device_id = id,
                version, delivered, "desired properties changed"
            );
        }
        Ok(twin)
    }

    /// Create or update the identity of a device DPS assigned to this hub; a new identity is a
    /// `createDeviceIdentity` lifecycle event where a route carries those.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn provision(&self, a: &crate::provision::Assignment<'_>) -> Result<(), HubError> {
        let lifecycle = self.carries(a.hub, Source::DeviceLifecycleEvents).await;
        let existed = lifecycle
            && self
                .registry
                .device_document(a.hub, a.device_id)
                .await?
                .is_some();
        self.registry.provision(a).await?;
        if lifecycle && !existed {
            let twin = self
                .twin_json(a.hub, a.device_id)
                .await
                .unwrap_or(Value::Null);
            self.emit(
                a.hub,
                a.device_id,
                None,
                Source::DeviceLifecycleEvents,
                "createDeviceIdentity",
                twin,
            )
            .await;
        }
        Ok(())
    }

    /// Create or update a device identity; disabling it closes its connection.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn put_device(
        &self,
        hub: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Device, HubError> {
        let lifecycle = self.carries(hub, Source::DeviceLifecycleEvents).await;
        let existed = lifecycle && self.registry.device_document(hub, id).await?.is_some();
        let device = self.registry.put_device(hub, id, body, if_match).await?;
        if device.status == DeviceStatus::Disabled {
            self.kick_device(hub, id).await;
        }
        if lifecycle && !existed {
            let twin = self.twin_json(hub, id).await.unwrap_or(Value::Null);
            self.emit(
                hub,
                id,
                None,
                Source::DeviceLifecycleEvents,
                "createDeviceIdentity",
                twin,
            )
            .await;
        }
        Ok(device)
    }

    /// Delete a device identity (and its modules); their connections close.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn delete_device(
        &self,
        hub: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let modules = self
            .registry
            .list_modules(hub, id)
            .await
            .unwrap_or_default();
        let twin = if self.carries(hub, Source::DeviceLifecycleEvents).await {
            self.twin_json(hub, id).await
        } else {
            None
        };
        self.registry.delete_device(hub, id, if_match).await?;
        self.kick(hub, id, &modules).await;
        if let Some(twin) = twin {
            self.emit(
                hub,
                id,
                None,
                Source::DeviceLifecycleEvents,
                "deleteDeviceIdentity",
                twin,
            )
            .await;
        }
        Ok(())
    }

    /// Queue `event` for the session of `key`, on this node or, through the cluster, on the
    /// node that holds it; `false` when none does (or its queue is full).
    async fn reach(&self, key: &str, event: Outbound) -> bool {
        if self.presence.send(key, event.clone()) {
            return true;
        }
        match &self.cluster {
            Some(cluster) => cluster.deliver(key, &event).await,
            None => false,
        }
    }

    /// Close the session of `key`, here and on any other node.
    async fn kick_key(&self, key: &str) {
        self.presence.kick(key);
        if let Some(cluster) = &self.cluster {
            cluster.kick(key).await;
        }
    }

    /// Close the connections of a device and its modules.
    async fn kick_device(&self, hub: &str, id: &str) {
        let modules = self
            .registry
            .list_modules(hub, id)
            .await
            .unwrap_or_default();
        self.kick(hub, id, &modules).await;
    }

    async fn kick(&self, hub: &str, id: &str, modules: &[Module]) {
        self.kick_key(&docs::key(hub, id)).await;
        for m in modules {
            let module = crate::modules::module_identity(id, &m.module_id);
            self.kick_key(&docs::key(hub, &module)).await;
        }
    }

    /// Delete a module identity; its connection closes.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn delete_module(
        &self,
        hub: &str,
        device_id: &str,
        module_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        self.registry
            .delete_module(hub, device_id, module_id, if_match)
            .await?;
        let module = crate::modules::module_identity(device_id, module_id);
        self.kick_key(&docs::key(hub, &module)).await;
        Ok(())
    }

    /// Call a direct method on a connected device or module (`deviceId/moduleId`) and wait for
    /// its answer.
    ///
    /// # Errors
    /// [`HubError::DeviceNotFound`]/[`HubError::ModuleNotFound`],
    /// [`HubError::DeviceNotOnline`] when no session holds the identity,
    /// [`HubError::GatewayTimeout`] when the device does not answer in time.
    pub async fn invoke_method(
        &self,
        hub: &str,
        id: &str,
        call: MethodCall,
    ) -> Result<MethodResult, HubError> {
        if self.registry.device_document(hub, id).await?.is_none() {
            return Err(crate::registry::not_found(id));
        }
        let started = std::time::Instant::now();
        let result = self.call_method(hub, id, call).await;
        let outcome = match &result {
            Ok(_) => "answered",
            Err(HubError::GatewayTimeout(_)) => "timeout",
            Err(HubError::DeviceNotOnline(_)) => "offline",
            Err(_) => "failed",
        };
        muster_metrics::metrics().method(outcome, started.elapsed());
        result
    }

    async fn call_method(
        &self,
        hub: &str,
        id: &str,
        call: MethodCall,
    ) -> Result<MethodResult, HubError> {
        let key = docs::key(hub, id);
        let rid = format!("{}{}", docs::random_suffix(), docs::random_suffix());
        let mut outcome = self
            .presence
            .call_method(
                &key,
                &rid,
                &call.name,
                call.payload.as_bytes().to_vec(),
                call.timeout,
            )
            .await;
        if outcome == MethodOutcome::NotHere
            && let Some(cluster) = &self.cluster
        {
            outcome = cluster
                .call_method(&key, &call.name, call.payload.as_bytes(), call.timeout)
                .await
                .map_err(|e| HubError::Unavailable(e.to_string()))?;
        }
        match outcome {
            MethodOutcome::NotHere => Err(HubError::DeviceNotOnline(id.to_owned())),
            MethodOutcome::Answered((status, payload)) => {
                info!(
                    device_id = id,
                    method = call.name,
                    status,
                    "direct method answered"
                );
                Ok(MethodResult { status, payload })
            }
            MethodOutcome::TimedOut => {
                warn!(
                    device_id = id,
                    method = call.name,
                    "direct method timed out"
                );
                Err(HubError::GatewayTimeout(id.to_owned()))
            }
        }
    }

    /// A device's answer to the call `rid`; `false` when no call waits for it (timed out).
    pub fn complete_method(&self, identity: &Identity, rid: &str, result: MethodResult) -> bool {
        self.presence
            .complete_method(&identity.key(), rid, Some((result.status, result.payload)))
    }

    /// The session of `identity` does not take direct methods (it never subscribed to them):
    /// the call `rid` ends at once with [`HubError::DeviceNotOnline`], as in IoT Hub.
    pub fn refuse_method(&self, identity: &Identity, rid: &str) {
        self.presence.complete_method(&identity.key(), rid, None);
    }

    /// Queue a cloud-to-device message; a connected device hears of it at once.
    ///
    /// # Errors
    /// [`HubError`] (unknown device, too large, queue full).
    pub async fn send_c2d(
        &self,
        hub: &str,
        device_id: &str,
        message: &C2dMessage,
    ) -> Result<(), HubError> {
        self.registry.enqueue_c2d(hub, device_id, message).await?;
        self.reach(&docs::key(hub, device_id), Outbound::Mail).await;
        Ok(())
    }

    /// Receive (lock) up to `max` pending cloud-to-device messages of `identity`.
    ///
    /// # Errors
    /// [`HubError::Unauthorized`] for a module; storage failures.
    pub async fn receive_c2d(
        &self,
        identity: &Identity,
        max: usize,
        lock_for: Duration,
    ) -> Result<Vec<Delivery>, HubError> {
        identity
            .authorize(Action::ReceiveC2d(identity.target()))
            .map_err(|_| HubError::Unauthorized)?;
        self.registry
            .receive_c2d(&identity.hub, identity.device_id.as_str(), max, lock_for)
            .await
    }

    /// Settle a received message.
    ///
    /// # Errors
    /// [`HubError::MessageLockLost`] when the lock is unknown or expired.
    pub async fn settle_c2d(
        &self,
        identity: &Identity,
        lock_token: &str,
        outcome: Settlement,
    ) -> Result<(), HubError> {
        let (hub, id) = (&identity.hub, identity.device_id.as_str());
        let (settled, success) = match outcome {
            Settlement::Complete => (self.registry.complete_c2d(hub, id, lock_token).await?, true),
            Settlement::Abandon => return self.registry.abandon_c2d(hub, id, lock_token).await,
            Settlement::Reject => (self.registry.reject_c2d(hub, id, lock_token).await?, false),
        };
        if let Some(message) = settled
            && feedback::wanted(message.ack.as_deref(), success)
        {
            let generation = match self.registry.device_document(hub, id).await {
                Ok(Some(doc)) => doc
                    .get("generationId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            let (status, description) = if success {
                ("Success", "Success")
            } else {
                ("Rejected", "Message rejected")
            };
            let record = feedback::FeedbackRecord {
                original_message_id: message.message_id,
                device_id: id.to_owned(),
                status_code: status.to_owned(),
                description: description.to_owned(),
                enqueued_time_utc: muster_types::time_fmt::azure(time::OffsetDateTime::now_utc()),
                device_generation_id: generation,
            };
            self.feedback.push(hub, record);
        }
        Ok(())
    }

    /// Delivery feedback waiting for the services' feedback receivers.
    #[must_use]
    pub fn feedback(&self) -> &feedback::Feedback {
        &self.feedback
    }

    /// The saved subscriptions of a persistent session (`persistent`), or a clean start that
    /// forgets them (returns `None`).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn open_session(
        &self,
        identity: &Identity,
        persistent: bool,
    ) -> Result<Option<Vec<String>>, HubError> {
        if persistent {
            self.registry.session(&identity.hub, &identity.id()).await
        } else {
            self.registry
                .forget_session(&identity.hub, &identity.id())
                .await?;
            Ok(None)
        }
    }

    /// Save a persistent session's subscriptions.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn save_session(
        &self,
        identity: &Identity,
        subscriptions: &[String],
    ) -> Result<(), HubError> {
        self.registry
            .save_session(&identity.hub, &identity.id(), subscriptions)
            .await
    }
}

/// How a device settles a cloud-to-device message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Accepted: remove it.
    Complete,
    /// Given back: deliver it again.
    Abandon,
    /// Refused: remove it without delivering it again.
    Reject,
}

/// Route one event: its targets and enrichments; `false` when it goes nowhere.
fn route_event(
    table: &routing::Table,
    event: &mut muster_store::events::NewEvent,
    twin: Option<&Value>,
    source: Source,
) -> bool {
    let json_body = source != Source::DeviceMessages;
    let targets = if table.carries(source) {
        table.targets(source, &routing::EventView::new(event, twin, json_body))
    } else if source == Source::DeviceMessages {
        routing::Targets {
            built_in: table.config.fallback_route.is_enabled,
            endpoints: Vec::new(),
        }
    } else {
        return false;
    };
    if !table.config.enrichments.is_empty() {
        for (k, v) in table.enrichments(&event.hub, &targets, twin) {
            if !event.properties.iter().any(|(n, _)| *n == k) {
                event.properties.push((k, v));
            }
        }
    }
    event.built_in = targets.built_in;
    event.endpoints = targets.endpoints;
    event.built_in || !event.endpoints.is_empty()
}

/// Connection-state events' `sequenceNumber`: 64 hex digits, strictly increasing, comparable as
/// text (nanoseconds since the epoch, bumped past the last one handed out).
fn connection_sequence() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return format!("{next:064x}"),
            Err(p) => prev = p,
        }
    }
}
