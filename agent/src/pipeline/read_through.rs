//! Fresh WireGuard counters at scrape time. Device reads run every
//! `refresh_interval` (10 s), so `/metrics` could show counters up to 10 s old where
//! the exporters users come from read the device at scrape time. A scrape asks for a
//! read when the last one is older than its freshness limit and waits for it (at
//! most [`WAIT`]); scrapes that arrive meanwhile share that one read.
//!
//! The rule: a scrape reads through when the last device read is older than
//! `max(100 ms, 20 × the last read's duration)`. A small device (read in a few
//! milliseconds) is read at every scrape; a device that takes 50 ms to read is read
//! at most once a second, one that takes 500 ms (100k peers) at most every 10 s —
//! device reads cost at most 5% of a core however often Prometheus scrapes.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// The freshness floor.
pub const MIN_AGE: Duration = Duration::from_millis(100);
/// How many read durations must pass between reads.
pub const READ_SHARE: u32 = 20;
/// Longest a scrape waits for its read.
pub const WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    /// Reads completed.
    completed: u64,
    /// When the last read started and how long it took.
    last: Option<(Instant, Duration)>,
}

/// Shared by the scrapes and the pipeline thread.
#[derive(Debug)]
pub struct ReadThrough {
    state: Mutex<State>,
    done: Condvar,
    requests: Sender<()>,
}

/// Whether a scrape got fresh counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// The last read was fresh enough.
    Fresh,
    /// A read was done for this scrape (or one it shared).
    Read,
    /// No read within [`WAIT`] (the pipeline is busy): the counters are older.
    Stale,
}

impl ReadThrough {
    /// The shared side and the pipeline's end of the request channel.
    pub fn new() -> (Self, Receiver<()>) {
        let (requests, received) = crossbeam_channel::bounded(1);
        (
            Self {
                state: Mutex::default(),
                done: Condvar::new(),
                requests,
            },
            received,
        )
    }

    /// The pipeline read the devices: started at `started`, took `took`.
    pub fn completed(&self, started: Instant, took: Duration) {
        let mut state = self.state.lock().expect("not poisoned");
        state.completed += 1;
        state.last = Some((started, took));
        self.done.notify_all();
    }

    /// How old the last read may be.
    fn limit(took: Duration) -> Duration {
        MIN_AGE.max(took * READ_SHARE)
    }

    /// Until when the last read counts as fresh (a scrape after it reads through).
    pub fn fresh_until(&self) -> Option<Instant> {
        let state = self.state.lock().expect("not poisoned");
        state
            .last
            .map(|(started, took)| started + Self::limit(took))
    }

    /// Makes the counters fresh for a scrape at `now` (blocking: call it off the
    /// async workers).
    pub fn refresh_for_scrape(&self, now: Instant) -> Freshness {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some((started, took)) = state.last {
            if now.saturating_duration_since(started) <= Self::limit(took) {
                return Freshness::Fresh;
            }
        }
        let target = state.completed + 1;
        match self.requests.try_send(()) {
            // A request already pending (another scrape): share its read.
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => return Freshness::Stale,
        }
        let deadline = Instant::now() + WAIT;
        while state.completed < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Freshness::Stale;
            }
            state = self.done.wait_timeout(state, left).expect("not poisoned").0;
        }
        Freshness::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_counters_are_read_through_and_concurrent_scrapes_share_one_read() {
        let (shared, requests) = ReadThrough::new();
        let shared = std::sync::Arc::new(shared);
        // A fake pipeline: answers each request with one read, until told to stop.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pipeline = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if requests.recv_timeout(Duration::from_millis(20)).is_ok() {
                        reads += 1;
                        shared.completed(Instant::now(), Duration::from_millis(5));
                    }
                }
                reads
            })
        };
        let scrapes: Vec<_> = (0..8)
            .map(|_| {
                let shared = shared.clone();
                std::thread::spawn(move || shared.refresh_for_scrape(Instant::now()))
            })
            .collect();
        for scrape in scrapes {
            assert_ne!(scrape.join().unwrap(), Freshness::Stale);
        }
        // Fresh now: the next scrape reads nothing.
        assert_eq!(shared.refresh_for_scrape(Instant::now()), Freshness::Fresh);
        let later = Instant::now() + Duration::from_millis(500);
        assert_eq!(shared.refresh_for_scrape(later), Freshness::Read);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = pipeline.join().unwrap();
        assert!(
            (2..=3).contains(&reads),
            "8 concurrent scrapes shared their read: {reads} reads"
        );
    }

    #[test]
    fn a_slow_device_is_read_at_most_once_per_twenty_read_durations() {
        assert_eq!(ReadThrough::limit(Duration::from_millis(1)), MIN_AGE);
        assert_eq!(
            ReadThrough::limit(Duration::from_millis(50)),
            Duration::from_secs(1)
        );
        assert_eq!(
            ReadThrough::limit(Duration::from_millis(500)),
            Duration::from_secs(10)
        );
    }
}
