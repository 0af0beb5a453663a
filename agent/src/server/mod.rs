//! The HTTP listener: Prometheus `/metrics`, `/healthz`, `/readyz` and the local JSON
//! API (`/api/v1/...`), on one hyper server with one task per connection, graceful
//! shutdown, optional TLS (rustls) and bearer tokens; limits on connections, header
//! and idle time keep it serving under attack (see [`connections`]).

pub mod auth;
pub mod body;
pub mod config;
pub mod connections;
pub mod listener;
pub mod routes;
pub mod tls;
pub mod views;

#[cfg(test)]
mod tests;

pub use config::{ApiConfig, MetricsConfig};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Errors starting the listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A token or TLS file could not be read or used.
    #[error("{what} {path}: {message}")]
    File {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Everything the routes read.
pub struct ApiState {
    /// The agent's table and health.
    pub shared: Arc<crate::status::Shared>,
    /// Every metric (the peer collector and the delivery metrics are registered here).
    pub registry: prometheus::Registry,
    /// Webhook delivery, if the agent runs one.
    pub delivery: Option<crate::sink::Delivery>,
    /// Token of `/api/v1`.
    pub api_token: Option<auth::Token>,
    /// Token of `/metrics`.
    pub metrics_token: Option<auth::Token>,
    /// The event writer's health, if the agent runs one.
    pub writer: Option<Arc<crate::outbox::writer::WriterHealth>>,
}

/// A running listener; [`Server::shutdown`] stops it gracefully.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and lets open connections finish (at most 5 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(6), self.task).await;
    }
}

/// Binds `config.listen` and serves until shut down. `None` when the listener is
/// disabled (empty `listen`).
pub async fn start(config: &MetricsConfig, state: ApiState) -> Result<Option<Server>, ServerError> {
    if config.listen.is_empty() {
        return Ok(None);
    }
    let acceptor = tls::acceptor(config)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    if config.beyond_loopback() && state.api_token.is_none() {
        tracing::warn!(
            %addr,
            "the listener is reachable beyond loopback and api.token_file is not set: /api/v1 answers 403 to every client not on loopback"
        );
    }
    if config.beyond_loopback() && state.metrics_token.is_none() {
        tracing::info!(
            %addr,
            "/metrics is open to whoever reaches the listener (as an exporter's is); set metrics.token_file to require a token"
        );
    }
    tracing::info!(
        %addr,
        tls = acceptor.is_some(),
        max_connections = config.max_connections,
        "serving /metrics, /healthz, /readyz and /api/v1"
    );
    let connections = connections::Connections::new(
        connections::Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        },
        connections::ListenerMetrics::new(&state.registry),
    );
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(listener::serve(
        listener,
        acceptor,
        connections,
        Arc::new(state),
        stopped,
    ));
    Ok(Some(Server { addr, stop, task }))
}
