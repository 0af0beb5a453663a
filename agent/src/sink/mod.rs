//! Delivery: from an accepted event to its receiver's acknowledgement.
//!
//! The flow, file by file: `intake` stores each event in the durable
//! [`crate::outbox`] with one pending entry per target whose [`filter`]s select it and
//! queues it on the target's lane for its identifier ([`queue`]); each `lane` takes
//! its head (one event, or a batch), has the target's [`transport`] send it, and
//! settles the outcome — acknowledged, dead-lettered, paused, or retried with
//! full-jitter back-off ([`retry`]); `housekeeping` keeps the gauges, flushes what
//! the disk did not take and applies the dead-letter retention; [`stats`] holds the
//! counters and recent deliveries the API and metrics show.
//!
//! The events of one peer go through one lane, one request at a time, in order,
//! while different peers are delivered in parallel (`concurrency` lanes per target);
//! a dead receiver holds up only its own target. A target kind is one
//! [`transport::Transport`] implementation: [`webhook`] (an HTTP POST to an
//! [`address`], built by [`request`], signed by [`sign`], over the pooled [`client`]).

pub mod address;
pub mod client;
pub mod config;
pub mod dialect;
pub mod example;
pub mod filter;
mod housekeeping;
pub mod http;
mod intake;
mod lane;
pub mod nats;
pub mod queue;
pub mod request;
pub mod retry;
pub mod sign;
pub mod stats;
pub mod transport;
pub mod webhook;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::events::Event;
use crate::outbox::{Outbox, OutboxConfig, OutboxError};
use config::WebhookConfig;
use queue::{lane_of, Target, TargetState};
use request::TargetError;
use stats::{DeliveryRecord, Metrics};
use transport::{EventHead, Loaded};

pub use queue::WebhookStatus;

/// Errors of delivery.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A webhook could not be prepared.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// A NATS target could not be prepared: the key and why.
    #[error("NATS target {target}: key `{key}`: {message}")]
    Nats {
        /// The target.
        target: String,
        /// The configuration key.
        key: String,
        /// Why.
        message: String,
    },
    /// No target of that name.
    #[error("no target named {0:?}")]
    UnknownWebhook(String),
    /// A test request failed before a response.
    #[error("webhook {webhook}: {message}")]
    Request {
        /// The webhook.
        webhook: String,
        /// What failed.
        message: String,
    },
}

/// The result of `target test`.
#[derive(Clone, Debug, Serialize)]
pub struct TestOutcome {
    /// The receiver's HTTP status (webhooks; none for a bus).
    pub status: Option<u16>,
    /// Time to the response (or the PubAck).
    pub latency_ms: f64,
    /// The response body (truncated to 1 KiB), or what the bus acknowledged.
    pub body: String,
    /// The test event's id.
    pub id: String,
}

/// What delivery is started with: its sections of the configuration.
#[derive(Clone, Copy, Debug)]
pub struct DeliverySettings<'a> {
    /// Where the outbox lives.
    pub state_dir: &'a Path,
    /// The node id test events carry.
    pub node: &'a str,
    /// `[outbox]`.
    pub outbox: &'a OutboxConfig,
    /// `[[webhooks]]`.
    pub webhooks: &'a [WebhookConfig],
    /// `[[nats]]`.
    pub nats: &'a [nats::config::NatsConfig],
}

/// Shared by the handle, the lanes and housekeeping.
struct Inner {
    outbox: Outbox,
    max_bytes: u64,
    node: String,
    targets: Vec<Target>,
    /// The webhook transports by target index (their secrets reload on SIGHUP).
    webhooks: Vec<Option<Arc<webhook::Webhook>>>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    retention: crate::outbox::retention::Retention,
    /// Rate limit of the "delivered but not forgotten" error.
    ack_errors: crate::throttle::LogThrottle,
}

impl Inner {
    fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name() == name)
    }
}

/// Delivery; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("targets", &self.inner.targets.len())
            .finish_non_exhaustive()
    }
}

/// A webhook's target: its transport over the client of its trust set, its queue
/// with the events the outbox still holds for it.
fn webhook_target(
    config: &WebhookConfig,
    clients: &mut client::Clients,
    runtime: &tokio::runtime::Handle,
    outbox: &Outbox,
) -> Result<(Target, Arc<webhook::Webhook>), SinkError> {
    let template = request::Target::new(config)?;
    let client = {
        // The connector's timer and executor need a runtime context.
        let _entered = runtime.enter();
        clients.for_ca_file(config.ca_file.as_deref())?
    };
    let shape = config
        .dialect
        .shape(config.format)
        .map_err(|message| TargetError::Invalid {
            webhook: config.name.clone(),
            message,
        })?;
    let body_template =
        dialect::template::load(config).map_err(|message| TargetError::Invalid {
            webhook: config.name.clone(),
            message: format!("template: {message}"),
        })?;
    let encoder = dialect::Encoder::new(
        config.dialect,
        shape,
        config.extra_fields.clone(),
        body_template,
    );
    let transport = Arc::new(webhook::Webhook::new(template, encoder, client));
    let target = queued_target(
        transport.clone(),
        outbox,
        TargetSettings {
            name: &config.name,
            events: &config.events,
            enabled: config.enabled,
            retry: &config.retry,
            batch: &config.batch,
            lanes: config.concurrency,
        },
    )?;
    Ok((target, transport))
}

/// What the delivery core needs of any target's configuration.
struct TargetSettings<'a> {
    name: &'a str,
    events: &'a [String],
    enabled: bool,
    retry: &'a config::RetryConfig,
    batch: &'a config::BatchConfig,
    lanes: usize,
}

/// A target of any kind with its queue: the events the outbox still holds for it,
/// each on the lane of its identifier.
fn queued_target(
    transport: Arc<dyn transport::Transport>,
    outbox: &Outbox,
    settings: TargetSettings<'_>,
) -> Result<Target, SinkError> {
    let filters = settings
        .events
        .iter()
        .map(|f| filter::Filter::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| TargetError::Invalid {
            webhook: settings.name.to_owned(),
            message,
        })?;
    let mut state = TargetState {
        lanes: vec![Default::default(); settings.lanes],
        ..Default::default()
    };
    for stored in outbox.pending(settings.name)? {
        let lane = lane_of(&stored.identifier, settings.lanes);
        state.lanes[lane].push_back(stored);
    }
    state.dead_letters = outbox.dead(settings.name)?.len();
    let queued = queue::queued(&state);
    if queued > 0 {
        tracing::info!(target_name = %settings.name, queued, "resuming delivery of queued events");
    }
    Ok(Target {
        transport,
        filters,
        events: settings.events.to_vec(),
        enabled: settings.enabled,
        retry: settings.retry.clone(),
        batch: settings.batch.clone(),
        state: Mutex::new(state),
        wake: (0..settings.lanes).map(|_| Notify::new()).collect(),
    })
}

impl Delivery {
    /// Opens the outbox under `state_dir`, builds one pooled client per trust set,
    /// registers the self-metrics in `registry` and starts every target's lanes on
    /// `runtime`.
    pub fn start(
        settings: DeliverySettings<'_>,
        runtime: &tokio::runtime::Handle,
        registry: &prometheus::Registry,
    ) -> Result<Self, SinkError> {
        let outbox = Outbox::open(settings.state_dir)?;
        let mut clients = client::Clients::default();
        let mut targets = Vec::new();
        let mut webhooks = Vec::new();
        for config in settings.webhooks {
            let (target, transport) = webhook_target(config, &mut clients, runtime, &outbox)?;
            targets.push(target);
            webhooks.push(Some(transport));
        }
        let (stop, _) = watch::channel(false);
        let nats_metrics = nats::metrics::NatsMetrics::new(registry);
        for (index, config) in settings.nats.iter().enumerate() {
            let transport = nats::NatsTarget::start(
                config,
                index,
                settings.node,
                nats_metrics.clone(),
                runtime,
                stop.subscribe(),
            )
            .map_err(|(key, message)| SinkError::Nats {
                target: config.name.clone(),
                key,
                message,
            })?;
            targets.push(queued_target(
                Arc::new(transport),
                &outbox,
                TargetSettings {
                    name: &config.name,
                    events: &config.events,
                    enabled: config.enabled,
                    retry: &config.retry,
                    batch: &config::BatchConfig {
                        max_events: nats::BATCH_EVENTS,
                        max_bytes: 64 * 1024 * 1024,
                        max_wait: Duration::ZERO,
                    },
                    lanes: nats::LANES,
                },
            )?);
            webhooks.push(None);
        }
        let inner = Arc::new(Inner {
            outbox,
            max_bytes: settings.outbox.max_bytes,
            node: settings.node.to_owned(),
            targets,
            webhooks,
            metrics: Metrics::new(registry),
            stop,
            retention: crate::outbox::retention::Retention {
                max_age: settings.outbox.dead_letter_max_age,
                max_bytes: (settings.outbox.max_bytes as f64
                    * settings.outbox.dead_letter_max_share) as u64,
            },
            ack_errors: crate::throttle::LogThrottle::new(Duration::from_secs(10)),
        });
        report_damage(&inner);
        let mut tasks = Vec::new();
        for (t, target) in inner.targets.iter().enumerate() {
            for lane in 0..target.wake.len() {
                tasks.push(runtime.spawn(lane::run(inner.clone(), t, lane)));
            }
        }
        tasks.push(runtime.spawn(housekeeping::run(inner.clone())));
        Ok(Self {
            inner,
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    /// Accepts events (blocking: call it from a thread, not a task): they are
    /// written to the outbox and fsynced before it returns, then delivered. When the
    /// disk cannot be written (full or failing) the outbox holds them in memory (up
    /// to [`crate::outbox::MEMORY_LIMIT`]), they are delivered from there at once and
    /// written as soon as the disk works again; never lost silently: every drop is
    /// counted and logged.
    pub fn accept(&self, events: &[Event]) {
        self.inner.accept(events);
    }

    /// Events held in memory because the disk did not take them.
    pub fn unwritten(&self) -> usize {
        self.inner.outbox.unwritten()
    }

    /// Re-reads the secrets of every webhook that is still configured (by name)
    /// from `webhooks`; returns per webhook what changed, or why its secrets could
    /// not be read (it keeps the old ones then). Webhooks added or removed in the
    /// file take effect at the next start.
    pub fn reload_secrets(
        &self,
        webhooks: &[WebhookConfig],
    ) -> Vec<(String, Result<request::Reloaded, TargetError>)> {
        self.inner
            .webhooks
            .iter()
            .flatten()
            .filter_map(|webhook| {
                let name = webhook.template.name.clone();
                let config = webhooks.iter().find(|w| w.name == name)?;
                Some((name, webhook.template.reload(config)))
            })
            .collect()
    }

    /// Every target's state.
    pub fn webhooks(&self) -> Vec<WebhookStatus> {
        self.inner.targets.iter().map(queue::status).collect()
    }

    /// One target's recent deliveries, newest last.
    pub fn deliveries(&self, name: &str) -> Option<Vec<DeliveryRecord>> {
        let target = self.inner.target(name)?;
        let state = target.state.lock().expect("not poisoned");
        Some(state.stats.recent.iter().cloned().collect())
    }

    /// One target's dead letters: event id and why it was given up.
    pub fn dead_letters(&self, name: &str) -> Result<Vec<(String, String)>, SinkError> {
        self.inner
            .target(name)
            .ok_or_else(|| SinkError::UnknownWebhook(name.to_owned()))?;
        let dead = self.inner.outbox.dead(name)?;
        let seqs: Vec<u64> = dead.iter().map(|(s, _)| s.seq).collect();
        let bodies = self.inner.outbox.load(&seqs)?;
        Ok(bodies
            .iter()
            .zip(dead)
            .map(|((_, body), (_, reason))| (EventHead::of(body).id, reason))
            .collect())
    }

    /// Queues every dead letter of a target again (and unpauses it); returns how many.
    pub fn replay(&self, name: &str) -> Result<usize, SinkError> {
        let target = self
            .inner
            .target(name)
            .ok_or_else(|| SinkError::UnknownWebhook(name.to_owned()))?;
        let replayed = self.inner.outbox.replay(name)?;
        let count = replayed.len();
        let mut state = target.state.lock().expect("not poisoned");
        state.paused = None;
        state.dead_letters = 0;
        for stored in replayed {
            let lane = lane_of(&stored.identifier, target.wake.len());
            let queue = &mut state.lanes[lane];
            let at = queue.partition_point(|s| s.seq < stored.seq);
            queue.insert(at, stored);
        }
        drop(state);
        for wake in &target.wake {
            wake.notify_one();
        }
        tracing::info!(webhook = name, count, "dead letters queued again");
        Ok(count)
    }

    /// Sends a test event (`entity` and `event` both `test`) to one target, outside
    /// the outbox, and reports the answer.
    pub async fn test(&self, name: &str) -> Result<TestOutcome, SinkError> {
        let target = self
            .inner
            .target(name)
            .ok_or_else(|| SinkError::UnknownWebhook(name.to_owned()))?;
        let event = Event::new(
            &self.inner.node,
            "test",
            "test",
            name,
            serde_json::json!({"Message": "wgpulse webhook test"}),
        );
        let body = serde_json::to_vec(&event).expect("serializes");
        let loaded = Loaded {
            head: EventHead::of(&body),
            body: body.into(),
        };
        target
            .transport
            .test(&loaded)
            .await
            .map_err(|message| SinkError::Request {
                webhook: name.to_owned(),
                message,
            })
    }

    /// Stops the lanes, letting requests in flight finish for at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.inner.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().expect("not poisoned").drain(..).collect();
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("webhook requests still in flight at shutdown: they will be retried at the next start");
        }
    }
}

/// Says loudly what was wrong with a damaged outbox found at start, and counts it.
fn report_damage(inner: &Inner) {
    let Some(damage) = inner.outbox.damage() else {
        return;
    };
    let cause = if damage.aside.is_some() {
        "unreadable"
    } else {
        "empty"
    };
    inner
        .metrics
        .outbox_damaged
        .with_label_values(&[cause])
        .inc();
    let aside = damage
        .aside
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(nothing to keep)".into());
    match damage.salvaged {
        Some(salvaged) => {
            inner.metrics.outbox_salvaged.inc_by(salvaged as u64);
            tracing::error!(
                cause = %damage.cause,
                moved_to = %aside,
                salvaged,
                "THE OUTBOX FILE WAS DAMAGED: moved aside, started a fresh one; the events it still held are queued again (any others are lost)"
            );
        }
        None => tracing::error!(
            cause = %damage.cause,
            moved_to = %aside,
            "THE OUTBOX FILE WAS DAMAGED: moved aside, started a fresh one; nothing could be read back, so its undelivered events (how many is unknown) are lost"
        ),
    }
}
