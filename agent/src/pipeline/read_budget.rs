//! How often the periodic device read runs. A read of a small device costs well
//! under a millisecond and runs every `refresh_interval` (10 s); a wireguard-go
//! device with 10k peers costs tens of milliseconds over UAPI and one with 100k
//! hundreds, which every 10 s would be most of an idle agent's CPU. The rule: the
//! next periodic read comes `max(refresh_interval, 400 × the CPU time the last read
//! cost the agent)` after the last one, so periodic reads cost the agent at most a
//! quarter of a percent of a core, but never later than [`LATEST`] after it (a
//! configuration change without traffic is seen within two minutes whatever the
//! size). Reads a handshake asks for (a new peer) and scrapes' read-through reads are
//! not bound by it.
//!
//! The charge is the reader thread's CPU time, not the read's wall-clock duration:
//! a read that waits for a busy daemon, or for a core on a loaded host (the reader
//! runs at a lower priority), costs the agent nothing, and charging the wait
//! stretched the gap of a two-peer device from 300 ms to seconds whenever its read
//! was preempted (what a changed peer then waited for).

use std::time::Duration;

/// How many reads' CPU times pass between periodic reads (1/400: 0.25% of a core).
pub const READ_SHARE: u32 = 400;
/// The longest gap between periodic reads (unless `refresh_interval` is longer).
pub const LATEST: Duration = Duration::from_secs(120);

/// The gap before the next periodic read after a read that cost the agent
/// `last_read_cpu` of CPU time.
pub fn periodic_gap(refresh_interval: Duration, last_read_cpu: Duration) -> Duration {
    let budgeted = last_read_cpu.saturating_mul(READ_SHARE).min(LATEST);
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
