//! The MQTT-over-TLS listener shared by DPS and the hub.
//!
//! Accept is cheap: take a connection permit, accept, spawn. The TLS handshake and the CONNECT
//! packet happen inside the task under one deadline. The CONNECT username decides the role:
//! `{idScope}/registrations/{registrationId}/…` is a DPS session; `{host}/{deviceId}[/{module}]/…`
//! is a hub session.

mod dps;
mod hub;

use std::sync::Arc;

use muster_mqtt::Packet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn};

use crate::Context;
use muster_mqtt::framed::Framed as Connection;

/// The packet type of CONNECT (the high nibble of its first byte).
const CONNECT_TYPE: u8 = 1;

/// Serve MQTT on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max = ctx.limits.max_connections;
    let stop = shutdown.clone();
    crate::accept::serve(
        listener,
        "mqtt",
        max,
        shutdown,
        tracker,
        |peer| info_span!("mqtt", %peer, registration_id = tracing::field::Empty, device_id = tracing::field::Empty),
        move |socket| {
            let (ctx, acceptor, shutdown) = (Arc::clone(&ctx), acceptor.clone(), stop.clone());
            async move { handle(socket, &ctx, &acceptor, &shutdown).await }
        },
    )
    .await;
}

async fn handle(
    socket: tokio::net::TcpStream,
    ctx: &Context,
    acceptor: &TlsAcceptor,
    shutdown: &CancellationToken,
) {
    let deadline = ctx.limits.connect_timeout;
    let setup = async {
        let tls = acceptor.accept(socket).await.map_err(|e| {
            crate::metrics::tls_failed("mqtt", &e);
            format!("TLS handshake failed: {e}")
        })?;
        let peer = crate::tls::peer_chain(tls.get_ref().1.peer_certificates());
        Ok::<_, String>((tls, peer))
    };
    let (stream, peer) = match tokio::time::timeout(deadline, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err(reason)) => {
            debug!(reason, "connection dropped during setup");
            return;
        }
        Err(_) => {
            crate::metrics::tls_timed_out("mqtt");
            debug!("connection timed out before the TLS handshake completed");
            return;
        }
    };
    let _open = muster_metrics::metrics().connection("tls", "mqtt");
    session(stream, peer, ctx, shutdown).await;
}

/// One MQTT connection after TLS: CONNECT (within the connect deadline), then a DPS or hub
/// session chosen by the username.
pub(crate) async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: Result<Vec<muster_pki::Certificate>, String>,
    ctx: &Context,
    shutdown: &CancellationToken,
) {
    let mut conn = Connection::new(stream, ctx.limits.max_packet_size);
    // [MQTT-3.1.0-1] The first packet is CONNECT: any other type is refused at its first byte,
    // not after waiting for the length it announces.
    let deadline = tokio::time::Instant::now() + ctx.limits.connect_timeout;
    match tokio::time::timeout_at(deadline, conn.peek_first_byte()).await {
        Ok(Ok(Some(byte))) if byte >> 4 != CONNECT_TYPE => {
            warn!(
                first_byte = format_args!("{byte:#04x}"),
                "first packet is not CONNECT; closing"
            );
            return;
        }
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => return debug!("closed before CONNECT"),
        Ok(Err(e)) => return debug!(error = %e, "read failed before CONNECT"),
        Err(_) => return debug!("connection timed out before CONNECT"),
    }
    let first = tokio::time::timeout_at(deadline, conn.read_packet()).await;
    let connect = match first {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            debug!(packet = other.name(), "first packet was not CONNECT");
            return;
        }
        Ok(Ok(None)) => {
            debug!("closed before CONNECT");
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "bad CONNECT");
            return;
        }
        Err(_) => {
            debug!("connection timed out before CONNECT");
            return;
        }
    };
    let username = connect.username.clone().unwrap_or_default();
    if let Some((scope, registration_id)) = parse_dps_username(&username) {
        tracing::Span::current().record("registration_id", registration_id);
        dps::run(
            &mut conn,
            ctx,
            &connect,
            peer,
            scope,
            registration_id,
            shutdown,
        )
        .await;
    } else {
        hub::run(&mut conn, ctx, &connect, peer, shutdown).await;
    }
    conn.shutdown().await;
}

/// `{idScope}/registrations/{registrationId}/…` → (scope, registration id).
fn parse_dps_username(username: &str) -> Option<(&str, &str)> {
    let mut parts = username.splitn(4, '/');
    let scope = parts.next()?;
    if parts.next()? != "registrations" {
        return None;
    }
    let registration_id = parts.next()?;
    (!scope.is_empty() && !registration_id.is_empty()).then_some((scope, registration_id))
}

#[cfg(test)]
mod tests {
    use super::parse_dps_username;

    #[test]
    fn usernames() {
        assert_eq!(
            parse_dps_username(
                "0ne00ABCDEF/registrations/dev-1/api-version=2019-03-31&ClientVersion=x"
            ),
            Some(("0ne00ABCDEF", "dev-1"))
        );
        assert_eq!(
            parse_dps_username("0ne0045B3C6/registrations/camfil/api-version=2019-03-31"),
            Some(("0ne0045B3C6", "camfil"))
        );
        assert_eq!(
            parse_dps_username("hub.local/dev-1/?api-version=2021-04-12"),
            None
        );
        assert_eq!(parse_dps_username("x/registrations/"), None);
    }
}
