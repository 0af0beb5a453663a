//! `[outbox]` configuration: the size limit and the dead-letter retention, with
//! their defaults and the problems a configuration check reports.

use std::time::Duration;

use serde::Deserialize;

/// `[outbox]` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Size limit of the stored events, in bytes (default 256 MiB). When an event
    /// does not fit, the oldest undelivered events of the webhook with the most
    /// queued are dropped (counted in `wgpulse_outbox_dropped_events_total` and
    /// logged) to make room: never unbounded growth, never a crash.
    pub max_bytes: u64,
    /// Dead letters older than this (from the event's creation) are forgotten
    /// (default 7 days).
    #[serde(with = "humantime_serde")]
    pub dead_letter_max_age: Duration,
    /// Dead letters may take at most this share of `max_bytes` (default 0.25); beyond
    /// it the oldest are forgotten.
    pub dead_letter_max_share: f64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            dead_letter_max_age: Duration::from_secs(7 * 24 * 3600),
            dead_letter_max_share: 0.25,
        }
    }
}

impl OutboxConfig {
    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.max_bytes < 64 * 1024 {
            problems.push(("max_bytes".into(), "must be at least 64 KiB".into()));
        }
        if self.dead_letter_max_age < Duration::from_secs(60) {
            problems.push((
                "dead_letter_max_age".into(),
                "must be at least 1m (dead letters are kept to be replayed)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.dead_letter_max_share) {
            problems.push((
                "dead_letter_max_share".into(),
                "must be between 0 and 1".into(),
            ));
        }
        problems
    }
}
