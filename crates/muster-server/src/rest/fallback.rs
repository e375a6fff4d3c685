//! What the handlers never see: unknown paths (404), wrong methods (405), bodies over the limit
//! (413) and media types no handler takes (415). Each is answered in Azure's error shape for
//! its path family — IoT Hub's `{"Message":"ErrorCode:…;…","ExceptionMessage":"Tracking ID:…"}`
//! on hub paths, DPS's `{"errorCode","trackingId","message","timestampUtc"}` on DPS paths — with
//! a tracking id that the log line carries too, and nothing about internals. Unknown paths are
//! authenticated like every other management call before they are called unknown.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use muster_dps::DpsError;
use muster_hub::registry::HubError;
use serde_json::{Value, json};
use tracing::warn;

use super::auth;
use crate::Context;
use crate::device_api::{error_body, tracking_id};

/// Which API a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// The DPS service API (`/enrollmentGroups`, `/certificates`, …).
    Dps,
    /// The DPS device API (`/{idScope}/registrations/…`).
    DpsDevice,
    /// The hub service API, and anything else.
    Hub,
}

fn family(path: &str) -> Family {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or_default().to_ascii_lowercase();
    let second = segments.next().unwrap_or_default().to_ascii_lowercase();
    match first.as_str() {
        "enrollmentgroups" | "enrollments" | "registrations" | "certificates" => Family::Dps,
        _ if second == "registrations" => Family::DpsDevice,
        _ => Family::Hub,
    }
}

/// IoT Hub's legacy error body.
pub(crate) fn hub_error_body(code: &str, message: &str, tracking: &str) -> Value {
    let stamp = muster_hub::time_fmt::azure(time::OffsetDateTime::now_utc());
    json!({
        "Message": format!("ErrorCode:{code};{message}"),
        "ExceptionMessage": format!("Tracking ID:{tracking}-TimeStamp:{stamp}"),
    })
}

/// The router's fallback: authenticate as the path's API does, then 404.
pub(crate) async fn unknown_path(State(ctx): State<Arc<Context>>, req: Request<Body>) -> Response {
    let path = req.uri().path().to_owned();
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let refused = match family(&path) {
        Family::DpsDevice => None,
        Family::Dps => auth::check(&ctx, header, &[crate::bootstrap::DPS_POLICY]).err(),
        Family::Hub => auth::check(&ctx, header, &auth::ANY_HUB_POLICY).err(),
    };
    if let Some(reason) = refused {
        warn!(
            path,
            reason = muster_types::report(&reason),
            "request to an unknown path refused"
        );
        return match family(&path) {
            Family::Hub => super::hub_service::HubApiError(HubError::Unauthorized).into_response(),
            _ => super::ApiError(DpsError::Unauthorized {
                reason: "unauthorized".into(),
            })
            .into_response(),
        };
    }
    StatusCode::NOT_FOUND.into_response()
}

/// Whether a request carries a body of a media type no JSON handler takes: a declared
/// `Content-Type` that is not JSON, on a request with a body, anywhere but a cloud-to-device
/// send or device telemetry (whose bodies are messages, of any type).
fn unsupported_media_type(req: &Request<Body>) -> bool {
    let Some(kind) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|n| n != "0");
    let json = kind
        .to_str()
        .map(|k| k.trim().to_ascii_lowercase())
        .is_ok_and(|k| k.starts_with("application/json") || k.is_empty());
    let path = req.uri().path().to_ascii_lowercase();
    // Message bodies, of any type: a cloud-to-device send, device telemetry over HTTPS.
    let message = path.ends_with("/messages/devicebound") || path.ends_with("/messages/events");
    // The portal's forms are URL-encoded or multipart.
    let portal = path.starts_with("/portal/");
    has_body && !json && !message && !portal
}

/// Middleware: give 404, 405, 413 and 415 answers without an error body of their own Azure's
/// shape for the path's API.
pub(crate) async fn shape_errors(req: Request<Body>, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let response = if unsupported_media_type(&req) {
        StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response()
    } else {
        next.run(req).await
    };
    let status = response.status();
    let has_body = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (code, text) = match status {
        StatusCode::NOT_FOUND => ("NotFound", format!("no resource at {path}")),
        StatusCode::METHOD_NOT_ALLOWED => (
            "MethodNotAllowed",
            format!("{method} is not allowed on {path}"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "RequestEntityTooLarge",
            "the request body is larger than this server accepts".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "UnsupportedMediaType",
            "send the request body as application/json".to_owned(),
        ),
        _ => return response,
    };
    if has_body {
        return response;
    }
    let tracking = tracking_id();
    warn!(
        tracking_id = tracking,
        %method,
        path,
        status = status.as_u16(),
        "request refused"
    );
    let body = match family(&path) {
        Family::Hub => hub_error_body(code, &text, &tracking),
        Family::Dps | Family::DpsDevice => {
            error_body(u32::from(status.as_u16()) * 1000, &text, &tracking)
        }
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut shaped = (status, Json(body)).into_response();
    if let Some(allow) = allow {
        shaped.headers_mut().insert(header::ALLOW, allow);
    }
    shaped
}

#[cfg(test)]
mod tests {
    use super::{Family, family};

    #[test]
    fn families() {
        assert_eq!(family("/enrollmentGroups/x"), Family::Dps);
        assert_eq!(family("/certificates"), Family::Dps);
        assert_eq!(
            family("/0ne0001/registrations/d/register"),
            Family::DpsDevice
        );
        assert_eq!(family("/devices/d"), Family::Hub);
        assert_eq!(family("/nothing"), Family::Hub);
    }
}
