//! Rate limits for log lines that an outside party can make repeat (accept errors, a
//! refused connection, a failing disk): the first occurrence is logged at once, later
//! ones at most once per interval with the number suppressed in between, so a flood
//! costs a few lines instead of gigabytes of log and a core of CPU.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One rate-limited kind of log line.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(ThrottleState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log now: `Some(n)` with the occurrences suppressed since the last
    /// line, or `None` (this one is counted as suppressed).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().expect("not poisoned");
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_at_once_then_one_per_interval_with_the_count() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow(start), Some(0));
        for ms in 1..=1000 {
            assert_eq!(throttle.allow(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.allow(start + Duration::from_secs(10)), Some(1000));
        assert_eq!(throttle.allow(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.allow(start + Duration::from_secs(25)), Some(1));
    }
}
