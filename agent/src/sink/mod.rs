//! Webhook delivery: from an accepted event to a receiver's 2xx.
//!
//! [`Delivery::accept`] writes events to the durable [`crate::outbox`] (fsynced)
//! with one pending entry per webhook whose filters select them, then wakes that
//! webhook's senders. Each webhook has `concurrency` lanes; an event's lane is chosen
//! by its identifier, so the events of one peer go through one lane, one request at a
//! time, in order, while different peers are delivered in parallel. A lane retries
//! its head request with full-jitter backoff until a 2xx, a non-retryable 4xx (the
//! events become dead letters), a 410 (the webhook is paused, loudly), or
//! `retry.max_age` (dead letters). A dead receiver holds up only its own webhook.

pub mod client;
pub mod config;
pub mod filter;
pub mod request;
pub mod retry;
pub mod sign;
pub mod stats;
pub mod writer;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::events::Event;
use crate::outbox::{Incoming, Outbox, OutboxError, Stored};
use config::{redact_url, BatchConfig, Format, RetryConfig};
use request::{Target, TargetError};
use retry::Outcome;
use stats::{DeliveryRecord, Metrics, WebhookStats};

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
    /// No webhook of that name.
    #[error("no webhook named {0:?}")]
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

/// How often the dead-letter retention rule runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Most response body bytes read (and kept for `webhook test`).
const BODY_LIMIT: usize = 64 * 1024;

/// The public state of one webhook (API, CLI).
#[derive(Clone, Debug, Serialize)]
pub struct WebhookStatus {
    /// Name.
    pub name: String,
    /// URL without credentials or query.
    pub url: String,
    /// Configured `enabled`.
    pub enabled: bool,
    /// Why delivery is paused (e.g. 410 Gone), if it is.
    pub paused: Option<String>,
    /// Body format.
    pub format: Format,
    /// Event filters.
    pub events: Vec<String>,
    /// Events waiting.
    pub queued: usize,
    /// Age of the oldest waiting event.
    pub oldest_queued_age_seconds: f64,
    /// Dead letters now stored.
    pub dead_letters: usize,
    /// Counters since the agent started.
    #[serde(flatten)]
    pub counters: stats::Counters,
    /// Average request latency.
    pub average_latency_ms: Option<f64>,
}

/// The result of `webhook test`.
#[derive(Clone, Debug, Serialize)]
pub struct TestOutcome {
    /// The receiver's status.
    pub status: u16,
    /// Time to the response.
    pub latency_ms: f64,
    /// The response body (truncated to 1 KiB).
    pub body: String,
    /// The test event's id.
    pub id: String,
}

struct Hook {
    target: Target,
    /// The pooled client of this webhook's trust set.
    client: client::HttpClient,
    events: Vec<String>,
    enabled: bool,
    retry: RetryConfig,
    batch: BatchConfig,
    state: Mutex<HookState>,
    wake: Vec<Notify>,
}

#[derive(Default)]
struct HookState {
    lanes: Vec<VecDeque<Stored>>,
    paused: Option<String>,
    stats: WebhookStats,
    dead_letters: usize,
}

struct Inner {
    outbox: Outbox,
    max_bytes: u64,
    node: String,
    hooks: Vec<Hook>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    retention: crate::outbox::retention::Retention,
    /// Rate limit of the "delivered but not forgotten" error.
    ack_errors: crate::throttle::LogThrottle,
}

/// Webhook delivery; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("webhooks", &self.inner.hooks.len())
            .finish_non_exhaustive()
    }
}

/// The lane of an identifier: FNV-1a (64 bit) of its bytes modulo the lanes. A
/// fixed, documented hash, so that an event reloaded from the outbox after a restart
/// or an upgrade of Rust goes to the same lane as the events of its peer still
/// arriving.
fn lane_of(identifier: &str, lanes: usize) -> usize {
    let hash = identifier
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    (hash % lanes as u64) as usize
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct EventHead {
    id: String,
    entity: String,
    event: String,
}

impl Delivery {
    /// Opens the outbox under `state_dir`, builds the one pooled client, registers the
    /// self-metrics in `registry` and starts every webhook's senders on `runtime`.
    pub fn start(
        config: &Config,
        runtime: &tokio::runtime::Handle,
        registry: &prometheus::Registry,
    ) -> Result<Self, SinkError> {
        let outbox = Outbox::open(&config.state_dir)?;
        let mut clients = client::Clients::default();
        let mut hooks = Vec::new();
        for webhook in &config.webhooks {
            let target = Target::new(webhook)?;
            let client = {
                // The connector's timer and executor need a runtime context.
                let _entered = runtime.enter();
                clients.for_ca_file(webhook.ca_file.as_deref())?
            };
            let mut state = HookState {
                lanes: vec![VecDeque::new(); webhook.concurrency],
                ..Default::default()
            };
            for stored in outbox.pending(&webhook.name)? {
                let lane = lane_of(&stored.identifier, webhook.concurrency);
                state.lanes[lane].push_back(stored);
            }
            state.dead_letters = outbox.dead(&webhook.name)?.len();
            let queued: usize = state.lanes.iter().map(VecDeque::len).sum();
            if queued > 0 {
                tracing::info!(webhook = %webhook.name, queued, "resuming delivery of queued events");
            }
            hooks.push(Hook {
                target,
                client,
                events: webhook.events.clone(),
                enabled: webhook.enabled,
                retry: webhook.retry.clone(),
                batch: webhook.batch.clone(),
                state: Mutex::new(state),
                wake: (0..webhook.concurrency).map(|_| Notify::new()).collect(),
            });
        }
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            outbox,
            max_bytes: config.outbox.max_bytes,
            node: config.node_id(),
            hooks,
            metrics: Metrics::new(registry),
            stop,
            retention: crate::outbox::retention::Retention {
                max_age: config.outbox.dead_letter_max_age,
                max_bytes: (config.outbox.max_bytes as f64 * config.outbox.dead_letter_max_share)
                    as u64,
            },
            ack_errors: crate::throttle::LogThrottle::new(Duration::from_secs(10)),
        });
        report_damage(&inner);
        let mut tasks = Vec::new();
        for (h, hook) in inner.hooks.iter().enumerate() {
            for lane in 0..hook.wake.len() {
                tasks.push(runtime.spawn(run_lane(inner.clone(), h, lane)));
            }
        }
        tasks.push(runtime.spawn(housekeeping(inner.clone())));
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
        if events.is_empty() {
            return;
        }
        let inner = &self.inner;
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .map(|e| serde_json::to_vec(e).expect("events serialize"))
            .collect();
        let incoming: Vec<Incoming> = events
            .iter()
            .zip(&bodies)
            .map(|(event, body)| Incoming {
                body,
                identifier: &event.identifier,
                created_ms: (event.timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
                webhooks: inner
                    .hooks
                    .iter()
                    .filter(|h| filter::any_matches(&h.target.filters, event))
                    .map(|h| h.target.name.as_str())
                    .collect(),
            })
            .collect();
        let needed: u64 = incoming
            .iter()
            .filter(|i| !i.webhooks.is_empty())
            .map(|i| i.body.len() as u64)
            .sum();
        self.make_room(needed);
        let appended = inner.outbox.append(&incoming);
        self.after_write(&appended.dropped);
        // Into each webhook's lanes under one lock per webhook, then one wake per lane.
        for hook in &inner.hooks {
            let lanes = hook.wake.len();
            let mut woken = vec![false; lanes];
            let mut state = hook.state.lock().expect("not poisoned");
            for (item, seq) in incoming.iter().zip(&appended.seqs) {
                if !item.webhooks.contains(&hook.target.name.as_str()) {
                    continue;
                }
                let lane = lane_of(item.identifier, lanes);
                state.lanes[lane].push_back(Stored {
                    seq: *seq,
                    identifier: item.identifier.to_owned(),
                    created_ms: item.created_ms,
                    size: item.body.len(),
                });
                woken[lane] = true;
            }
            drop(state);
            for (lane, woken) in woken.into_iter().enumerate() {
                if woken {
                    hook.wake[lane].notify_one();
                }
            }
        }
    }

    /// Gauges, counters and the one log line per change of the disk's state, after
    /// a write or a flush.
    fn after_write(&self, dropped: &[(String, u64)]) {
        let inner = &self.inner;
        for (webhook, count) in dropped {
            tracing::error!(
                webhook = %webhook,
                dropped = count,
                "events dropped: the disk cannot be written and the memory buffer is full"
            );
            inner
                .metrics
                .dropped
                .with_label_values(&[webhook])
                .inc_by(*count);
            if let Some(hook) = self.hook(webhook) {
                hook.state
                    .lock()
                    .expect("not poisoned")
                    .stats
                    .counters
                    .dropped += count;
            }
        }
        match inner.outbox.take_change() {
            Some(crate::outbox::DiskChange::Failing(err)) => tracing::error!(
                "{err}; holding events in memory (delivered from there meanwhile) and retrying the disk with back-off"
            ),
            Some(crate::outbox::DiskChange::Recovered(written)) => tracing::info!(
                written,
                "the outbox is writable again; events held in memory are stored"
            ),
            None => {}
        }
        inner.metrics.spilled.set(inner.outbox.unwritten() as i64);
        inner.metrics.outbox_bytes.set(inner.outbox.bytes() as i64);
    }

    /// Events held in memory because the disk did not take them.
    pub fn unwritten(&self) -> usize {
        self.inner.outbox.unwritten()
    }

    /// The full-outbox policy: drop the oldest undelivered events of the webhook
    /// with the most queued until `needed` bytes fit; when nothing is queued, the
    /// oldest dead letters make room instead (the outbox never grows past its limit
    /// by more than the events being added).
    fn make_room(&self, needed: u64) {
        let inner = &self.inner;
        let mut dropped = 0usize;
        while inner.outbox.bytes() + needed > inner.max_bytes {
            // The choice and the pop are one critical section per webhook: a lane may
            // empty its queue between the choice and the pop, and then another
            // webhook is chosen (nothing assumes the chosen one is still full).
            let Some(hook) = fullest(&inner.hooks) else {
                if !self.drop_oldest_dead() {
                    tracing::warn!(
                        bytes = inner.outbox.bytes(),
                        max_bytes = inner.max_bytes,
                        "outbox over its limit with nothing left to drop: storing anyway"
                    );
                    break;
                }
                continue;
            };
            let Some(oldest) = pop_oldest(&mut hook.state.lock().expect("not poisoned")) else {
                continue;
            };
            if let Err(err) = inner.outbox.ack(&hook.target.name, &[oldest.seq]) {
                tracing::error!(webhook = %hook.target.name, "dropping an event: {err}");
                break;
            }
            inner
                .metrics
                .dropped
                .with_label_values(&[&hook.target.name])
                .inc();
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_bytes = inner.max_bytes,
                "outbox full: dropped the oldest undelivered events of the slowest webhook"
            );
        }
    }

    /// Forgets the oldest dead letter of any webhook; false when there is none.
    fn drop_oldest_dead(&self) -> bool {
        let inner = &self.inner;
        let oldest = inner
            .hooks
            .iter()
            .filter_map(|h| {
                let dead = inner.outbox.dead(&h.target.name).ok()?;
                dead.first().map(|(s, _)| (s.seq, h))
            })
            .min_by_key(|(seq, _)| *seq);
        let Some((seq, hook)) = oldest else {
            return false;
        };
        if inner.outbox.forget_dead(&hook.target.name, &[seq]).is_err() {
            return false;
        }
        {
            let mut state = hook.state.lock().expect("not poisoned");
            state.dead_letters = state.dead_letters.saturating_sub(1);
        }
        inner
            .metrics
            .dead_expired
            .with_label_values(&[&hook.target.name, "outbox_full"])
            .inc();
        true
    }

    /// Applies the dead-letter retention rule now.
    pub fn expire_dead_letters(&self) {
        let inner = &self.inner;
        let names: Vec<&str> = inner.hooks.iter().map(|h| h.target.name.as_str()).collect();
        match inner.outbox.expire_dead(&names, inner.retention, now_ms()) {
            Ok(forgotten) => {
                for ((webhook, why), count) in forgotten {
                    tracing::info!(webhook = %webhook, count, reason = why.label(), "dead letters forgotten by the retention rule");
                    inner
                        .metrics
                        .dead_expired
                        .with_label_values(&[&webhook, why.label()])
                        .inc_by(count);
                    if let Some(hook) = self.hook(&webhook) {
                        let mut state = hook.state.lock().expect("not poisoned");
                        state.dead_letters = state.dead_letters.saturating_sub(count as usize);
                    }
                }
            }
            Err(err) => tracing::warn!("dead-letter retention: {err}"),
        }
        inner.metrics.outbox_bytes.set(inner.outbox.bytes() as i64);
    }

    /// Re-reads the secrets of every webhook that is still configured (by name)
    /// from `webhooks`; returns per webhook what changed, or why its secrets could
    /// not be read (it keeps the old ones then). Webhooks added or removed in the
    /// file take effect at the next start.
    pub fn reload_secrets(
        &self,
        webhooks: &[config::WebhookConfig],
    ) -> Vec<(String, Result<request::Reloaded, TargetError>)> {
        self.inner
            .hooks
            .iter()
            .filter_map(|hook| {
                let config = webhooks.iter().find(|w| w.name == hook.target.name)?;
                Some((hook.target.name.clone(), hook.target.reload(config)))
            })
            .collect()
    }

    /// Every webhook's state.
    pub fn webhooks(&self) -> Vec<WebhookStatus> {
        self.inner.hooks.iter().map(status).collect()
    }

    /// One webhook's recent deliveries, newest last.
    pub fn deliveries(&self, name: &str) -> Option<Vec<DeliveryRecord>> {
        let hook = self.hook(name)?;
        let state = hook.state.lock().expect("not poisoned");
        Some(state.stats.recent.iter().cloned().collect())
    }

    /// One webhook's dead letters: event id and why it was given up.
    pub fn dead_letters(&self, name: &str) -> Result<Vec<(String, String)>, SinkError> {
        self.hook(name)
            .ok_or_else(|| SinkError::UnknownWebhook(name.to_owned()))?;
        let dead = self.inner.outbox.dead(name)?;
        let seqs: Vec<u64> = dead.iter().map(|(s, _)| s.seq).collect();
        let bodies = self.inner.outbox.load(&seqs)?;
        Ok(bodies
            .iter()
            .zip(dead)
            .map(|((_, body), (_, reason))| {
                let id = serde_json::from_slice::<EventHead>(body)
                    .map(|h| h.id)
                    .unwrap_or_default();
                (id, reason)
            })
            .collect())
    }

    fn hook(&self, name: &str) -> Option<&Hook> {
        self.inner.hooks.iter().find(|h| h.target.name == name)
    }

    /// Queues every dead letter of a webhook again (and unpauses it); returns how many.
    pub fn replay(&self, name: &str) -> Result<usize, SinkError> {
        let hook = self
            .hook(name)
            .ok_or_else(|| SinkError::UnknownWebhook(name.to_owned()))?;
        let replayed = self.inner.outbox.replay(name)?;
        let count = replayed.len();
        let mut state = hook.state.lock().expect("not poisoned");
        state.paused = None;
        state.dead_letters = 0;
        for stored in replayed {
            let lane = lane_of(&stored.identifier, hook.wake.len());
            let queue = &mut state.lanes[lane];
            let at = queue.partition_point(|s| s.seq < stored.seq);
            queue.insert(at, stored);
        }
        drop(state);
        for wake in &hook.wake {
            wake.notify_one();
        }
        tracing::info!(webhook = name, count, "dead letters queued again");
        Ok(count)
    }

    /// Sends a signed test event (`entity` and `event` both `test`) to one webhook,
    /// outside the outbox, and reports the response.
    pub async fn test(&self, name: &str) -> Result<TestOutcome, SinkError> {
        let hook = self
            .hook(name)
            .ok_or_else(|| SinkError::UnknownWebhook(name.to_owned()))?;
        let event = Event::new(
            &self.inner.node,
            "test",
            "test",
            name,
            serde_json::json!({"Message": "wgpulse webhook test"}),
        );
        let body = serde_json::to_vec(&event).expect("serializes");
        let body = match hook.target.format {
            Format::Single => body,
            Format::Batch => [b"[".as_slice(), &body, b"]"].concat(),
        };
        let request = hook.target.request(
            &event.id,
            Some("test.test"),
            Bytes::from(body),
            SystemTime::now(),
        );
        let started = Instant::now();
        let (status, _, body) = send(&hook.client, hook.target.timeout, request)
            .await
            .map_err(|message| SinkError::Request {
                webhook: name.to_owned(),
                message,
            })?;
        let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
        Ok(TestOutcome {
            status,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            body: text,
            id: event.id,
        })
    }

    /// Stops the senders, letting requests in flight finish for at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.inner.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().expect("not poisoned").drain(..).collect();
        let all = futures_join(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("webhook requests still in flight at shutdown: they will be retried at the next start");
        }
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// The webhook with the most events queued, if any has one.
fn fullest(hooks: &[Hook]) -> Option<&Hook> {
    hooks
        .iter()
        .map(|h| (queued(&h.state.lock().expect("not poisoned")), h))
        .filter(|(queued, _)| *queued > 0)
        .max_by_key(|(queued, _)| *queued)
        .map(|(_, h)| h)
}

fn queued(state: &HookState) -> usize {
    state.lanes.iter().map(VecDeque::len).sum()
}

/// Takes the oldest queued event of a webhook (across its lanes) out of its queue,
/// counted as dropped; `None` when the queue is empty by now.
fn pop_oldest(state: &mut HookState) -> Option<Stored> {
    let lane = state
        .lanes
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.front().map(|s| (s.seq, i)))
        .min()
        .map(|(_, i)| i)?;
    let stored = state.lanes[lane].pop_front()?;
    state.stats.counters.dropped += 1;
    Some(stored)
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

fn status(hook: &Hook) -> WebhookStatus {
    let state = hook.state.lock().expect("not poisoned");
    let queued = state.lanes.iter().map(VecDeque::len).sum();
    let oldest = state
        .lanes
        .iter()
        .filter_map(|l| l.front().map(|s| s.created_ms))
        .min();
    WebhookStatus {
        name: hook.target.name.clone(),
        url: redact_url(&hook.target.url.to_string()),
        enabled: hook.enabled,
        paused: state.paused.clone(),
        format: hook.target.format,
        events: hook.events.clone(),
        queued,
        oldest_queued_age_seconds: oldest
            .map(|ms| now_ms().saturating_sub(ms) as f64 / 1000.0)
            .unwrap_or(0.0),
        dead_letters: state.dead_letters,
        counters: state.stats.counters.clone(),
        average_latency_ms: state.stats.average_latency_ms(),
    }
}

/// Sends a request; returns status, `Retry-After` and up to [`BODY_LIMIT`] of body.
async fn send(
    client: &client::HttpClient,
    timeout: Duration,
    request: hyper::Request<http_body_util::Full<Bytes>>,
) -> Result<(u16, Option<String>, Bytes), String> {
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            message
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = http_body_util::Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok((status, retry_after, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no response within {timeout:?}")),
    }
}

/// Takes the head of a lane: one event (single) or up to the batch limits.
fn take(lane: &VecDeque<Stored>, format: Format, batch: &BatchConfig) -> Vec<Stored> {
    match format {
        Format::Single => lane.front().cloned().into_iter().collect(),
        Format::Batch => {
            let mut bytes = 2;
            let mut out = Vec::new();
            for stored in lane {
                if !out.is_empty()
                    && (out.len() >= batch.max_events || bytes + stored.size + 1 > batch.max_bytes)
                {
                    break;
                }
                bytes += stored.size + 1;
                out.push(stored.clone());
            }
            out
        }
    }
}

/// One lane of one webhook: delivers its head, in order, forever.
async fn run_lane(inner: Arc<Inner>, h: usize, lane: usize) {
    let hook = &inner.hooks[h];
    let name = hook.target.name.clone();
    let mut stop = inner.stop.subscribe();
    let mut attempt: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = {
            let state = hook.state.lock().expect("not poisoned");
            if !hook.enabled || state.paused.is_some() {
                Vec::new()
            } else {
                take(&state.lanes[lane], hook.target.format, &hook.batch)
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = hook.wake[lane].notified() => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        if hook.target.format == Format::Batch
            && attempt == 0
            && batch.len() < hook.batch.max_events
            && !hook.batch.max_wait.is_zero()
        {
            // A partial batch waits up to max_wait (from its oldest event) for more;
            // by default it does not: a lane sends what it has as soon as it is idle,
            // and what arrives meanwhile is the next batch.
            let due = batch[0].created_ms + hook.batch.max_wait.as_millis() as u64;
            let now = now_ms();
            if now < due {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(due - now)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        }
        let max_age_ms = hook.retry.max_age.as_millis() as u64;
        let now = now_ms();
        let (expired, batch): (Vec<Stored>, Vec<Stored>) = batch
            .into_iter()
            .partition(|s| now.saturating_sub(s.created_ms) > max_age_ms);
        if !expired.is_empty() {
            bury(&inner, hook, lane, &expired, "older than retry.max_age").await;
            continue;
        }
        let seqs: Vec<u64> = batch.iter().map(|s| s.seq).collect();
        let loaded = {
            let inner = inner.clone();
            let seqs = seqs.clone();
            tokio::task::spawn_blocking(move || inner.outbox.load(&seqs)).await
        };
        let bodies = match loaded {
            Ok(Ok(bodies)) => bodies,
            other => {
                tracing::error!(webhook = %name, "reading queued events: {other:?}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        };
        if bodies.len() < seqs.len() {
            // Dropped meanwhile (full outbox): forget what is gone and start over.
            let present: HashSet<u64> = bodies.iter().map(|(s, _)| *s).collect();
            let mut state = hook.state.lock().expect("not poisoned");
            state.lanes[lane].retain(|s| !seqs.contains(&s.seq) || present.contains(&s.seq));
            continue;
        }
        let heads: Vec<EventHead> = bodies
            .iter()
            .map(|(_, b)| {
                serde_json::from_slice(b).unwrap_or(EventHead {
                    id: String::new(),
                    entity: String::new(),
                    event: String::new(),
                })
            })
            .collect();
        let (id, kind, body) = match hook.target.format {
            Format::Single => (
                heads[0].id.clone(),
                Some(format!("{}.{}", heads[0].entity, heads[0].event)),
                Bytes::from(bodies[0].1.clone()),
            ),
            Format::Batch => {
                let mut body =
                    Vec::with_capacity(bodies.iter().map(|(_, b)| b.len() + 1).sum::<usize>() + 2);
                body.push(b'[');
                for (i, (_, b)) in bodies.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(b);
                }
                body.push(b']');
                // Stable across retries: the same events give the same id.
                (
                    format!("batch_{}_{}", heads[0].id, heads.len()),
                    None,
                    Bytes::from(body),
                )
            }
        };
        if attempt > 0 {
            inner.metrics.retries.with_label_values(&[&name]).inc();
            hook.state
                .lock()
                .expect("not poisoned")
                .stats
                .counters
                .retries += 1;
        }
        let request = hook
            .target
            .request(&id, kind.as_deref(), body, SystemTime::now());
        let started = Instant::now();
        let result = send(&hook.client, hook.target.timeout, request).await;
        let latency = started.elapsed();
        let (outcome, status, error) = match result {
            Ok((status, retry_after, _)) => (
                retry::classify(status, retry_after.as_deref(), SystemTime::now()),
                Some(status),
                None,
            ),
            Err(message) => (
                Outcome::Retry {
                    status: None,
                    after: None,
                    reason: message.clone(),
                },
                None,
                Some(message),
            ),
        };
        inner
            .metrics
            .requests
            .with_label_values(&[&name, outcome.label()])
            .inc();
        inner
            .metrics
            .latency
            .with_label_values(&[&name])
            .observe(latency.as_secs_f64());
        hook.state.lock().expect("not poisoned").stats.record(
            DeliveryRecord {
                at: time::OffsetDateTime::now_utc(),
                id: id.clone(),
                events: batch.len(),
                outcome: outcome.label().to_owned(),
                status,
                latency_ms: latency.as_secs_f64() * 1000.0,
                error: error.clone(),
            },
            latency,
        );
        match outcome {
            Outcome::Delivered => {
                attempt = 0;
                let acked = {
                    let inner = inner.clone();
                    let name = name.clone();
                    let seqs = seqs.clone();
                    tokio::task::spawn_blocking(move || inner.outbox.ack(&name, &seqs)).await
                };
                if let Ok(Err(err)) | Err(err) = acked.map_err(|e| OutboxError::Store {
                    path: Default::default(),
                    op: "acknowledging",
                    message: e.to_string(),
                }) {
                    // Delivered but not forgotten: it may be delivered again (same id).
                    if let Some(suppressed) = inner.ack_errors.allow(Instant::now()) {
                        tracing::error!(webhook = %name, suppressed, "{err}");
                    }
                }
                remove(hook, lane, &seqs);
                inner.metrics.outbox_bytes.set(inner.outbox.bytes() as i64);
            }
            Outcome::Rejected(code) => {
                attempt = 0;
                tracing::warn!(webhook = %name, status = code, events = seqs.len(), "receiver rejected the events: moved to the dead letters (not retried)");
                bury(&inner, hook, lane, &batch, &format!("HTTP {code}")).await;
            }
            Outcome::Gone => {
                tracing::error!(webhook = %name, "receiver answered 410 Gone: webhook PAUSED; events keep queueing; `wgpulse webhook replay {name}` or a restart resumes it");
                hook.state.lock().expect("not poisoned").paused =
                    Some("receiver answered 410 Gone".into());
            }
            Outcome::Retry { after, reason, .. } => {
                attempt += 1;
                let wait = retry::backoff(
                    attempt,
                    hook.retry.initial_backoff,
                    hook.retry.max_backoff,
                    after,
                );
                tracing::warn!(webhook = %name, attempt, retry_in = ?wait, "delivery failed: {reason}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

fn remove(hook: &Hook, lane: usize, seqs: &[u64]) {
    let gone: HashSet<u64> = seqs.iter().copied().collect();
    hook.state.lock().expect("not poisoned").lanes[lane].retain(|s| !gone.contains(&s.seq));
}

async fn bury(inner: &Arc<Inner>, hook: &Hook, lane: usize, batch: &[Stored], reason: &str) {
    let seqs: Vec<u64> = batch.iter().map(|s| s.seq).collect();
    let result = {
        let inner = inner.clone();
        let name = hook.target.name.clone();
        let seqs = seqs.clone();
        let reason = reason.to_owned();
        tokio::task::spawn_blocking(move || inner.outbox.bury(&name, &seqs, &reason)).await
    };
    if let Ok(Err(err)) = result {
        tracing::error!(webhook = %hook.target.name, "{err}");
    }
    remove(hook, lane, &seqs);
    let mut state = hook.state.lock().expect("not poisoned");
    state.dead_letters += seqs.len();
    state.stats.counters.dead += seqs.len() as u64;
    inner
        .metrics
        .dead
        .with_label_values(&[&hook.target.name])
        .inc_by(seqs.len() as u64);
}

/// Every second: queue gauges, and another try at writing events held in memory.
async fn housekeeping(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let delivery = Delivery {
        inner: inner.clone(),
        tasks: Arc::default(),
    };
    // The first pass runs at once: dead letters past their age go at start.
    let mut last_retention = Instant::now() - RETENTION_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        for hook in &inner.hooks {
            let status = status(hook);
            inner
                .metrics
                .queued
                .with_label_values(&[&status.name])
                .set(status.queued as f64);
            inner
                .metrics
                .oldest_age
                .with_label_values(&[&status.name])
                .set(status.oldest_queued_age_seconds);
        }
        if inner.outbox.unwritten() > 0 {
            // The outbox keeps its own back-off: most of these calls do nothing.
            let delivery = delivery.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _ = delivery.inner.outbox.flush();
                delivery.after_write(&[]);
            })
            .await;
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            let delivery = delivery.clone();
            let _ = tokio::task::spawn_blocking(move || delivery.expire_dead_letters()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_stable_per_identifier() {
        // Values from an independent FNV-1a implementation (Python).
        assert_eq!(lane_of("peer-a", 4), 3);
        assert_eq!(lane_of("peer-a", 7), 4);
        assert_eq!(
            lane_of("LXYw72SS8k55FzfXTwoCDiHaVLr4hwAtu3KqfWqKi3M=", 4),
            1
        );
        assert_eq!(
            lane_of("LXYw72SS8k55FzfXTwoCDiHaVLr4hwAtu3KqfWqKi3M=", 7),
            3
        );
        let lanes: HashSet<usize> = (0..100).map(|i| lane_of(&format!("p{i}"), 4)).collect();
        assert_eq!(lanes.len(), 4, "identifiers spread over the lanes");
    }

    fn stored(seq: u64) -> Stored {
        Stored {
            seq,
            identifier: "x".into(),
            created_ms: 0,
            size: 100,
        }
    }

    #[test]
    fn a_lane_emptied_between_the_choice_and_the_pop_is_no_panic() {
        let mut state = HookState {
            lanes: vec![
                VecDeque::from([stored(5)]),
                VecDeque::from([stored(2), stored(7)]),
            ],
            ..Default::default()
        };
        // The policy chose this webhook (it had events)...
        assert_eq!(queued(&state), 3);
        assert_eq!(
            pop_oldest(&mut state).map(|s| s.seq),
            Some(2),
            "the oldest across lanes"
        );
        // ...and its lanes delivered everything before the pop: nothing to take.
        state.lanes.iter_mut().for_each(VecDeque::clear);
        assert_eq!(pop_oldest(&mut state), None);
        assert_eq!(state.stats.counters.dropped, 1);
    }

    #[test]
    fn batches_respect_both_limits() {
        let lane: VecDeque<Stored> = (0..10)
            .map(|seq| Stored {
                seq,
                identifier: "x".into(),
                created_ms: 0,
                size: 100,
            })
            .collect();
        let mut batch = BatchConfig {
            max_events: 4,
            ..Default::default()
        };
        assert_eq!(take(&lane, Format::Batch, &batch).len(), 4);
        batch.max_events = 100;
        batch.max_bytes = 350;
        assert_eq!(take(&lane, Format::Batch, &batch).len(), 3);
        batch.max_bytes = 10;
        assert_eq!(
            take(&lane, Format::Batch, &batch).len(),
            1,
            "one oversized event goes alone"
        );
        assert_eq!(take(&lane, Format::Single, &batch).len(), 1);
    }
}
