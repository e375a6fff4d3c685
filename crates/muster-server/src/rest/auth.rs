//! SAS authentication of management calls (spec §5.2): any field order, HMAC over the raw
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

/// Check a management token against one policy; `Ok(())` or the reason.
pub(crate) fn check(ctx: &Context, header: Option<&str>, policy_name: &str) -> Result<(), String> {
    let header = header.ok_or_else(|| "no Authorization header".to_owned())?;
    let token = SasToken::parse(header).map_err(|e| e.to_string())?;
    let name = token
        .key_name()
        .ok_or_else(|| "the token names no policy (skn)".to_owned())?;
    if name != policy_name {
        return Err(format!(
            "policy '{name}' may not use this API (needs '{policy_name}')"
        ));
    }
    let policy = ctx
        .state
        .policy(policy_name)
        .ok_or_else(|| format!("policy '{policy_name}' is not configured"))?;
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
    if token.expiry() < now {
        return Err(format!("token expired at {}", token.expiry()));
    }
    let resource = token.resource().to_ascii_lowercase();
    let host = resource.split('/').next().unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !ctx.resource_hosts.iter().any(|h| h == host) {
        return Err(format!(
            "token is for '{}', not this server",
            token.resource()
        ));
    }
    let primary = Secret::new(policy.primary_key.clone());
    let secondary = Secret::new(policy.secondary_key.clone());
    token
        .verify_signature(&[&primary, &secondary])
        .map(|_| ())
        .map_err(|e| e.to_string())
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
    match check(&ctx, header, crate::bootstrap::DPS_POLICY) {
        Ok(()) => next.run(req).await,
        Err(reason) => refuse(reason),
    }
}
