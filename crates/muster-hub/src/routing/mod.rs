//! Message routing, as IoT Hub does it: routes send messages of a source (device messages,
//! twin changes, lifecycle and connection-state events) that match a condition to endpoints;
//! the fallback route sends device messages no route matched to the built-in `events`.
//!
//! - The routing configuration of a hub (routes, custom endpoints, enrichments, the fallback
//!   route) is one stored document, changed with optimistic concurrency and cached compiled.
//! - Routing happens when a message is stored: its targets (the built-in endpoint or not, the
//!   custom endpoints) are stored with it, so delivery can retry from the durable log and a
//!   route change affects the messages after it, as in IoT Hub.
//! - Non-telemetry events exist only where an enabled route of their source exists.
//! - Enrichments add application properties (a static value, `$iothubname`, or
//!   `$twin.tags.…`/`$twin.properties.…`) to messages bound for their endpoints. A message is
//!   stored once for all its endpoints, so an enrichment is visible at every endpoint that
//!   message reaches.

pub mod condition;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use muster_store::{Collection, Precondition, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::registry::{HubError, Registry};
use condition::{Condition, Message};

/// The built-in endpoint's name.
pub const BUILT_IN: &str = "events";
/// Routes one hub may have (IoT Hub: 100).
pub const MAX_ROUTES: usize = 100;
/// Custom endpoints one hub may have (IoT Hub: 10).
pub const MAX_ENDPOINTS: usize = 10;
/// Enrichments one hub may have (IoT Hub: 10).
pub const MAX_ENRICHMENTS: usize = 10;

/// What a route carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// Device-to-cloud messages.
    DeviceMessages,
    /// Twin changes (tags, desired and reported properties).
    TwinChangeEvents,
    /// Identities created and deleted.
    DeviceLifecycleEvents,
    /// Devices connecting and disconnecting.
    DeviceConnectionStateEvents,
}

impl Source {
    /// The `iothub-message-source` of its messages.
    #[must_use]
    pub fn message_source(self) -> &'static str {
        match self {
            Self::DeviceMessages => "Telemetry",
            Self::TwinChangeEvents => "twinChangeEvents",
            Self::DeviceLifecycleEvents => "deviceLifecycleEvents",
            Self::DeviceConnectionStateEvents => "deviceConnectionStateEvents",
        }
    }

    /// The `iothub-message-schema` of its messages.
    #[must_use]
    pub fn schema(self) -> &'static str {
        match self {
            Self::DeviceMessages => "",
            Self::TwinChangeEvents => "twinChangeNotification",
            Self::DeviceLifecycleEvents => "deviceLifecycleNotification",
            Self::DeviceConnectionStateEvents => "deviceConnectionStateNotification",
        }
    }
}

fn yes() -> bool {
    true
}

/// A route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Its name (1–64 letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// What it carries.
    pub source: Source,
    /// The condition (`true` when empty).
    #[serde(default)]
    pub condition: String,
    /// Where matching messages go (exactly one in IoT Hub; several allowed here).
    pub endpoint_names: Vec<String>,
    /// Off routes send nothing.
    #[serde(default = "yes")]
    pub is_enabled: bool,
}

/// A custom endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Its name.
    pub name: String,
    /// Where it delivers.
    #[serde(flatten)]
    pub kind: EndpointKind,
}

/// Where an endpoint delivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EndpointKind {
    /// HTTP POST of a JSON array of messages, retried until answered 2xx.
    #[serde(rename_all = "camelCase")]
    Webhook {
        /// `http://` or `https://` URL.
        url: String,
        /// Extra request headers (e.g. an authorization).
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// JSON lines in files under a directory, one file per batch window, like the Storage
    /// endpoint's blobs.
    #[serde(rename_all = "camelCase")]
    File {
        /// The directory (created when missing).
        directory: String,
        /// A file is closed and a new one begun past this size.
        #[serde(default = "default_file_bytes")]
        max_file_bytes: u64,
        /// … or this long after it was begun.
        #[serde(default = "default_file_seconds")]
        max_file_seconds: u64,
    },
    /// A NATS subject; each message published with its properties as headers.
    #[serde(rename_all = "camelCase")]
    Nats {
        /// `nats://host:port`.
        url: String,
        /// The subject.
        subject: String,
    },
}

fn default_file_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_file_seconds() -> u64 {
    300
}

/// An enrichment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrichment {
    /// The application property it sets.
    pub key: String,
    /// A static value, `$iothubname`, or `$twin.tags.…`/`$twin.properties.…`.
    pub value: String,
    /// The endpoints whose messages get it.
    pub endpoint_names: Vec<String>,
}

/// The fallback route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRoute {
    /// Unmatched device messages go to `events` while enabled.
    pub is_enabled: bool,
}

impl Default for FallbackRoute {
    fn default() -> Self {
        Self { is_enabled: true }
    }
}

/// A hub's routing configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingConfig {
    /// Routes, in order.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Custom endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Enrichments.
    #[serde(default)]
    pub enrichments: Vec<Enrichment>,
    /// The fallback route.
    #[serde(default)]
    pub fallback_route: FallbackRoute,
}

fn check_name(kind: &str, name: &str) -> Result<(), HubError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(HubError::InvalidInput(format!(
            "'{name}' is not a valid {kind} name: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

impl RoutingConfig {
    /// Check the whole configuration: names, limits, conditions, endpoint references.
    ///
    /// # Errors
    /// [`HubError::InvalidInput`] saying what is wrong.
    pub fn validate(&self) -> Result<(), HubError> {
        let invalid = |m: String| Err(HubError::InvalidInput(m));
        if self.routes.len() > MAX_ROUTES {
            return invalid(format!("a hub has at most {MAX_ROUTES} routes"));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return invalid(format!(
                "a hub has at most {MAX_ENDPOINTS} custom endpoints"
            ));
        }
        if self.enrichments.len() > MAX_ENRICHMENTS {
            return invalid(format!("a hub has at most {MAX_ENRICHMENTS} enrichments"));
        }
        let mut names = std::collections::HashSet::new();
        for e in &self.endpoints {
            check_name("endpoint", &e.name)?;
            if e.name.eq_ignore_ascii_case(BUILT_IN) {
                return invalid(format!("'{BUILT_IN}' is the built-in endpoint's name"));
            }
            if !names.insert(e.name.to_ascii_lowercase()) {
                return invalid(format!("two endpoints are named '{}'", e.name));
            }
            match &e.kind {
                EndpointKind::Webhook { url, .. } => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return invalid(format!(
                            "endpoint '{}': the url must be http:// or https://",
                            e.name
                        ));
                    }
                }
                EndpointKind::File {
                    directory,
                    max_file_bytes,
                    max_file_seconds,
                } => {
                    if directory.trim().is_empty() {
                        return invalid(format!("endpoint '{}' needs a directory", e.name));
                    }
                    if *max_file_bytes < 1024 || *max_file_seconds == 0 {
                        return invalid(format!(
                            "endpoint '{}': maxFileBytes must be at least 1024 and maxFileSeconds at least 1",
                            e.name
                        ));
                    }
                }
                EndpointKind::Nats { url, subject } => {
                    if !url.starts_with("nats://") {
                        return invalid(format!(
                            "endpoint '{}': the url must be nats://host:port",
                            e.name
                        ));
                    }
                    if subject.is_empty() || subject.contains([' ', '*', '>']) {
                        return invalid(format!(
                            "endpoint '{}': '{subject}' is not a subject to publish to",
                            e.name
                        ));
                    }
                }
            }
        }
        let known =
            |n: &str| n.eq_ignore_ascii_case(BUILT_IN) || names.contains(&n.to_ascii_lowercase());
        let mut routes = std::collections::HashSet::new();
        for r in &self.routes {
            check_name("route", &r.name)?;
            if !routes.insert(r.name.to_ascii_lowercase()) {
                return invalid(format!("two routes are named '{}'", r.name));
            }
            if r.endpoint_names.is_empty() {
                return invalid(format!("route '{}' names no endpoint", r.name));
            }
            if let Some(n) = r.endpoint_names.iter().find(|n| !known(n)) {
                return invalid(format!("route '{}': no endpoint named '{n}'", r.name));
            }
            Condition::parse(&r.condition)
                .map_err(|e| HubError::InvalidInput(format!("route '{}': {e}", r.name)))?;
        }
        for e in &self.enrichments {
            if e.key.is_empty() || e.key.len() > 64 {
                return invalid("an enrichment key has 1 to 64 characters".into());
            }
            if let Some(n) = e.endpoint_names.iter().find(|n| !known(n)) {
                return invalid(format!("enrichment '{}': no endpoint named '{n}'", e.key));
            }
            if e.value.starts_with("$twin")
                && !(e.value.starts_with("$twin.tags.") || e.value.starts_with("$twin.properties."))
            {
                return invalid(format!(
                    "enrichment '{}': a twin value is $twin.tags.… or $twin.properties.…",
                    e.key
                ));
            }
        }
        Ok(())
    }
}

/// A route ready to evaluate.
#[derive(Debug)]
struct Compiled {
    source: Source,
    condition: Condition,
    endpoints: Vec<String>,
}

/// A hub's routing, compiled.
#[derive(Debug, Default)]
pub struct Table {
    /// The configuration it was made from.
    pub config: RoutingConfig,
    routes: Vec<Compiled>,
}

/// Where one message goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// To the built-in endpoint (`events`).
    pub built_in: bool,
    /// To these custom endpoints.
    pub endpoints: Vec<String>,
}

impl Table {
    fn new(config: RoutingConfig) -> Self {
        let routes = config
            .routes
            .iter()
            .filter(|r| r.is_enabled)
            .filter_map(|r| {
                Some(Compiled {
                    source: r.source,
                    condition: Condition::parse(&r.condition).ok()?,
                    endpoints: r.endpoint_names.clone(),
                })
            })
            .collect();
        Self { config, routes }
    }

    /// An enabled route carries `source`.
    #[must_use]
    pub fn carries(&self, source: Source) -> bool {
        self.routes.iter().any(|r| r.source == source)
    }

    /// Device messages need the sender's twin (a condition or an enrichment reads it).
    #[must_use]
    pub fn needs_twin(&self, source: Source) -> bool {
        self.routes
            .iter()
            .any(|r| r.source == source && r.condition.uses_twin())
            || self
                .config
                .enrichments
                .iter()
                .any(|e| e.value.starts_with("$twin."))
    }

    /// Where a message of `source` goes. Device messages no route matched take the fallback
    /// route; other sources go nowhere then.
    #[must_use]
    pub fn targets(&self, source: Source, message: &dyn Message) -> Targets {
        let mut t = Targets::default();
        let mut matched = false;
        for r in self.routes.iter().filter(|r| r.source == source) {
            if r.condition.matches(message) {
                matched = true;
                for e in &r.endpoints {
                    if e.eq_ignore_ascii_case(BUILT_IN) {
                        t.built_in = true;
                    } else if !t.endpoints.iter().any(|x| x.eq_ignore_ascii_case(e)) {
                        t.endpoints.push(e.clone());
                    }
                }
            }
        }
        if !matched && source == Source::DeviceMessages {
            t.built_in = self.config.fallback_route.is_enabled;
        }
        t
    }

    /// The application properties enrichments add to a message bound for `targets`.
    #[must_use]
    pub fn enrichments(
        &self,
        hub: &str,
        targets: &Targets,
        twin: Option<&Value>,
    ) -> Vec<(String, String)> {
        let bound = |n: &String| {
            (targets.built_in && n.eq_ignore_ascii_case(BUILT_IN))
                || targets.endpoints.iter().any(|e| e.eq_ignore_ascii_case(n))
        };
        self.config
            .enrichments
            .iter()
            .filter(|e| e.endpoint_names.iter().any(bound))
            .filter_map(|e| {
                let value = if e.value.eq_ignore_ascii_case("$iothubname") {
                    crate::eventhub::entity_name(hub)
                } else if let Some(path) = e.value.strip_prefix("$twin.") {
                    let mut v = twin?;
                    for seg in path.split('.') {
                        v = v.get(seg)?;
                    }
                    match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }
                } else {
                    e.value.clone()
                };
                Some((e.key.clone(), value))
            })
            .collect()
    }
}

/// Every hub's routing, cached compiled; changes are announced on a watch.
#[derive(Debug)]
pub struct Router {
    cache: RwLock<HashMap<String, Arc<Table>>>,
    changed: watch::Sender<u64>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            cache: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Router {
    /// Notified after every routing change (the delivery side restarts its workers).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The hub's routing table.
    ///
    /// # Errors
    /// [`HubError::Store`], [`HubError::Corrupt`].
    pub async fn table(&self, registry: &Registry, hub: &str) -> Result<Arc<Table>, HubError> {
        let hub = hub.to_ascii_lowercase();
        if let Some(t) = self.cache.read().ok().and_then(|c| c.get(&hub).cloned()) {
            return Ok(t);
        }
        let (config, _) = load(registry, &hub).await?;
        let table = Arc::new(Table::new(config));
        if let Ok(mut c) = self.cache.write() {
            c.insert(hub, Arc::clone(&table));
        }
        Ok(table)
    }

    /// Drop the cached table of `hub` (another node changed it): the next message reads it
    /// again, and the delivery side restarts its workers.
    pub fn forget(&self, hub: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(&hub.to_ascii_lowercase());
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Change the hub's routing with `change`, validated and stored atomically.
    ///
    /// # Errors
    /// What `change` returns, [`HubError::InvalidInput`] from validation,
    /// [`HubError::PreconditionFailed`] when a concurrent change won (retry).
    pub async fn update(
        &self,
        registry: &Registry,
        hub: &str,
        change: impl FnOnce(&mut RoutingConfig) -> Result<(), HubError>,
    ) -> Result<RoutingConfig, HubError> {
        let hub = hub.to_ascii_lowercase();
        let (mut config, etag) = load(registry, &hub).await?;
        change(&mut config)?;
        config.validate()?;
        let body = serde_json::to_value(&config)
            .map_err(|e| HubError::Corrupt(format!("routing configuration: {e}")))?;
        let precondition = etag.map_or(Precondition::IfNoneMatch, Precondition::IfMatch);
        match registry
            .store
            .put(Collection::Routes, &hub, Some(&hub), &body, precondition)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. } | StoreError::PreconditionFailed { .. }) => {
                return Err(HubError::PreconditionFailed);
            }
            Err(e) => return Err(e.into()),
        }
        if let Ok(mut c) = self.cache.write() {
            c.insert(hub, Arc::new(Table::new(config.clone())));
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(config)
    }
}

async fn load(registry: &Registry, hub: &str) -> Result<(RoutingConfig, Option<String>), HubError> {
    match registry.store.get(Collection::Routes, hub).await? {
        Some(r) => {
            let config = serde_json::from_value(r.body)
                .map_err(|e| HubError::Corrupt(format!("routing configuration: {e}")))?;
            Ok((config, Some(r.etag)))
        }
        None => Ok((RoutingConfig::default(), None)),
    }
}

/// A stored event as a condition sees it.
#[derive(Debug)]
pub struct EventView<'a> {
    /// Application properties.
    pub properties: &'a [(String, String)],
    /// System properties, by their event names (`content-type`, …).
    pub system: &'a [(String, String)],
    /// The body as JSON, when it is JSON.
    pub body: Option<Value>,
    /// The twin, when loaded.
    pub twin: Option<&'a Value>,
}

impl<'a> EventView<'a> {
    /// A view of `event`; its body is parsed when the event declares JSON in UTF-8 (IoT Hub's
    /// rule for `$body`), or always when `json_body` (non-telemetry events).
    #[must_use]
    pub fn new(
        event: &'a muster_store::events::NewEvent,
        twin: Option<&'a Value>,
        json_body: bool,
    ) -> Self {
        let sys = |k: &str| {
            event
                .system_properties
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let declared = sys("content-type")
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"))
            && sys("content-encoding").is_some_and(|c| c.eq_ignore_ascii_case("utf-8"));
        let body = (json_body || declared)
            .then(|| serde_json::from_slice(&event.body).ok())
            .flatten();
        Self {
            properties: &event.properties,
            system: &event.system_properties,
            body,
            twin,
        }
    }
}

impl Message for EventView<'_> {
    fn app(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .or_else(|| {
                self.properties
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.as_str())
    }

    fn system(&self, name: &str) -> Option<&str> {
        let event_name = match name.to_ascii_lowercase().as_str() {
            "contenttype" => "content-type",
            "contentencoding" => "content-encoding",
            "messageid" => "message-id",
            "correlationid" => "correlation-id",
            "userid" => "user-id",
            "connectiondeviceid" => "iothub-connection-device-id",
            "connectionmoduleid" => "iothub-connection-module-id",
            "enqueuedtime" => "iothub-enqueuedtime",
            _ => name,
        };
        self.system
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(event_name))
            .map(|(_, v)| v.as_str())
    }

    fn body(&self) -> Option<&Value> {
        self.body.as_ref()
    }

    fn twin(&self) -> Option<&Value> {
        self.twin
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(props: &[(&str, &str)], body: &str, json: bool) -> muster_store::events::NewEvent {
        let mut system = vec![("iothub-connection-device-id".to_owned(), "d1".to_owned())];
        if json {
            system.push(("content-type".into(), "application/json".into()));
            system.push(("content-encoding".into(), "utf-8".into()));
        }
        muster_store::events::NewEvent {
            hub: "hub.local".into(),
            device_id: "d1".into(),
            module_id: None,
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            system_properties: system,
            body: body.as_bytes().to_vec(),
            enqueued: String::new(),
            enqueued_ms: 0,
            partition: 0,
            built_in: true,
            endpoints: vec![],
        }
    }

    #[allow(
        clippy::needless_pass_by_value,
        reason = "tests build the value inline"
    )]
    fn config(routes: Value) -> RoutingConfig {
        serde_json::from_value(json!({
            "routes": routes,
            "endpoints": [
                {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:1/x"},
                {"name": "files", "type": "file", "directory": "/tmp/x"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn routes_choose_endpoints_and_the_fallback_takes_the_rest() {
        let c = config(json!([
            {"name": "alerts", "source": "DeviceMessages", "condition": "temperatureAlert = 'true'", "endpointNames": ["hook"]},
            {"name": "hot", "source": "DeviceMessages", "condition": "$body.temperature > 30", "endpointNames": ["files", "events"]},
            {"name": "off", "source": "DeviceMessages", "condition": "true", "endpointNames": ["files"], "isEnabled": false}
        ]));
        c.validate().unwrap();
        let t = Table::new(c);
        let alert = event(
            &[("temperatureAlert", "true")],
            r#"{"temperature": 20}"#,
            true,
        );
        assert_eq!(
            t.targets(Source::DeviceMessages, &EventView::new(&alert, None, false)),
            Targets {
                built_in: false,
                endpoints: vec!["hook".into()]
            },
            "a matched message leaves the built-in endpoint unless a route sends it there"
        );
        let hot = event(
            &[("temperatureAlert", "true")],
            r#"{"temperature": 35}"#,
            true,
        );
        assert_eq!(
            t.targets(Source::DeviceMessages, &EventView::new(&hot, None, false)),
            Targets {
                built_in: true,
                endpoints: vec!["hook".into(), "files".into()]
            }
        );
        let undeclared = event(&[], r#"{"temperature": 35}"#, false);
        assert_eq!(
            t.targets(
                Source::DeviceMessages,
                &EventView::new(&undeclared, None, false)
            ),
            Targets {
                built_in: true,
                endpoints: vec![]
            },
            "$body needs a JSON content type; the fallback takes it"
        );
        assert!(
            t.targets(Source::TwinChangeEvents, &EventView::new(&hot, None, false))
                == Targets::default()
        );
        assert!(!t.carries(Source::TwinChangeEvents));
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let bad = [
            json!([{"name": "r", "source": "DeviceMessages", "condition": "a =", "endpointNames": ["hook"]}]),
            json!([{"name": "r", "source": "DeviceMessages", "endpointNames": ["nowhere"]}]),
            json!([{"name": "r", "source": "DeviceMessages", "endpointNames": []}]),
            json!([{"name": "r r", "source": "DeviceMessages", "endpointNames": ["events"]}]),
            json!([
                {"name": "r", "source": "DeviceMessages", "endpointNames": ["events"]},
                {"name": "R", "source": "DeviceMessages", "endpointNames": ["events"]}
            ]),
        ];
        for routes in bad {
            assert!(config(routes.clone()).validate().is_err(), "{routes}");
        }
        let mut c = config(json!([]));
        c.endpoints.push(Endpoint {
            name: "events".into(),
            kind: EndpointKind::Nats {
                url: "nats://x:4222".into(),
                subject: "s".into(),
            },
        });
        assert!(c.validate().is_err());
    }

    #[test]
    fn enrichments_read_static_values_the_hub_and_the_twin() {
        let mut c = config(json!([]));
        c.enrichments = vec![
            Enrichment {
                key: "site".into(),
                value: "$twin.tags.site".into(),
                endpoint_names: vec!["hook".into()],
            },
            Enrichment {
                key: "hub".into(),
                value: "$iothubname".into(),
                endpoint_names: vec!["events".into()],
            },
            Enrichment {
                key: "fixed".into(),
                value: "v".into(),
                endpoint_names: vec!["files".into()],
            },
        ];
        c.validate().unwrap();
        let t = Table::new(c);
        let twin = json!({"tags": {"site": "lab"}});
        let to = Targets {
            built_in: true,
            endpoints: vec!["hook".into()],
        };
        assert_eq!(
            t.enrichments("contoso.azure-devices.net", &to, Some(&twin)),
            vec![
                ("site".to_owned(), "lab".to_owned()),
                ("hub".to_owned(), "contoso".to_owned())
            ]
        );
        assert!(t.needs_twin(Source::DeviceMessages));
    }
}
