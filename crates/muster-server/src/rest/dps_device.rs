//! DPS device API over HTTPS (docs/wire-protocol.md §2): `PUT /{idScope}/registrations/{id}/register` and
//! `GET /{idScope}/registrations/{id}/operations/{operationId}`. X.509 devices authenticate with
//! their TLS client certificate, SAS devices with the `Authorization` header.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, body::Bytes};
use muster_dps::DpsError;
use muster_dps::registration::Credential;
use tracing::warn;

use super::PeerChain;
use crate::Context;
use crate::device_api::{self, Reply};

pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new()
        .route("/{scope}/registrations/{id}/register", put(register))
        .route("/{scope}/registrations/{id}/operations/{op}", get(poll))
}

fn reply(r: &Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [("content-type", "application/json; charset=utf-8")],
        crate::json::to_ascii_json(&r.body),
    )
        .into_response();
    if let Some(secs) = r
        .retry_after
        .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
    {
        resp.headers_mut().insert("retry-after", secs);
    }
    resp
}

fn scope_ok(ctx: &Context, scope: &str) -> bool {
    if scope.eq_ignore_ascii_case(&ctx.id_scope) {
        true
    } else {
        warn!(scope, "DPS HTTPS request for an unknown ID scope");
        false
    }
}

async fn register(
    State(ctx): State<Arc<Context>>,
    Path((scope, id)): Path<(String, String)>,
    Extension(chain): Extension<PeerChain>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !scope_ok(&ctx, &scope) {
        return reply(&device_api::error_reply(&DpsError::UnknownScope(scope)));
    }
    let token = headers.get("authorization").and_then(|v| v.to_str().ok());
    let credential = match (token, chain.0.is_empty()) {
        (Some(t), _) => Credential::Sas(t),
        (None, false) => Credential::X509(&chain.0),
        (None, true) => Credential::None,
    };
    reply(
        &device_api::register(
            &ctx.dps,
            &ctx.operations,
            ctx.rate_limit.as_ref(),
            (ctx.retry_after, ctx.immediate_result),
            &id,
            credential,
            &body,
        )
        .await,
    )
}

async fn poll(
    State(ctx): State<Arc<Context>>,
    Path((scope, id, op)): Path<(String, String, String)>,
) -> Response {
    if !scope_ok(&ctx, &scope) {
        return reply(&device_api::error_reply(&DpsError::UnknownScope(scope)));
    }
    reply(&device_api::poll(&ctx.operations, &id, &op))
}
