//! What a response means for delivery, and how long to wait before the next attempt:
//! exponential backoff with full jitter, `Retry-After` honoured on 429 and 503.

use std::time::{Duration, SystemTime};

use rand::Rng as _;

/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// The outcome of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
    /// Refused in a way that will not go away by retrying (HTTP 4xx but 408, 410,
    /// 429): the reason, e.g. `HTTP 400`.
    Rejected(String),
    /// 410 Gone: the receiver says the webhook is gone; pause it.
    Gone,
    /// Worth retrying (5xx, 408, 429, timeout, connection failure, garbage), after
    /// at least `after` if the receiver said so.
    Retry {
        /// Status, if any.
        status: Option<u16>,
        /// The receiver's `Retry-After`.
        after: Option<Duration>,
        /// What failed.
        reason: String,
    },
}

impl Outcome {
    /// Label for metrics: `delivered`, `rejected`, `gone`, `retry`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Rejected(_) => "rejected",
            Outcome::Gone => "gone",
            Outcome::Retry { .. } => "retry",
        }
    }
}

/// Classifies a response status (with its `Retry-After` header value, if any).
pub fn classify(status: u16, retry_after: Option<&str>, now: SystemTime) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        408 | 429 | 500..=599 => Outcome::Retry {
            status: Some(status),
            after: if matches!(status, 429 | 503) {
                retry_after.and_then(|v| parse_retry_after(v, now))
            } else {
                None
            },
            reason: format!("HTTP {status}"),
        },
        _ => Outcome::Rejected(format!("HTTP {status}")),
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    Some(SystemTime::from(at).duration_since(now).unwrap_or_default())
}

/// Backoff before attempt `attempt` (1 after the first failure): a random duration
/// in `[0, min(max, initial * 2^(attempt-1))]` (full jitter), but never less than
/// the receiver's `Retry-After` (honoured up to [`RETRY_AFTER_CAP`], even beyond
/// `max`: the receiver knows when it can take more).
pub fn backoff(
    attempt: u32,
    initial: Duration,
    max: Duration,
    after: Option<Duration>,
) -> Duration {
    let ceiling = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let jittered =
        Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..=ceiling.as_secs_f64()));
    match after {
        Some(after) => jittered.max(after.min(RETRY_AFTER_CAP)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let now = SystemTime::now();
        assert_eq!(classify(204, None, now), Outcome::Delivered);
        assert_eq!(
            classify(400, None, now),
            Outcome::Rejected("HTTP 400".into())
        );
        assert_eq!(
            classify(404, None, now),
            Outcome::Rejected("HTTP 404".into())
        );
        assert_eq!(classify(410, None, now), Outcome::Gone);
        assert!(matches!(classify(408, None, now), Outcome::Retry { .. }));
        assert!(matches!(
            classify(429, Some("7"), now),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(500, Some("7"), now),
            Outcome::Retry { after: None, .. }
        ));
    }

    #[test]
    fn retry_after_dates_and_backoff_bounds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        for attempt in 1..30 {
            let d = backoff(
                attempt,
                Duration::from_secs(1),
                Duration::from_secs(600),
                None,
            );
            assert!(d <= Duration::from_secs(600));
            let d = backoff(
                attempt,
                Duration::from_secs(1),
                Duration::from_secs(600),
                Some(Duration::from_secs(5)),
            );
            assert!(d >= Duration::from_secs(5));
        }
        assert!(
            backoff(1, Duration::from_secs(1), Duration::from_secs(600), None)
                <= Duration::from_secs(1)
        );
    }
}
