//! DPS service API (docs/wire-protocol.md §5.2): CA certificates, enrollment groups, individual
//! enrollments, registration records.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use muster_dps::{DpsError, Page};
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApiError, if_match, paging};
use crate::Context;

type Ctx = State<Arc<Context>>;
type ApiResult = Result<Response, ApiError>;

pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new()
        .route("/certificates", get(list_certificates))
        .route(
            "/certificates/{name}",
            put(put_certificate)
                .get(get_certificate)
                .delete(delete_certificate),
        )
        .route(
            "/certificates/{name}/generateverificationcode",
            post(generate_code),
        )
        .route("/certificates/{name}/verify", post(verify))
        .route("/enrollmentgroups/query", post(query_groups))
        .route(
            "/enrollmentgroups/{id}",
            put(put_group).get(get_group).delete(delete_group),
        )
        .route(
            "/enrollmentgroups/{id}/attestationmechanism",
            post(group_attestation),
        )
        .route("/enrollments", post(bulk))
        .route("/enrollments/query", post(query_enrollments))
        .route(
            "/enrollments/{id}",
            put(put_enrollment)
                .get(get_enrollment)
                .delete(delete_enrollment),
        )
        .route(
            "/enrollments/{id}/attestationmechanism",
            post(enrollment_attestation),
        )
        .route(
            "/registrations/{id}",
            get(get_registration).delete(delete_registration),
        )
        .route("/registrations/{id}/query", post(query_registrations))
}

fn body_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError(DpsError::InvalidInput(format!(
            "the request body is not valid JSON: {e}"
        )))
    })
}

fn with_etag(value: impl Serialize, etag: Option<&str>) -> Response {
    let mut r = Json(value).into_response();
    if let Some(etag) = etag
        && let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\""))
    {
        r.headers_mut().insert("etag", v);
    }
    r
}

fn page<T: Serialize>(p: Page<T>, item_type: &'static str) -> Response {
    let mut r = Json(p.items).into_response();
    r.headers_mut()
        .insert("x-ms-item-type", HeaderValue::from_static(item_type));
    if let Some(c) = p.continuation.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert("x-ms-continuation", c);
    }
    r
}

async fn list_certificates(State(ctx): Ctx) -> ApiResult {
    let certs = ctx.dps.list_certificates().await?;
    Ok(
        Json(json!({"value": certs.iter().map(|c| c.to_response(false)).collect::<Vec<_>>()}))
            .into_response(),
    )
}

async fn put_certificate(
    State(ctx): Ctx,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    let c = ctx
        .dps
        .put_certificate(&name, &body, if_match(&headers).as_deref())
        .await?;
    Ok(with_etag(c.to_response(false), Some(&c.etag)))
}

async fn get_certificate(State(ctx): Ctx, Path(name): Path<String>) -> ApiResult {
    let c = ctx.dps.get_certificate(&name).await?;
    Ok(with_etag(c.to_response(true), Some(&c.etag)))
}

async fn delete_certificate(
    State(ctx): Ctx,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ctx.dps
        .delete_certificate(&name, if_match(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn generate_code(State(ctx): Ctx, Path(name): Path<String>, headers: HeaderMap) -> ApiResult {
    let c = ctx
        .dps
        .generate_verification_code(&name, if_match(&headers).as_deref())
        .await?;
    Ok(with_etag(c.to_response(true), Some(&c.etag)))
}

async fn verify(
    State(ctx): Ctx,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    let c = ctx
        .dps
        .verify_certificate(&name, if_match(&headers).as_deref(), &body)
        .await?;
    Ok(with_etag(c.to_response(false), Some(&c.etag)))
}

async fn put_group(
    State(ctx): Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    let g = ctx
        .dps
        .put_enrollment_group(&id, &body, if_match(&headers).as_deref())
        .await?;
    let etag = g.etag.clone();
    Ok(with_etag(g, etag.as_deref()))
}

async fn get_group(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let g = ctx.dps.get_enrollment_group(&id).await?;
    let etag = g.etag.clone();
    Ok(with_etag(g, etag.as_deref()))
}

async fn delete_group(State(ctx): Ctx, Path(id): Path<String>, headers: HeaderMap) -> ApiResult {
    ctx.dps
        .delete_enrollment_group(&id, if_match(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn query_groups(State(ctx): Ctx, headers: HeaderMap) -> ApiResult {
    let (max, cont) = paging(&headers);
    Ok(page(
        ctx.dps
            .query_enrollment_groups(max, cont.as_deref())
            .await?,
        "enrollmentGroup",
    ))
}

async fn group_attestation(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    Ok(Json(ctx.dps.enrollment_group_attestation(&id).await?).into_response())
}

async fn put_enrollment(
    State(ctx): Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let body = body_json(&body)?;
    let e = ctx
        .dps
        .put_enrollment(&id, &body, if_match(&headers).as_deref())
        .await?;
    let etag = e.etag.clone();
    Ok(with_etag(e, etag.as_deref()))
}

async fn get_enrollment(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let e = ctx.dps.get_enrollment(&id).await?;
    let etag = e.etag.clone();
    Ok(with_etag(e, etag.as_deref()))
}

async fn delete_enrollment(
    State(ctx): Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ctx.dps
        .delete_enrollment(&id, if_match(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn query_enrollments(State(ctx): Ctx, headers: HeaderMap) -> ApiResult {
    let (max, cont) = paging(&headers);
    Ok(page(
        ctx.dps.query_enrollments(max, cont.as_deref()).await?,
        "enrollment",
    ))
}

async fn enrollment_attestation(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    Ok(Json(ctx.dps.enrollment_attestation(&id).await?).into_response())
}

async fn bulk(State(ctx): Ctx, body: axum::body::Bytes) -> ApiResult {
    let body = body_json(&body)?;
    Ok(Json(ctx.dps.bulk_enrollments(&body).await?).into_response())
}

async fn get_registration(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let s = ctx.dps.get_registration(&id).await?;
    let etag = s.etag.clone();
    Ok(with_etag(s, etag.as_deref()))
}

async fn delete_registration(
    State(ctx): Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ctx.dps
        .delete_registration(&id, if_match(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn query_registrations(
    State(ctx): Ctx,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (max, cont) = paging(&headers);
    Ok(page(
        ctx.dps
            .query_registrations(&group, max, cont.as_deref())
            .await?,
        "deviceRegistration",
    ))
}
