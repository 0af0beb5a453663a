//! The NATS targets' own self-metrics, beside the delivery core's (which count
//! their attempts, retries and queues like a webhook's, by target name).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// `wgpulse_nats_*`.
#[derive(Clone, Debug)]
pub struct NatsMetrics {
    /// 1 while the target's client is connected.
    pub connected: IntGaugeVec,
    /// Publishes that failed, by reason.
    pub publish_errors: IntCounterVec,
    /// PubAcks that said the stream already had the message (a retry the stream's
    /// duplicate window dropped).
    pub duplicates: IntCounterVec,
}

impl NatsMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            connected: IntGaugeVec::new(
                Opts::new("wgpulse_nats_connected", "1 while the NATS target's client is connected to a server."),
                &["target"],
            )
            .expect("valid metric"),
            publish_errors: IntCounterVec::new(
                Opts::new(
                    "wgpulse_nats_publish_errors_total",
                    "Publishes without a PubAck, by reason (timeout, disconnected, no_stream, stream_full, wrong_stream, permission, too_large, not_ready, other).",
                ),
                &["target", "reason"],
            )
            .expect("valid metric"),
            duplicates: IntCounterVec::new(
                Opts::new(
                    "wgpulse_nats_duplicates_total",
                    "Publishes the stream acknowledged as duplicates (a retry of a message it already had: dropped by its duplicate window).",
                ),
                &["target"],
            )
            .expect("valid metric"),
        };
        for collector in [
            Box::new(metrics.connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.publish_errors.clone()),
            Box::new(metrics.duplicates.clone()),
        ] {
            let _ = registry.register(collector);
        }
        metrics
    }
}
