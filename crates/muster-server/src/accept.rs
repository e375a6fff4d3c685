//! The accept loop the device listeners share, and what it does when `accept` fails. Running
//! out of file descriptors is the usual cause under load (the stock soft limit is 1,024); it is
//! reported as one warning every few seconds that says how many connections were refused, the
//! limit, and how to raise it, instead of one line per refused connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span, debug, warn};

/// Accept connections on `listener` until `shutdown`, at most `max` at once (a connection
/// holds its permit until its task ends): each accepted socket gets `TCP_NODELAY` and a task of
/// its own running `handle`, inside the span `span` makes for its peer.
pub(crate) async fn serve<H, Fut>(
    listener: TcpListener,
    name: &'static str,
    max: usize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    span: impl Fn(SocketAddr) -> Span,
    handle: H,
) where
    H: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    let failures = AcceptFailures::new(name);
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
        let connection = handle(socket);
        tracker.spawn(
            async move {
                connection.await;
                drop(permit);
            }
            .instrument(span(peer)),
        );
    }
    debug!(listener = name, "listener stopped");
}

/// How often the out-of-descriptors warning repeats at most.
const EVERY: Duration = Duration::from_secs(5);

/// The accept failures of one listener.
#[derive(Debug)]
pub(crate) struct AcceptFailures {
    listener: &'static str,
    state: Mutex<(u64, Option<Instant>)>,
}

/// The soft and hard limits on open files of this process, if known.
pub(crate) fn open_file_limits() -> Option<(u64, u64)> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).ok()
}

impl AcceptFailures {
    pub(crate) fn new(listener: &'static str) -> Self {
        Self {
            listener,
            state: Mutex::new((0, None)),
        }
    }

    /// Note a failed accept; returns how long to pause before the next one.
    pub(crate) fn failed(&self, e: &std::io::Error) -> Duration {
        // EMFILE (process limit) and ENFILE (system limit).
        let out_of_descriptors = matches!(e.raw_os_error(), Some(24 | 23));
        if !out_of_descriptors {
            warn!(listener = self.listener, error = %e, "accept failed");
            return Duration::from_millis(50);
        }
        let Ok(mut state) = self.state.lock() else {
            return Duration::from_millis(50);
        };
        state.0 += 1;
        let due = state.1.is_none_or(|last| last.elapsed() >= EVERY);
        if due {
            let (soft, hard) = open_file_limits().unwrap_or((0, 0));
            warn!(
                listener = self.listener,
                refused = state.0,
                soft_limit = soft,
                hard_limit = hard,
                "connections refused: out of file descriptors; raise the open-file limit (`ulimit -n {hard}` before `muster serve`, or LimitNOFILE= in a systemd unit)"
            );
            *state = (0, Some(Instant::now()));
        }
        Duration::from_millis(50)
    }
}
