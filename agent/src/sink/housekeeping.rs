//! Every second: the queue gauges, and another try at writing events the disk did not
//! take; every minute (and at start): the dead-letter retention rule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::{now_ms, status};
use super::Inner;

/// How often the dead-letter retention rule runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Runs until the delivery stops.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    // The first pass runs at once: dead letters past their age go at start.
    let mut last_retention = Instant::now() - RETENTION_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        gauges(&inner);
        if inner.outbox.unwritten() > 0 {
            // The outbox keeps its own back-off: most of these calls do nothing.
            let inner = inner.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _ = inner.outbox.flush();
                inner.after_write(&[]);
            })
            .await;
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            let inner = inner.clone();
            let _ = tokio::task::spawn_blocking(move || inner.expire_dead_letters()).await;
        }
    }
}

fn gauges(inner: &Inner) {
    for target in &inner.targets {
        let status = status(target);
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
}

impl Inner {
    /// Applies the dead-letter retention rule now.
    pub(super) fn expire_dead_letters(&self) {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
        match self.outbox.expire_dead(&names, self.retention, now_ms()) {
            Ok(forgotten) => {
                for ((webhook, why), count) in forgotten {
                    tracing::info!(webhook = %webhook, count, reason = why.label(), "dead letters forgotten by the retention rule");
                    self.metrics
                        .dead_expired
                        .with_label_values(&[&webhook, why.label()])
                        .inc_by(count);
                    if let Some(target) = self.target(&webhook) {
                        let mut state = target.state.lock().expect("not poisoned");
                        state.dead_letters = state.dead_letters.saturating_sub(count as usize);
                    }
                }
            }
            Err(err) => tracing::warn!("dead-letter retention: {err}"),
        }
        self.metrics.outbox_bytes.set(self.outbox.bytes() as i64);
    }
}
