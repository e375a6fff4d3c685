//! IoT Hub service API (docs/wire-protocol.md §5.1): device registry and twins, with the status codes the
//! Python service SDK insists on (PUT device 200, DELETE 204, twin PATCH 200 + full twin) and
//! IoT Hub's legacy error body `{"Message":"ErrorCode:<Code>;<text>","ExceptionMessage":…}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use muster_hub::methods::MethodCall;
use muster_hub::registry::HubError;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::auth::HubName;
use super::if_match;
use crate::Context;
use crate::device_api::tracking_id;

/// A hub error as an HTTP response.
#[derive(Debug)]
pub(crate) struct HubApiError(pub(crate) HubError);

impl From<HubError> for HubApiError {
    fn from(e: HubError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HubApiError {
    fn into_response(self) -> Response {
        let tracking = tracking_id();
        if self.0.status() >= 500 {
            warn!(tracking_id = tracking, error = %self.0, "hub request failed");
        } else {
            debug!(tracking_id = tracking, error = %self.0, "hub request refused");
        }
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            super::fallback::hub_error_body(self.0.code(), &self.0.public_message(), &tracking);
        let mut r = (status, Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(self.0.code()) {
            r.headers_mut().insert("iothub-errorcode", v);
        }
        r
    }
}

type Ctx = State<Arc<Context>>;
type ApiResult = Result<Response, HubApiError>;

pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new()
        .route("/devices", get(list_devices))
        .route("/devices/", get(list_devices))
        .route("/devices/query", axum::routing::post(query))
        .route(
            "/devices/keys/regenerate",
            axum::routing::post(regenerate_keys),
        )
        .route(
            "/devices/{id}",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route(
            "/twins/{id}",
            get(get_twin).patch(patch_twin).put(replace_twin),
        )
        .route("/statistics/devices", get(statistics))
        .route(
            "/eventHubEndpoints/events/consumerGroups",
            get(list_consumer_groups),
        )
        .route(
            "/eventHubEndpoints/events/consumerGroups/{name}",
            get(get_consumer_group)
                .put(put_consumer_group)
                .delete(delete_consumer_group),
        )
        .route("/twins/{id}/methods", axum::routing::post(invoke_method))
        .route("/devices/{id}/modules", get(list_modules))
        .route(
            "/devices/{id}/modules/{mid}",
            get(get_module).put(put_module).delete(delete_module),
        )
        .route(
            "/twins/{id}/modules/{mid}",
            get(get_module_twin)
                .patch(patch_module_twin)
                .put(replace_module_twin),
        )
        .route(
            "/twins/{id}/modules/{mid}/methods",
            axum::routing::post(invoke_module_method),
        )
        // The device API shares these paths; super::hub_device authenticates its calls.
        .route(
            "/devices/{id}/messages/events",
            axum::routing::post(super::hub_device::send_events),
        )
        .route(
            "/devices/{id}/messages/deviceBound",
            get(super::hub_device::receive),
        )
        .route(
            "/devices/{id}/messages/devicebound/{lock}",
            axum::routing::delete(super::hub_device::complete),
        )
        .route(
            "/devices/{id}/messages/deviceBound/{lock}",
            axum::routing::delete(super::hub_device::complete),
        )
        .route(
            "/devices/{id}/messages/devicebound/{lock}/abandon",
            axum::routing::post(super::hub_device::abandon),
        )
        .route(
            "/devices/{id}/messages/deviceBound/{lock}/abandon",
            axum::routing::post(super::hub_device::abandon),
        )
        .route(
            "/devices/{id}/messages/devicebound",
            get(super::hub_device::receive).post(send_c2d),
        )
        .route("/devices/{id}/commands", axum::routing::delete(purge_c2d))
}

fn body_json(bytes: &[u8]) -> Result<Value, HubApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        HubApiError(HubError::InvalidInput(format!(
            "the request body is not valid JSON: {e}"
        )))
    })
}

/// An identity or twin with its etag also in the `ETag` header.
fn etagged<T: Etagged + serde::Serialize>(v: T) -> Response {
    let etag = format!("\"{}\"", v.etag());
    let mut r = Json(v).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert("etag", v);
    }
    r
}

/// What carries an etag.
trait Etagged {
    fn etag(&self) -> &str;
}

impl Etagged for muster_hub::Device {
    fn etag(&self) -> &str {
        &self.etag
    }
}

impl Etagged for muster_hub::Module {
    fn etag(&self) -> &str {
        &self.etag
    }
}

impl Etagged for muster_hub::Twin {
    fn etag(&self) -> &str {
        &self.etag
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    top: Option<usize>,
}

async fn list_devices(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    Ok(Json(
        ctx.hub
            .registry()
            .list_devices(&hub.0, q.top.unwrap_or(1000))
            .await?,
    )
    .into_response())
}

async fn list_consumer_groups(State(ctx): Ctx, Extension(hub): Extension<HubName>) -> ApiResult {
    let groups = ctx.hub.registry().consumer_groups(&hub.0).await?;
    Ok(Json(json!({"value": groups})).into_response())
}

async fn get_consumer_group(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
) -> ApiResult {
    match ctx.hub.registry().consumer_group(&hub.0, &name).await? {
        Some(g) => Ok(Json(g).into_response()),
        None => Err(HubError::NotFound(format!("consumer group '{name}' not found")).into()),
    }
}

async fn put_consumer_group(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
) -> ApiResult {
    let group = ctx
        .hub
        .registry()
        .create_consumer_group(&hub.0, &name)
        .await?;
    Ok((StatusCode::CREATED, Json(group)).into_response())
}

async fn delete_consumer_group(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
) -> ApiResult {
    ctx.hub
        .registry()
        .delete_consumer_group(&hub.0, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_device(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
) -> ApiResult {
    Ok(etagged(ctx.hub.registry().get_device(&hub.0, &id).await?))
}

async fn put_device(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    let device = ctx
        .hub
        .put_device(&hub.0, &id, &body, if_match(&headers).as_deref())
        .await?;
    Ok(etagged(device))
}

async fn delete_device(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ctx.hub
        .delete_device(&hub.0, &id, if_match(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_twin(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
) -> ApiResult {
    Ok(etagged(ctx.hub.registry().get_twin(&hub.0, &id).await?))
}

async fn update(
    ctx: &Context,
    hub: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
    replace: bool,
) -> ApiResult {
    let body = body_json(body)?;
    let twin = ctx
        .hub
        .update_twin(hub, id, &body, if_match(headers).as_deref(), replace)
        .await?;
    Ok(etagged(twin))
}

async fn patch_twin(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    update(&ctx, &hub.0, &id, &headers, &body, false).await
}

async fn replace_twin(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    update(&ctx, &hub.0, &id, &headers, &body, true).await
}

async fn list_modules(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
) -> ApiResult {
    Ok(Json(ctx.hub.registry().list_modules(&hub.0, &id).await?).into_response())
}

async fn get_module(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path((id, mid)): Path<(String, String)>,
) -> ApiResult {
    Ok(etagged(
        ctx.hub.registry().get_module(&hub.0, &id, &mid).await?,
    ))
}

async fn put_module(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    Ok(etagged(
        ctx.hub
            .registry()
            .put_module(&hub.0, &id, &mid, &body, if_match(&headers).as_deref())
            .await?,
    ))
}

async fn delete_module(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    ctx.hub
        .delete_module(&hub.0, &id, &mid, if_match(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_module_twin(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path((id, mid)): Path<(String, String)>,
) -> ApiResult {
    let identity = muster_hub::modules::module_identity(&id, &mid);
    Ok(etagged(
        ctx.hub.registry().get_twin(&hub.0, &identity).await?,
    ))
}

async fn patch_module_twin(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let identity = muster_hub::modules::module_identity(&id, &mid);
    update(&ctx, &hub.0, &identity, &headers, &body, false).await
}

async fn replace_module_twin(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let identity = muster_hub::modules::module_identity(&id, &mid);
    update(&ctx, &hub.0, &identity, &headers, &body, true).await
}

async fn statistics(State(ctx): Ctx, Extension(hub): Extension<HubName>) -> ApiResult {
    Ok(Json(ctx.hub.registry().statistics(&hub.0).await?).into_response())
}

async fn invoke_method(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    invoke(&ctx, &hub.0, &id, &body).await
}

async fn invoke_module_method(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path((id, mid)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let identity = muster_hub::modules::module_identity(&id, &mid);
    invoke(&ctx, &hub.0, &identity, &body).await
}

/// Call a direct method on a connected device or module (`identity`).
async fn invoke(ctx: &Context, hub: &str, identity: &str, body: &[u8]) -> ApiResult {
    let call = MethodCall::from_request(&body_json(body)?)?;
    let result = ctx.hub.invoke_method(hub, identity, call).await?;
    Ok(Json(json!({"status": result.status, "payload": result.payload})).into_response())
}

/// `POST /devices/{id}/messages/devicebound`: body = message bytes; headers `iothub-messageid`,
/// `iothub-correlationid`, `iothub-ack`, `iothub-expiry` (RFC 3339 or seconds from now),
/// `iothub-app-{name}` for application properties. Default time to live: one hour.
async fn send_c2d(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let now = time::OffsetDateTime::now_utc();
    let expiry_unix = match header("iothub-expiry") {
        None => now.unix_timestamp() + 3600,
        Some(e) => match e.parse::<i64>() {
            Ok(secs) => now.unix_timestamp() + secs,
            Err(_) => {
                time::OffsetDateTime::parse(&e, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        HubApiError(HubError::InvalidInput(
                            "iothub-expiry must be RFC 3339 or a number of seconds".into(),
                        ))
                    })?
                    .unix_timestamp()
            }
        },
    };
    let ack = header("iothub-ack");
    if let Some(a) = &ack
        && !matches!(a.as_str(), "none" | "positive" | "negative" | "full")
    {
        return Err(HubApiError(HubError::InvalidInput(
            "iothub-ack must be none, positive, negative or full".into(),
        )));
    }
    let properties = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().strip_prefix("iothub-app-")?.to_owned(),
                v.to_str().ok()?.to_owned(),
            ))
        })
        .collect();
    let message = muster_hub::c2d::C2dMessage {
        message_id: header("iothub-messageid").unwrap_or_else(tracking_id),
        correlation_id: header("iothub-correlationid"),
        ack,
        expiry_unix,
        properties,
        body: body.to_vec(),
    };
    ctx.hub.send_c2d(&hub.0, &id, &message).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /devices/{id}/commands`: drop every queued cloud-to-device message, as
/// `az iot device c2d-message purge` asks; IoT Hub's answer shape.
async fn purge_c2d(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(id): Path<String>,
) -> ApiResult {
    let purged = ctx.hub.registry().purge_c2d(&hub.0, &id).await?;
    Ok(Json(json!({"totalMessagesPurged": purged, "deviceId": id})).into_response())
}

/// `POST /devices/keys/regenerate` with `{"policyKey": "primaryKey"|"secondaryKey"|"both",
/// "devices": [{"id", "moduleId"?}]}`: 200 when every identity was renewed, 207 when some were,
/// 400 when none was; the body is IoT Hub's `BulkRegenerateKeyResult`.
async fn regenerate_keys(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    let choice = muster_hub::keys::KeyChoice::parse(
        body.get("policyKey")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )?;
    let identities: Vec<(String, Option<String>)> = body
        .get("devices")
        .and_then(Value::as_array)
        .ok_or_else(|| HubApiError(HubError::InvalidInput("devices must be a list".into())))?
        .iter()
        .map(|d| {
            let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
            (text("id").unwrap_or_default(), text("moduleId"))
        })
        .collect();
    let done = ctx
        .hub
        .registry()
        .regenerate_keys(&hub.0, choice, &identities)
        .await?;
    let status = match (done.rotated, done.failed) {
        (_, 0) => StatusCode::OK,
        (0, _) => StatusCode::BAD_REQUEST,
        _ => StatusCode::MULTI_STATUS,
    };
    Ok((status, Json(done.result)).into_response())
}

/// `POST /devices/query` with `{"query": "SELECT … FROM devices …"}`; paging through
/// `x-ms-max-item-count` and `x-ms-continuation` (omitted on the last page).
async fn query(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    let text = body.get("query").and_then(Value::as_str).ok_or_else(|| {
        HubApiError(HubError::InvalidInput(
            "the body needs a \"query\" string".into(),
        ))
    })?;
    let (max, continuation) = super::paging(&headers);
    let (items, next) = ctx
        .hub
        .registry()
        .query(&hub.0, text, max.unwrap_or(100), continuation.as_deref())
        .await?;
    let mut r = Json(items).into_response();
    r.headers_mut()
        .insert("x-ms-item-type", HeaderValue::from_static("twin"));
    if let Some(c) = next.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert("x-ms-continuation", c);
    }
    Ok(r)
}
