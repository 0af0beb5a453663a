//! How often the periodic device read runs. A read of a small device takes a
//! millisecond and runs every `refresh_interval` (10 s); a wireguard-go device with
//! 10k peers takes about 35 ms over UAPI and one with 100k about 700 ms, which every
//! 10 s would be most of an idle agent's CPU. The rule: the next periodic read comes
//! `max(refresh_interval, 400 × the last read's duration)` after the last one, so
//! periodic reads cost at most a quarter of a percent of a core, but never later than
//! [`LATEST`] after it (a configuration change without traffic is seen within two
//! minutes whatever the size). Reads a handshake asks for (a new peer) and scrapes'
//! read-through reads are not bound by it.

use std::time::Duration;

/// How many read durations pass between periodic reads (1/400: 0.25% of a core).
pub const READ_SHARE: u32 = 400;
/// The longest gap between periodic reads (unless `refresh_interval` is longer).
pub const LATEST: Duration = Duration::from_secs(120);

/// The gap before the next periodic read after a read that took `last_read`.
pub fn periodic_gap(refresh_interval: Duration, last_read: Duration) -> Duration {
    let budgeted = last_read.saturating_mul(READ_SHARE).min(LATEST);
    refresh_interval.max(budgeted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_S: Duration = Duration::from_secs(10);

    #[test]
    fn a_small_device_is_read_every_refresh_interval() {
        assert_eq!(periodic_gap(TEN_S, Duration::from_millis(2)), TEN_S);
        assert_eq!(periodic_gap(TEN_S, Duration::from_millis(25)), TEN_S);
    }

    #[test]
    fn a_large_device_is_read_within_a_quarter_percent_of_a_core_but_within_two_minutes() {
        assert_eq!(
            periodic_gap(TEN_S, Duration::from_millis(35)),
            Duration::from_secs(14)
        );
        assert_eq!(
            periodic_gap(TEN_S, Duration::from_millis(700)),
            Duration::from_secs(120)
        );
        assert_eq!(periodic_gap(TEN_S, Duration::from_secs(30)), LATEST);
        // A longer refresh_interval still wins.
        let hour = Duration::from_secs(3600);
        assert_eq!(periodic_gap(hour, Duration::from_millis(700)), hour);
    }
}
