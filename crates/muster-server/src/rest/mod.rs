//! The HTTPS side: the management REST API in Azure's DPS service shapes, the DPS device API
//! over HTTPS, one error → response mapping, and SAS authentication of management calls.
//!
//! Collection segments are matched case-insensitively (`enrollmentGroups` and
//! `enrollmentgroups` both work, as the Node SDK uses both) by normalising known keywords before
//! routing.

pub(crate) mod auth;
mod dps_device;
mod dps_service;
pub(crate) mod events;
mod fallback;
mod health;
mod hub_device;
pub(crate) mod hub_service;
mod openapi;
mod routing;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use muster_dps::DpsError;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{Instrument, debug, info_span, warn};

use crate::Context;
use crate::device_api::{error_body, tracking_id};

/// The certificate chain the HTTPS client presented (empty when none).
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerChain(pub(crate) Arc<Vec<muster_pki::Certificate>>);

/// A DPS error as an HTTP response: status, Azure body, `x-ms-error-code`.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) DpsError);

impl From<DpsError> for ApiError {
    fn from(e: DpsError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response<Body> {
        let tracking = tracking_id();
        if self.0.status() >= 500 {
            warn!(tracking_id = tracking, error = %self.0, "request failed");
        } else {
            debug!(tracking_id = tracking, error = %self.0, "request refused");
        }
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = error_body(self.0.code(), &self.0.public_message(), &tracking);
        let mut response = (status, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&self.0.code().to_string()) {
            response.headers_mut().insert("x-ms-error-code", v);
        }
        if let DpsError::Throttled { retry_after_secs } = self.0
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert("retry-after", v);
        }
        response
    }
}

const COLLECTIONS: [&str; 7] = [
    "enrollmentgroups",
    "enrollments",
    "registrations",
    "certificates",
    "devices",
    "twins",
    "statistics",
];
const ACTIONS: [&str; 4] = [
    "query",
    "attestationmechanism",
    "generateverificationcode",
    "verify",
];

/// Lower-case the collection segment of a management path and its trailing action segment,
/// leaving ids (and device paths, which start with an ID scope) untouched.
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<String> = path.split('/').map(str::to_owned).collect();
    let Some(first) = segments.get(1).map(|s| s.to_ascii_lowercase()) else {
        return path.to_owned();
    };
    if !COLLECTIONS.contains(&first.as_str()) {
        return path.to_owned();
    }
    if let Some(s) = segments.get_mut(1) {
        *s = first;
    }
    let n = segments.len();
    if n >= 3
        && let Some(last) = segments.last_mut()
        && ACTIONS.contains(&last.to_ascii_lowercase().as_str())
    {
        *last = last.to_ascii_lowercase();
    }
    segments.join("/")
}

/// The application router (no TLS): used by the listener and by router tests.
pub(crate) fn router(ctx: Arc<Context>) -> Router {
    let management = dps_service::routes().route_layer(axum::middleware::from_fn_with_state(
        Arc::clone(&ctx),
        auth::require_dps_policy,
    ));
    let hub = hub_service::routes()
        .merge(events::routes())
        .merge(routing::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&ctx),
            auth::require_hub_policy,
        ));
    let tunnels = crate::websocket::PATHS
        .iter()
        .fold(Router::new(), |r, path| {
            r.route(path, axum::routing::get(crate::websocket::upgrade))
        });
    Router::new()
        .route("/healthz", axum::routing::get(health::healthz))
        .route("/readyz", axum::routing::get(health::readyz))
        .route("/metrics", axum::routing::get(crate::metrics::authorized))
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .merge(crate::portal::routes(&ctx))
        .merge(management)
        .merge(hub)
        .merge(dps_device::routes())
        .merge(tunnels)
        .fallback(fallback::unknown_path)
        .layer(DefaultBodyLimit::max(ctx.limits.max_body_size))
        .layer(axum::middleware::from_fn(fallback::shape_errors))
        .with_state(ctx)
}

/// How long a client may take to send a request's headers (or stay idle between requests).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serve HTTPS on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let app = router(Arc::clone(&ctx));
    let permits = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let tunnel_permits = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let failures = crate::accept::AcceptFailures::new("https");
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tokio::time::sleep(failures.failed(&e)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        let timeout = ctx.limits.connect_timeout;
        let tunnels = crate::websocket::Tunnels {
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            permits: Arc::clone(&tunnel_permits),
        };
        tracker.spawn(
            async move {
                let tls = match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        crate::metrics::tls_failed("https", &e);
                        debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        crate::metrics::tls_timed_out("https");
                        debug!("TLS handshake timed out");
                        return;
                    }
                };
                let _open = muster_metrics::metrics().connection("tls", "https");
                let chain = match crate::tls::peer_chain(tls.get_ref().1.peer_certificates()) {
                    Ok(c) => c,
                    Err(reason) => {
                        warn!(reason, "client certificate cannot be parsed");
                        Vec::new()
                    }
                };
                let chain = PeerChain(Arc::new(chain));
                let service = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                    let path = normalize_path(req.uri().path());
                    if path != req.uri().path() {
                        let pq = match req.uri().query() {
                            Some(q) => format!("{path}?{q}"),
                            None => path,
                        };
                        if let Ok(uri) = pq.parse() {
                            *req.uri_mut() = uri;
                        }
                    }
                    req.extensions_mut().insert(chain.clone());
                    req.extensions_mut().insert(crate::portal::PeerAddr(peer.ip()));
                    req.extensions_mut().insert(tunnels.clone());
                    req.map(Body::new)
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Without a timer hyper enforces no header deadline: an idle client could hold a
        // connection (and a file descriptor) forever.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(HEADER_READ_TIMEOUT))
            .keep_alive_timeout(HEADER_READ_TIMEOUT);
                // Upgrades: MQTT and AMQP tunnels (crate::websocket).
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(service));
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "HTTP connection ended with an error") },
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                drop(permit);
            }
            .instrument(info_span!("https", %peer)),
        );
    }
    debug!("HTTPS listener stopped");
}

/// Read `x-ms-max-item-count` and `x-ms-continuation`.
pub(crate) fn paging(headers: &HeaderMap) -> (Option<usize>, Option<String>) {
    let max = headers
        .get("x-ms-max-item-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let cont = headers
        .get("x-ms-continuation")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    (max, cont)
}

/// The `If-Match` header, if any.
pub(crate) fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get("if-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    #[test]
    fn keywords_are_case_insensitive_and_ids_are_not() {
        assert_eq!(
            normalize_path("/enrollmentGroups/MyGroup"),
            "/enrollmentgroups/MyGroup"
        );
        assert_eq!(
            normalize_path("/EnrollmentGroups/g/AttestationMechanism"),
            "/enrollmentgroups/g/attestationmechanism"
        );
        assert_eq!(
            normalize_path("/0ne00ABC/registrations/Dev/register"),
            "/0ne00ABC/registrations/Dev/register"
        );
    }
}
