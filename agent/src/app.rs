//! The running agent's wiring, in one place: the async runtime, delivery (the outbox
//! and its targets), the durable event queue and its writer thread, the pipeline
//! (datapath, drain, peer table), the metrics, the HTTP listener, the signals, and
//! the order things stop in. `wgpulse run` is [`run`]; in-process tests use
//! [`start`] and [`App::stop`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::events::EventQueue;
use crate::outbox::writer::{self, WriterHealth};
use crate::pipeline::{self, PipelineSettings, RunningAgent};
use crate::server::{self, auth::Token, ApiState, Server};
use crate::sink::{Delivery, DeliverySettings};
use crate::status::Shared;

/// Bound of the queue between the peer table and delivery.
pub const EVENT_QUEUE: usize = 4096;

/// How long requests in flight may finish at shutdown.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

/// Errors starting or running the agent.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A token file is missing, unreadable or weak.
    #[error(transparent)]
    Token(#[from] server::ServerError),
    /// The async runtime could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Delivery could not start.
    #[error("starting webhook delivery: {0}")]
    Delivery(#[from] crate::sink::SinkError),
    /// The event writer thread could not start.
    #[error("starting the event thread: {0}")]
    Writer(#[source] std::io::Error),
    /// The pipeline could not start (loading the datapath, opening its maps).
    #[error("starting the agent: {0}")]
    Pipeline(#[from] pipeline::AgentError),
    /// The metrics could not be registered.
    #[error("registering the peer metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Waiting for signals failed.
    #[error("waiting for signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// The pipeline's keys of the configuration.
pub fn pipeline_settings(config: &Config) -> PipelineSettings {
    PipelineSettings {
        node: config.node_id(),
        state_dir: config.state_dir.clone(),
        interfaces: config.interfaces.clone(),
        devices: config.devices.clone(),
        wireguard_socket_dir: config.wireguard_socket_dir.clone(),
        max_peers: config.max_peers,
        drain_interval: config.drain_interval,
        refresh_interval: config.refresh_interval,
        disconnect_after: config.disconnect_after,
        kernel_attribution: config.kernel_attribution,
        peers_file: config.peers_file.clone(),
        alerts: config.alerts.clone(),
    }
}

/// A running agent.
pub struct App {
    runtime: tokio::runtime::Runtime,
    delivery: Delivery,
    agent: RunningAgent,
    writer: std::thread::JoinHandle<()>,
    server: Option<Server>,
}

fn token(what: &'static str, path: Option<&Path>) -> Result<Option<Token>, AppError> {
    Ok(path.map(|p| Token::from_file(what, p)).transpose()?)
}

/// Starts everything `config` asks for. Tokens are read (and weak ones refused)
/// before anything touches the kernel.
pub fn start(config: &Config) -> Result<App, AppError> {
    let api_token = token("api.token_file", config.api.token_file.as_deref())?;
    let metrics_token = token("metrics.token_file", config.metrics.token_file.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    let registry = prometheus::Registry::new();
    let node = config.node_id();
    let delivery = Delivery::start(
        DeliverySettings {
            state_dir: &config.state_dir,
            node: &node,
            outbox: &config.outbox,
            webhooks: &config.webhooks,
            nats: &config.nats,
        },
        runtime.handle(),
        &registry,
    )?;
    let (events, received, stored) = EventQueue::durable(EVENT_QUEUE);
    let events = {
        let delivery = delivery.clone();
        events.with_unwritten(Arc::new(move || delivery.unwritten()))
    };
    let writer_health = Arc::new(WriterHealth::default());
    let writer = {
        let delivery = delivery.clone();
        writer::spawn(
            move |batch| delivery.accept(batch),
            received,
            stored,
            writer_health.clone(),
        )
        .map_err(AppError::Writer)?
    };
    let agent = pipeline::start(pipeline_settings(config), events, None)?;
    registry.register(Box::new(crate::metrics::AgentCollector::new(
        agent.shared(),
    )))?;
    let state = ApiState {
        shared: agent.shared(),
        registry,
        delivery: (!config.webhooks.is_empty() || !config.nats.is_empty())
            .then(|| delivery.clone()),
        api_token,
        metrics_token,
        writer: Some(writer_health),
    };
    let server = runtime.block_on(server::start(&config.metrics, state))?;
    Ok(App {
        runtime,
        delivery,
        agent,
        writer,
        server,
    })
}

impl App {
    /// The live peer table and stage health.
    pub fn shared(&self) -> Arc<Shared> {
        self.agent.shared()
    }

    /// The listener's address, if it listens.
    pub fn server_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(Server::addr)
    }

    /// Delivery.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The pipeline.
    pub fn agent(&self) -> &RunningAgent {
        &self.agent
    }

    /// Runs `future` on the agent's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// SIGHUP: re-reads the configuration file at `path` and applies what can change
    /// safely while running — `log_level` (through `set_log_level`, which says whether
    /// it changed), the contents of `peers_file`, and each webhook's authorization and
    /// signing secrets (inline, files, environment) — logging what changed (never a
    /// value). Everything else takes effect at the next start. A file with problems
    /// changes nothing.
    pub fn reload(
        &self,
        path: Option<&Path>,
        set_log_level: &dyn Fn(&str) -> Result<bool, String>,
    ) {
        let Some(path) = path else {
            tracing::info!("SIGHUP: no configuration file to re-read; re-reading the peers file");
            self.agent.reload_names();
            return;
        };
        let config = match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                crate::config::report::check(
                    &text,
                    path,
                    |_| {},
                    crate::preflight::resource_problems,
                )
                .map_err(|problems| {
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            }) {
            Ok(config) => config,
            Err(problems) => {
                tracing::error!(
                    "SIGHUP: {} not applied, it has problems: {problems}",
                    path.display()
                );
                return;
            }
        };
        let mut changed = Vec::new();
        match set_log_level(&config.log_level) {
            Ok(true) => changed.push(format!("log_level = {:?}", config.log_level)),
            Ok(false) => {}
            Err(err) => tracing::error!("SIGHUP: log_level: {err}"),
        }
        self.agent.reload_names();
        for (webhook, result) in self.delivery.reload_secrets(&config.webhooks) {
            match result {
                Ok(reloaded) => {
                    if reloaded.authorization {
                        changed.push(format!("webhook {webhook}: authorization"));
                    }
                    if reloaded.signing_secrets {
                        changed.push(format!("webhook {webhook}: signing secrets"));
                    }
                }
                Err(err) => {
                    tracing::error!("SIGHUP: {err}; its previous secrets stay in force")
                }
            }
        }
        tracing::info!(
            changed = ?changed,
            "SIGHUP: re-read {} (log_level, the peers file and webhook secrets; other settings take effect at the next start)",
            path.display()
        );
    }

    /// Stops in order: the listener, the pipeline (which saves the state and detaches
    /// the datapath), the writer (once the queue is drained), then delivery.
    pub fn stop(self) {
        if let Some(server) = self.server {
            self.runtime.block_on(server.shutdown());
        }
        self.agent.stop();
        let _ = self.writer.join();
        self.runtime
            .block_on(self.delivery.shutdown(DELIVERY_GRACE));
        tracing::info!("stopped; datapath detached");
    }
}

/// `wgpulse run`: starts, serves until SIGINT or SIGTERM (SIGHUP calls `on_hangup`),
/// and stops in order.
pub fn run(config: &Config, on_hangup: impl Fn(&App)) -> Result<(), AppError> {
    let app = start(config)?;
    app.runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: stopping");
                    break;
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    break;
                }
                _ = hangup.recv() => on_hangup(&app),
            }
        }
        Ok::<(), AppError>(())
    })?;
    app.stop();
    Ok(())
}
