//! The web portal at `/portal/`: every portal step of the lab in a browser, served by the
//! same HTTPS listeners as the REST API, with server-rendered HTML (maud escapes every value,
//! so ids and twins containing markup stay text) and one small embedded script for the live
//! telemetry chart, the copy button and JSON checks. Nothing is loaded from elsewhere.
//!
//! Sign-in is with a shared access policy's name and key or with the admin password printed
//! at first start (kept only as a PBKDF2 hash). Sessions live in memory; the cookie is
//! `HttpOnly`, `Secure`, `SameSite=Strict`. Every POST carries the session's CSRF token, checked
//! here before any handler runs. Every change goes through the same domain calls as the REST
//! API (`muster_dps::Dps`, `muster_hub::Hub`).

mod assets;
mod dps;
mod hub;
pub(crate) mod session;
mod view;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;
use tracing::{info, warn};

pub(crate) use hub::default_hub;
pub(crate) use session::{Portal, Session, Settings};
pub use session::{admin_hash_path, ensure_admin_password, set_admin_password};

use crate::Context;

type Ctx = State<Arc<Context>>;

/// The client's address (set by the HTTPS listener), for the sign-in limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) IpAddr);

/// The fields of a submitted form (URL-encoded or multipart), parsed once by the CSRF check.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields(Vec<(String, Vec<u8>)>);

impl Fields {
    /// The first value of `name` as text (empty when absent).
    pub(crate) fn text(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// The first value of `name`, trimmed, or `None` when absent or blank.
    pub(crate) fn opt(&self, name: &str) -> Option<String> {
        Some(self.text(name).trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// Every value of `name` (checkbox groups).
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The bytes of an uploaded file field (`None` when no file was chosen).
    pub(crate) fn file(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_slice())
    }
}

/// A page that could not be served: a status and a message shown inline.
#[derive(Debug)]
pub(crate) struct PageError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl PageError {
    pub(crate) fn forbidden(what: &str) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: format!("Your sign-in may not {what}."),
        }
    }
}

impl From<muster_dps::DpsError> for PageError {
    fn from(e: muster_dps::DpsError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: format!("{} ({})", e.public_message(), e.code()),
        }
    }
}

impl From<muster_hub::registry::HubError> for PageError {
    fn from(e: muster_hub::registry::HubError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: format!("{}: {}", e.code(), e.public_message()),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            warn!(status = %self.status, message = %self.message, "portal request failed");
        }
        let body = html! {
            main class="narrow" {
                h1 { "Something went wrong" }
                (view::alert(&self.message))
                p { a href="/portal/" { "Home" } }
            }
        };
        (self.status, view::bare("Error", body)).into_response()
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

/// The portal's routes (mounted beside the REST API).
pub(crate) fn routes(ctx: &Arc<Context>) -> Router<Arc<Context>> {
    let guarded = Router::new()
        .route("/portal/", get(home))
        .route("/portal/signout", axum::routing::post(sign_out))
        .merge(dps::routes())
        .merge(hub::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(ctx),
            require_session,
        ));
    Router::new()
        .route("/portal", get(|| async { Redirect::to("/portal/") }))
        .route("/portal/signin", get(sign_in_page).post(sign_in))
        .route("/portal/assets/{name}", get(assets::serve))
        .merge(guarded)
        .layer(axum::middleware::from_fn(security_headers))
}

/// What every portal response may load and where it may be shown: only this origin's own
/// script and stylesheet, no inline script, no framing (clickjacking), no MIME sniffing, no
/// referrer, and pages (which show keys and twins) never cached.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

async fn security_headers(req: Request<Body>, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The session id in the request's cookie.
pub(crate) fn cookie_session(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == session::COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Middleware: a live session or the sign-in page; for POSTs also the CSRF token.
async fn require_session(State(ctx): Ctx, req: Request<Body>, next: Next) -> Response {
    let Some(session) = cookie_session(req.headers()).and_then(|id| ctx.portal.session(&id)) else {
        if req.method() == Method::GET {
            let next_path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let target = format!("/portal/signin?next={}", url_encode(&next_path));
            return Redirect::to(&target).into_response();
        }
        return (
            StatusCode::UNAUTHORIZED,
            sign_in_markup(
                Some("Your session has ended. Sign in again."),
                "/portal/",
                "",
            ),
        )
            .into_response();
    };
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::POST {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let fields = match read_fields(&content_type, body, ctx.limits.max_body_size).await {
            Ok(f) => f,
            Err(message) => {
                return PageError {
                    status: StatusCode::BAD_REQUEST,
                    message,
                }
                .into_response();
            }
        };
        if !Portal::csrf_ok(&session, &fields.text("csrf")) {
            warn!(path = %parts.uri.path(), principal = %session.principal, "portal form refused: CSRF token missing or wrong");
            return PageError {
                status: StatusCode::FORBIDDEN,
                message: "This form did not come from this portal session (its CSRF token is missing or stale). Reload the page and submit it again.".into(),
            }
            .into_response();
        }
        parts.extensions.insert(fields);
        parts.extensions.insert(session);
        return next.run(Request::from_parts(parts, Body::empty())).await;
    }
    parts.extensions.insert(session);
    next.run(Request::from_parts(parts, body)).await
}

/// Parse a form body: `application/x-www-form-urlencoded` or `multipart/form-data`.
async fn read_fields(content_type: &str, body: Body, limit: usize) -> Result<Fields, String> {
    if content_type.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| format!("the form upload is malformed: {e}"))?;
        let stream = body.into_data_stream();
        let constraints = multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(limit as u64));
        let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
        let mut out = Vec::new();
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| format!("the form upload is malformed: {e}"))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| format!("the form upload is malformed: {e}"))?;
            out.push((name, bytes.to_vec()));
        }
        return Ok(Fields(out));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| format!("the form is too large or was cut off: {e}"))?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&bytes).map_err(|e| format!("the form is malformed: {e}"))?;
    Ok(Fields(
        pairs
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
    ))
}

pub(crate) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a path inside the portal (no scheme, no host) is a valid place to return to.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/portal/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/portal/".to_owned(),
    }
}

fn sign_in_markup(error: Option<&str>, next: &str, name: &str) -> Markup {
    let body = html! {
        main class="narrow" {
            h1 { "Sign in to muster" }
            @if let Some(e) = error { (view::alert(e)) }
            form method="post" action="/portal/signin" class="card" {
                input type="hidden" name="next" value=(next);
                label for="name" { "User or policy name" }
                input id="name" name="name" autocomplete="username" required value=(name);
                label for="secret" { "Password or policy key" }
                input id="secret" name="secret" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p class="hint" {
                "Sign in as " code { "admin" } " with the password " code { "muster serve" }
                " printed at first start (" code { "muster portal reset-admin-password" }
                " makes a new one), or with a shared access policy's name and key from "
                code { "muster info" } ", for example " code { "iothubowner" } " or "
                code { "provisioningserviceowner" } "."
            }
        }
    };
    view::bare("Sign in", body)
}

async fn sign_in_page(Query(q): Query<NextQuery>) -> Markup {
    sign_in_markup(None, &safe_next(q.next.as_deref()), "")
}

async fn sign_in(
    State(ctx): Ctx,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let fields = match read_fields(content_type, body, 64 * 1024).await {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                sign_in_markup(Some(&e), "/portal/", ""),
            )
                .into_response();
        }
    };
    let name = fields.text("name").trim().to_owned();
    let next = safe_next(Some(&fields.text("next")));
    let peer = peer.map(|p| p.0.0);
    match ctx
        .portal
        .sign_in(&ctx.state, &name, fields.text("secret").trim(), peer)
        .await
    {
        Ok((id, session)) => {
            info!(principal = %session.principal, "portal sign-in");
            let max_age = ctx.portal.settings.lifetime.as_secs();
            let cookie = format!(
                "{}={id}; Path=/portal; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}",
                session::COOKIE
            );
            let mut r = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(session::SignInError::Wrong) => {
            warn!(name = %name, "portal sign-in refused: wrong name or secret");
            (
                StatusCode::UNAUTHORIZED,
                sign_in_markup(Some("The name or the password/key is wrong."), &next, &name),
            )
                .into_response()
        }
        Err(session::SignInError::Throttled(wait)) => {
            warn!(?peer, "portal sign-in refused: too many failed attempts");
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                sign_in_markup(
                    Some(&format!(
                        "Too many failed sign-ins from your address. Try again in {wait} seconds."
                    )),
                    &next,
                    &name,
                ),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}

async fn sign_out(State(ctx): Ctx, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_session(&headers) {
        ctx.portal.sign_out(&id);
    }
    let mut r = Redirect::to("/portal/signin").into_response();
    let cookie = format!(
        "{}=; Path=/portal; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        session::COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn home(State(ctx): Ctx, axum::Extension(session): axum::Extension<Session>) -> Markup {
    let hub = default_hub(&ctx);
    let body = html! {
        h1 { "muster" }
        p { "A self-hosted Device Provisioning Service and IoT hub." }
        div class="tiles" {
            @if session.rights.dps {
                section class="card" {
                    h2 { a href="/portal/dps" { "Device Provisioning Service" } }
                    p { "ID scope " code { (ctx.id_scope) } }
                    ul {
                        li { a href="/portal/certificates" { "Certificates" } }
                        li { a href="/portal/enrollments" { "Manage enrollments" } }
                    }
                }
            }
            @if session.rights.hub_read {
                section class="card" {
                    h2 { a href="/portal/hub" { "IoT hub " (hub) } }
                    ul {
                        li { a href="/portal/devices" { "Devices" } }
                        li { a href="/portal/telemetry" { "Live telemetry" } }
                    }
                }
            }
        }
    };
    view::page("Home", &session, view::Nav::Home, body)
}

/// Collect query-string pairs into a map (first value wins).
pub(crate) fn query_map(q: Option<&str>) -> HashMap<String, String> {
    let pairs: Vec<(String, String)> = q
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let mut map = HashMap::new();
    for (k, v) in pairs {
        map.entry(k).or_insert(v);
    }
    map
}
