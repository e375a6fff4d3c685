//! AMQP 1.0 over TLS (port 5671): DPS registrations, hub devices and modules, and service
//! clients on one listener, routed by link address (docs/wire-protocol.md §7; wire facts per
//! SDK in `../shared/spec/azure-amqp-wire.md`).
//!
//! The protocol engine is fe2o3-amqp's acceptor (a patched copy in `vendor/`: 16-byte delivery
//! tags). muster adds what Azure's clients need around it:
//! - TLS is terminated here (Azure clients start TLS at once, not with AMQP's TLS header), so
//!   the client certificate is at hand for X.509 identities;
//! - the client's 8-byte protocol header is read first and replayed: protocol id 3 runs SASL
//!   (PLAIN, MSSBCBS, ANONYMOUS), protocol id 0 runs plain AMQP; anything else gets our header
//!   back and the connection closes;
//! - [`conn`] holds authorization per connection, [`links`] serves each link by its address.

mod address;
mod conn;
pub(crate) mod eventhub;
mod links;
mod message;
mod sasl;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use fe2o3_amqp::acceptor::ConnectionAcceptor;
use fe2o3_amqp::acceptor::SessionAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::Context;

/// `AMQP 3 1 0 0`: SASL first.
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// `AMQP 0 1 0 0`: plain AMQP.
const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// Largest frame either side may send (uamqp and .NET offer 64 KiB too).
pub(crate) const MAX_FRAME: u32 = 64 * 1024;
/// Sessions one connection may begin (the .NET device uses two).
const MAX_SESSIONS: u16 = 16;
/// Link handles one session may use (links per connection are also capped).
const MAX_HANDLES: u32 = 64;
/// A peer silent this long is gone; peers keep it alive with empty frames at half of it.
const IDLE_TIMEOUT_MS: u32 = 240_000;

/// Serve AMQP on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max = ctx.limits.max_connections;
    let (stop, inner) = (shutdown.clone(), tracker.clone());
    crate::accept::serve(
        listener,
        "amqp",
        max,
        shutdown,
        tracker,
        |peer| info_span!("amqp", %peer),
        move |socket| {
            let (ctx, acceptor) = (Arc::clone(&ctx), acceptor.clone());
            let (shutdown, tracker) = (stop.clone(), inner.clone());
            async move { handle(socket, ctx, &acceptor, shutdown, tracker).await }
        },
    )
    .await;
}

async fn handle(
    socket: tokio::net::TcpStream,
    ctx: Arc<Context>,
    acceptor: &TlsAcceptor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let tls = match tokio::time::timeout(ctx.limits.connect_timeout, acceptor.accept(socket)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            crate::metrics::tls_failed("amqp", &e);
            return debug!(error = %e, "TLS handshake failed");
        }
        Err(_) => {
            crate::metrics::tls_timed_out("amqp");
            return debug!("connection timed out before the TLS handshake completed");
        }
    };
    let _open = muster_metrics::metrics().connection("tls", "amqp");
    let (_, session) = tls.get_ref();
    let chain = crate::tls::peer_chain(session.peer_certificates());
    let sni = session.server_name().map(str::to_owned);
    connection(tls, chain, sni, ctx, shutdown, tracker).await;
}

/// One AMQP connection on a byte stream (TLS, or a WebSocket tunnel): protocol header, SASL or
/// not, the Open exchange, then its sessions until either side closes.
pub(crate) async fn connection<S>(
    mut stream: S,
    chain: Result<Vec<muster_pki::Certificate>, String>,
    sni: Option<String>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let deadline = tokio::time::Instant::now() + ctx.limits.connect_timeout;
    let mut header = [0u8; 8];
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!(error = %e, "closed before the AMQP header"),
        Err(_) => return debug!("connection timed out before the AMQP header"),
    }
    let sasl_layer = match header {
        SASL_HEADER => true,
        AMQP_HEADER => false,
        other => {
            warn!(
                header = format_args!("{other:02x?}"),
                "not an AMQP 1.0 protocol header; answering ours and closing"
            );
            let _ = stream.write_all(&AMQP_HEADER).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let chain = chain.unwrap_or_else(|reason| {
        warn!(reason, "client certificate cannot be parsed");
        Vec::new()
    });
    let stream = Replayed {
        header,
        read: 0,
        inner: stream,
    };
    let sasl = sasl::Acceptor::default();
    let builder = ConnectionAcceptor::builder()
        .container_id("muster")
        .max_frame_size(MAX_FRAME)
        .channel_max(MAX_SESSIONS)
        .idle_time_out(IDLE_TIMEOUT_MS);
    let opened = async {
        if sasl_layer {
            builder
                .sasl_acceptor(sasl.clone())
                .build()
                .accept(stream)
                .await
        } else {
            builder.build().accept(stream).await
        }
    };
    let mut handle = match tokio::time::timeout_at(deadline, opened).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return warn!(error = %e, "AMQP connection refused during open"),
        Err(_) => return debug!("connection timed out before AMQP open"),
    };
    let host = sni.unwrap_or_else(|| ctx.hub.hub_for_host(""));
    let shared = Arc::new(conn::Shared::new(
        Arc::clone(&ctx),
        host,
        chain,
        sasl.claim(),
        tracker.clone(),
    ));
    debug!(sasl = sasl_layer, "AMQP connection open");
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => break,
            s = handle.next_incoming_session() => match s {
                Some(s) => s,
                None => break,
            },
        };
        match SessionAcceptor::builder()
            .handle_max(MAX_HANDLES)
            .build()
            .accept_incoming_session(incoming, &mut handle)
            .await
        {
            Ok(session) => {
                let shared = Arc::clone(&shared);
                tracker.spawn(links::session(session, shared).in_current_span());
            }
            Err(e) => {
                warn!(error = %e, "cannot begin an AMQP session; closing");
                break;
            }
        }
    }
    shared.closing.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), handle.close()).await;
    debug!("AMQP connection closed");
}

/// A stream whose first eight bytes (the protocol header, already read to choose SASL or not)
/// are read again by the AMQP engine.
struct Replayed<S> {
    header: [u8; 8],
    read: usize,
    inner: S,
}

impl<S> std::fmt::Debug for Replayed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayed")
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(rest) = self.header.get(self.read..)
            && !rest.is_empty()
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            self.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
