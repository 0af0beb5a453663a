//! The listener's open connections: a cap, and per connection its activity (requests
//! in flight, when it went idle, when a request head started arriving), so that a
//! watchdog can cut off a slow header sender (`header_read_timeout`) and an idle
//! connection (`idle_timeout`), and so that at the cap or when the process runs out
//! of file descriptors the longest-idle connection makes room for a new one. A
//! client that holds connections open without sending requests therefore cannot lock
//! out Prometheus: only connections with a request in flight are never closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Why a connection was closed by the listener rather than by its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A request head did not complete within `header_read_timeout`.
    HeaderTimeout,
    /// No request for `idle_timeout`.
    Idle,
    /// Closed to make room for a new connection (at the cap, or out of fds).
    Evicted,
}

impl CloseReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::Idle => "idle_timeout",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// The listener's self-metrics.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections accepted.
    pub accepted: IntCounter,
    /// Connections refused at the cap (every open connection was busy).
    pub refused: IntCounter,
    /// Connections the listener closed, by reason.
    pub closed: IntCounterVec,
    /// `accept(2)` failures (e.g. out of file descriptors).
    pub accept_errors: IntCounter,
}

impl ListenerMetrics {
    /// Creates and registers the metrics (a second registration in the same registry
    /// is ignored, for tests that start several listeners).
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            open: IntGauge::new("wgpulse_http_connections", "HTTP connections open now")
                .expect("valid"),
            accepted: IntCounter::new(
                "wgpulse_http_connections_accepted_total",
                "HTTP connections accepted",
            )
            .expect("valid"),
            refused: IntCounter::new(
                "wgpulse_http_connections_refused_total",
                "HTTP connections refused at metrics.max_connections (every connection busy)",
            )
            .expect("valid"),
            closed: IntCounterVec::new(
                Opts::new(
                    "wgpulse_http_connections_closed_total",
                    "HTTP connections closed by the listener, by reason",
                ),
                &["reason"],
            )
            .expect("valid"),
            accept_errors: IntCounter::new(
                "wgpulse_http_accept_errors_total",
                "failures accepting an HTTP connection (such as running out of file descriptors)",
            )
            .expect("valid"),
        };
        let _ = registry.register(Box::new(metrics.open.clone()));
        let _ = registry.register(Box::new(metrics.accepted.clone()));
        let _ = registry.register(Box::new(metrics.refused.clone()));
        let _ = registry.register(Box::new(metrics.closed.clone()));
        let _ = registry.register(Box::new(metrics.accept_errors.clone()));
        metrics
    }
}

/// The limits the watchdog enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// From a request's first byte to its complete head.
    pub header_read_timeout: Duration,
    /// Without a request in flight or arriving.
    pub idle_timeout: Duration,
}

#[derive(Debug)]
struct Activity {
    in_flight: u32,
    idle_since: Instant,
    head_started: Option<Instant>,
}

/// One connection's activity, shared by its IO, its service and its watchdog.
#[derive(Debug)]
pub struct ConnectionState {
    activity: Mutex<Activity>,
    /// Wakes the watchdog: a head started, a request ended, or eviction.
    changed: Notify,
    evicted: AtomicBool,
}

impl ConnectionState {
    fn new(now: Instant) -> Self {
        Self {
            activity: Mutex::new(Activity {
                in_flight: 0,
                idle_since: now,
                head_started: None,
            }),
            changed: Notify::new(),
            evicted: AtomicBool::new(false),
        }
    }

    /// Bytes arrived: if no request is in flight, a new request head has started.
    fn on_read(&self) {
        let mut activity = self.activity.lock().expect("not poisoned");
        if activity.in_flight == 0 && activity.head_started.is_none() {
            activity.head_started = Some(Instant::now());
            drop(activity);
            self.changed.notify_one();
        }
    }

    /// A request's head is complete and it is being answered; the guard ends it.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut activity = self.activity.lock().expect("not poisoned");
        activity.in_flight += 1;
        activity.head_started = None;
        RequestGuard {
            state: self.clone(),
        }
    }

    /// When the watchdog must look again (`None`: a request is in flight, it is woken
    /// when it ends).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let activity = self.activity.lock().expect("not poisoned");
        if activity.in_flight > 0 {
            return None;
        }
        Some(match activity.head_started {
            Some(started) => started + limits.header_read_timeout,
            None => activity.idle_since + limits.idle_timeout,
        })
    }

    /// Whether the connection must be closed now, and why.
    fn expired(&self, limits: &Limits, now: Instant) -> Option<CloseReason> {
        if self.evicted.load(Ordering::Relaxed) {
            return Some(CloseReason::Evicted);
        }
        let activity = self.activity.lock().expect("not poisoned");
        if activity.in_flight > 0 {
            return None;
        }
        match activity.head_started {
            Some(started) if now >= started + limits.header_read_timeout => {
                Some(CloseReason::HeaderTimeout)
            }
            Some(_) => None,
            None if now >= activity.idle_since + limits.idle_timeout => Some(CloseReason::Idle),
            None => None,
        }
    }

    /// Since when the connection is idle (`None` while a request is in flight).
    fn idle_since(&self) -> Option<Instant> {
        let activity = self.activity.lock().expect("not poisoned");
        (activity.in_flight == 0).then_some(activity.idle_since)
    }

    /// Waits until the connection must be closed; returns why.
    pub async fn watch(&self, limits: Limits) -> CloseReason {
        loop {
            if let Some(reason) = self.expired(&limits, Instant::now()) {
                return reason;
            }
            match self.deadline(&limits) {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// A request being answered; dropping it ends the request.
#[derive(Debug)]
pub struct RequestGuard {
    state: Arc<ConnectionState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut activity = self.state.activity.lock().expect("not poisoned");
        activity.in_flight = activity.in_flight.saturating_sub(1);
        if activity.in_flight == 0 {
            activity.idle_since = Instant::now();
        }
        drop(activity);
        self.state.changed.notify_one();
    }
}

/// Every open connection.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    open: Mutex<HashMap<u64, Arc<ConnectionState>>>,
    next_id: AtomicU64,
    metrics: ListenerMetrics,
}

/// An admitted connection; dropping it removes it from the table.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    /// The connection's activity.
    pub state: Arc<ConnectionState>,
    connections: Arc<Connections>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.connections
            .open
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
        self.connections.metrics.open.dec();
    }
}

impl Connections {
    /// An empty table with these limits.
    pub fn new(limits: Limits, metrics: ListenerMetrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            metrics,
        })
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The metrics.
    pub fn metrics(&self) -> &ListenerMetrics {
        &self.metrics
    }

    /// Admits a new connection. At the cap the longest-idle connection is closed to
    /// make room; `None` when every open connection has a request in flight.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut open = self.open.lock().expect("not poisoned");
        if open.len() >= self.limits.max_connections && !Self::evict_locked(&open) {
            self.metrics.refused.inc();
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnectionState::new(Instant::now()));
        open.insert(id, state.clone());
        drop(open);
        self.metrics.accepted.inc();
        self.metrics.open.inc();
        Some(Ticket {
            id,
            state,
            connections: self.clone(),
        })
    }

    /// Closes the longest-idle connection (the process is out of file descriptors);
    /// false when none is idle.
    pub fn evict_idle(&self) -> bool {
        Self::evict_locked(&self.open.lock().expect("not poisoned"))
    }

    fn evict_locked(open: &HashMap<u64, Arc<ConnectionState>>) -> bool {
        let oldest = open
            .values()
            .filter(|s| !s.evicted.load(Ordering::Relaxed))
            .filter_map(|s| s.idle_since().map(|since| (since, s)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, state)) => {
                state.evicted.store(true, Ordering::Relaxed);
                state.changed.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open.lock().expect("not poisoned").len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's byte stream, telling its [`ConnectionState`] when bytes arrive.
#[derive(Debug)]
pub struct TrackedIo<S> {
    inner: S,
    state: Arc<ConnectionState>,
}

impl<S> TrackedIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, state: Arc<ConnectionState>) -> Self {
        Self { inner, state }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_connections: usize) -> Arc<Connections> {
        Connections::new(
            Limits {
                max_connections,
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
            ListenerMetrics::new(&Registry::new()),
        )
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let connections = table(2);
        let first = connections.admit().unwrap();
        let second = connections.admit().unwrap();
        let _busy = second.state.request_started();
        let third = connections.admit().expect("the idle first one makes room");
        assert!(first.state.evicted.load(Ordering::Relaxed));
        assert!(!second.state.evicted.load(Ordering::Relaxed));
        drop(first);
        let _busy_too = third.state.request_started();
        assert!(
            connections.admit().is_none(),
            "every connection is busy: refused"
        );
        assert_eq!(connections.metrics.refused.get(), 1);
        assert_eq!(connections.len(), 2);
    }

    #[test]
    fn deadlines_follow_the_head_and_idle_rules() {
        let limits = Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let state = Arc::new(ConnectionState::new(Instant::now()));
        let opened = state.idle_since().unwrap();
        assert_eq!(state.deadline(&limits), Some(opened + limits.idle_timeout));
        assert_eq!(
            state.expired(&limits, opened + Duration::from_secs(59)),
            None
        );
        assert_eq!(
            state.expired(&limits, opened + Duration::from_secs(60)),
            Some(CloseReason::Idle)
        );
        state.on_read();
        let started = state.activity.lock().unwrap().head_started.unwrap();
        assert_eq!(
            state.expired(&limits, started + Duration::from_secs(10)),
            Some(CloseReason::HeaderTimeout),
            "a head that started must complete within the header timeout"
        );
        let guard = state.request_started();
        assert_eq!(state.deadline(&limits), None, "in flight: no deadline");
        assert_eq!(
            state.expired(&limits, started + Duration::from_secs(3600)),
            None
        );
        drop(guard);
        assert!(state.deadline(&limits).unwrap() >= started + limits.idle_timeout);
    }
}
