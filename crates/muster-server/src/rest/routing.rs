//! Message routing configuration (docs/routing.md), `iothubowner` only:
//!
//! - `GET /routing`: routes, endpoints, enrichments, fallback route;
//! - `GET|PUT|DELETE /routing/routes/{name}`, `GET|PUT|DELETE /routing/endpoints/{name}`,
//!   `PUT|DELETE /routing/enrichments/{key}`, `PUT /routing/fallbackRoute`;
//! - `POST /routing/test`: does a route (or a condition) match a sample message?

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use muster_hub::registry::HubError;
use muster_hub::routing::condition::Condition;
use muster_hub::routing::{Endpoint, Enrichment, FallbackRoute, Route, Source};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::HubName;
use super::hub_service::HubApiError;
use crate::Context;

type Ctx = State<Arc<Context>>;
type ApiResult = Result<Response, HubApiError>;

pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new()
        .route("/routing", get(config))
        .route("/routing/routes", get(list_routes))
        .route(
            "/routing/routes/{name}",
            get(get_route).put(put_route).delete(delete_route),
        )
        .route("/routing/endpoints", get(list_endpoints))
        .route(
            "/routing/endpoints/{name}",
            get(get_endpoint).put(put_endpoint).delete(delete_endpoint),
        )
        .route(
            "/routing/enrichments/{key}",
            put(put_enrichment).delete(delete_enrichment),
        )
        .route("/routing/fallbackRoute", put(put_fallback))
        .route("/routing/test", post(test))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, HubApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        HubApiError(HubError::InvalidInput(format!(
            "the {what} is not valid: {e}"
        )))
    })
}

/// A body that names what it configures in `field` (`name`, or `key` for enrichments): the
/// path's name when the body gives none; a different one is refused.
fn named_body<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    kind: &str,
    field: &str,
    name: &str,
) -> Result<T, HubApiError> {
    let mut value: Value = parse(bytes, kind)?;
    match value.get(field).and_then(Value::as_str) {
        None | Some("") => {
            if let Some(o) = value.as_object_mut() {
                o.insert(field.to_owned(), json!(name));
            }
        }
        Some(given) if given.eq_ignore_ascii_case(name) => {}
        Some(given) => {
            return Err(HubApiError(HubError::InvalidInput(format!(
                "the {kind} in the body is named '{given}', the path says '{name}'"
            ))));
        }
    }
    serde_json::from_value(value).map_err(|e| {
        HubApiError(HubError::InvalidInput(format!(
            "the {kind} is not valid: {e}"
        )))
    })
}

async fn config(State(ctx): Ctx, Extension(hub): Extension<HubName>) -> ApiResult {
    let table = ctx.hub.routing(&hub.0).await?;
    Ok(Json(&table.config).into_response())
}

async fn list_routes(State(ctx): Ctx, Extension(hub): Extension<HubName>) -> ApiResult {
    let table = ctx.hub.routing(&hub.0).await?;
    Ok(Json(&table.config.routes).into_response())
}

async fn get_route(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
) -> ApiResult {
    let table = ctx.hub.routing(&hub.0).await?;
    match table
        .config
        .routes
        .iter()
        .find(|r| r.name.eq_ignore_ascii_case(&name))
    {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(HubError::NotFound(format!("route '{name}' not found")).into()),
    }
}

async fn put_route(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let route: Route = named_body(&body, "route", "name", &name)?;
    let saved = route.clone();
    ctx.hub
        .update_routing(&hub.0, move |c| {
            match c
                .routes
                .iter_mut()
                .find(|r| r.name.eq_ignore_ascii_case(&route.name))
            {
                Some(r) => *r = route,
                None => c.routes.push(route),
            }
            Ok(())
        })
        .await?;
    Ok(Json(saved).into_response())
}

async fn delete_route(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
) -> ApiResult {
    ctx.hub
        .update_routing(&hub.0, |c| {
            let before = c.routes.len();
            c.routes.retain(|r| !r.name.eq_ignore_ascii_case(&name));
            if c.routes.len() == before {
                return Err(HubError::NotFound(format!("route '{name}' not found")));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_endpoints(State(ctx): Ctx, Extension(hub): Extension<HubName>) -> ApiResult {
    let table = ctx.hub.routing(&hub.0).await?;
    Ok(Json(&table.config.endpoints).into_response())
}

async fn get_endpoint(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
) -> ApiResult {
    let table = ctx.hub.routing(&hub.0).await?;
    match table
        .config
        .endpoints
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(&name))
    {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(HubError::NotFound(format!("endpoint '{name}' not found")).into()),
    }
}

async fn put_endpoint(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let endpoint: Endpoint = named_body(&body, "endpoint", "name", &name)?;
    let saved = endpoint.clone();
    ctx.hub
        .update_routing(&hub.0, move |c| {
            match c
                .endpoints
                .iter_mut()
                .find(|e| e.name.eq_ignore_ascii_case(&endpoint.name))
            {
                Some(e) => *e = endpoint,
                None => c.endpoints.push(endpoint),
            }
            Ok(())
        })
        .await?;
    Ok(Json(saved).into_response())
}

async fn delete_endpoint(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(name): Path<String>,
) -> ApiResult {
    ctx.hub
        .update_routing(&hub.0, |c| {
            if let Some(r) = c.routes.iter().find(|r| {
                r.endpoint_names
                    .iter()
                    .any(|e| e.eq_ignore_ascii_case(&name))
            }) {
                return Err(HubError::InvalidInput(format!(
                    "route '{}' sends to endpoint '{name}': delete or change it first",
                    r.name
                )));
            }
            let before = c.endpoints.len();
            c.endpoints.retain(|e| !e.name.eq_ignore_ascii_case(&name));
            if c.endpoints.len() == before {
                return Err(HubError::NotFound(format!("endpoint '{name}' not found")));
            }
            c.enrichments.iter_mut().for_each(|e| {
                e.endpoint_names.retain(|n| !n.eq_ignore_ascii_case(&name));
            });
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_enrichment(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let enrichment: Enrichment = named_body(&body, "enrichment", "key", &key)?;
    let saved = enrichment.clone();
    ctx.hub
        .update_routing(&hub.0, move |c| {
            match c.enrichments.iter_mut().find(|e| e.key == enrichment.key) {
                Some(e) => *e = enrichment,
                None => c.enrichments.push(enrichment),
            }
            Ok(())
        })
        .await?;
    Ok(Json(saved).into_response())
}

async fn delete_enrichment(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    Path(key): Path<String>,
) -> ApiResult {
    ctx.hub
        .update_routing(&hub.0, |c| {
            let before = c.enrichments.len();
            c.enrichments.retain(|e| e.key != key);
            if c.enrichments.len() == before {
                return Err(HubError::NotFound(format!("enrichment '{key}' not found")));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_fallback(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    body: axum::body::Bytes,
) -> ApiResult {
    let fallback: FallbackRoute = parse(&body, "fallback route")?;
    let saved = fallback.clone();
    ctx.hub
        .update_routing(&hub.0, move |c| {
            c.fallback_route = fallback;
            Ok(())
        })
        .await?;
    Ok(Json(saved).into_response())
}

/// `POST /routing/test`: `{"route": name}` or `{"condition": text}`, with a sample `message`
/// (`body`, `appProperties`, `systemProperties`) and optionally a `twin`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestRequest {
    route: Option<String>,
    condition: Option<String>,
    #[serde(default)]
    message: TestMessage,
    twin: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestMessage {
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    app_properties: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    system_properties: std::collections::BTreeMap<String, String>,
}

async fn test(
    State(ctx): Ctx,
    Extension(hub): Extension<HubName>,
    body: axum::body::Bytes,
) -> ApiResult {
    let request: TestRequest = parse(&body, "test request")?;
    let (text, source) = match (&request.route, &request.condition) {
        (Some(name), None) => {
            let table = ctx.hub.routing(&hub.0).await?;
            let route = table
                .config
                .routes
                .iter()
                .find(|r| r.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| HubError::NotFound(format!("route '{name}' not found")))?;
            (route.condition.clone(), route.source)
        }
        (None, Some(c)) => (c.clone(), Source::DeviceMessages),
        _ => {
            return Err(HubError::InvalidInput(
                "give either \"route\" (a route's name) or \"condition\"".into(),
            )
            .into());
        }
    };
    let condition = Condition::parse(&text).map_err(|e| HubError::InvalidInput(e.to_string()))?;
    let body_bytes = match &request.message.body {
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(v) => v.to_string().into_bytes(),
        None => Vec::new(),
    };
    let mut system: Vec<(String, String)> = request
        .message
        .system_properties
        .iter()
        .map(|(k, v)| (system_name(k), v.clone()))
        .collect();
    // A JSON body given as JSON is declared as such unless the sample says otherwise.
    if matches!(
        request.message.body,
        Some(Value::Object(_) | Value::Array(_))
    ) && !system.iter().any(|(k, _)| k == "content-type")
    {
        system.push(("content-type".into(), "application/json".into()));
        system.push(("content-encoding".into(), "utf-8".into()));
    }
    let event = muster_store::events::NewEvent {
        hub: hub.0.clone(),
        device_id: String::new(),
        module_id: None,
        properties: request.message.app_properties.into_iter().collect(),
        system_properties: system,
        body: body_bytes,
        enqueued: String::new(),
        enqueued_ms: 0,
        partition: 0,
        built_in: false,
        endpoints: Vec::new(),
    };
    let view = muster_hub::routing::EventView::new(
        &event,
        request.twin.as_ref(),
        source != Source::DeviceMessages,
    );
    let matched = condition.matches(&view);
    Ok(
        Json(json!({"result": if matched { "true" } else { "false" }, "condition": text}))
            .into_response(),
    )
}

/// A system property as a sample names it (`contentType`, `$contentType` or `content-type`)
/// in the event's own spelling.
fn system_name(name: &str) -> String {
    let bare = name.trim_start_matches('$');
    match bare.to_ascii_lowercase().as_str() {
        "contenttype" => "content-type".into(),
        "contentencoding" => "content-encoding".into(),
        "messageid" => "message-id".into(),
        "correlationid" => "correlation-id".into(),
        "userid" => "user-id".into(),
        "connectiondeviceid" => "iothub-connection-device-id".into(),
        "connectionmoduleid" => "iothub-connection-module-id".into(),
        other => other.to_owned(),
    }
}
