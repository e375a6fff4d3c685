//! `GET /metrics`: the process's Prometheus metrics (see `muster-metrics`), on the HTTPS port
//! for a caller with a hub or DPS policy's SAS token, or without authentication on
//! `--metrics-bind` (a private address a Prometheus server scrapes).
//!
//! Gauges that describe stored state (C2D queue depth) and live state (devices connected) are
//! read when the metrics are; the rest are counted as things happen.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use muster_metrics::metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Context;

/// Policies whose tokens may read `/metrics` on the HTTPS port.
const READERS: [&str; 5] = [
    "iothubowner",
    "service",
    "registryRead",
    "registryReadWrite",
    crate::bootstrap::DPS_POLICY,
];

/// The metrics as Prometheus reads them.
async fn render(ctx: &Context) -> Response<Body> {
    let m = metrics();
    match ctx.hub.registry().c2d_depth().await {
        Ok(n) => {
            m.c2d_queue_depth.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Err(e) => warn!(error = %e, "metrics: cannot count queued cloud-to-device messages"),
    }
    m.devices_connected
        .set(i64::try_from(ctx.hub.presence().len()).unwrap_or(i64::MAX));
    let mut response = m.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(muster_metrics::CONTENT_TYPE),
    );
    response
}

/// `GET /metrics` on the HTTPS port: a SAS token of a hub or DPS policy.
pub(crate) async fn authorized(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
) -> Response<Body> {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err(reason) = crate::rest::auth::check(&ctx, header, &READERS) {
        warn!(reason = %muster_types::report(&reason), "metrics request refused");
        return crate::rest::ApiError(muster_dps::DpsError::Unauthorized {
            reason: reason.to_string(),
        })
        .into_response();
    }
    render(&ctx).await
}

/// Serve `GET /metrics` without authentication on `listener` until `shutdown`.
pub(crate) async fn serve_plain(
    listener: TcpListener,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(ctx): State<Arc<Context>>| async move { render(&ctx).await }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(ctx);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        warn!(error = %e, "metrics listener stopped");
    }
}

/// Bind the plain metrics listener.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Why a TLS handshake failed, as a metric label (a fixed set): `closed` (the peer left),
/// `timeout`, `protocol_error` (not TLS, or broken TLS), `incompatible` (no common version or
/// cipher suite), `alert_received` (the client refused the handshake, e.g. it does not trust
/// the server's CA), `bad_certificate`, `decrypt_error`, `other`.
pub(crate) fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        return match inner {
            E::AlertReceived(_) => "alert_received",
            E::PeerIncompatible(_) | E::NoApplicationProtocol => "incompatible",
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_)
            | E::PeerSentOversizedRecord => "protocol_error",
            E::InvalidCertificate(_) | E::NoCertificatesPresented => "bad_certificate",
            E::DecryptError => "decrypt_error",
            _ => "other",
        };
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionAborted => "closed",
        std::io::ErrorKind::TimedOut => "timeout",
        _ => "other",
    }
}

/// Count a failed handshake on `listener`.
pub(crate) fn tls_failed(listener: &'static str, e: &std::io::Error) {
    metrics().tls_failure(listener, tls_failure_reason(e));
}

/// Count a handshake that did not finish in time on `listener`.
pub(crate) fn tls_timed_out(listener: &'static str) {
    metrics().tls_failure(listener, "timeout");
}

#[cfg(test)]
mod tests {
    use super::tls_failure_reason;

    #[test]
    fn handshake_failures_get_a_fixed_reason() {
        let not_tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(tls_failure_reason(&not_tls), "protocol_error");
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert_eq!(tls_failure_reason(&refused), "alert_received");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(tls_failure_reason(&eof), "closed");
        let odd = std::io::Error::other("something else");
        assert_eq!(tls_failure_reason(&odd), "other");
    }
}
