//! The NATS JetStream target: a second kind of delivery target beside webhooks. The
//! delivery core (outbox, per-peer lanes, retries, dead letters, statistics, API,
//! CLI) is the same; this transport only publishes a batch and says what the
//! PubAcks mean. An event leaves the outbox only after its PubAck; every message
//! carries `Nats-Msg-Id` = the event id, so a retry after a crash or a lost ack
//! within the stream's duplicate window is dropped by the stream. A Kafka target
//! would be one more such file.
//!
//! Files: [`config`] (`[[nats]]`), [`subject`] (subject templates and escaping),
//! [`connect`] (credentials, TLS, the connector task, the stream), [`publish`] (one
//! batch, per-peer order, what failures mean), [`metrics`] (`wgpulse_nats_*`).

pub mod config;
pub mod connect;
pub mod metrics;
pub mod publish;
pub mod subject;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::future::join_all;

use super::config::Format;
use super::retry::Outcome;
use super::transport::{Attempted, BoxFuture, Loaded, Transport};
use super::TestOutcome;
use config::NatsConfig;
use connect::{Connector, Link, Prepared};
use metrics::NatsMetrics;
use publish::{Failure, Published};
use subject::SubjectTemplate;

/// Lanes of a NATS target: peers spread over them, each lane's batch is published
/// with every peer's events in order.
pub const LANES: usize = 4;

/// Most events a lane takes from its queue at once: their publishes share
/// `max_in_flight`, and they leave the outbox in one acknowledgement (one fsync).
pub const BATCH_EVENTS: usize = 1024;

/// One NATS JetStream target.
pub struct NatsTarget {
    name: String,
    location: String,
    node: String,
    stream: String,
    subject: SubjectTemplate,
    link: Arc<Link>,
    metrics: NatsMetrics,
}

impl NatsTarget {
    /// Reads the credentials of target `index` (an error names its key) and
    /// starts its connector on `runtime`; it publishes once connected and the
    /// stream is found.
    pub fn start(
        config: &NatsConfig,
        index: usize,
        node: &str,
        metrics: NatsMetrics,
        runtime: &tokio::runtime::Handle,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, (String, String)> {
        let key = format!("nats[{index}]");
        let prepared =
            Prepared::new(config, node).map_err(|(k, message)| (format!("{key}.{k}"), message))?;
        let subject = SubjectTemplate::parse(&config.subject)
            .map_err(|message| (format!("{key}.subject"), message))?;
        let link = Arc::new(Link::new(&config.name, &key, metrics.clone()));
        let connector = Connector {
            prepared,
            stream: config.stream.clone(),
            create_stream: config.create_stream,
            replicas: config.stream_replicas,
            max_age: config.stream_max_age,
            subject: subject.clone(),
            auth_key: config.auth_key(),
        };
        runtime.spawn(connect::run(connector, link.clone(), stop));
        Ok(Self {
            name: config.name.clone(),
            location: format!(
                "{} (stream {})",
                config
                    .servers
                    .iter()
                    .map(|s| config::redact(s))
                    .collect::<Vec<_>>()
                    .join(","),
                config.stream
            ),
            node: node.to_owned(),
            stream: config.stream.clone(),
            subject,
            link,
            metrics,
        })
    }

    fn context(&self) -> Result<async_nats::jetstream::Context, String> {
        if let Some(context) = self.link.context.read().expect("not poisoned").clone() {
            return Ok(context);
        }
        Err(self
            .link
            .problem()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "connecting".into()))
    }

    fn failed(&self, failure: &Failure) {
        self.metrics
            .publish_errors
            .with_label_values(&[&self.name, failure.reason])
            .inc();
    }

    /// Publishes one peer's events in order, stopping at its first failure.
    async fn publish_peer(
        &self,
        context: &async_nats::jetstream::Context,
        batch: &[Loaded],
        group: &[usize],
    ) -> Vec<(usize, Published)> {
        let mut out = Vec::with_capacity(group.len());
        let mut failed = false;
        for &i in group {
            if failed {
                out.push((i, Published::Held));
                continue;
            }
            let event = &batch[i];
            let subject = self.subject.render(&self.node, &event.head, &event.body);
            match publish::publish_one(context, &self.stream, subject, event, &self.link.key).await
            {
                Ok(ack) => {
                    if ack.duplicate {
                        self.metrics
                            .duplicates
                            .with_label_values(&[&self.name])
                            .inc();
                    }
                    out.push((
                        i,
                        Published::Acked {
                            duplicate: ack.duplicate,
                        },
                    ));
                }
                Err(failure) => {
                    self.failed(&failure);
                    // An event given up holds nothing back: the next of the peer
                    // can go. One to be retried holds back the rest of its peer.
                    failed = !failure.permanent;
                    out.push((i, Published::Failed(failure)));
                }
            }
        }
        out
    }
}

/// The outcome of a batch from what each event came to: delivered when all were
/// acknowledged; otherwise the acknowledged ones leave the outbox, the ones no retry
/// can help are given up, and the rest (failed, or held behind a failure of their
/// peer) are retried.
fn settle(results: Vec<(usize, Published)>, id: String) -> Attempted {
    let mut acked = Vec::new();
    let mut given_up = Vec::new();
    let mut retry: Option<String> = None;
    for (i, published) in results {
        match published {
            Published::Acked { .. } => acked.push(i),
            Published::Failed(failure) if failure.permanent => given_up.push((i, failure.message)),
            Published::Failed(failure) => {
                retry.get_or_insert(failure.message);
            }
            Published::Held => {}
        }
    }
    acked.sort_unstable();
    given_up.sort_unstable();
    let error = retry
        .clone()
        .or_else(|| given_up.first().map(|(_, m)| m.clone()));
    let outcome = match retry {
        Some(reason) => Outcome::Retry {
            status: None,
            after: None,
            reason,
        },
        None => Outcome::Delivered,
    };
    Attempted {
        id,
        outcome,
        status: None,
        error,
        acked,
        given_up,
    }
}

impl Transport for NatsTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn format(&self) -> Format {
        Format::Batch
    }

    fn problem(&self) -> Option<String> {
        self.link.problem().map(|p| p.to_string())
    }

    fn send<'a>(&'a self, batch: &'a [Loaded], _now: SystemTime) -> BoxFuture<'a, Attempted> {
        Box::pin(async move {
            let id = format!("batch_{}_{}", batch[0].head.id, batch.len());
            let context = match self.context() {
                Ok(context) => context,
                Err(problem) => {
                    self.failed(&Failure {
                        reason: "not_ready",
                        permanent: false,
                        message: problem.clone(),
                    });
                    return Attempted {
                        id,
                        outcome: Outcome::Retry {
                            status: None,
                            after: None,
                            reason: problem.clone(),
                        },
                        status: None,
                        error: Some(problem),
                        acked: Vec::new(),
                        given_up: Vec::new(),
                    };
                }
            };
            let groups = publish::by_peer(batch);
            let results = join_all(
                groups
                    .iter()
                    .map(|group| self.publish_peer(&context, batch, group)),
            )
            .await;
            settle(results.into_iter().flatten().collect(), id)
        })
    }

    fn test<'a>(&'a self, event: &'a Loaded) -> BoxFuture<'a, Result<TestOutcome, String>> {
        Box::pin(async move {
            let context = self.context()?;
            let subject = self.subject.render(&self.node, &event.head, &event.body);
            let started = Instant::now();
            let ack = publish::publish_one(
                &context,
                &self.stream,
                subject.clone(),
                event,
                &self.link.key,
            )
            .await
            .map_err(|f| f.message)?;
            Ok(TestOutcome {
                status: None,
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                body: format!(
                    "published to {subject}: stream {} sequence {}{}",
                    ack.stream,
                    ack.sequence,
                    if ack.duplicate { " (duplicate)" } else { "" }
                ),
                id: event.head.id.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(permanent: bool) -> Published {
        Published::Failed(Failure {
            reason: "x",
            permanent,
            message: "why".into(),
        })
    }

    #[test]
    fn acknowledged_events_leave_even_when_others_are_retried() {
        let attempted = settle(
            vec![
                (0, Published::Acked { duplicate: false }),
                (1, failure(false)),
                (2, Published::Held),
                (3, Published::Acked { duplicate: true }),
            ],
            "b".into(),
        );
        assert!(matches!(attempted.outcome, Outcome::Retry { .. }));
        assert_eq!(attempted.acked, vec![0, 3]);
        assert!(attempted.given_up.is_empty());
        let attempted = settle(vec![(0, Published::Acked { duplicate: false })], "b".into());
        assert_eq!(attempted.outcome, Outcome::Delivered);
        assert_eq!(attempted.error, None);
        // Too large for the server: given up, and the rest delivered.
        let attempted = settle(
            vec![
                (0, failure(true)),
                (2, Published::Acked { duplicate: false }),
            ],
            "b".into(),
        );
        assert_eq!(attempted.given_up, vec![(0, "why".to_owned())]);
        assert_eq!(attempted.acked, vec![2]);
        assert_eq!(
            attempted.outcome,
            Outcome::Delivered,
            "nothing failed that a retry can help"
        );
    }
}
