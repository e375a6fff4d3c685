//! Every link of a session, served by its address (`../shared/spec/azure-amqp-wire.md` §3–§7).
//!
//! An attach is accepted first (fe2o3-amqp cannot refuse one up front) and, when its address
//! is unknown or the connection may not use it, closed at once with `amqp:not-found` or
//! `amqp:unauthorized-access`. Links where muster receives answer rcv-settle-mode `first`
//! (uamqp asks for `second` and then never settles); replies go pre-settled where the client
//! allows it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SupportedReceiverSettleModes,
};
use fe2o3_amqp::link::delivery::{Delivery, Sendable};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{self, AmqpError, ReceiverSettleMode, Role};
use fe2o3_amqp::types::messaging::{
    AmqpValue, Body, MessageId, Outcome, Properties, TargetArchetype,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use muster_hub::Settlement;
use muster_hub::c2d::C2dMessage;
use muster_hub::methods::MethodResult;
use muster_hub::registry::HubError;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::address::{self, Address, Device, Node};
use super::conn::{DeviceEntry, Shared};
use super::message::{self, AmqpMessage};
use crate::device_api;

/// How long a delivered cloud-to-device message stays locked awaiting the device's outcome.
const C2D_LOCK: Duration = Duration::from_secs(60);
/// Cloud-to-device messages in flight per link.
const C2D_IN_FLIGHT: usize = 16;
/// A receive is retried this often even without news (locks of lost deliveries expire).
const C2D_POLL: Duration = Duration::from_secs(30);
/// Largest message accepted on a link (IoT Hub's own limits are checked by the hub).
const MAX_MESSAGE: u64 = 1024 * 1024;
/// How long a closing handshake may take.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Policies that may send cloud-to-device messages and read their feedback.
const SERVICE_CONNECT: [&str; 2] = ["iothubowner", "service"];

/// Serve a session's links until it ends.
pub(super) async fn session(mut session: ListenerSessionHandle, shared: Arc<Shared>) {
    loop {
        let attach = tokio::select! {
            () = shared.closing.cancelled() => break,
            a = session.next_incoming_attach() => match a {
                Some(a) => a,
                None => break,
            },
        };
        let role = attach.role.clone();
        let raw = match role {
            Role::Sender => attach.target.as_deref().and_then(|t| match t {
                TargetArchetype::Target(t) => t.address.clone(),
                #[allow(unreachable_patterns, reason = "other archetypes behind features")]
                _ => None,
            }),
            Role::Receiver => attach.source.as_ref().and_then(|s| s.address.clone()),
        }
        .unwrap_or_default();
        // A partition receiver's start position and epoch travel in its attach.
        let extras = match role {
            Role::Receiver => Extras {
                filter: attach.source.as_ref().and_then(|s| s.filter.clone()),
                properties: attach.properties.clone(),
            },
            Role::Sender => Extras::default(),
        };
        let acceptor = match role {
            Role::Sender => LinkAcceptor::builder()
                .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
                .fallback_receiver_settle_mode(ReceiverSettleMode::First)
                .max_message_size(MAX_MESSAGE)
                .build(),
            Role::Receiver => LinkAcceptor::builder().build(),
        };
        let link = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(link) => link,
            Err(e) => {
                warn!(error = %e, address = raw, "cannot attach a link");
                continue;
            }
        };
        if !shared.add_link() {
            warn!(address = raw, "too many links on one connection; refusing");
            let why = format!("at most {} links per connection", super::conn::MAX_LINKS);
            refuse(link, AmqpError::ResourceLimitExceeded, why).await;
            continue;
        }
        let tracker = shared.tracker.clone();
        let shared = Arc::clone(&shared);
        // The device id is recorded once the link is authorized (conn::authorize_device).
        let span = tracing::info_span!("link", address = %raw, device_id = tracing::field::Empty);
        let serve = async move {
            serve_link(&shared, raw, link, extras).await;
            shared.remove_link();
        };
        tracker.spawn(tracing::Instrument::instrument(serve, span));
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, session.end()).await;
}

/// What a link's attach says beyond its address.
#[derive(Debug, Default)]
struct Extras {
    filter: Option<fe2o3_amqp::types::messaging::FilterSet>,
    properties: Option<definitions::Fields>,
}

async fn serve_link(shared: &Arc<Shared>, raw: String, link: LinkEndpoint, extras: Extras) {
    let Some(Address { host, node }) = address::parse(&raw) else {
        warn!(address = raw, "attach to an unknown address");
        return refuse(link, AmqpError::NotFound, format!("no such node: {raw}")).await;
    };
    let host = shared.host_for(host.as_deref()).to_owned();
    debug!(address = raw, "link attached");
    match (node, link) {
        (Node::Cbs, LinkEndpoint::Receiver(r)) => cbs(shared, r).await,
        (Node::Cbs, LinkEndpoint::Sender(s)) => replies(shared, s, "cbs", None, None).await,
        (
            Node::Registration {
                scope,
                registration_id,
            },
            LinkEndpoint::Receiver(r),
        ) => {
            registrations(shared, r, &scope, &registration_id).await;
        }
        (
            Node::Registration {
                registration_id, ..
            },
            LinkEndpoint::Sender(s),
        ) => {
            replies(shared, s, &format!("dps/{registration_id}"), None, None).await;
        }
        (Node::Management, LinkEndpoint::Receiver(r)) => {
            super::eventhub::management(shared, r).await;
        }
        (Node::Management, LinkEndpoint::Sender(s)) => {
            replies(shared, s, "mgmt", None, None).await;
        }
        (Node::EventsRedirect, LinkEndpoint::Sender(s)) => {
            super::eventhub::redirect(shared, s, &host).await;
        }
        (
            Node::Partition {
                entity,
                group,
                partition,
            },
            LinkEndpoint::Sender(s),
        ) => {
            let request = super::eventhub::Request {
                entity,
                group,
                partition,
                filter: extras.filter,
                properties: extras.properties,
            };
            super::eventhub::partition_reader(shared, s, request).await;
        }
        (Node::ServiceC2d, LinkEndpoint::Receiver(r)) => service_c2d(shared, r).await,
        (Node::Feedback, LinkEndpoint::Sender(s)) => feedback(shared, s).await,
        (Node::Events(d), link) => {
            let Some(entry) = device(shared, &host, &d, &raw, link.role()).await else {
                return refuse_device(link, &raw).await;
            };
            match link {
                LinkEndpoint::Receiver(r) => telemetry(shared, r, &entry).await,
                // Modules' inputs (`/devices/{d}/modules/{m}/messages/events` as a source).
                LinkEndpoint::Sender(s) => {
                    refuse_sender(
                        s,
                        AmqpError::NotImplemented,
                        "module inputs are not supported",
                    )
                    .await;
                }
            }
        }
        (Node::DeviceBound(d), link) => {
            let Some(entry) = device(shared, &host, &d, &raw, link.role()).await else {
                return refuse_device(link, &raw).await;
            };
            match link {
                LinkEndpoint::Sender(s) if entry.identity.module_id.is_some() => {
                    let why = "modules receive no cloud-to-device messages";
                    refuse_sender(s, AmqpError::NotAllowed, why).await;
                }
                LinkEndpoint::Sender(s) => c2d(shared, s, &entry).await,
                LinkEndpoint::Receiver(r) => {
                    refuse_receiver(
                        r,
                        AmqpError::NotAllowed,
                        "a device receives here, it does not send",
                    )
                    .await;
                }
            }
        }
        (Node::Twin(d), link) => {
            let Some(entry) = device(shared, &host, &d, &raw, link.role()).await else {
                return refuse_device(link, &raw).await;
            };
            let key = format!("twin/{}", entry.identity.key());
            match link {
                LinkEndpoint::Receiver(r) => twin(shared, r, &entry, &key).await,
                LinkEndpoint::Sender(s) => replies(shared, s, &key, Some(&entry), None).await,
            }
        }
        (Node::Methods(d), link) => {
            let Some(entry) = device(shared, &host, &d, &raw, link.role()).await else {
                return refuse_device(link, &raw).await;
            };
            match link {
                LinkEndpoint::Receiver(r) => method_responses(shared, r, &entry).await,
                LinkEndpoint::Sender(s) => {
                    let key = format!("methods/{}", entry.identity.key());
                    replies(shared, s, &key, Some(&entry), Some(&entry.methods_open)).await;
                }
            }
        }
        (node, link) => {
            warn!(address = raw, ?node, "link in an unsupported direction");
            refuse(
                link,
                AmqpError::NotAllowed,
                format!("{raw} does not take this direction"),
            )
            .await;
        }
    }
}

trait RoleOf {
    fn role(&self) -> &'static str;
}

impl RoleOf for LinkEndpoint {
    fn role(&self) -> &'static str {
        match self {
            LinkEndpoint::Sender(_) => "receiver",
            LinkEndpoint::Receiver(_) => "sender",
        }
    }
}

async fn device(
    shared: &Arc<Shared>,
    host: &str,
    d: &Device,
    raw: &str,
    role: &str,
) -> Option<Arc<DeviceEntry>> {
    match shared
        .authorize_device(host, &d.device_id, d.module_id.as_deref())
        .await
    {
        Ok(entry) => Some(entry),
        Err(e) => {
            warn!(
                address = raw,
                link = role,
                reason = muster_types::report(&e),
                "device link refused"
            );
            None
        }
    }
}

fn error(condition: AmqpError, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(condition, Some(description.into()), None)
}

async fn refuse(link: LinkEndpoint, condition: AmqpError, description: String) {
    match link {
        LinkEndpoint::Sender(s) => refuse_sender(s, condition, &description).await,
        LinkEndpoint::Receiver(r) => refuse_receiver(r, condition, &description).await,
    }
}

async fn refuse_device(link: LinkEndpoint, raw: &str) {
    refuse(
        link,
        AmqpError::UnauthorizedAccess,
        format!("not authorized for {raw}"),
    )
    .await;
}

async fn refuse_sender(sender: Sender, condition: AmqpError, description: &str) {
    let _ = tokio::time::timeout(
        CLOSE_WAIT,
        sender.close_with_error(error(condition, description)),
    )
    .await;
}

async fn refuse_receiver(receiver: Receiver, condition: AmqpError, description: &str) {
    let _ = tokio::time::timeout(
        CLOSE_WAIT,
        receiver.close_with_error(error(condition, description)),
    )
    .await;
}

/// What ended a receiving link's wait.
enum Next {
    Message(Box<Delivery<Body<Value>>>),
    Revoked,
    Done,
}

async fn next(receiver: &mut Receiver, shared: &Shared, entry: Option<&DeviceEntry>) -> Next {
    let revoked = async {
        match entry {
            Some(e) => e.revoked.cancelled().await,
            None => shared.closing.cancelled().await,
        }
    };
    tokio::select! {
        () = revoked => Next::Revoked,
        d = receiver.recv::<Body<Value>>() => match d {
            Ok(d) => Next::Message(Box::new(d)),
            Err(e) => {
                debug!(error = %e, "receiving link ended");
                Next::Done
            }
        },
    }
}

async fn end_receiver(receiver: Receiver, next: &Next) {
    if matches!(next, Next::Revoked) {
        refuse_receiver(
            receiver,
            AmqpError::UnauthorizedAccess,
            "the credential for this device expired or was revoked",
        )
        .await;
    } else {
        let _ = tokio::time::timeout(CLOSE_WAIT, receiver.close()).await;
    }
}

/// A reply link: deliver what the mailbox `key` holds, pre-settled where the link allows.
/// `open` counts the reply links of its kind while they run (the device takes method calls
/// while one is attached).
async fn replies(
    shared: &Shared,
    sender: Sender,
    key: &str,
    entry: Option<&DeviceEntry>,
    open: Option<&std::sync::atomic::AtomicUsize>,
) {
    let Some(rx) = shared.take_mailbox(key) else {
        warn!(key, "a second reply link for the same channel");
        return refuse_sender(
            sender,
            AmqpError::ResourceLocked,
            "this channel already has a reply link",
        )
        .await;
    };
    if let Some(n) = open {
        n.fetch_add(1, Ordering::AcqRel);
    }
    pump(shared, sender, rx, key, entry).await;
    if let Some(n) = open {
        n.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn pump(
    shared: &Shared,
    mut sender: Sender,
    mut rx: tokio::sync::mpsc::Receiver<AmqpMessage>,
    key: &str,
    entry: Option<&DeviceEntry>,
) {
    enum Step {
        Send(Box<AmqpMessage>),
        Revoked,
        Done,
    }
    loop {
        let revoked = async {
            match entry {
                Some(e) => e.revoked.cancelled().await,
                None => shared.closing.cancelled().await,
            }
        };
        let step = tokio::select! {
            () = revoked => Step::Revoked,
            m = rx.recv() => m.map_or(Step::Done, |m| Step::Send(Box::new(m))),
            _ = sender.on_detach() => Step::Done,
        };
        match step {
            Step::Send(m) => {
                let sendable = Sendable::builder().message(*m).settled(true).build();
                if let Err(e) = sender.send_batchable(sendable).await {
                    debug!(error = %e, key, "reply link ended");
                    break;
                }
            }
            Step::Revoked => {
                shared.drop_mailbox(key);
                return refuse_sender(
                    sender,
                    AmqpError::UnauthorizedAccess,
                    "the credential for this device expired or was revoked",
                )
                .await;
            }
            Step::Done => break,
        }
    }
    shared.drop_mailbox(key);
    let _ = tokio::time::timeout(CLOSE_WAIT, sender.close()).await;
}

/// `$cbs`: `put-token` requests; answers carry `status-code` (int) and the request's id as
/// correlation id (same AMQP type).
async fn cbs(shared: &Shared, mut receiver: Receiver) {
    loop {
        let delivery = match next(&mut receiver, shared, None).await {
            Next::Message(d) => *d,
            other => return end_receiver(receiver, &other).await,
        };
        let request = delivery.message();
        let (status, description) = put_token(shared, request).await;
        let _ = receiver.accept(&delivery).await;
        let id = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let reply = message::reply(
            id,
            vec![
                ("status-code", SimpleValue::Int(status)),
                ("status-description", SimpleValue::String(description)),
            ],
            vec![],
            Body::Value(AmqpValue(Value::Null)),
        );
        shared.reply("cbs", reply);
    }
}

async fn put_token(shared: &Shared, request: &AmqpMessage) -> (i32, String) {
    let operation = message::app_property(request, "operation").unwrap_or_default();
    if operation != "put-token" {
        warn!(operation, "CBS operation not supported");
        return (400, format!("operation '{operation}' is not supported"));
    }
    let token = String::from_utf8_lossy(&message::body_bytes(&request.body)).into_owned();
    let audience = message::app_property(request, "name").unwrap_or_default();
    let audience = muster_auth::sas::percent_decode(&audience);
    let audience = audience
        .strip_prefix("https://")
        .or_else(|| audience.strip_prefix("sb://"))
        .unwrap_or(&audience);
    let result = match audience.split_once("/devices/") {
        Some((host, rest)) => {
            let (device, module) = match rest.split_once("/modules/") {
                Some((d, m)) => (d, Some(m.trim_end_matches('/'))),
                None => (rest.trim_end_matches('/'), None),
            };
            shared.put_device_token(host, device, module, &token).await
        }
        // `sb://{host}/{entity}[/…]`: an Event Hubs client for the built-in endpoint.
        None if audience
            .split_once('/')
            .is_some_and(|(_, path)| !path.trim_matches('/').is_empty()) =>
        {
            match super::eventhub::put_token(shared, &token) {
                Ok(()) => Ok(()),
                Err(e) => {
                    warn!(audience, reason = %e, "CBS token refused");
                    return (e.status(), e.to_string());
                }
            }
        }
        None => shared.put_service_token(&token),
    };
    match result {
        Ok(()) => (200, "OK".into()),
        Err(e) => {
            warn!(
                audience,
                reason = muster_types::report(&e),
                "CBS token refused"
            );
            (401, "Unauthorized: the token was refused".into())
        }
    }
}

/// Deliveries taken off a telemetry link for one durable append.
const TELEMETRY_BATCH: usize = 64;

/// Device-to-cloud messages, each accepted once it is durable. Whatever the link already holds
/// (the device keeps several in flight) goes into one append, so one group commit serves them
/// all and they stay in order.
async fn telemetry(shared: &Shared, mut receiver: Receiver, entry: &DeviceEntry) {
    use futures_util::FutureExt as _;
    let mut last = std::time::Instant::now();
    loop {
        let first = match next(&mut receiver, shared, Some(entry)).await {
            Next::Message(d) => *d,
            other => return end_receiver(receiver, &other).await,
        };
        let mut batch = vec![first];
        // `recv` is cancel-safe: what is not ready now stays for the next round.
        while batch.len() < TELEMETRY_BATCH {
            match receiver.recv::<Body<Value>>().now_or_never() {
                Some(Ok(d)) => batch.push(d),
                _ => break,
            }
        }
        let mut fits = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        for d in batch {
            match message::telemetry_of(d.message(), *d.message_format()) {
                Ok(m) => {
                    messages.extend(m);
                    fits.push(d);
                }
                Err(refusal) => {
                    warn!(identity = entry.identity.id(), reason = %refusal, "telemetry refused");
                    let condition = match refusal {
                        message::Refusal::TooLarge => AmqpError::ResourceLimitExceeded,
                        message::Refusal::Undecodable(_) => AmqpError::DecodeError,
                    };
                    let _ = receiver
                        .reject(&d, error(condition, refusal.to_string()))
                        .await;
                }
            }
        }
        match shared.ctx.hub.ingest(&entry.identity, messages).await {
            Ok(()) => {
                let _ = receiver.accept_all(&fits).await;
            }
            Err(e) => {
                warn!(
                    identity = entry.identity.id(),
                    reason = muster_types::report(&e),
                    "telemetry refused"
                );
                let _ = receiver
                    .reject_all(&fits, error(AmqpError::InternalError, e.to_string()))
                    .await;
            }
        }
        shared.ctx.hub.touch(&entry.identity, &mut last).await;
    }
}

/// The device's mailbox: locked messages go out with 16-byte delivery tags; the device's
/// outcome settles them (accepted → complete, rejected → reject, released/modified →
/// abandon). Unsettled deliveries are abandoned when the link ends.
async fn c2d(shared: &Shared, mut sender: Sender, entry: &DeviceEntry) {
    let in_flight = Arc::new(Semaphore::new(C2D_IN_FLIGHT));
    let hub = &shared.ctx.hub;
    loop {
        let room = in_flight.available_permits();
        let deliveries = if room == 0 {
            Vec::new()
        } else {
            match hub.receive_c2d(&entry.identity, room, C2D_LOCK).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(
                        reason = muster_types::report(&e),
                        "cannot read the cloud-to-device queue"
                    );
                    Vec::new()
                }
            }
        };
        for d in deliveries {
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                break;
            };
            let lock = d.lock_token.clone();
            let sendable = Sendable::builder()
                .message(c2d_message(entry, &d))
                .settled(false)
                .build();
            let sent = tokio::select! {
                () = entry.revoked.cancelled() => None,
                s = sender.send_batchable(sendable) => Some(s),
            };
            let outcome = match sent {
                Some(Ok(fut)) => fut,
                Some(Err(e)) => {
                    debug!(error = %e, "cloud-to-device link ended");
                    abandon(shared, entry, &lock).await;
                    return;
                }
                None => {
                    abandon(shared, entry, &lock).await;
                    return refuse_sender(
                        sender,
                        AmqpError::UnauthorizedAccess,
                        "the credential for this device expired or was revoked",
                    )
                    .await;
                }
            };
            let identity = entry.identity.clone();
            let ctx = Arc::clone(&shared.ctx);
            shared.tracker.spawn(async move {
                let settlement = match outcome.await {
                    Ok(Outcome::Accepted(_)) => Settlement::Complete,
                    Ok(Outcome::Rejected(_)) => Settlement::Reject,
                    Ok(_) => Settlement::Abandon,
                    Err(e) => {
                        debug!(error = %e, "no outcome for a cloud-to-device message");
                        Settlement::Abandon
                    }
                };
                if let Err(e) = ctx.hub.settle_c2d(&identity, &lock, settlement).await {
                    warn!(
                        reason = muster_types::report(&e),
                        ?settlement,
                        "cannot settle a cloud-to-device message"
                    );
                }
                drop(permit);
                // Room for another delivery (and an abandoned message to deliver again): the
                // link looks at the queue now rather than at its next poll.
                ctx.hub
                    .presence()
                    .send(&identity.key(), muster_hub::presence::Outbound::Mail);
            });
        }
        enum Wake {
            Look,
            Stop,
            Revoked,
        }
        let wake = tokio::select! {
            () = entry.mail.notified() => Wake::Look,
            () = tokio::time::sleep(C2D_POLL) => Wake::Look,
            () = entry.revoked.cancelled() => Wake::Revoked,
            _ = sender.on_detach() => Wake::Stop,
        };
        match wake {
            Wake::Look => {}
            Wake::Stop => return,
            Wake::Revoked => {
                return refuse_sender(
                    sender,
                    AmqpError::UnauthorizedAccess,
                    "the credential for this device expired or was revoked",
                )
                .await;
            }
        }
    }
}

async fn abandon(shared: &Shared, entry: &DeviceEntry, lock: &str) {
    let _ = shared
        .ctx
        .hub
        .settle_c2d(&entry.identity, lock, Settlement::Abandon)
        .await;
}

fn c2d_message(entry: &DeviceEntry, d: &muster_hub::c2d::Delivery) -> AmqpMessage {
    let m = &d.message;
    let to = format!(
        "/devices/{}/messages/devicebound",
        muster_auth::sas::percent_encode(entry.identity.device_id.as_str())
    );
    let properties = Properties {
        message_id: Some(MessageId::String(m.message_id.clone())),
        to: Some(to),
        correlation_id: m.correlation_id.clone().map(MessageId::String),
        absolute_expiry_time: Some(message::timestamp(m.expiry_unix.saturating_mul(1000))),
        ..Properties::default()
    };
    let mut out: AmqpMessage = message::reply(
        None,
        m.properties
            .iter()
            .map(|(k, v)| (k.as_str(), SimpleValue::String(v.clone())))
            .collect(),
        vec![
            ("x-opt-lock-token", Value::String(d.lock_token.clone())),
            (
                "iothub-deliverycount",
                Value::Ubyte(u8::try_from(d.delivery_count).unwrap_or(u8::MAX)),
            ),
        ],
        message::data(m.body.clone()),
    );
    out.properties = Some(properties);
    out
}

/// Twin requests: GET, PATCH of reported properties, PUT/DELETE of the desired-change
/// subscription. Answers carry `status` (int) and the request's correlation id.
async fn twin(shared: &Shared, mut receiver: Receiver, entry: &DeviceEntry, key: &str) {
    loop {
        let delivery = match next(&mut receiver, shared, Some(entry)).await {
            Next::Message(d) => *d,
            other => return end_receiver(receiver, &other).await,
        };
        let request = delivery.message();
        let _ = receiver.accept(&delivery).await;
        let correlation = request
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let text = |name| match message::annotation(request, name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Symbol(s)) => s.as_str().to_owned(),
            _ => String::new(),
        };
        let (operation, resource) = (text("operation"), text("resource"));
        let hub = &shared.ctx.hub;
        let (status, annotations, body): (i32, Vec<(&str, Value)>, Vec<u8>) = match operation
            .as_str()
        {
            "GET" => match hub.device_twin(&entry.identity).await {
                Ok(twin) => (200, vec![], twin.to_string().into_bytes()),
                Err(e) => failure(&e),
            },
            "PATCH" => match hub
                .report(&entry.identity, &message::body_bytes(&request.body))
                .await
            {
                Ok(version) => (
                    204,
                    vec![(
                        "version",
                        Value::Long(i64::try_from(version).unwrap_or(i64::MAX)),
                    )],
                    Vec::new(),
                ),
                Err(e) => failure(&e),
            },
            "PUT" | "DELETE"
                if resource.eq_ignore_ascii_case("/notifications/twin/properties/desired") =>
            {
                entry
                    .twin_subscribed
                    .store(operation == "PUT", Ordering::Release);
                (200, vec![], Vec::new())
            }
            other => {
                warn!(operation = other, resource, "unsupported twin request");
                (400, vec![], json!({"message": format!("unsupported twin operation '{other}' on '{resource}'")}).to_string().into_bytes())
            }
        };
        let mut annotations = annotations;
        annotations.insert(0, ("status", Value::Int(status)));
        let reply = message::reply(correlation, vec![], annotations, message::data(body));
        shared.reply(key, reply);
    }
}

fn failure(e: &HubError) -> (i32, Vec<(&'static str, Value)>, Vec<u8>) {
    warn!(reason = muster_types::report(e), "twin request failed");
    let body = json!({"errorCode": e.code(), "message": e.to_string()});
    (i32::from(e.status()), vec![], body.to_string().into_bytes())
}

/// A device's answers to direct-method calls.
async fn method_responses(shared: &Shared, mut receiver: Receiver, entry: &DeviceEntry) {
    loop {
        let delivery = match next(&mut receiver, shared, Some(entry)).await {
            Next::Message(d) => *d,
            other => return end_receiver(receiver, &other).await,
        };
        let response = delivery.message();
        let _ = receiver.accept(&delivery).await;
        let id = response
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.as_ref())
            .map(message::id_text)
            .unwrap_or_default();
        let rid = entry
            .method_calls
            .lock()
            .ok()
            .and_then(|mut c| c.remove(&id.to_ascii_lowercase()))
            .map(|(rid, _)| rid);
        let Some(rid) = rid else {
            warn!(correlation_id = id, "method response for no pending call");
            continue;
        };
        let status = message::app_property(response, "IoThub-status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        let result = MethodResult::from_device(status, &message::body_bytes(&response.body));
        if !shared
            .ctx
            .hub
            .complete_method(&entry.identity, &rid, result)
        {
            debug!("method response after the call timed out");
        }
    }
}

/// A service's cloud-to-device sends: the message's `to` names the device.
async fn service_c2d(shared: &Shared, mut receiver: Receiver) {
    let grant = match shared.service_grant(&SERVICE_CONNECT) {
        Ok(g) => g,
        Err(e) => {
            warn!(
                reason = muster_types::report(&e),
                "cloud-to-device sender refused"
            );
            return refuse_receiver(receiver, AmqpError::UnauthorizedAccess, &e.to_string()).await;
        }
    };
    loop {
        let delivery = match next(&mut receiver, shared, None).await {
            Next::Message(d) => *d,
            other => return end_receiver(receiver, &other).await,
        };
        // The token that opened the link may have expired (or been replaced) since.
        if let Err(e) = shared.service_grant(&SERVICE_CONNECT) {
            warn!(
                reason = muster_types::report(&e),
                "cloud-to-device send refused"
            );
            let refusal = error(AmqpError::UnauthorizedAccess, e.to_string());
            let _ = receiver.reject(&delivery, refusal).await;
            return refuse_receiver(receiver, AmqpError::UnauthorizedAccess, &e.to_string()).await;
        }
        match queue_c2d(shared, &grant.hub, delivery.message()).await {
            Ok(()) => {
                let _ = receiver.accept(&delivery).await;
            }
            Err((condition, description)) => {
                warn!(description, "cloud-to-device message refused");
                let _ = receiver
                    .reject(&delivery, error(condition, description))
                    .await;
            }
        }
    }
}

async fn queue_c2d(shared: &Shared, hub: &str, m: &AmqpMessage) -> Result<(), (AmqpError, String)> {
    let p = m.properties.clone().unwrap_or_default();
    let to = p.to.clone().unwrap_or_default();
    let device = to
        .trim_start_matches('/')
        .strip_prefix("devices/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(_, tail)| tail.eq_ignore_ascii_case("messages/devicebound"))
        .map(|(id, _)| muster_auth::sas::percent_decode(id))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            (
                AmqpError::InvalidField,
                format!(
                    "the message's 'to' must be /devices/{{id}}/messages/devicebound, not '{to}'"
                ),
            )
        })?;
    let ack = message::app_property(m, "iothub-ack");
    if let Some(a) = &ack
        && !matches!(a.as_str(), "none" | "positive" | "negative" | "full")
    {
        return Err((
            AmqpError::InvalidField,
            "iothub-ack must be none, positive, negative or full".into(),
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let message = C2dMessage {
        message_id: p
            .message_id
            .as_ref()
            .map_or_else(device_api::tracking_id, message::id_text),
        correlation_id: p.correlation_id.as_ref().map(message::id_text),
        ack,
        expiry_unix: p
            .absolute_expiry_time
            .map_or(now + 3600, |t| t.milliseconds() / 1000),
        properties: m
            .application_properties
            .as_ref()
            .map(|a| {
                a.0.iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("iothub-ack"))
                    .map(|(k, v)| (k.clone(), message::simple_text(v)))
                    .collect()
            })
            .unwrap_or_default(),
        body: message::body_bytes(&m.body),
    };
    shared
        .ctx
        .hub
        .send_c2d(hub, &device, &message)
        .await
        .map_err(|e| {
            let condition = match e.status() {
                404 => AmqpError::NotFound,
                400 | 413 => AmqpError::InvalidField,
                401 => AmqpError::UnauthorizedAccess,
                403 | 429 => AmqpError::ResourceLimitExceeded,
                _ => AmqpError::InternalError,
            };
            (condition, e.to_string())
        })
}

/// Delivery feedback for the service, as JSON arrays of records.
async fn feedback(shared: &Shared, mut sender: Sender) {
    let grant = match shared.service_grant(&SERVICE_CONNECT) {
        Ok(g) => g,
        Err(e) => {
            warn!(
                reason = muster_types::report(&e),
                "feedback receiver refused"
            );
            return refuse_sender(sender, AmqpError::UnauthorizedAccess, &e.to_string()).await;
        }
    };
    let pending = shared.ctx.hub.feedback();
    loop {
        if let Err(e) = shared.service_grant(&SERVICE_CONNECT) {
            warn!(
                reason = muster_types::report(&e),
                "feedback receiver closed"
            );
            return refuse_sender(sender, AmqpError::UnauthorizedAccess, &e.to_string()).await;
        }
        let arrived = pending.arrived();
        let records = pending.take(&grant.hub, 100);
        if !records.is_empty() {
            let body = serde_json::to_vec(&records).unwrap_or_default();
            let mut m: AmqpMessage = message::reply(None, vec![], vec![], message::data(body));
            m.properties = Some(Properties {
                message_id: Some(MessageId::String(device_api::tracking_id())),
                content_type: Some("application/vnd.microsoft.iothub.feedback.json".into()),
                ..Properties::default()
            });
            match sender.send(Sendable::builder().message(m).build()).await {
                Ok(Outcome::Accepted(_)) => {}
                // A service that refuses its feedback does not get it again (as in IoT Hub,
                // where an abandoned batch goes back, a rejected one is gone).
                Ok(Outcome::Released(_) | Outcome::Modified(_)) => {
                    pending.restore(&grant.hub, records);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(other) => warn!(
                    ?other,
                    n = records.len(),
                    "feedback records refused by the service; dropped"
                ),
                Err(e) => {
                    debug!(error = %e, "feedback link ended");
                    pending.restore(&grant.hub, records);
                    return;
                }
            }
            continue;
        }
        enum Wake {
            Look,
            Stop,
        }
        let wake = tokio::select! {
            () = arrived => Wake::Look,
            () = tokio::time::sleep(Duration::from_secs(5)) => Wake::Look,
            () = shared.closing.cancelled() => Wake::Stop,
            _ = sender.on_detach() => Wake::Stop,
        };
        if matches!(wake, Wake::Stop) {
            return;
        }
    }
}

/// DPS register and operation-status requests (`../shared/spec/azure-amqp-wire.md` §5). An
/// answer with a status below 300 is a message on the reply link; a failure rejects the
/// request with the DPS error JSON as description.
async fn registrations(
    shared: &Shared,
    mut receiver: Receiver,
    scope: &str,
    registration_id: &str,
) {
    let key = format!("dps/{registration_id}");
    let ctx = &shared.ctx;
    let unknown_scope = !scope.eq_ignore_ascii_case(&ctx.id_scope);
    if unknown_scope {
        warn!(scope, "DPS link for an unknown ID scope");
    }
    loop {
        let delivery = match next(&mut receiver, shared, None).await {
            Next::Message(d) => *d,
            other => {
                shared.drop_mailbox(&key);
                return end_receiver(receiver, &other).await;
            }
        };
        let request = delivery.message();
        let operation = message::app_property(request, "iotdps-operation-type").unwrap_or_default();
        let reply = if unknown_scope {
            device_api::error_reply(&muster_dps::DpsError::UnknownScope(scope.to_owned()))
        } else if operation == "iotdps-register" {
            let password = match &shared.sasl {
                super::sasl::Claim::Plain { user, password }
                    if user.eq_ignore_ascii_case(&format!(
                        "{scope}/registrations/{registration_id}"
                    )) =>
                {
                    Some(password.expose().to_owned())
                }
                _ => None,
            };
            let credential = match (&password, shared.chain.is_empty()) {
                (Some(token), _) => muster_dps::registration::Credential::Sas(token),
                (None, false) => muster_dps::registration::Credential::X509(&shared.chain),
                (None, true) => muster_dps::registration::Credential::None,
            };
            device_api::register(
                &ctx.dps,
                &ctx.operations,
                ctx.rate_limit.as_ref(),
                (ctx.retry_after, ctx.immediate_result),
                registration_id,
                credential,
                &message::body_bytes(&request.body),
            )
            .await
        } else if operation == "iotdps-get-operationstatus" {
            let op = message::app_property(request, "iotdps-operation-id").unwrap_or_default();
            device_api::poll(&ctx.operations, registration_id, &op)
        } else {
            warn!(operation, "unknown DPS operation");
            device_api::error_reply(&muster_dps::DpsError::InvalidInput(format!(
                "unknown iotdps-operation-type '{operation}'"
            )))
        };
        if reply.status >= 300 {
            let condition = match reply.status {
                401 | 403 => AmqpError::UnauthorizedAccess,
                404 => AmqpError::NotFound,
                429 => AmqpError::ResourceLimitExceeded,
                s if s >= 500 => AmqpError::InternalError,
                _ => AmqpError::InvalidField,
            };
            info!(
                registration_id,
                status = reply.status,
                "DPS request refused"
            );
            let _ = receiver
                .reject(&delivery, error(condition, reply.body.to_string()))
                .await;
            continue;
        }
        let _ = receiver.accept(&delivery).await;
        let correlation = request
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let mut application = vec![];
        if let Some(secs) = reply.retry_after {
            // Node reads `retry-after`, .NET `Retry-After`.
            application.push(("retry-after", SimpleValue::String(secs.to_string())));
            application.push(("Retry-After", SimpleValue::String(secs.to_string())));
        }
        let body = crate::json::to_ascii_json(&reply.body).into_bytes();
        let answer = message::reply(correlation, application, vec![], message::data(body));
        shared.reply(&key, answer);
    }
}
