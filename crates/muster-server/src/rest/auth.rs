//! SAS authentication of management calls (docs/wire-protocol.md §4): any field order, HMAC over the raw
//! `sr`, resource = one of this server's host names (with or without `:port`), `skn` = a policy
//! that has the right.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use muster_auth::Secret;
use muster_auth::sas::SasToken;
use muster_dps::DpsError;
use tracing::warn;

use super::ApiError;
use crate::Context;

fn refuse(reason: String) -> Response {
    warn!(reason, "management request refused");
    ApiError(DpsError::Unauthorized { reason }).into_response()
}

/// Why a management call was refused (logged; the caller sees only "unauthorized").
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// No `Authorization` header.
    #[error("no Authorization header")]
    NoHeader,
    /// The token names no policy.
    #[error("the token names no policy (skn)")]
    NoPolicy,
    /// The policy lacks the right for this call.
    #[error("policy '{name}' may not make this call (allowed: {allowed})")]
    NotAllowed {
        /// The policy.
        name: String,
        /// The policies that may.
        allowed: String,
    },
    /// No such policy here.
    #[error("policy '{0}' is not configured")]
    UnknownPolicy(String),
    /// The token is malformed, expired, for another server, or not signed with the policy's
    /// key.
    #[error("the token was refused")]
    Token(#[from] muster_auth::sas::SasError),
}

/// Check a management token against the policies allowed for the call; returns the host the
/// token names (which selects the hub).
pub(crate) fn check(
    ctx: &Context,
    header: Option<&str>,
    allowed: &[&str],
) -> Result<String, Refusal> {
    let token = SasToken::parse(header.ok_or(Refusal::NoHeader)?)?;
    let name = token.key_name().ok_or(Refusal::NoPolicy)?;
    if !allowed.contains(&name) {
        return Err(Refusal::NotAllowed {
            name: name.to_owned(),
            allowed: allowed.join(", "),
        });
    }
    let policy = ctx
        .state
        .policy(name)
        .ok_or_else(|| Refusal::UnknownPolicy(name.to_owned()))?;
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
    let host = token.check_hosted(ctx.hub.resource_hosts(), None, now)?;
    let primary = Secret::new(policy.primary_key.clone());
    let secondary = Secret::new(policy.secondary_key.clone());
    token.verify_signature(&[&primary, &secondary])?;
    Ok(host)
}

/// Middleware: the DPS service API needs the `provisioningserviceowner` policy.
pub(crate) async fn require_dps_policy(
    State(ctx): State<Arc<Context>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    match check(&ctx, header, &[crate::bootstrap::DPS_POLICY]) {
        Ok(_) => next.run(req).await,
        Err(reason) => refuse(muster_types::report(&reason)),
    }
}

/// The logical hub a service call addresses (from its token's host name).
#[derive(Debug, Clone)]
pub(crate) struct HubName(pub(crate) String);

/// Every hub policy (any may read).
pub(crate) const ANY_HUB_POLICY: [&str; 4] = HUB_READ;

const HUB_READ: [&str; 4] = [
    "iothubowner",
    "service",
    "registryRead",
    "registryReadWrite",
];
const HUB_OWNER: [&str; 1] = ["iothubowner"];
const REGISTRY_WRITE: [&str; 2] = ["iothubowner", "registryReadWrite"];
const TWIN_WRITE: [&str; 2] = ["iothubowner", "service"];

/// Middleware for the hub service API, with IoT Hub's permissions: reads and queries need any
/// hub policy (RegistryRead), identity writes `registryReadWrite` (RegistryWrite), twin writes,
/// direct methods and cloud-to-device sends `service` (ServiceConnect); `iothubowner` may do
/// everything.
pub(crate) async fn require_hub_policy(
    State(ctx): State<Arc<Context>>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    // The HTTPS device API authenticates devices itself (super::hub_device).
    if super::hub_device::is_device_call(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let path = req.uri().path();
    let allowed: &[&str] =
        if req.method() == axum::http::Method::GET || path.eq_ignore_ascii_case("/devices/query") {
            &HUB_READ
        } else if path.starts_with("/eventHubEndpoints") || path.starts_with("/routing") {
            // The hub's own configuration: owner only (Azure manages it in the control plane).
            &HUB_OWNER
        } else if path.starts_with("/twins")
            || path.to_ascii_lowercase().ends_with("/messages/devicebound")
            || path.to_ascii_lowercase().ends_with("/commands")
        {
            &TWIN_WRITE
        } else {
            &REGISTRY_WRITE
        };
    match check(&ctx, header, allowed) {
        Ok(host) => {
            let hub = ctx.hub.hub_for_host(&host);
            req.extensions_mut().insert(HubName(hub));
            next.run(req).await
        }
        Err(reason) => {
            warn!(
                reason = muster_types::report(&reason),
                "hub service request refused"
            );
            super::hub_service::HubApiError(muster_hub::registry::HubError::Unauthorized)
                .into_response()
        }
    }
}
