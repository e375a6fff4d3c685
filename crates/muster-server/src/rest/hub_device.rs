//! The hub's HTTPS device API (docs/wire-protocol.md §9; `../shared/spec/azure-amqp-wire.md`
//! §10), as Node's `azure-iot-device-http` and Azure's device REST API use it:
//!
//! - `POST /devices/{id}/messages/events`: one message (the body as sent, properties in
//!   `iothub-app-*` headers, system properties in `IoTHub-*` headers), or a batch
//!   (`Content-Type: application/vnd.microsoft.iothub.json`, a JSON array of
//!   `{"body": base64, "properties": {"iothub-app-k": v}}`); 204;
//! - `GET /devices/{id}/messages/devicebound`: the next cloud-to-device message, locked, with
//!   its lock token as the quoted `ETag`; 204 when the mailbox is empty;
//! - `DELETE …/devicebound/{lockToken}` completes (`?reject` rejects), `POST
//!   …/devicebound/{lockToken}/abandon` gives it back; 204, or 412 when the lock is lost.
//!
//! A device authenticates with its SAS token (`Authorization`) or its TLS client certificate;
//! a hub policy with DeviceConnect (`iothubowner`, `deviceConnect`) may act for any device, as
//! the Azure CLI's `send-d2c-message --protocol http` does with `iothubowner`.
//!
//! Header names reach the server lower-cased, so application property names sent as headers
//! arrive in lower case (batches keep their case).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use muster_hub::Settlement;
use muster_hub::auth::Credential;
use muster_hub::identity::Identity;
use muster_hub::registry::HubError;
use muster_hub::telemetry::{SystemProperty, Telemetry};
use muster_types::DeviceId;
use serde_json::Value;
use tracing::warn;

use super::PeerChain;
use super::hub_service::HubApiError;
use crate::Context;

type ApiResult = Result<Response, HubApiError>;

/// How long a message received over HTTPS stays locked.
const LOCK: Duration = Duration::from_secs(60);

/// Policies that may act for a device (IoT Hub's DeviceConnect right).
const DEVICE_CONNECT: [&str; 2] = ["iothubowner", "deviceConnect"];

/// Whether a request is a device's (authenticated here, not by the service-policy middleware).
pub(crate) fn is_device_call(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match segments.as_slice() {
        ["devices", _, m, e] if eq(m, "messages") && eq(e, "events") => method == Method::POST,
        ["devices", _, m, d] if eq(m, "messages") && eq(d, "devicebound") => method == Method::GET,
        ["devices", _, m, d, _] if eq(m, "messages") && eq(d, "devicebound") => {
            method == Method::DELETE
        }
        ["devices", _, m, d, _, a]
            if eq(m, "messages") && eq(d, "devicebound") && eq(a, "abandon") =>
        {
            method == Method::POST
        }
        _ => false,
    }
}

/// Who is calling for device `id`.
async fn caller(
    ctx: &Context,
    headers: &HeaderMap,
    chain: &PeerChain,
    id: &str,
) -> Result<Identity, HubApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let policy = token
        .and_then(|t| muster_auth::sas::SasToken::parse(t).ok())
        .and_then(|t| t.key_name().map(str::to_owned))
        .filter(|name| ctx.state.policy(name).is_some());
    let refused = |reason: String| {
        warn!(device_id = id, reason, "HTTPS device request refused");
        HubApiError(HubError::Unauthorized)
    };
    if policy.is_some() {
        let host = super::auth::check(ctx, token, &DEVICE_CONNECT)
            .map_err(|e| refused(muster_types::report(&e)))?;
        let hub = ctx.hub.hub_for_host(&host);
        if ctx
            .hub
            .registry()
            .device_document(&hub, id)
            .await?
            .is_none()
        {
            return Err(HubApiError(HubError::DeviceNotFound(id.to_owned())));
        }
        let device =
            DeviceId::new(id).map_err(|e| HubApiError(HubError::InvalidInput(e.to_string())))?;
        return Ok(Identity::new(&hub, device, None));
    }
    let credential = match token {
        Some(t) => Credential::Sas(t),
        None if !chain.0.is_empty() => Credential::X509(&chain.0),
        None => {
            return Err(refused(
                "no Authorization header and no client certificate".into(),
            ));
        }
    };
    ctx.hub
        .authenticate(&host, id, None, credential)
        .await
        .map(|a| a.identity)
        .map_err(|e| refused(muster_types::report(&e)))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One message from its headers and body.
fn single(headers: &HeaderMap, body: &[u8]) -> Telemetry {
    let mut system = Vec::new();
    for (name, prop) in [
        ("iothub-messageid", SystemProperty::MessageId),
        ("iothub-correlationid", SystemProperty::CorrelationId),
        ("iothub-userid", SystemProperty::UserId),
        ("iothub-contenttype", SystemProperty::ContentType),
        ("iothub-contentencoding", SystemProperty::ContentEncoding),
        ("iothub-expiry", SystemProperty::AbsoluteExpiryTime),
        ("iothub-interface-id", SystemProperty::InterfaceId),
        ("dt-subject", SystemProperty::Subject),
    ] {
        if let Some(v) = header_text(headers, name) {
            system.push((prop, v));
        }
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
    Telemetry {
        system,
        properties,
        body: body.to_vec(),
    }
}

/// A batch: `[{"body": base64, "properties": {"iothub-app-k": v}}]`.
fn batch(body: &[u8]) -> Result<Vec<Telemetry>, HubError> {
    let invalid = |why: String| HubError::InvalidInput(format!("the message batch {why}"));
    let items: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("is not a JSON array: {e}")))?;
    items
        .iter()
        .map(|item| {
            let data = item
                .get("body")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("has an item without a body".into()))?;
            let body = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| invalid("has a body that is not base64".into()))?;
            let properties = item
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .filter_map(|(k, v)| {
                            let k = k.strip_prefix("iothub-app-").unwrap_or(k);
                            Some((k.to_owned(), v.as_str()?.to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Telemetry {
                system: Vec::new(),
                properties,
                body,
            })
        })
        .collect()
}

/// `POST /devices/{id}/messages/events`.
pub(crate) async fn send_events(
    State(ctx): State<Arc<Context>>,
    Extension(chain): Extension<PeerChain>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let identity = caller(&ctx, &headers, &chain, &id).await?;
    let is_batch = header_text(&headers, "content-type")
        .is_some_and(|t| t.starts_with("application/vnd.microsoft.iothub.json"));
    let messages = if is_batch {
        batch(&body)?
    } else {
        vec![single(&headers, &body)]
    };
    ctx.hub.ingest(&identity, messages).await.map_err(|e| {
        warn!(
            device_id = id,
            reason = muster_types::report(&e),
            "telemetry refused"
        );
        HubApiError(match e {
            muster_hub::telemetry::IngestError::TooLarge { .. } => {
                HubError::MessageTooLarge(e.to_string())
            }
            muster_hub::telemetry::IngestError::Unavailable(s) => HubError::Store(s),
        })
    })?;
    let mut last = std::time::Instant::now() - muster_hub::hub::ACTIVITY_INTERVAL;
    ctx.hub.touch(&identity, &mut last).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /devices/{id}/messages/devicebound`.
pub(crate) async fn receive(
    State(ctx): State<Arc<Context>>,
    Extension(chain): Extension<PeerChain>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let identity = caller(&ctx, &headers, &chain, &id).await?;
    let Some(d) = ctx
        .hub
        .receive_c2d(&identity, 1, LOCK)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let m = &d.message;
    let mut response = (StatusCode::OK, m.body.clone()).into_response();
    let h = response.headers_mut();
    let mut put = |name: String, value: &str| {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    };
    put("etag".into(), &format!("\"{}\"", d.lock_token));
    put("iothub-messageid".into(), &m.message_id);
    if let Some(c) = &m.correlation_id {
        put("iothub-correlationid".into(), c);
    }
    put(
        "iothub-to".into(),
        &format!(
            "/devices/{}/messages/devicebound",
            muster_auth::sas::percent_encode(&id)
        ),
    );
    if let Ok(at) = time::OffsetDateTime::from_unix_timestamp(m.expiry_unix) {
        put("iothub-expiry".into(), &muster_types::time_fmt::azure(at));
    }
    put("iothub-deliverycount".into(), &d.delivery_count.to_string());
    for (k, v) in &m.properties {
        put(format!("iothub-app-{k}"), v);
    }
    Ok(response)
}

/// `?reject` on a complete.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Settle {
    reject: Option<String>,
}

/// `DELETE /devices/{id}/messages/devicebound/{lockToken}[?reject]`.
pub(crate) async fn complete(
    State(ctx): State<Arc<Context>>,
    Extension(chain): Extension<PeerChain>,
    Path((id, lock)): Path<(String, String)>,
    Query(settle): Query<Settle>,
    headers: HeaderMap,
) -> ApiResult {
    let identity = caller(&ctx, &headers, &chain, &id).await?;
    let outcome = if settle.reject.is_some() {
        Settlement::Reject
    } else {
        Settlement::Complete
    };
    ctx.hub
        .settle_c2d(&identity, lock.trim_matches('"'), outcome)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /devices/{id}/messages/devicebound/{lockToken}/abandon`.
pub(crate) async fn abandon(
    State(ctx): State<Arc<Context>>,
    Extension(chain): Extension<PeerChain>,
    Path((id, lock)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let identity = caller(&ctx, &headers, &chain, &id).await?;
    ctx.hub
        .settle_c2d(&identity, lock.trim_matches('"'), Settlement::Abandon)
        .await?;
    ctx.hub
        .presence()
        .send(&identity.key(), muster_hub::presence::Outbound::Mail);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::*;

    #[test]
    fn device_calls_are_told_apart() {
        assert!(is_device_call(&Method::POST, "/devices/d1/messages/events"));
        assert!(is_device_call(
            &Method::GET,
            "/devices/d1/messages/devicebound"
        ));
        assert!(is_device_call(
            &Method::GET,
            "/devices/d1/messages/deviceBound"
        ));
        assert!(is_device_call(
            &Method::DELETE,
            "/devices/d1/messages/devicebound/tok"
        ));
        assert!(is_device_call(
            &Method::POST,
            "/devices/d1/messages/devicebound/tok/abandon"
        ));
        // The service's send stays a service call.
        assert!(!is_device_call(
            &Method::POST,
            "/devices/d1/messages/devicebound"
        ));
        assert!(!is_device_call(&Method::GET, "/devices/d1"));
        assert!(!is_device_call(&Method::DELETE, "/devices/d1/commands"));
    }

    #[test]
    fn batches_decode_and_refuse_garbage() {
        let ok = br#"[{"body":"aGk=","properties":{"iothub-app-temperatureAlert":"true"}},{"body":"eA=="}]"#;
        let m = batch(ok).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].body, b"hi");
        assert_eq!(
            m[0].properties,
            vec![("temperatureAlert".into(), "true".into())]
        );
        assert!(m[1].properties.is_empty());
        for bad in [
            &b"[{\"body\":\"a\"b\"}]"[..],
            b"{}",
            br#"[{"x":1}]"#,
            br#"[{"body":"***"}]"#,
        ] {
            assert!(matches!(batch(bad), Err(HubError::InvalidInput(_))));
        }
    }
}
