//! The built-in Event Hubs-compatible endpoint on the AMQP listener: what back ends written for
//! IoT Hub read telemetry with (`EventHubConsumerClient` in Python and JS), as
//! `../shared/spec/event-hubs-wire.md` describes it.
//!
//! - CBS tokens for an entity (`sb://{host}/{entity}/…`) are Service Bus tokens: signed with
//!   the key *text*. `iothubowner` and `service` may read.
//! - `$management` answers READ for the hub (`com.microsoft:eventhub`) and for a partition
//!   (`com.microsoft:partition`).
//! - A receiver on `{entity}/ConsumerGroups/{group}/Partitions/{n}` reads one partition of the
//!   event log from the start position of its `apache.org:selector-filter:string`, pre-settled,
//!   as fast as its link credit allows. Epoch receivers (`com.microsoft:epoch`) take a
//!   partition over; the others are detached with `amqp:link:stolen`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Fields, LinkError};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, FilterSet, Message, MessageAnnotations, MessageId,
    Properties,
};
use fe2o3_amqp::types::primitives::{Array, Binary, OrderedMap, SimpleValue, Symbol, Value};
use muster_hub::eventhub::entity_name;
use muster_store::events::{Event, Start};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::conn::{Refusal, Shared, now};
use super::message::{self, AmqpMessage};
use crate::Context;

/// The filter that carries a receiver's start position.
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// The same filter's numeric descriptor (the JS SDK sends this one).
const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;
/// Policies that may read the built-in endpoint (ServiceConnect).
const READERS: [&str; 2] = ["iothubowner", "service"];
/// Receivers without an epoch one partition of one consumer group may have at once (as in
/// Event Hubs).
const MAX_READERS: usize = 5;
/// Events read from the log per round.
const BATCH: usize = 128;

/// Why a reader was turned away.
const NOT_FOUND: &str = "amqp:not-found";
const OUT_OF_RANGE: &str = "com.microsoft:argument-out-of-range";
const ARGUMENT_ERROR: &str = "com.microsoft:argument-error";

/// The right to read one entity, from a CBS token.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The hub (host name, lower case).
    pub(crate) hub: String,
    /// Unix seconds.
    pub(crate) expires: u64,
}

/// The hub whose entity is `entity`, if any.
pub(crate) fn hub_of_entity(ctx: &Context, entity: &str) -> Option<String> {
    ctx.hub
        .hostnames()
        .iter()
        .find(|h| entity_name(h).eq_ignore_ascii_case(entity) || h.eq_ignore_ascii_case(entity))
        .map(|h| h.to_ascii_lowercase())
}

/// Why an entity token was refused, with its CBS status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenRefusal {
    #[error("the messaging entity '{0}' could not be found")]
    UnknownEntity(String),
    #[error("{0}")]
    Unauthorized(String),
}

impl TokenRefusal {
    pub(crate) fn status(&self) -> i32 {
        match self {
            Self::UnknownEntity(_) => 404,
            Self::Unauthorized(_) => 401,
        }
    }
}

/// Check a Service Bus token for `sb://{host}/{entity}/…` and return the grant it gives.
pub(crate) fn check_token(ctx: &Context, token: &str) -> Result<Grant, TokenRefusal> {
    let unauthorized = |why: &str| TokenRefusal::Unauthorized(why.to_owned());
    let parsed = muster_auth::sas::SasToken::parse(token)
        .map_err(|e| TokenRefusal::Unauthorized(format!("malformed token: {e}")))?;
    if parsed.expiry() <= now() {
        return Err(unauthorized("the token has expired"));
    }
    let resource = parsed.resource().to_ascii_lowercase();
    let rest = ["sb://", "amqps://", "amqp://", "https://"]
        .iter()
        .find_map(|p| resource.strip_prefix(p))
        .unwrap_or(&resource);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    if !ctx.hub.resource_hosts().iter().any(|h| h == host) {
        return Err(TokenRefusal::Unauthorized(format!(
            "the token is for another host: {host}"
        )));
    }
    let entity = path.split('/').next().unwrap_or_default();
    let hub = hub_of_entity(ctx, entity)
        .ok_or_else(|| TokenRefusal::UnknownEntity(format!("sb://{host}/{entity}")))?;
    let name = parsed
        .key_name()
        .ok_or_else(|| unauthorized("the token names no policy (skn)"))?;
    if !READERS.contains(&name) {
        return Err(TokenRefusal::Unauthorized(format!(
            "policy '{name}' may not read events (use one of {})",
            READERS.join(", ")
        )));
    }
    let policy = ctx
        .state
        .policy(name)
        .ok_or_else(|| TokenRefusal::Unauthorized(format!("no policy '{name}'")))?;
    let keys = [
        muster_auth::Secret::new(policy.primary_key.clone()),
        muster_auth::Secret::new(policy.secondary_key.clone()),
    ];
    let keys = [&keys[0], &keys[1]];
    // Event Hubs clients sign with the key text; IoT Hub tools with the decoded key.
    if parsed.verify_text_key_signature(&keys).is_err() && parsed.verify_signature(&keys).is_err() {
        return Err(unauthorized(
            "the signature does not match the policy's keys",
        ));
    }
    Ok(Grant {
        hub,
        expires: parsed.expiry(),
    })
}

fn error(
    condition: impl Into<ErrorCondition>,
    description: impl Into<String>,
) -> definitions::Error {
    definitions::Error::new(condition, Some(description.into()), None)
}

fn custom(condition: &str) -> ErrorCondition {
    ErrorCondition::Custom(Symbol::from(condition))
}

/// `$management`: READ of the hub and of a partition; each reply goes to the `$management`
/// reply link, with `status-code`, `status-description` and, on failure, `error-condition`.
pub(crate) async fn management(shared: &Shared, mut receiver: Receiver) {
    loop {
        let delivery = tokio::select! {
            () = shared.closing.cancelled() => break,
            d = receiver.recv::<Body<Value>>() => match d {
                Ok(d) => d,
                Err(e) => {
                    debug!(error = %e, "management link ended");
                    break;
                }
            },
        };
        let request = delivery.message();
        let answer = read(shared, request).await;
        let _ = receiver.accept(&delivery).await;
        let id = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let (status, description, condition, body) = match answer {
            Ok(map) => (200, "OK".to_owned(), None, Value::Map(map)),
            Err((status, condition, description)) => {
                warn!(status, condition, description, "management request refused");
                (status, description, Some(condition), Value::Null)
            }
        };
        let mut application = vec![
            ("status-code", SimpleValue::Int(status)),
            ("status-description", SimpleValue::String(description)),
        ];
        if let Some(c) = condition {
            application.push(("error-condition", SimpleValue::Symbol(Symbol::from(c))));
        }
        let reply = message::reply(id, application, vec![], Body::Value(AmqpValue(body)));
        shared.reply("mgmt", reply);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), receiver.close()).await;
}

type ReadResult = Result<OrderedMap<Value, Value>, (i32, &'static str, String)>;

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

async fn read(shared: &Shared, request: &AmqpMessage) -> ReadResult {
    let property = |name| message::app_property(request, name).unwrap_or_default();
    let operation = property("operation");
    if !operation.eq_ignore_ascii_case("READ") {
        return Err((
            400,
            ARGUMENT_ERROR,
            format!("operation '{operation}' is not supported; only READ is"),
        ));
    }
    let entity = property("name");
    let Some(hub) = hub_of_entity(&shared.ctx, &entity) else {
        return Err((
            404,
            NOT_FOUND,
            format!("The messaging entity '{entity}' could not be found"),
        ));
    };
    let token = message::app_property(request, "security_token");
    if !shared.may_read(&hub) {
        let granted = token
            .as_deref()
            .map(|t| check_token(&shared.ctx, t))
            .transpose()
            .ok()
            .flatten()
            .is_some_and(|g| g.hub == hub);
        if !granted {
            return Err((
                401,
                "amqp:unauthorized-access",
                "Unauthorized: put a token for this entity on $cbs first".into(),
            ));
        }
    }
    let partitions = shared.ctx.hub.partitions();
    let mut map = OrderedMap::new();
    match property("type").as_str() {
        "com.microsoft:eventhub" => {
            map.insert(text("name"), text(entity_name(&hub)));
            map.insert(
                text("created_at"),
                Value::Timestamp(message::timestamp(shared.ctx.created_ms)),
            );
            let ids: Vec<Value> = (0..partitions).map(|p| text(p.to_string())).collect();
            map.insert(text("partition_ids"), Value::Array(Array::from(ids)));
            map.insert(
                text("partition_count"),
                Value::Int(i32::try_from(partitions).unwrap_or(i32::MAX)),
            );
            map.insert(text("type"), text("com.microsoft:eventhub"));
        }
        "com.microsoft:partition" => {
            let id = property("partition");
            let Some(p) = id.parse::<u32>().ok().filter(|p| *p < partitions) else {
                return Err((
                    400,
                    OUT_OF_RANGE,
                    format!(
                        "partition '{id}' does not exist: the partitions are 0 to {}",
                        partitions - 1
                    ),
                ));
            };
            let info = shared
                .ctx
                .hub
                .events()
                .partition_info(&hub, p)
                .await
                .map_err(|e| {
                    (
                        500,
                        "amqp:internal-error",
                        format!("the event log is unavailable: {e}"),
                    )
                })?;
            map.insert(text("name"), text(entity_name(&hub)));
            map.insert(text("partition"), text(id));
            map.insert(
                text("begin_sequence_number"),
                Value::Long(info.begin_sequence),
            );
            map.insert(
                text("last_enqueued_sequence_number"),
                Value::Long(info.last_sequence),
            );
            map.insert(
                text("last_enqueued_offset"),
                text(info.last_offset.to_string()),
            );
            map.insert(
                text("last_enqueued_time_utc"),
                Value::Timestamp(message::timestamp(info.last_enqueued_ms)),
            );
            map.insert(text("is_partition_empty"), Value::Bool(info.is_empty));
            map.insert(text("type"), text("com.microsoft:partition"));
        }
        other => {
            return Err((
                400,
                ARGUMENT_ERROR,
                format!("type '{other}' is not supported"),
            ));
        }
    }
    Ok(map)
}

/// Where a receiver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// A position in the log.
    At(Start),
    /// After the newest event at attach time.
    Latest,
}

/// The start position of a receiver's filter set: `None` (no filter) reads from the start.
pub(crate) fn start_of(filter: Option<&FilterSet>) -> Result<Position, String> {
    let from_start = Position::At(Start::Offset {
        offset: -1,
        inclusive: false,
    });
    let Some(filter) = filter else {
        return Ok(from_start);
    };
    let mut selector = None;
    for (key, value) in filter {
        let described = match value {
            Value::Described(d) => Some(d.as_ref()),
            _ => None,
        };
        let by_descriptor = described.is_some_and(|d| match &d.descriptor {
            Descriptor::Name(n) => n.as_str() == SELECTOR_FILTER,
            Descriptor::Code(c) => *c == SELECTOR_FILTER_CODE,
        });
        if key.as_str() == SELECTOR_FILTER || by_descriptor {
            selector = Some(match described {
                Some(Described {
                    value: Value::String(s),
                    ..
                }) => s.clone(),
                _ => return Err("the selector filter does not hold a string".into()),
            });
        }
    }
    match selector {
        Some(s) => parse_selector(&s),
        None => Ok(from_start),
    }
}

/// Parse `amqp.annotation.{x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time} {>|>=}
/// '{n}'` (and the legacy unquoted `x-opt-enqueuedtimeutc`).
pub(crate) fn parse_selector(text: &str) -> Result<Position, String> {
    let bad = || format!("malformed selector filter: {text}");
    let rest = text
        .trim()
        .strip_prefix("amqp.annotation.")
        .ok_or_else(bad)?;
    let name_end = rest
        .find(|c: char| c.is_whitespace() || c == '>' || c == '<' || c == '=')
        .ok_or_else(bad)?;
    let (name, rest) = rest.split_at(name_end);
    let rest = rest.trim_start();
    let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (false, r)
    } else {
        return Err(bad());
    };
    let rest = rest.trim();
    let value = match rest.strip_prefix('\'') {
        Some(r) => r.strip_suffix('\'').ok_or_else(bad)?,
        None => rest,
    };
    if value.contains('\'') {
        return Err(bad());
    }
    let number = || value.parse::<i64>().map_err(|_| bad());
    let start = match name.to_ascii_lowercase().as_str() {
        "x-opt-offset" if value == "@latest" => return Ok(Position::Latest),
        "x-opt-offset" => Start::Offset {
            offset: number()?,
            inclusive,
        },
        "x-opt-sequence-number" => Start::Sequence {
            sequence: number()?,
            inclusive,
        },
        "x-opt-enqueued-time" | "x-opt-enqueuedtimeutc" => Start::Enqueued {
            millis: number()?,
            inclusive,
        },
        _ => return Err(bad()),
    };
    Ok(Position::At(start))
}

/// `com.microsoft:epoch` of a receiver's link properties.
pub(crate) fn epoch_of(properties: Option<&Fields>) -> Option<i64> {
    properties?.iter().find_map(|(k, v)| {
        (k.as_str() == "com.microsoft:epoch").then(|| match v {
            Value::Long(n) => Some(*n),
            Value::Int(n) => Some(i64::from(*n)),
            Value::Uint(n) => Some(i64::from(*n)),
            Value::Ulong(n) => i64::try_from(*n).ok(),
            _ => None,
        })?
    })
}

/// The receivers of every (hub, consumer group, partition), for epochs and the reader limit.
#[derive(Debug, Default)]
pub(crate) struct Readers {
    inner: Mutex<HashMap<String, Vec<Reader>>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Reader {
    id: u64,
    epoch: Option<i64>,
    stolen: CancellationToken,
    /// Why it was stolen, once it was.
    reason: Arc<Mutex<String>>,
}

/// A receiver's place; leaving drops it.
pub(crate) struct Place {
    ctx: Arc<Context>,
    key: String,
    id: u64,
    /// Cancelled when a newer epoch receiver takes the partition.
    pub(crate) stolen: CancellationToken,
    reason: Arc<Mutex<String>>,
}

impl Place {
    pub(crate) fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut all) = self.ctx.readers.inner.lock()
            && let Some(list) = all.get_mut(&self.key)
        {
            list.retain(|r| r.id != self.id);
            if list.is_empty() {
                all.remove(&self.key);
            }
        }
    }
}

/// Why a receiver may not read.
#[derive(Debug)]
pub(crate) enum Denied {
    /// A receiver with a higher epoch (or any epoch, for one without) holds the partition.
    Epoch(String),
    /// The partition has its maximum of receivers.
    Full(String),
}

impl Readers {
    /// Take a place among `key`'s receivers with `epoch`.
    pub(crate) fn join(
        ctx: &Arc<Context>,
        key: String,
        epoch: Option<i64>,
    ) -> Result<Place, Denied> {
        let mut all = ctx
            .readers
            .inner
            .lock()
            .map_err(|_| Denied::Full("reader registry unavailable".into()))?;
        let list = all.entry(key.clone()).or_default();
        match epoch {
            Some(e) => {
                if let Some(higher) = list.iter().filter_map(|r| r.epoch).find(|x| *x > e) {
                    return Err(Denied::Epoch(format!(
                        "A receiver with epoch '{higher}' already exists; a receiver with the lower epoch '{e}' cannot be created"
                    )));
                }
                for r in list.drain(..) {
                    if let Ok(mut why) = r.reason.lock() {
                        *why = format!(
                            "New receiver with higher epoch of '{e}' is created hence current receiver with epoch '{}' is getting disconnected.",
                            r.epoch.map_or_else(|| "none".to_owned(), |x| x.to_string())
                        );
                    }
                    r.stolen.cancel();
                }
            }
            None => {
                if let Some(x) = list.iter().find_map(|r| r.epoch) {
                    return Err(Denied::Epoch(format!(
                        "A receiver with epoch '{x}' already exists; a receiver without an epoch cannot be created"
                    )));
                }
                if list.len() >= MAX_READERS {
                    return Err(Denied::Full(format!(
                        "at most {MAX_READERS} receivers may read one partition of one consumer group"
                    )));
                }
            }
        }
        let id = ctx.readers.next.fetch_add(1, Ordering::Relaxed);
        let stolen = CancellationToken::new();
        let reason = Arc::new(Mutex::new(String::new()));
        list.push(Reader {
            id,
            epoch,
            stolen: stolen.clone(),
            reason: Arc::clone(&reason),
        });
        Ok(Place {
            ctx: Arc::clone(ctx),
            key,
            id,
            stolen,
            reason,
        })
    }
}

/// A partition receiver as the link asked for it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) entity: String,
    pub(crate) group: String,
    pub(crate) partition: String,
    pub(crate) filter: Option<FilterSet>,
    pub(crate) properties: Option<Fields>,
}

async fn refuse(sender: Sender, condition: impl Into<ErrorCondition>, description: String) {
    warn!(description, "event hubs receiver refused");
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sender.close_with_error(error(condition, description)),
    )
    .await;
}

/// Serve one partition receiver until it detaches, is stolen, or the connection ends.
pub(crate) async fn partition_reader(shared: &Shared, mut sender: Sender, request: Request) {
    let Some(hub) = hub_of_entity(&shared.ctx, &request.entity) else {
        let why = format!(
            "The messaging entity '{}' could not be found",
            request.entity
        );
        return refuse(sender, custom(NOT_FOUND), why).await;
    };
    if !shared.may_read(&hub) {
        let why = "Unauthorized: put a token for this entity on $cbs first".to_owned();
        return refuse(sender, AmqpError::UnauthorizedAccess, why).await;
    }
    let group = match shared
        .ctx
        .hub
        .registry()
        .consumer_group(&hub, &request.group)
        .await
    {
        Ok(Some(g)) => g,
        Ok(None) => {
            let why = format!(
                "The messaging entity '{}/ConsumerGroups/{}' could not be found",
                request.entity, request.group
            );
            return refuse(sender, custom(NOT_FOUND), why).await;
        }
        Err(e) => {
            return refuse(sender, AmqpError::InternalError, e.public_message()).await;
        }
    };
    let partitions = shared.ctx.hub.partitions();
    let Some(partition) = request
        .partition
        .parse::<u32>()
        .ok()
        .filter(|p| *p < partitions)
    else {
        let why = format!(
            "The specified partition is invalid for an EventHub partition sender or receiver. It should be between 0 and {}.",
            partitions - 1
        );
        return refuse(sender, custom(OUT_OF_RANGE), why).await;
    };
    let position = match start_of(request.filter.as_ref()) {
        Ok(p) => p,
        Err(why) => return refuse(sender, custom(ARGUMENT_ERROR), why).await,
    };
    let group_name = group
        .get("name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(&request.group)
        .to_ascii_lowercase();
    let key = format!("{hub}/{group_name}/{partition}");
    let place = match Readers::join(&shared.ctx, key, epoch_of(request.properties.as_ref())) {
        Ok(p) => p,
        Err(Denied::Epoch(why)) => return refuse(sender, LinkError::Stolen, why).await,
        Err(Denied::Full(why)) => {
            return refuse(sender, AmqpError::ResourceLimitExceeded, why).await;
        }
    };
    let log = shared.ctx.hub.events();
    let mut start = match position {
        Position::At(s) => s,
        Position::Latest => match log.partition_info(&hub, partition).await {
            Ok(info) => Start::Sequence {
                sequence: info.last_sequence,
                inclusive: false,
            },
            Err(e) => return refuse(sender, AmqpError::InternalError, e.to_string()).await,
        },
    };
    info!(
        hub,
        group = group_name,
        partition,
        ?start,
        "event hubs receiver attached"
    );
    let mut committed = log.subscribe();
    let mut senders = SenderCache::default();
    loop {
        committed.borrow_and_update();
        let batch = match log.read_partition(&hub, partition, start, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "event log read failed");
                return refuse(
                    sender,
                    AmqpError::InternalError,
                    "the event log is unavailable".into(),
                )
                .await;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = shared.closing.cancelled() => return,
                () = place.stolen.cancelled() => {
                    return refuse(sender, LinkError::Stolen, place.reason()).await;
                }
                _ = sender.on_detach() => return,
                changed = committed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        for event in batch {
            start = Start::Sequence {
                sequence: event.partition_sequence,
                inclusive: false,
            };
            let meta = senders.get(shared, &event).await;
            let sendable = Sendable::builder()
                .message(to_message(&event, &meta))
                .settled(true)
                .build();
            tokio::select! {
                () = shared.closing.cancelled() => return,
                () = place.stolen.cancelled() => {
                    return refuse(sender, LinkError::Stolen, place.reason()).await;
                }
                sent = sender.send_batchable(sendable) => {
                    if let Err(e) = sent {
                        debug!(error = %e, "event hubs receiver ended");
                        return;
                    }
                }
            }
        }
    }
}

/// What the built-in endpoint says about a sender beyond the stored event: how it
/// authenticated and its identity's generation.
#[derive(Debug, Clone, Default)]
struct SenderMeta {
    auth_method: Option<String>,
    generation_id: Option<String>,
}

/// Sender facts per identity, looked up once per receiver (bounded).
#[derive(Debug, Default)]
struct SenderCache(HashMap<String, Arc<SenderMeta>>);

impl SenderCache {
    async fn get(&mut self, shared: &Shared, event: &Event) -> Arc<SenderMeta> {
        let e = &event.event;
        let key = format!("{}/{}", e.device_id, e.module_id.as_deref().unwrap_or(""));
        if let Some(m) = self.0.get(&key) {
            return Arc::clone(m);
        }
        if self.0.len() >= 10_000 {
            self.0.clear();
        }
        let registry = shared.ctx.hub.registry();
        let identity = match &e.module_id {
            Some(m) => registry
                .get_module(&e.hub, &e.device_id, m)
                .await
                .ok()
                .map(|m| (m.generation_id, m.authentication)),
            None => registry
                .get_device(&e.hub, &e.device_id)
                .await
                .ok()
                .map(|d| (d.generation_id, d.authentication)),
        };
        let meta = Arc::new(
            identity.map_or_else(SenderMeta::default, |(generation, auth)| {
                let kind = match auth.0 {
                    muster_hub::docs::DeviceAuth::Sas { .. } => "sas",
                    _ => "x509",
                };
                let scope = if e.module_id.is_some() {
                    "module"
                } else {
                    "device"
                };
                SenderMeta {
                    auth_method: Some(
                        serde_json::json!({
                            "scope": scope,
                            "type": kind,
                            "issuer": "iothub",
                            "acceptingIpFilterRule": null,
                        })
                        .to_string(),
                    ),
                    generation_id: Some(generation),
                }
            }),
        );
        self.0.insert(key, Arc::clone(&meta));
        meta
    }
}

/// The AMQP message a consumer receives for a stored event.
fn to_message(event: &Event, meta: &SenderMeta) -> AmqpMessage {
    let e = &event.event;
    let mut annotations: OrderedMap<OwnedKey, Value> = OrderedMap::new();
    let mut put = |k: &str, v: Value| {
        annotations.insert(OwnedKey::Symbol(Symbol::from(k)), v);
    };
    put(
        "x-opt-sequence-number",
        Value::Long(event.partition_sequence),
    );
    put("x-opt-offset", Value::String(event.sequence.to_string()));
    put(
        "x-opt-enqueued-time",
        Value::Timestamp(message::timestamp(e.enqueued_ms)),
    );
    let mut properties = Properties::default();
    for (name, value) in &e.system_properties {
        match name.as_str() {
            "message-id" => properties.message_id = Some(MessageId::String(value.clone())),
            "correlation-id" => {
                properties.correlation_id = Some(MessageId::String(value.clone()));
            }
            "user-id" => properties.user_id = Some(Binary::from(value.clone().into_bytes())),
            "content-type" => properties.content_type = Some(Symbol::from(value.as_str())),
            "content-encoding" => {
                properties.content_encoding = Some(Symbol::from(value.as_str()));
            }
            "iothub-enqueuedtime" => put(
                "iothub-enqueuedtime",
                Value::Timestamp(message::timestamp(e.enqueued_ms)),
            ),
            "to" | "absolute-expiry-time" => {}
            other => put(other, Value::String(value.clone())),
        }
    }
    if let Some(m) = &meta.auth_method {
        put("iothub-connection-auth-method", Value::String(m.clone()));
    }
    if let Some(g) = &meta.generation_id {
        put(
            "iothub-connection-auth-generation-id",
            Value::String(g.clone()),
        );
    }
    let application = (!e.properties.is_empty()).then(|| {
        ApplicationProperties(
            e.properties
                .iter()
                .map(|(k, v)| (k.clone(), SimpleValue::String(v.clone())))
                .collect(),
        )
    });
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: Some(MessageAnnotations(annotations)),
        properties: Some(properties),
        application_properties: application,
        body: message::data(e.body.clone()),
        footer: None,
    }
}

/// `messages/events/$management`: IoT Hub's own address for its events, which Azure answers
/// with `amqp:link:redirect` to the Event Hubs-compatible endpoint; the Azure CLI's
/// `monitor-events` follows it (`../shared/spec/event-hubs-wire.md` §10a). A service login
/// (SASL PLAIN `{policy}@sas.root.{hub}` or a CBS token) comes first.
pub(crate) async fn redirect(shared: &Shared, sender: Sender, host: &str) {
    let hub = shared.ctx.hub.hub_for_host(host);
    if let Err(e) = shared.service_grant(&READERS)
        && !shared.may_read(&hub)
    {
        let why = format!(
            "Unauthorized: log in with a service policy (SASL PLAIN or a CBS token) first: {}",
            muster_types::report(&e)
        );
        return refuse(sender, AmqpError::UnauthorizedAccess, why).await;
    }
    let name = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
        .to_owned();
    let port = shared.ctx.amqp_port.get().copied().unwrap_or(5671);
    let entity = entity_name(&hub);
    let address = format!("amqps://{name}/{entity}/$management");
    let mut info = Fields::new();
    info.insert(Symbol::from("hostname"), Value::String(name.clone()));
    info.insert(Symbol::from("network-host"), Value::String(name.clone()));
    info.insert(Symbol::from("port"), Value::Int(i32::from(port)));
    info.insert(Symbol::from("address"), Value::String(address.clone()));
    info!(address, "redirecting to the Event Hubs-compatible endpoint");
    let description = format!("The messages of this hub are read at {address}");
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sender.close_with_error(definitions::Error::new(
            LinkError::Redirect,
            Some(description),
            Some(info),
        )),
    )
    .await;
}

/// A CBS put-token for an entity audience.
pub(crate) fn put_token(shared: &Shared, token: &str) -> Result<(), TokenRefusal> {
    let grant = check_token(&shared.ctx, token)?;
    debug!(hub = grant.hub, "event hubs token accepted");
    shared.grant_eventhub(grant);
    Ok(())
}

impl From<TokenRefusal> for Refusal {
    fn from(e: TokenRefusal) -> Self {
        Refusal::EventHub(e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn at(start: Start) -> Result<Position, String> {
        Ok(Position::At(start))
    }

    #[test]
    fn selectors_of_both_sdks_parse() {
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset > '-1'"),
            at(Start::Offset {
                offset: -1,
                inclusive: false
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset > '@latest'"),
            Ok(Position::Latest)
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset >= '42'"),
            at(Start::Offset {
                offset: 42,
                inclusive: true
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-sequence-number > '7'"),
            at(Start::Sequence {
                sequence: 7,
                inclusive: false
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-enqueued-time >= '1700000000000'"),
            at(Start::Enqueued {
                millis: 1_700_000_000_000,
                inclusive: true
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-enqueuedtimeutc > 1700000000000"),
            at(Start::Enqueued {
                millis: 1_700_000_000_000,
                inclusive: false
            })
        );
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in [
            "amqp.annotation.x-opt-offset > 'x'y'",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-offset > 'abc'",
            "amqp.annotation.x-opt-owner > '1'",
            "x-opt-offset > '1'",
            "amqp.annotation.x-opt-offset > '1",
            "",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_are_found_by_key_or_by_either_descriptor() {
        let described = |descriptor| {
            Value::Described(Box::new(Described {
                descriptor,
                value: Value::String("amqp.annotation.x-opt-sequence-number > '3'".into()),
            }))
        };
        let want = at(Start::Sequence {
            sequence: 3,
            inclusive: false,
        });
        let mut by_code = FilterSet::new();
        by_code.insert(
            Symbol::from("some-name"),
            described(Descriptor::Code(SELECTOR_FILTER_CODE)),
        );
        assert_eq!(start_of(Some(&by_code)), want);
        let mut by_name = FilterSet::new();
        by_name.insert(
            Symbol::from(SELECTOR_FILTER),
            described(Descriptor::Name(Symbol::from(SELECTOR_FILTER))),
        );
        assert_eq!(start_of(Some(&by_name)), want);
        assert_eq!(
            start_of(None),
            at(Start::Offset {
                offset: -1,
                inclusive: false
            })
        );
        let mut not_text = FilterSet::new();
        not_text.insert(Symbol::from(SELECTOR_FILTER), Value::Int(1));
        assert!(start_of(Some(&not_text)).is_err());
    }

    #[test]
    fn epochs_are_read_from_link_properties() {
        let mut p = Fields::new();
        p.insert(Symbol::from("com.microsoft:epoch"), Value::Long(3));
        assert_eq!(epoch_of(Some(&p)), Some(3));
        assert_eq!(epoch_of(None), None);
    }
}
