//! The built-in event stream: `GET /messages/events?from=earliest|latest|<sequence>&deviceId=…`
//! streams newline-delimited JSON, one event per line, and keeps the response open for new
//! events until the client goes away.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use muster_hub::registry::HubError;
use muster_store::events::{Event, EventLog};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::HubName;
use super::hub_service::HubApiError;
use crate::Context;

pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new().route("/messages/events", get(stream))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamQuery {
    from: Option<String>,
    device_id: Option<String>,
}

/// One event as the stream shows it (docs/wire-protocol.md §5.1).
pub(crate) fn event_json(e: &Event) -> Value {
    let props: Map<String, Value> = e
        .event
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let system: Map<String, Value> = e
        .event
        .system_properties
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut v = json!({
        "sequenceNumber": e.sequence,
        "enqueuedTimeUtc": e.event.enqueued,
        "deviceId": e.event.device_id,
        "moduleId": e.event.module_id,
        "properties": props,
        "systemProperties": system,
    });
    let body = match std::str::from_utf8(&e.event.body) {
        Ok(text) => serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!(text)),
        Err(_) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("bodyEncoding".into(), json!("base64"));
            }
            json!(base64::engine::general_purpose::STANDARD.encode(&e.event.body))
        }
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("body".into(), body);
    }
    v
}

async fn stream(
    State(ctx): State<Arc<Context>>,
    Extension(hub): Extension<HubName>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, HubApiError> {
    let log = Arc::clone(ctx.hub.events());
    let start = match q.from.as_deref() {
        None | Some("latest") => log.latest(),
        Some("earliest") => 0,
        Some(n) => n.parse::<u64>().map(|n| n.saturating_sub(1)).map_err(|_| {
            HubApiError(HubError::InvalidInput(
                "from must be earliest, latest or a sequence number".into(),
            ))
        })?,
    };
    let state = (log, hub.0, q.device_id, start, log_watch(&ctx));
    let body = futures_util::stream::unfold(
        state,
        |(log, hub, device, mut cursor, mut watch)| async move {
            loop {
                let batch = match log.read(&hub, cursor, device.as_deref(), 256).await {
                    Ok(b) => b,
                    Err(e) => {
                        return Some((
                            Err(std::io::Error::other(e.to_string())),
                            (log, hub, device, cursor, watch),
                        ));
                    }
                };
                if let Some(last) = batch.last() {
                    cursor = last.sequence;
                    let mut text = String::new();
                    for e in &batch {
                        text.push_str(&event_json(e).to_string());
                        text.push('\n');
                    }
                    return Some((
                        Ok::<_, std::io::Error>(text),
                        (log, hub, device, cursor, watch),
                    ));
                }
                if watch.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    Ok((
        [("content-type", "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

fn log_watch(ctx: &Context) -> tokio::sync::watch::Receiver<u64> {
    let log: &dyn EventLog = ctx.hub.events().as_ref();
    log.subscribe()
}
