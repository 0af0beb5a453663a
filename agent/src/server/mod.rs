//! The HTTP listener: Prometheus `/metrics`, `/healthz`, `/readyz` and the local JSON
//! API (`/api/v1/...`), on one hyper server with one task per connection, graceful
//! shutdown, optional TLS (rustls) and optional bearer tokens.

pub mod auth;
pub mod routes;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::sync::watch;

/// `[metrics]` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address of /metrics, health and the API (default `127.0.0.1:9586`, the
    /// port the WireGuard exporters use); empty disables the listener.
    pub listen: String,
    /// File holding a bearer token /metrics requires (none: open).
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9586".into(),
            token_file: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl MetricsConfig {
    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            problems.push((
                "listen".into(),
                format!("{:?} is not an address:port", self.listen),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(("tls_cert".into(), "tls_cert and tls_key go together".into()));
        }
        problems
    }
}

/// `[api]` configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// File holding the bearer token `/api/v1` requires (none: the API is open to
    /// whoever reaches the listener, which is loopback by default).
    pub token_file: Option<PathBuf>,
}

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

fn tls_acceptor(config: &MetricsConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, ServerError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let file_error = |what, path: &PathBuf, message: String| ServerError::File {
        what,
        path: path.clone(),
        message,
    };
    let certs: Vec<_> = std::fs::File::open(cert)
        .map_err(|e| file_error("tls_cert", cert, e.to_string()))
        .and_then(|f| {
            rustls_pemfile::certs(&mut std::io::BufReader::new(f))
                .collect::<Result<_, _>>()
                .map_err(|e| file_error("tls_cert", cert, e.to_string()))
        })?;
    let private = std::fs::File::open(key)
        .map_err(|e| file_error("tls_key", key, e.to_string()))
        .and_then(|f| {
            rustls_pemfile::private_key(&mut std::io::BufReader::new(f))
                .map_err(|e| file_error("tls_key", key, e.to_string()))?
                .ok_or_else(|| file_error("tls_key", key, "no private key in it".into()))
        })?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| file_error("tls_cert", cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .map_err(|e| file_error("tls_cert", cert, e.to_string()))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}

/// Binds `config.metrics.listen` and serves until shut down. `None` when the
/// listener is disabled (empty `listen`).
pub async fn start(
    config: &crate::config::Config,
    state: ApiState,
) -> Result<Option<Server>, ServerError> {
    if config.metrics.listen.is_empty() {
        return Ok(None);
    }
    let acceptor = tls_acceptor(&config.metrics)?;
    let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.metrics.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.metrics.listen.clone(),
        source,
    })?;
    tracing::info!(%addr, tls = acceptor.is_some(), "serving /metrics, /healthz, /readyz and /api/v1");
    let state = Arc::new(state);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!("accepting a connection: {err}");
                        continue;
                    }
                },
                _ = stopped.changed() => break,
            };
            let state = state.clone();
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, request).await) }
            });
            match &acceptor {
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let connection = builder
                                    .serve_connection(TokioIo::new(tls), service)
                                    .into_owned();
                                let _ = watcher.watch(connection).await;
                            }
                            Ok(Err(err)) => tracing::debug!("TLS handshake failed: {err}"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
                None => {
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    });
    Ok(Some(Server { addr, stop, task }))
}
