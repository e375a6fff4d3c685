//! IoT hub pages: overview, Devices (list, query, create, disable, delete), the device page
//! (identity, Device twin, Message to device, Direct method, live telemetry) and the hub's
//! live telemetry, pushed to the browser as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::{Markup, html};
use muster_hub::methods::MethodCall;
use muster_hub::registry::HubError;
use serde::Deserialize;
use serde_json::{Value, json};

use super::view::{self, Nav};
use super::{Fields, PageError, PageResult, Session, url_encode};
use crate::Context;

type Ctx = State<Arc<Context>>;
type Sess = Extension<Session>;

pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new()
        .route("/portal/hub", get(overview))
        .route("/portal/devices", get(devices).post(create_device))
        .route("/portal/devices/{id}", get(device))
        .route("/portal/devices/{id}/status", post(set_status))
        .route("/portal/devices/{id}/delete", post(delete_device))
        .route("/portal/devices/{id}/twin", post(save_twin))
        .route("/portal/devices/{id}/c2d", post(send_c2d))
        .route("/portal/devices/{id}/method", post(invoke_method))
        .route("/portal/telemetry", get(telemetry))
        .route("/portal/live", get(live))
}

/// The logical hub the portal shows (the first host name).
pub(crate) fn default_hub(ctx: &Context) -> String {
    let first = ctx
        .hub
        .hostnames()
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    ctx.hub.hub_for_host(&first)
}

/// A string field of a JSON object ("" when absent).
fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Any field of a JSON object (null when absent).
fn field(v: &Value, key: &str) -> Value {
    v.get(key).cloned().unwrap_or_default()
}

fn need_read(session: &Session) -> Result<(), PageError> {
    if session.rights.hub_read {
        Ok(())
    } else {
        Err(PageError::forbidden(
            "see the IoT hub (sign in with a hub policy such as iothubowner or as admin)",
        ))
    }
}

fn need_registry_write(session: &Session) -> Result<(), PageError> {
    if session.rights.registry_write {
        Ok(())
    } else {
        Err(PageError::forbidden(
            "change devices (RegistryWrite: iothubowner or registryReadWrite)",
        ))
    }
}

fn need_service(session: &Session) -> Result<(), PageError> {
    if session.rights.service {
        Ok(())
    } else {
        Err(PageError::forbidden(
            "change twins, send messages or call methods (ServiceConnect: iothubowner or service)",
        ))
    }
}

fn now_secs() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

async fn count(ctx: &Context, hub: &str, query: &str) -> u64 {
    match ctx.hub.registry().query(hub, query, 1, None).await {
        Ok((rows, _)) => rows
            .first()
            .and_then(|r| r.get("n"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// The last hour as an SVG bar chart (one bar a minute).
fn hour_chart(minutes: &[u64]) -> Markup {
    let max = minutes.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = minutes.iter().sum();
    let label = format!(
        "Device-to-cloud messages per minute over the last hour: {total} in all, at most {max} in a minute"
    );
    html! {
        figure class="chart" {
            svg viewBox="0 0 600 120" role="img" aria-label=(label) preserveAspectRatio="none" {
                @for (i, m) in minutes.iter().enumerate() {
                    @let h = (*m as f64 / max as f64 * 110.0).round();
                    rect x=(i * 10 + 1) y=(115.0 - h) width="8" height=(h) { title { (m) } }
                }
                line x1="0" y1="115" x2="600" y2="115" class="axis" {}
            }
            figcaption { "Messages per minute, last 60 minutes (since the server started). Most in a minute: " (max) "." }
        }
    }
}

async fn overview(State(ctx): Ctx, Extension(session): Sess) -> PageResult {
    need_read(&session)?;
    let hub = default_hub(&ctx);
    let stats = ctx.hub.registry().statistics(&hub).await?;
    let connected = count(
        &ctx,
        &hub,
        "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'",
    )
    .await;
    let now = now_secs();
    let per_minute = ctx.hub.throughput().last_minute(&hub, now);
    let hour = ctx.hub.throughput().last_hour(&hub, now);
    let host = ctx.hub.hostnames().first().cloned().unwrap_or_default();
    let body = html! {
        h1 { "IoT hub " (host) }
        div class="tiles stats" {
            div class="card stat" { span class="label" { "Devices" } span class="value" id="stat-total" { (field(&stats, "totalDeviceCount")) } }
            div class="card stat" { span class="label" { "Connected" } span class="value" id="stat-connected" { (connected) } }
            div class="card stat" { span class="label" { "Disabled" } span class="value" { (field(&stats, "disabledDeviceCount")) } }
            div class="card stat" { span class="label" { "Messages per minute" } span class="value" id="stat-rate" { (per_minute) } }
        }
        (hour_chart(&hour))
        p { a href="/portal/devices" { "Devices" } " · " a href="/portal/telemetry" { "Live telemetry" } }
    };
    Ok(view::page("IoT hub", &session, Nav::HubOverview, body).into_response())
}

#[derive(Debug, Deserialize)]
struct DevicesQuery {
    q: Option<String>,
    done: Option<String>,
}

const DEFAULT_QUERY: &str = "SELECT * FROM devices";

async fn devices(
    State(ctx): Ctx,
    Extension(session): Sess,
    Query(q): Query<DevicesQuery>,
) -> PageResult {
    need_read(&session)?;
    let text =
        q.q.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_QUERY)
            .to_owned();
    let hub = default_hub(&ctx);
    let (rows, error) = match ctx.hub.registry().query(&hub, &text, 1000, None).await {
        Ok((rows, _)) => (rows, None),
        Err(e) => (Vec::new(), Some(PageError::from(e).message)),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let done = view::done_message(q.done.as_deref());
    Ok((
        status,
        devices_page(
            &session,
            &text,
            &rows,
            done,
            error.as_deref(),
            &NewDevice::default(),
        ),
    )
        .into_response())
}

#[derive(Debug, Default)]
struct NewDevice {
    id: String,
    auth: String,
    primary: String,
    secondary: String,
    error: Option<String>,
}

fn devices_page(
    session: &Session,
    text: &str,
    rows: &[Value],
    done: Option<&str>,
    error: Option<&str>,
    new: &NewDevice,
) -> Markup {
    let tabular = rows
        .iter()
        .all(|r| r.get("deviceId").is_some() && r.get("status").is_some());
    let auth = if new.auth.is_empty() {
        "sas"
    } else {
        new.auth.as_str()
    };
    html! {
        h1 { "Devices" }
        @if let Some(d) = done { (view::notice(d)) }
        form method="get" action="/portal/devices" class="query" role="search" {
            label for="q" { "Query devices (IoT Hub query language)" }
            div class="row" {
                input id="q" name="q" value=(text) spellcheck="false";
                button type="submit" { "Run query" }
            }
        }
        @if let Some(e) = error { (view::alert(e)) }
        @if tabular {
            table id="devices" {
                caption { (rows.len()) " device(s)" }
                thead { tr { th scope="col" { "Device ID" } th scope="col" { "Status" } th scope="col" { "Connection state" } th scope="col" { "Authentication type" } th scope="col" { "Last activity" } th scope="col" { "Cloud to device messages" } } }
                tbody {
                    @for r in rows {
                        @let id = str_of(r, "deviceId");
                        tr data-device=(id) {
                            td { a href={ "/portal/devices/" (url_encode(id)) } { (id) } }
                            td { (str_of(r, "status")) }
                            td class="connection" { (str_of(r, "connectionState")) }
                            td { (str_of(r, "authenticationType")) }
                            td { (str_of(r, "lastActivityTime")) }
                            td { (field(r, "cloudToDeviceMessageCount")) }
                        }
                    }
                }
            }
        } @else {
            h2 { "Results" }
            pre class="json" { (view::pretty(&Value::Array(rows.to_vec()))) }
        }
        @if session.rights.registry_write {
            section class="card" {
                h2 { "Add device" }
                @if let Some(e) = &new.error { (view::alert(e)) }
                form method="post" action="/portal/devices" {
                    (view::csrf(session))
                    label for="new-id" { "Device ID" }
                    input id="new-id" name="id" required value=(new.id);
                    fieldset data-switch="auth" {
                        legend { "Authentication type" }
                        @for (v, l) in [("sas", "Symmetric key"), ("selfSigned", "X.509 self-signed"), ("certificateAuthority", "X.509 CA signed")] {
                            label class="check" { input type="radio" name="auth" value=(v) checked[auth == v]; " " (l) }
                        }
                    }
                    fieldset data-when="auth=sas" {
                        legend { "Keys (leave empty to auto-generate)" }
                        label for="new-primary-key" { "Primary key" }
                        input id="new-primary-key" name="primaryKey" autocomplete="off" value=(if auth == "sas" { new.primary.as_str() } else { "" });
                        label for="new-secondary-key" { "Secondary key" }
                        input id="new-secondary-key" name="secondaryKey" autocomplete="off" value=(if auth == "sas" { new.secondary.as_str() } else { "" });
                    }
                    fieldset data-when="auth=selfSigned" {
                        legend { "Thumbprints" }
                        label for="new-primary-thumb" { "Primary thumbprint" }
                        input id="new-primary-thumb" name="primaryThumbprint" value=(if auth == "selfSigned" { new.primary.as_str() } else { "" });
                        label for="new-secondary-thumb" { "Secondary thumbprint" }
                        input id="new-secondary-thumb" name="secondaryThumbprint" value=(if auth == "selfSigned" { new.secondary.as_str() } else { "" });
                    }
                    button type="submit" { "Save" }
                }
            }
        }
    }
    .pipe(|body| view::page("Devices", session, Nav::Devices, body))
}

/// `x.pipe(f)` = `f(x)`, to wrap a markup block without another binding.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for Markup {}

fn generated_key() -> String {
    let mut b = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut b);
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
}

async fn create_device(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
) -> PageResult {
    need_registry_write(&session)?;
    let hub = default_hub(&ctx);
    let id = fields.text("id").trim().to_owned();
    let auth = fields.text("auth");
    let (authentication, primary, secondary) = match auth.as_str() {
        "selfSigned" => {
            let (p, s) = (
                fields.text("primaryThumbprint"),
                fields.text("secondaryThumbprint"),
            );
            (
                json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": p.trim(), "secondaryThumbprint": if s.trim().is_empty() { p.trim() } else { s.trim() }}}),
                p,
                s,
            )
        }
        "certificateAuthority" => (
            json!({"type": "certificateAuthority"}),
            String::new(),
            String::new(),
        ),
        _ => {
            let p = fields.opt("primaryKey").unwrap_or_else(generated_key);
            let s = fields.opt("secondaryKey").unwrap_or_else(generated_key);
            (
                json!({"type": "sas", "symmetricKey": {"primaryKey": p, "secondaryKey": s}}),
                p,
                s,
            )
        }
    };
    let body = json!({"deviceId": id, "status": "enabled", "authentication": authentication});
    // A new device only: an existing id is refused, not overwritten.
    let result = match ctx.hub.registry().get_device(&hub, &id).await {
        Ok(_) => Err(PageError {
            status: StatusCode::CONFLICT,
            message: format!("DeviceAlreadyExists: a device with id '{id}' already exists."),
        }),
        Err(HubError::DeviceNotFound(_)) => ctx
            .hub
            .put_device(&hub, &id, &body, None)
            .await
            .map_err(PageError::from),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(_) => Ok(
            Redirect::to(&format!("/portal/devices/{}?done=created", url_encode(&id)))
                .into_response(),
        ),
        Err(e) => {
            let rows = ctx
                .hub
                .registry()
                .query(&hub, DEFAULT_QUERY, 1000, None)
                .await
                .map(|r| r.0)
                .unwrap_or_default();
            let new = NewDevice {
                id,
                auth,
                primary,
                secondary,
                error: Some(e.message),
            };
            Ok((
                e.status,
                devices_page(&session, DEFAULT_QUERY, &rows, None, None, &new),
            )
                .into_response())
        }
    }
}

/// What a device page shows beyond the stored state.
#[derive(Debug, Default)]
struct Extras {
    done: Option<&'static str>,
    error: Option<String>,
    /// The twin editor's conflict: the user's own text, shown beside the newer twin.
    twin_conflict: Option<String>,
    twin_error: Option<String>,
    c2d_error: Option<String>,
    method: Option<Result<(u16, Value), String>>,
    method_form: Option<(String, String, String, String)>,
}

async fn device_page(
    ctx: &Context,
    session: &Session,
    id: &str,
    extras: Extras,
) -> Result<Markup, PageError> {
    let hub = default_hub(ctx);
    let device = ctx.hub.registry().get_device(&hub, id).await?;
    let twin = ctx.hub.registry().get_twin(&hub, id).await?;
    let d = serde_json::to_value(&device).unwrap_or_default();
    let twin_json = serde_json::to_value(&twin).unwrap_or_default();
    let enabled = str_of(&d, "status") == "enabled";
    let auth_type = d
        .pointer("/authentication/type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let base = format!("/portal/devices/{}", url_encode(id));
    let (method_name, payload, timeout, connect) = extras
        .method_form
        .clone()
        .unwrap_or_else(|| (String::new(), "{}".into(), "30".into(), "0".into()));
    let body = html! {
        p { a href="/portal/devices" { "← Devices" } }
        h1 { "Device " span id="device-id" { (id) } }
        @if let Some(dn) = extras.done { (view::notice(dn)) }
        @if let Some(e) = &extras.error { (view::alert(e)) }
        dl class="facts" {
            dt { "Device ID" } dd { (id) }
            dt { "Status" } dd id="device-status" { (str_of(&d, "status")) }
            dt { "Connection state" } dd id="connection-state" { (str_of(&d, "connectionState")) }
            dt { "Authentication type" } dd { (auth_type) }
            @if auth_type == "selfSigned" {
                dt { "Primary thumbprint" } dd { code { (d.pointer("/authentication/x509Thumbprint/primaryThumbprint").and_then(Value::as_str).unwrap_or_default()) } }
                dt { "Secondary thumbprint" } dd { code { (d.pointer("/authentication/x509Thumbprint/secondaryThumbprint").and_then(Value::as_str).unwrap_or_default()) } }
            }
            @if auth_type == "sas" && session.rights.registry_write {
                dt { "Primary key" } dd { details { summary { "Show" } code { (d.pointer("/authentication/symmetricKey/primaryKey").and_then(Value::as_str).unwrap_or_default()) } } }
            }
            dt { "Last activity" } dd { (str_of(&d, "lastActivityTime")) }
            dt { "Cloud to device messages" } dd { (field(&d, "cloudToDeviceMessageCount")) }
            dt { "Generation ID" } dd { (str_of(&d, "generationId")) }
        }
        @if session.rights.registry_write {
            div class="actions" {
                form method="post" action={ (base) "/status" } class="inline" {
                    (view::csrf(session))
                    input type="hidden" name="status" value=(if enabled { "disabled" } else { "enabled" });
                    button type="submit" { (if enabled { "Disable" } else { "Enable" }) }
                }
                (view::button_form(session, &format!("{base}/delete"), "Delete", "danger", Some("Delete this device? It is refused from now on.")))
            }
        }
        section class="card" aria-labelledby="twin-h" {
            h2 id="twin-h" { "Device twin" }
            @if let Some(e) = &extras.twin_error { (view::alert(e)) }
            @if extras.twin_conflict.is_some() {
                (view::alert("The twin changed since you opened it. The newer twin is shown below; apply your change to it and save again."))
            }
            form method="post" action={ (base) "/twin" } {
                (view::csrf(session))
                input type="hidden" name="etag" value=(twin.etag);
                label for="twin" { "Twin JSON (tags and properties.desired are saved)" }
                textarea id="twin" name="twin" rows="18" data-json="true" spellcheck="false" aria-describedby="twin-msg" { (view::pretty(&twin_json)) }
                p id="twin-msg" class="hint" aria-live="polite" {}
                @if session.rights.service {
                    button type="submit" { "Save" }
                } @else {
                    p class="hint" { "Your sign-in may read the twin but not change it." }
                }
            }
            @if let Some(mine) = &extras.twin_conflict {
                details open {
                    summary { "Your edit (not saved)" }
                    pre class="json" { (mine) }
                }
            }
        }
        @if session.rights.service {
            section class="card" aria-labelledby="c2d-h" {
                h2 id="c2d-h" { "Message to device" }
                @if let Some(e) = &extras.c2d_error { (view::alert(e)) }
                form method="post" action={ (base) "/c2d" } {
                    (view::csrf(session))
                    label for="c2d-body" { "Message body" }
                    textarea id="c2d-body" name="body" rows="3" {}
                    label for="c2d-props" { "Properties (one key=value a line)" }
                    textarea id="c2d-props" name="properties" rows="3" placeholder="priority=high" {}
                    label for="c2d-ack" { "Acknowledgement" }
                    select id="c2d-ack" name="ack" {
                        option value="" { "None" }
                        option value="positive" { "Positive" }
                        option value="negative" { "Negative" }
                        option value="full" { "Full" }
                    }
                    button type="submit" { "Send Message" }
                }
            }
            section class="card" aria-labelledby="method-h" {
                h2 id="method-h" { "Direct method" }
                form method="post" action={ (base) "/method" } {
                    (view::csrf(session))
                    label for="method-name" { "Method Name" }
                    input id="method-name" name="methodName" required value=(method_name);
                    label for="method-payload" { "Payload" }
                    textarea id="method-payload" name="payload" rows="3" data-json="true" spellcheck="false" { (payload) }
                    label for="method-timeout" { "Invoke method timeout (seconds, 5–300)" }
                    input id="method-timeout" name="responseTimeout" type="number" min="5" max="300" value=(timeout);
                    label for="method-connect" { "Connection timeout (seconds, 0 = the device must be connected)" }
                    input id="method-connect" name="connectTimeout" type="number" min="0" max="300" value=(connect);
                    button type="submit" { "Invoke Method" }
                }
                @match &extras.method {
                    Some(Ok((status, payload))) => {
                        h3 { "Result" }
                        p { "Status " strong id="method-status" { (status) } }
                        pre class="json" id="method-result" { (view::pretty(payload)) }
                    }
                    Some(Err(e)) => { (view::alert(e)) }
                    None => {}
                }
            }
        }
        (live_panel(Some(id)))
    };
    Ok(view::page(
        &format!("Device {id}"),
        session,
        Nav::Devices,
        body,
    ))
}

fn live_panel(device: Option<&str>) -> Markup {
    let src = match device {
        Some(d) => format!("/portal/live?device={}", url_encode(d)),
        None => "/portal/live".into(),
    };
    html! {
        section class="card live" aria-labelledby="live-h" data-live=(src) {
            h2 id="live-h" { "Telemetry" }
            p class="hint" { "Events appear as they arrive (server-sent events). " span class="live-state" role="status" { "Connecting…" } }
            canvas class="live-chart" width="800" height="220" role="img" aria-label="Chart of numeric telemetry fields" data-points="0" {}
            div class="legend" aria-hidden="true" {}
            table class="events" {
                caption { "Latest events (newest first)" }
                thead { tr { th scope="col" { "Enqueued (UTC)" } th scope="col" { "Device" } th scope="col" { "Body" } th scope="col" { "Properties" } } }
                tbody {}
            }
        }
    }
}

/// The device page again with a form's error or result, answered with `status`.
async fn device_page_with(
    ctx: &Context,
    session: &Session,
    id: &str,
    status: StatusCode,
    extras: Extras,
) -> PageResult {
    let page = device_page(ctx, session, id, extras).await?;
    Ok((status, page).into_response())
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

async fn device(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    need_read(&session)?;
    let extras = Extras {
        done: view::done_message(q.done.as_deref()),
        ..Extras::default()
    };
    Ok(device_page(&ctx, &session, &id, extras)
        .await?
        .into_response())
}

async fn set_status(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> PageResult {
    need_registry_write(&session)?;
    let hub = default_hub(&ctx);
    let device = ctx.hub.registry().get_device(&hub, &id).await?;
    let mut body = serde_json::to_value(&device).unwrap_or_default();
    let status = if fields.text("status") == "disabled" {
        "disabled"
    } else {
        "enabled"
    };
    if let Some(o) = body.as_object_mut() {
        o.insert("status".into(), json!(status));
    }
    ctx.hub
        .put_device(&hub, &id, &body, Some(&device.etag))
        .await?;
    Ok(Redirect::to(&format!(
        "/portal/devices/{}?done={status}",
        url_encode(&id)
    ))
    .into_response())
}

async fn delete_device(
    State(ctx): Ctx,
    Extension(session): Sess,
    Path(id): Path<String>,
) -> PageResult {
    need_registry_write(&session)?;
    ctx.hub.delete_device(&default_hub(&ctx), &id, None).await?;
    Ok(Redirect::to("/portal/devices?done=deleted").into_response())
}

/// The parts of an edited twin that the service may change: tags and desired properties
/// (without `$version` and `$metadata`).
fn twin_patch(text: &str) -> Result<Value, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("The twin is not valid JSON: {e}"))?;
    let mut desired = v
        .pointer("/properties/desired")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(o) = desired.as_object_mut() {
        o.retain(|k, _| !k.starts_with('$'));
    } else {
        return Err("properties.desired must be a JSON object.".into());
    }
    let tags = v.get("tags").cloned().unwrap_or_else(|| json!({}));
    if !tags.is_object() {
        return Err("tags must be a JSON object.".into());
    }
    Ok(json!({"tags": tags, "properties": {"desired": desired}}))
}

async fn save_twin(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> PageResult {
    need_service(&session)?;
    let hub = default_hub(&ctx);
    let text = fields.text("twin");
    let etag = fields.text("etag");
    let patch = match twin_patch(&text) {
        Ok(p) => p,
        Err(e) => {
            return device_page_with(
                &ctx,
                &session,
                &id,
                StatusCode::BAD_REQUEST,
                Extras {
                    twin_error: Some(e),
                    ..Extras::default()
                },
            )
            .await;
        }
    };
    let etag = Some(etag.as_str()).filter(|e| !e.is_empty());
    match ctx.hub.update_twin(&hub, &id, &patch, etag, true).await {
        Ok(_) => Ok(
            Redirect::to(&format!("/portal/devices/{}?done=saved", url_encode(&id)))
                .into_response(),
        ),
        Err(HubError::PreconditionFailed) => {
            device_page_with(
                &ctx,
                &session,
                &id,
                StatusCode::PRECONDITION_FAILED,
                Extras {
                    twin_conflict: Some(text),
                    ..Extras::default()
                },
            )
            .await
        }
        Err(e) => {
            let e = PageError::from(e);
            device_page_with(
                &ctx,
                &session,
                &id,
                e.status,
                Extras {
                    twin_error: Some(e.message),
                    ..Extras::default()
                },
            )
            .await
        }
    }
}

async fn send_c2d(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> PageResult {
    need_service(&session)?;
    let hub = default_hub(&ctx);
    let mut properties = Vec::new();
    let mut bad = None;
    for line in fields
        .text("properties")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                properties.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            _ => bad = Some(format!("Property line '{line}' is not key=value.")),
        }
    }
    let ack = fields.opt("ack");
    let result = match bad {
        Some(e) => Err(PageError {
            status: StatusCode::BAD_REQUEST,
            message: e,
        }),
        None => {
            let message = muster_hub::c2d::C2dMessage {
                message_id: crate::device_api::tracking_id(),
                correlation_id: None,
                ack,
                expiry_unix: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
                properties,
                body: fields.text("body").into_bytes(),
            };
            ctx.hub
                .send_c2d(&hub, &id, &message)
                .await
                .map_err(PageError::from)
        }
    };
    match result {
        Ok(()) => Ok(
            Redirect::to(&format!("/portal/devices/{}?done=sent", url_encode(&id))).into_response(),
        ),
        Err(e) => {
            device_page_with(
                &ctx,
                &session,
                &id,
                e.status,
                Extras {
                    c2d_error: Some(e.message),
                    ..Extras::default()
                },
            )
            .await
        }
    }
}

async fn invoke_method(
    State(ctx): Ctx,
    Extension(session): Sess,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> PageResult {
    need_service(&session)?;
    let hub = default_hub(&ctx);
    let name = fields.text("methodName").trim().to_owned();
    let payload_text = fields.text("payload");
    let timeout = fields.text("responseTimeout");
    let connect = fields.text("connectTimeout");
    let result = async {
        let payload: Value = if payload_text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&payload_text)
                .map_err(|e| format!("The payload is not valid JSON: {e}"))?
        };
        let number = |s: &str, default: u64| s.trim().parse::<u64>().unwrap_or(default);
        let call = MethodCall::from_request(&json!({
            "methodName": name,
            "payload": payload,
            "responseTimeoutInSeconds": number(&timeout, 30),
            "connectTimeoutInSeconds": number(&connect, 0),
        }))
        .map_err(|e| PageError::from(e).message)?;
        ctx.hub
            .invoke_method(&hub, &id, call)
            .await
            .map(|r| (r.status, r.payload))
            .map_err(|e| PageError::from(e).message)
    }
    .await;
    let extras = Extras {
        method: Some(result),
        method_form: Some((name, payload_text, timeout, connect)),
        ..Extras::default()
    };
    Ok(device_page(&ctx, &session, &id, extras)
        .await?
        .into_response())
}

async fn telemetry(Extension(session): Sess) -> PageResult {
    need_read(&session)?;
    let body = html! {
        h1 { "Live telemetry" }
        p { "Every device's messages, twin changes and lifecycle events as the hub stores them." }
        (live_panel(None))
    };
    Ok(view::page("Telemetry", &session, Nav::Telemetry, body).into_response())
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    device: Option<String>,
}

/// Server-sent events: each stored event from now on (`event: telemetry`, data = the event
/// as the REST event stream shows it), for one device or the whole hub.
/// How often an open live stream checks that its session is still alive.
const LIVE_SESSION_CHECK: Duration = Duration::from_secs(5);

/// Server-sent events: each stored event from now on (`event: telemetry`, data = the event
/// as the REST event stream shows it), for one device or the whole hub. The stream ends when
/// its session does (expiry or sign-out), checked at least every [`LIVE_SESSION_CHECK`].
async fn live(
    State(ctx): Ctx,
    Extension(session): Sess,
    headers: axum::http::HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Result<impl IntoResponse, PageError> {
    need_read(&session)?;
    let session_id = super::cookie_session(&headers).unwrap_or_default();
    let log = Arc::clone(ctx.hub.events());
    let start = log.latest();
    let watch = {
        let l: &dyn muster_store::events::EventLog = log.as_ref();
        l.subscribe()
    };
    let hub = default_hub(&ctx);
    let state = (ctx, session_id, hub, q.device, start, watch);
    let stream = futures_util::stream::unfold(
        state,
        |(ctx, sid, hub, device, mut cursor, mut watch)| async move {
            loop {
                if !ctx.portal.is_live(&sid) {
                    return None;
                }
                match ctx
                    .hub
                    .events()
                    .read(&hub, cursor, device.as_deref(), 64)
                    .await
                {
                    Ok(batch) if !batch.is_empty() => {
                        let events: Vec<Result<SseEvent, Infallible>> = batch
                            .iter()
                            .map(|e| {
                                Ok(SseEvent::default()
                                    .event("telemetry")
                                    .data(crate::rest::events::event_json(e).to_string()))
                            })
                            .collect();
                        if let Some(last) = batch.last() {
                            cursor = last.sequence;
                        }
                        return Some((
                            futures_util::stream::iter(events),
                            (ctx, sid, hub, device, cursor, watch),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "portal live telemetry: the event log cannot be read");
                        return None;
                    }
                }
                if let Ok(Err(_)) = tokio::time::timeout(LIVE_SESSION_CHECK, watch.changed()).await
                {
                    return None;
                }
            }
        },
    );
    let stream = futures_util::StreamExt::flatten(stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::twin_patch;
    use serde_json::json;

    #[test]
    fn the_twin_editor_saves_tags_and_desired_without_metadata() {
        let p = twin_patch(
            r#"{"deviceId":"d","etag":"x","tags":{"a":1},"properties":{"desired":{"telemetryDelay":"2","$version":3,"$metadata":{}},"reported":{"x":1}}}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            json!({"tags": {"a": 1}, "properties": {"desired": {"telemetryDelay": "2"}}})
        );
        assert!(twin_patch("{").unwrap_err().contains("not valid JSON"));
        assert!(twin_patch(r#"{"properties":{"desired":[]}}"#).is_err());
        assert!(twin_patch(r#"{"tags":3}"#).is_err());
    }
}
