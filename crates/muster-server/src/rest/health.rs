//! `GET /healthz` (the process answers) and `GET /readyz` (it can serve: the store answers a
//! read and, on a cluster, the bus is connected), unauthenticated, for load balancers and orchestrators.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_hub::registry::HubError;
use serde_json::json;
use tracing::warn;

use crate::Context;

pub(crate) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub(crate) async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    if let Some(cluster) = ctx.hub.cluster()
        && !cluster.connected()
    {
        warn!("not ready: the cluster bus is not connected");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "the cluster bus is not connected"})),
        )
            .into_response();
    }
    let hub = crate::portal::default_hub(&ctx);
    // A read of an id no device has: "not found" proves the store answers.
    match ctx
        .hub
        .registry()
        .get_device(&hub, "muster-readiness-probe")
        .await
    {
        Ok(_) | Err(HubError::DeviceNotFound(_)) => {
            Json(json!({"status": "ready"})).into_response()
        }
        Err(e) => {
            warn!(error = %e, "not ready: the store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "the store does not answer"})),
            )
                .into_response()
        }
    }
}
