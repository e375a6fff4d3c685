//! One AMQP connection: who it speaks for and how replies find their link.
//!
//! Identity and authorization belong to the connection, not to a session: the .NET device puts
//! CBS on a session of its own (`../shared/spec/azure-amqp-wire.md` §2.1). A connection holds
//! - the devices and modules it may act for: proven by the TLS client certificate (checked when
//!   a link first names the device) or by a CBS `put-token` (until the token expires);
//! - a service grant (a hub policy, from CBS or SASL PLAIN) for the service links;
//! - the SASL PLAIN claim for DPS;
//! - reply mailboxes: a request arrives on one link and its answer leaves on another, which
//!   may not be attached yet (uamqp sends its token right behind the attaches), so answers
//!   queue until the link exists.
//!
//! A device's live session (presence: desired patches, method calls, new mail, kicks) starts
//! when its first link attaches and ends with the connection, its token's expiry, or a kick
//! (device disabled or deleted, or a newer connection) — then its links close with
//! `amqp:unauthorized-access`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fe2o3_amqp::types::messaging::MessageId;
use muster_hub::auth::Credential;
use muster_hub::identity::Identity;
use muster_hub::presence::Outbound;
use tokio::sync::{Notify, OnceCell, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::message::{self, AmqpMessage};
use super::sasl::Claim;
use crate::Context;

/// Replies a mailbox holds before further ones are dropped (a client that does not take its
/// replies loses them; nothing waits for it).
const MAILBOX: usize = 64;
/// Links one connection may hold at once (a device attaches six, a service two).
pub(crate) const MAX_LINKS: usize = 64;
/// Unanswered method calls kept per identity (older ones have timed out at the hub: at most
/// 300 s).
const MAX_METHOD_CALLS: usize = 256;

/// A service's right on this connection.
#[derive(Debug, Clone)]
pub(crate) struct ServiceGrant {
    /// The policy that signed the token.
    pub(crate) policy: String,
    /// The logical hub it addresses.
    pub(crate) hub: String,
    /// Unix seconds.
    pub(crate) expires: u64,
}

/// A device or module this connection acts for.
#[derive(Debug)]
pub(crate) struct DeviceEntry {
    pub(crate) identity: Identity,
    /// Token expiry (Unix seconds); `None` for X.509.
    expires: Mutex<Option<u64>>,
    /// Cancelled when the identity's links must close (expiry, kick, connection end).
    pub(crate) revoked: CancellationToken,
    /// New cloud-to-device mail.
    pub(crate) mail: Notify,
    /// The device asked for desired-property notifications.
    pub(crate) twin_subscribed: AtomicBool,
    /// Method-request links attached (the device takes direct methods while one is).
    pub(crate) methods_open: AtomicUsize,
    /// Method calls in flight: correlation id (text) → (the hub's request id, when sent).
    pub(crate) method_calls: Mutex<HashMap<String, (String, std::time::Instant)>>,
    live: OnceCell<()>,
}

impl DeviceEntry {
    fn new(identity: Identity, expires: Option<u64>, parent: &CancellationToken) -> Self {
        Self {
            identity,
            expires: Mutex::new(expires),
            revoked: parent.child_token(),
            mail: Notify::new(),
            twin_subscribed: AtomicBool::new(false),
            methods_open: AtomicUsize::new(0),
            method_calls: Mutex::default(),
            live: OnceCell::new(),
        }
    }

    fn expires(&self) -> Option<u64> {
        self.expires.lock().ok().and_then(|e| *e)
    }
}

struct Mailbox {
    tx: mpsc::Sender<AmqpMessage>,
    rx: Option<mpsc::Receiver<AmqpMessage>>,
}

/// State shared by a connection's sessions and links.
pub(crate) struct Shared {
    pub(crate) ctx: Arc<Context>,
    /// The host the client dialled (SNI), for hub selection and SAS checks.
    pub(crate) host: String,
    /// The TLS client certificate chain, leaf first (empty without one).
    pub(crate) chain: Vec<muster_pki::Certificate>,
    /// What SASL claimed.
    pub(crate) sasl: Claim,
    devices: Mutex<HashMap<String, Arc<DeviceEntry>>>,
    service: Mutex<Option<ServiceGrant>>,
    /// Event Hubs entities this connection may read (CBS tokens for `sb://host/entity`).
    eventhub: Mutex<Vec<super::eventhub::Grant>>,
    mailboxes: Mutex<HashMap<String, Mailbox>>,
    /// Links attached now.
    links: AtomicUsize,
    /// Held while a client certificate is checked for a device.
    checking: tokio::sync::Mutex<()>,
    /// Cancelled when the connection ends.
    pub(crate) closing: CancellationToken,
    pub(crate) tracker: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Why a link or a token was refused (logged; the client sees the AMQP condition).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no credential for this device: send a CBS put-token or a client certificate")]
    NoCredential,
    #[error("the device was refused")]
    Auth(#[from] muster_hub::auth::AuthError),
    #[error("the service token was refused")]
    Service(#[from] crate::rest::auth::Refusal),
    #[error("this link needs a service token with one of the policies {0}")]
    NoServiceGrant(String),
    #[error("{0}")]
    EventHub(String),
}

pub(crate) fn now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

impl Shared {
    pub(crate) fn new(
        ctx: Arc<Context>,
        host: String,
        chain: Vec<muster_pki::Certificate>,
        sasl: Claim,
        tracker: tokio_util::task::TaskTracker,
    ) -> Self {
        Self {
            ctx,
            host,
            chain,
            sasl,
            devices: Mutex::default(),
            service: Mutex::default(),
            eventhub: Mutex::default(),
            mailboxes: Mutex::default(),
            links: AtomicUsize::new(0),
            checking: tokio::sync::Mutex::new(()),
            closing: CancellationToken::new(),
            tracker,
        }
    }

    /// The host to use for a link: the absolute address's, else the TLS server name.
    pub(crate) fn host_for<'a>(&'a self, address_host: Option<&'a str>) -> &'a str {
        address_host.unwrap_or(&self.host)
    }

    /// The device entry for a link on `device_id`/`module_id`: already authorized by CBS, or
    /// proven now by the client certificate. Starts the identity's live session.
    pub(crate) async fn authorize_device(
        self: &Arc<Self>,
        host: &str,
        device_id: &str,
        module_id: Option<&str>,
    ) -> Result<Arc<DeviceEntry>, Refusal> {
        // Ids that break the id rules name nobody (and `%2F` cannot smuggle a module in).
        muster_types::DeviceId::new(device_id)
            .map_err(|e| Refusal::Auth(muster_hub::auth::AuthError::InvalidId(e)))?;
        if let Some(m) = module_id {
            muster_types::ModuleId::new(m)
                .map_err(|e| Refusal::Auth(muster_hub::auth::AuthError::InvalidId(e)))?;
        }
        let hub = self.ctx.hub.hub_for_host(host);
        let key = identity_key(&hub, device_id, module_id);
        tracing::Span::current().record("device_id", device_id);
        let valid = |e: &Arc<DeviceEntry>| {
            e.expires().is_none_or(|x| x > now()) && !e.revoked.is_cancelled()
        };
        let known = || self.devices.lock().ok().and_then(|d| d.get(&key).cloned());
        if let Some(e) = known().filter(valid) {
            self.go_live(&e).await;
            return Ok(e);
        }
        // A device attaches its links at once: one of them checks the certificate, the
        // others wait for its answer instead of checking it again.
        let _checking = self.checking.lock().await;
        let entry = match known() {
            Some(e) if valid(&e) => e,
            _ if !self.chain.is_empty() => {
                let auth = self
                    .ctx
                    .hub
                    .authenticate(host, device_id, module_id, Credential::X509(&self.chain))
                    .await?;
                self.insert_device(auth.identity, None)
            }
            _ => return Err(Refusal::NoCredential),
        };
        self.go_live(&entry).await;
        Ok(entry)
    }

    fn insert_device(&self, identity: Identity, expires: Option<u64>) -> Arc<DeviceEntry> {
        let key = identity.key();
        let mut devices = match self.devices.lock() {
            Ok(d) => d,
            Err(e) => e.into_inner(),
        };
        if let Some(e) = devices.get(&key)
            && !e.revoked.is_cancelled()
        {
            if let Ok(mut x) = e.expires.lock() {
                *x = expires;
            }
            return Arc::clone(e);
        }
        let entry = Arc::new(DeviceEntry::new(identity, expires, &self.closing));
        devices.insert(key, Arc::clone(&entry));
        entry
    }

    /// A CBS `put-token` for a device or module (`audience` names it): authorize it until the
    /// token expires. A repeat renews.
    pub(crate) async fn put_device_token(
        &self,
        host: &str,
        device_id: &str,
        module_id: Option<&str>,
        token: &str,
    ) -> Result<(), Refusal> {
        let auth = self
            .ctx
            .hub
            .authenticate(host, device_id, module_id, Credential::Sas(token))
            .await?;
        let entry = self.insert_device(auth.identity, auth.expires);
        debug!(identity = entry.identity.id(), "CBS token accepted");
        Ok(())
    }

    /// A CBS `put-token` (or a SASL PLAIN login) with a hub policy's token.
    pub(crate) fn put_service_token(&self, token: &str) -> Result<(), Refusal> {
        let host =
            crate::rest::auth::check(&self.ctx, Some(token), &crate::rest::auth::ANY_HUB_POLICY)?;
        let parsed = muster_auth::sas::SasToken::parse(token)
            .map_err(|e| Refusal::Service(crate::rest::auth::Refusal::Token(e)))?;
        let grant = ServiceGrant {
            policy: parsed.key_name().unwrap_or_default().to_owned(),
            hub: self.ctx.hub.hub_for_host(&host),
            expires: parsed.expiry(),
        };
        debug!(policy = grant.policy, "service token accepted");
        if let Ok(mut s) = self.service.lock() {
            *s = Some(grant);
        }
        Ok(())
    }

    /// The service grant, when its policy is one of `allowed` and it has not expired. A SASL
    /// PLAIN login (`{policy}@sas.root.{hub}`, the Azure CLI) counts as a token.
    pub(crate) fn service_grant(&self, allowed: &[&str]) -> Result<ServiceGrant, Refusal> {
        let current = self.service.lock().ok().and_then(|s| s.clone());
        let current = match current {
            Some(g) => Some(g),
            None => match &self.sasl {
                Claim::Plain { user, password } if user.contains("@sas.root.") => {
                    self.put_service_token(password.expose())?;
                    self.service.lock().ok().and_then(|s| s.clone())
                }
                _ => None,
            },
        };
        match current {
            Some(g) if g.expires > now() && allowed.contains(&g.policy.as_str()) => Ok(g),
            _ => Err(Refusal::NoServiceGrant(allowed.join(", "))),
        }
    }

    /// Record an Event Hubs grant (a renewal replaces the entity's earlier one).
    pub(crate) fn grant_eventhub(&self, grant: super::eventhub::Grant) {
        if let Ok(mut grants) = self.eventhub.lock() {
            grants.retain(|g| g.hub != grant.hub);
            grants.push(grant);
        }
    }

    /// This connection holds an unexpired token for `hub`'s entity.
    pub(crate) fn may_read(&self, hub: &str) -> bool {
        self.eventhub
            .lock()
            .is_ok_and(|g| g.iter().any(|g| g.hub == hub && g.expires > now()))
    }

    /// Count a new link; `false` (and nothing counted) when the connection holds
    /// [`MAX_LINKS`] already.
    pub(crate) fn add_link(&self) -> bool {
        self.links
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LINKS).then_some(n + 1)
            })
            .is_ok()
    }

    /// A link ended.
    pub(crate) fn remove_link(&self) {
        let _ = self
            .links
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Queue a reply for the link that delivers mailbox `key`'s replies (attached now or
    /// later). Never waits: a full mailbox drops the reply, with a log line.
    pub(crate) fn reply(&self, key: &str, message: AmqpMessage) -> bool {
        let queued = self.mailbox(key).try_send(message).is_ok();
        if !queued {
            warn!(key, "reply dropped: the client does not take its replies");
        }
        queued
    }

    /// The sending half of a reply mailbox.
    pub(crate) fn mailbox(&self, key: &str) -> mpsc::Sender<AmqpMessage> {
        let mut boxes = match self.mailboxes.lock() {
            Ok(b) => b,
            Err(e) => e.into_inner(),
        };
        boxes
            .entry(key.to_owned())
            .or_insert_with(new_mailbox)
            .tx
            .clone()
    }

    /// The receiving half of a reply mailbox, for the link that delivers its replies; `None`
    /// when another link already delivers them.
    pub(crate) fn take_mailbox(&self, key: &str) -> Option<mpsc::Receiver<AmqpMessage>> {
        let mut boxes = match self.mailboxes.lock() {
            Ok(b) => b,
            Err(e) => e.into_inner(),
        };
        boxes
            .entry(key.to_owned())
            .or_insert_with(new_mailbox)
            .rx
            .take()
    }

    /// The reply link of `key` went away: later replies wait for a new one.
    pub(crate) fn drop_mailbox(&self, key: &str) {
        if let Ok(mut boxes) = self.mailboxes.lock() {
            boxes.remove(key);
        }
    }

    /// Start the identity's live session once: register with presence, forward its events.
    async fn go_live(self: &Arc<Self>, entry: &Arc<DeviceEntry>) {
        entry
            .live
            .get_or_init(|| async {
                let registration = self.ctx.hub.connect(&entry.identity).await;
                info!(identity = entry.identity.id(), "device connected over AMQP");
                let (shared, entry) = (Arc::clone(self), Arc::clone(entry));
                self.tracker
                    .spawn(async move { shared.live(&entry, registration).await });
            })
            .await;
    }

    async fn live(
        &self,
        entry: &DeviceEntry,
        mut registration: muster_hub::presence::Registration,
    ) {
        loop {
            let expiry = entry.expires().map(|x| {
                let secs = x.saturating_sub(now());
                tokio::time::Instant::now() + std::time::Duration::from_secs(secs)
            });
            let expired = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = entry.revoked.cancelled() => break,
                () = registration.kicked.cancelled() => {
                    info!(identity = entry.identity.id(), "device session ended by the hub (disabled, deleted or connected elsewhere)");
                    break;
                }
                () = expired => {
                    if entry.expires().is_some_and(|x| x <= now()) {
                        info!(identity = entry.identity.id(), "SAS token expired; closing the device's links");
                        break;
                    }
                }
                event = registration.rx.recv() => match event {
                    Some(event) => self.dispatch(entry, event),
                    None => break,
                },
            }
        }
        entry.revoked.cancel();
        if let Ok(mut d) = self.devices.lock()
            && d.get(&entry.identity.key())
                .is_some_and(|e| std::ptr::eq(e.as_ref(), entry))
        {
            d.remove(&entry.identity.key());
        }
        self.ctx
            .hub
            .disconnect(&entry.identity, registration.generation)
            .await;
        debug!(identity = entry.identity.id(), "device session over");
    }

    fn dispatch(&self, entry: &DeviceEntry, event: Outbound) {
        let key = entry.identity.key();
        match event {
            Outbound::Mail => entry.mail.notify_one(),
            Outbound::DesiredPatch { patch, .. } => {
                if entry.twin_subscribed.load(Ordering::Acquire) {
                    let m = message::reply(
                        None,
                        vec![],
                        vec![],
                        message::data(patch.to_string().into_bytes()),
                    );
                    self.reply(&format!("twin/{key}"), m);
                }
            }
            Outbound::MethodRequest { rid, name, payload } => {
                if entry.methods_open.load(Ordering::Acquire) == 0 {
                    return self.ctx.hub.refuse_method(&entry.identity, &rid);
                }
                let uuid = message::new_uuid();
                let m = message::reply(
                    Some(MessageId::Uuid(uuid.into())),
                    vec![("IoThub-methodname", name.into())],
                    vec![],
                    message::data(payload),
                );
                let kept = entry.method_calls.lock().is_ok_and(|mut calls| {
                    if calls.len() >= MAX_METHOD_CALLS {
                        let stale = std::time::Duration::from_secs(300);
                        calls.retain(|_, (_, at)| at.elapsed() < stale);
                    }
                    calls.len() < MAX_METHOD_CALLS
                        && calls
                            .insert(
                                message::uuid_text(&uuid),
                                (rid.clone(), std::time::Instant::now()),
                            )
                            .is_none()
                });
                if !kept || !self.reply(&format!("methods/{key}"), m) {
                    self.ctx.hub.refuse_method(&entry.identity, &rid);
                }
            }
        }
    }
}

fn new_mailbox() -> Mailbox {
    let (tx, rx) = mpsc::channel(MAILBOX);
    Mailbox { tx, rx: Some(rx) }
}

/// The presence key of a device or module.
pub(crate) fn identity_key(hub: &str, device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(m) => muster_hub::docs::key(hub, &format!("{device_id}/{m}")),
        None => muster_hub::docs::key(hub, device_id),
    }
}
