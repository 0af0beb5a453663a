//! The accept loop and one task per connection: HTTP/1.1 (what Prometheus, kubelet
//! probes and the CLI speak; no HTTP/2 attack surface), optional TLS, every connection
//! under the [`super::connections`] watchdog. A failing `accept(2)` backs off instead
//! of spinning, closes the longest-idle connection when the process is out of file
//! descriptors, and is logged at most once per interval.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connections::{Connections, Ticket, TrackedIo};
use super::{routes, ApiState};
use crate::throttle::LogThrottle;

/// Shortest and longest wait after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How often a repeated listener problem is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Most bytes of a request head (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Rate limits of the listener's repeated log lines.
struct Throttles {
    accept: LogThrottle,
    refused: LogThrottle,
}

/// Accepts until `stop` changes, then lets open connections finish (at most 5 s).
pub async fn serve(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<Connections>,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let throttles = Throttles {
        accept: LogThrottle::new(LOG_EVERY),
        refused: LogThrottle::new(LOG_EVERY),
    };
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok((stream, remote)) => {
                backoff = Duration::ZERO;
                let Some(ticket) = connections.admit() else {
                    if let Some(suppressed) = throttles.refused.allow(Instant::now()) {
                        tracing::warn!(
                            max_connections = connections.limits().max_connections,
                            suppressed,
                            "refusing a connection: every connection has a request in flight"
                        );
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    remote,
                    ticket,
                    acceptor.clone(),
                    state.clone(),
                    connections.clone(),
                    graceful.watcher(),
                ));
            }
            Err(err) => {
                connections.metrics().accept_errors.inc();
                let out_of_fds = matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let evicted = out_of_fds && connections.evict_idle();
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                if let Some(suppressed) = throttles.accept.allow(Instant::now()) {
                    tracing::warn!(
                        suppressed,
                        retry_in = ?backoff,
                        closed_an_idle_connection = evicted,
                        open = connections.len(),
                        "accepting a connection: {err}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// One connection: TLS if configured, then HTTP/1.1, until the client leaves or the
/// watchdog closes it.
async fn connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    ticket: Ticket,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<ApiState>,
    connections: Arc<Connections>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let io = TrackedIo::new(stream, ticket.state.clone());
    let activity = ticket.state.clone();
    let service = hyper::service::service_fn(move |request| {
        let guard = activity.request_started();
        let state = state.clone();
        async move {
            let reply = routes::handle(&state, request, remote).await;
            drop(guard);
            Ok::<_, Infallible>(reply)
        }
    });
    let serve = async move {
        match acceptor {
            Some(acceptor) => match acceptor.accept(io).await {
                Ok(tls) => http(tls, service, watcher).await,
                Err(err) => tracing::debug!(%remote, "TLS handshake failed: {err}"),
            },
            None => http(io, service, watcher).await,
        }
    };
    // Counted before the connection is dropped, so that whoever sees it closed also
    // sees it counted.
    let close = async {
        let reason = ticket.state.watch(connections.limits()).await;
        connections
            .metrics()
            .closed
            .with_label_values(&[reason.label()])
            .inc();
        reason
    };
    tokio::select! {
        () = serve => {}
        reason = close => {
            tracing::debug!(%remote, reason = reason.label(), "closed the connection");
        }
    }
    drop(ticket);
}

async fn http<I, S>(io: I, service: S, watcher: hyper_util::server::graceful::Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = routes::Reply,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog times heads and idle connections (hyper's own header timer would
    // also close every idle keep-alive connection at the header timeout).
    builder
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!("HTTP connection ended: {err}");
    }
}
