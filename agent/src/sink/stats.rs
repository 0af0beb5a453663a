//! Delivery statistics: per-webhook counters and recent deliveries for the API, and
//! the `wgpulse_webhook_*` / `wgpulse_outbox_*` self-metrics.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use serde::Serialize;

/// How many recent deliveries each webhook remembers.
pub const RECENT: usize = 100;

/// One delivery attempt.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryRecord {
    /// When it finished.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    /// `webhook-id` of the request.
    pub id: String,
    /// Events in it.
    pub events: usize,
    /// `delivered`, `rejected`, `gone`, `retry`.
    pub outcome: String,
    /// HTTP status, if a response came.
    pub status: Option<u16>,
    /// Time to the response (or the failure).
    pub latency_ms: f64,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// Per-webhook counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Events delivered (2xx).
    pub delivered: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Events moved to the dead letters.
    pub dead: u64,
    /// Events dropped because the outbox was full.
    pub dropped: u64,
    /// Last 2xx.
    pub last_success: Option<SystemTime>,
    /// Last failed attempt.
    pub last_failure: Option<SystemTime>,
    /// Its error.
    pub last_error: Option<String>,
    /// Sum of request latencies (for the average).
    #[serde(skip)]
    pub latency_total: Duration,
    /// Requests timed.
    #[serde(skip)]
    pub requests: u64,
}

/// Per-webhook statistics kept in memory.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Counters.
    pub counters: Counters,
    /// The most recent deliveries, newest last.
    pub recent: VecDeque<DeliveryRecord>,
}

impl WebhookStats {
    /// Records one attempt that delivered `delivered` of its events.
    pub fn record(&mut self, record: DeliveryRecord, delivered: usize, latency: Duration) {
        self.counters.requests += 1;
        self.counters.latency_total += latency;
        let now = SystemTime::now();
        self.counters.delivered += delivered as u64;
        if delivered > 0 {
            self.counters.last_success = Some(now);
        }
        if record.outcome != "delivered" {
            self.counters.failed += 1;
            self.counters.last_failure = Some(now);
            self.counters.last_error = record
                .error
                .clone()
                .or_else(|| record.status.map(|s| format!("HTTP {s}")));
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(record);
    }

    /// Average request latency in milliseconds.
    pub fn average_latency_ms(&self) -> Option<f64> {
        (self.counters.requests > 0).then(|| {
            self.counters.latency_total.as_secs_f64() * 1000.0 / self.counters.requests as f64
        })
    }
}

/// The delivery self-metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Requests by webhook and outcome.
    pub requests: IntCounterVec,
    /// Request latency by webhook.
    pub latency: HistogramVec,
    /// Events queued per webhook.
    pub queued: GaugeVec,
    /// Age of the oldest queued event per webhook.
    pub oldest_age: GaugeVec,
    /// Retries per webhook.
    pub retries: IntCounterVec,
    /// Dead letters per webhook.
    pub dead: IntCounterVec,
    /// Events dropped because the outbox was full, per webhook.
    pub dropped: IntCounterVec,
    /// Bytes of stored events.
    pub outbox_bytes: IntGauge,
    /// Events the outbox could not store (disk failing) and held in memory.
    pub spilled: IntGauge,
    /// Dead letters forgotten by the retention rule, per webhook and reason.
    pub dead_expired: IntCounterVec,
    /// Outbox files found damaged at start (set aside and salvaged), by cause.
    pub outbox_damaged: IntCounterVec,
    /// Events salvaged from a damaged outbox file at start.
    pub outbox_salvaged: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new("wgpulse_webhook_requests_total", "Webhook requests by outcome (delivered, rejected, gone, retry)."),
                &["webhook", "outcome"],
            )
            .expect("valid metric"),
            latency: HistogramVec::new(
                HistogramOpts::new("wgpulse_webhook_request_duration_seconds", "Time from sending a webhook request to its response.")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0]),
                &["webhook"],
            )
            .expect("valid metric"),
            queued: GaugeVec::new(
                Opts::new("wgpulse_webhook_events_queued", "Events waiting for delivery."),
                &["webhook"],
            )
            .expect("valid metric"),
            oldest_age: GaugeVec::new(
                Opts::new("wgpulse_webhook_oldest_queued_age_seconds", "Age of the oldest event waiting for delivery."),
                &["webhook"],
            )
            .expect("valid metric"),
            retries: IntCounterVec::new(
                Opts::new("wgpulse_webhook_retries_total", "Webhook requests that were retries."),
                &["webhook"],
            )
            .expect("valid metric"),
            dead: IntCounterVec::new(
                Opts::new("wgpulse_webhook_dead_letters_total", "Events given up (rejected or older than retry.max_age)."),
                &["webhook"],
            )
            .expect("valid metric"),
            dropped: IntCounterVec::new(
                Opts::new("wgpulse_outbox_dropped_events_total", "Undelivered events dropped because the outbox was full."),
                &["webhook"],
            )
            .expect("valid metric"),
            outbox_bytes: IntGauge::new("wgpulse_outbox_bytes", "Bytes of events stored in the outbox.").expect("valid metric"),
            spilled: IntGauge::new(
                "wgpulse_outbox_unwritten_events",
                "Events held in memory because the outbox could not be written (full or failing disk).",
            )
            .expect("valid metric"),
            dead_expired: IntCounterVec::new(
                Opts::new("wgpulse_outbox_dead_letters_expired_total", "Dead letters forgotten by the retention rule (reason: age or share)."),
                &["webhook", "reason"],
            )
            .expect("valid metric"),
            outbox_damaged: IntCounterVec::new(
                Opts::new("wgpulse_outbox_damaged_total", "Outbox files found damaged at start and set aside (cause: unreadable or empty)."),
                &["cause"],
            )
            .expect("valid metric"),
            outbox_salvaged: IntCounter::new(
                "wgpulse_outbox_salvaged_events_total",
                "Events read back from a damaged outbox file and stored again.",
            )
            .expect("valid metric"),
        };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.latency.clone()),
            Box::new(metrics.queued.clone()),
            Box::new(metrics.oldest_age.clone()),
            Box::new(metrics.retries.clone()),
            Box::new(metrics.dead.clone()),
            Box::new(metrics.dropped.clone()),
            Box::new(metrics.outbox_bytes.clone()),
            Box::new(metrics.spilled.clone()),
            Box::new(metrics.dead_expired.clone()),
            Box::new(metrics.outbox_damaged.clone()),
            Box::new(metrics.outbox_salvaged.clone()),
        ] {
            let _ = registry.register(collector);
        }
        metrics
    }
}
