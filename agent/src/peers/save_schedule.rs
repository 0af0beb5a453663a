//! When the peer state is written: not after every batch of changes (at 10k peers
//! that is megabytes of JSON and two fsyncs on nearly every drain, which backs up the
//! drain channel) but at most once per [`COALESCE`] after a change, every
//! [`COUNTERS_EVERY`] when only counters moved, and — after a failed write — again
//! with back-off until the disk takes it, whether or not anything else changes. The
//! crash guarantee is kept by the caller: a save waits until the events describing
//! the saved changes are stored. A save takes time (the copy and the write run beside
//! the pipeline's work): changes while it runs are due again after it.

use std::time::{Duration, Instant};

/// Longest a changed state waits before it is written.
pub const COALESCE: Duration = Duration::from_secs(2);

/// How often the state is written when only counters changed.
pub const COUNTERS_EVERY: Duration = Duration::from_secs(60);

/// A save may take at most one part in `SAVE_SHARE` of the time: after a save that
/// took `d` (copy, wait for the events, write, fsync), the next begins no sooner
/// than `(SAVE_SHARE - 1) * d` after it ended. At 10k peers (a save of about 0.1 s)
/// [`COALESCE`] is the longer wait; at 100k peers (100 MB of JSON, over a second)
/// this keeps the disk from rewriting the state back to back, whose fsyncs held up
/// the outbox's. A later save loses nothing: the events are stored on their own,
/// the state file only shortens what a restart repeats.
pub const SAVE_SHARE: u32 = 10;

/// First and longest wait before a failed write is tried again.
const RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// The schedule of state writes.
#[derive(Debug)]
pub struct SaveSchedule {
    last_saved: Instant,
    /// When the save in progress began (its copy of the table).
    began: Option<Instant>,
    /// When the pending save is due (`None`: nothing to save).
    due: Option<Instant>,
    /// No save begins before this (the [`SAVE_SHARE`] budget).
    not_before: Option<Instant>,
    retry: Duration,
}

impl SaveSchedule {
    /// Nothing to save; `now` counts as the last save.
    pub fn new(now: Instant) -> Self {
        Self {
            last_saved: now,
            began: None,
            due: None,
            not_before: None,
            retry: Duration::ZERO,
        }
    }

    /// Peers or devices changed: a save within [`COALESCE`].
    pub fn changed(&mut self, now: Instant) {
        let due = now + COALESCE;
        self.due = Some(self.due.map_or(due, |d| d.min(due)));
    }

    /// Counters moved (a device read): a save if the last one is old enough.
    pub fn counters_moved(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_saved) >= COUNTERS_EVERY {
            self.due = Some(self.due.map_or(now, |d| d.min(now)));
        }
    }

    /// When a save is due, if one is (never before the budget allows).
    pub fn due(&self) -> Option<Instant> {
        self.due.map(|due| {
            self.not_before
                .map_or(due, |not_before| due.max(not_before))
        })
    }

    /// Whether a save is due now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due().is_some_and(|due| now >= due)
    }

    /// A save begins (it copies the state as of now): what was due is in it; a
    /// change from now on is due again.
    pub fn begin(&mut self, now: Instant) {
        self.began = Some(now);
        self.due = None;
    }

    /// A save ran: done (changes since it began stay due), or (failed, or had to wait
    /// for events to be stored) again after a back-off.
    pub fn saved(&mut self, now: Instant, ok: bool) {
        let began = self.began.take().unwrap_or(now);
        if ok {
            // (A failed save waits for its back-off instead: a disk that hung on
            // it is not a measure of the next.)
            let took = now.saturating_duration_since(began);
            self.not_before = Some(now + took * (SAVE_SHARE - 1));
            self.last_saved = began;
            if self.due.is_some_and(|due| due <= began) {
                self.due = None;
            }
            self.retry = Duration::ZERO;
        } else {
            self.retry = (self.retry * 2).clamp(RETRY.0, RETRY.1);
            let again = now + self.retry;
            self.due = Some(self.due.map_or(again, |due| due.min(again)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_save_spaces_out_the_next() {
        let start = Instant::now();
        let mut schedule = SaveSchedule::new(start);
        schedule.changed(start);
        let first = start + COALESCE;
        assert!(schedule.is_due(first));
        schedule.begin(first);
        // A change while it runs; the save took 1.5 s.
        schedule.changed(first + Duration::from_millis(500));
        let ended = first + Duration::from_millis(1500);
        schedule.saved(ended, true);
        // Due by COALESCE at first + 2.5 s, but the budget says 9 x 1.5 s after it ended.
        let budget = ended + Duration::from_millis(1500) * (SAVE_SHARE - 1);
        assert_eq!(schedule.due(), Some(budget));
        assert!(!schedule.is_due(first + COALESCE + Duration::from_secs(1)));
        assert!(schedule.is_due(budget));
        // A quick save leaves COALESCE the longer wait.
        schedule.begin(budget);
        schedule.saved(budget + Duration::from_millis(10), true);
        let now = budget + Duration::from_millis(10);
        schedule.changed(now);
        assert_eq!(schedule.due(), Some(now + COALESCE));
    }

    #[test]
    fn a_burst_of_changes_is_one_write() {
        let start = Instant::now();
        let mut schedule = SaveSchedule::new(start);
        let mut writes = 0;
        // A change at every 100 ms drain for ten seconds.
        for tick in 0..100 {
            let now = start + Duration::from_millis(100 * tick);
            schedule.changed(now);
            if schedule.is_due(now) {
                schedule.begin(now);
                schedule.saved(now, true);
                writes += 1;
            }
        }
        assert_eq!(writes, 4, "one write per two seconds, not 100");
        assert!(
            schedule.due().is_some(),
            "the last changes are still to be written"
        );
    }

    #[test]
    fn a_failed_write_is_retried_with_back_off_without_a_new_change() {
        let start = Instant::now();
        let mut schedule = SaveSchedule::new(start);
        schedule.changed(start);
        let mut now = start + COALESCE;
        let mut waits = Vec::new();
        for _ in 0..7 {
            assert!(schedule.is_due(now));
            schedule.begin(now);
            schedule.saved(now, false);
            let due = schedule.due().unwrap();
            waits.push((due - now).as_secs());
            now = due;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        schedule.saved(now, true);
        assert_eq!(schedule.due(), None);
    }

    #[test]
    fn a_change_while_a_save_runs_is_due_after_it() {
        let start = Instant::now();
        let mut schedule = SaveSchedule::new(start);
        schedule.changed(start);
        let began = start + COALESCE;
        assert!(schedule.is_due(began));
        schedule.begin(began);
        assert_eq!(schedule.due(), None, "what was due is in the save");
        // A change after the copy began, while the write runs (a quick save: its
        // budget ends before the change's COALESCE).
        schedule.changed(began + Duration::from_millis(100));
        schedule.saved(began + Duration::from_millis(200), true);
        assert_eq!(
            schedule.due(),
            Some(began + Duration::from_millis(100) + COALESCE),
            "the change the save does not hold is still to be written"
        );
        // Nothing changed during the next one: nothing is due after it.
        let next = began + Duration::from_secs(3);
        schedule.begin(next);
        schedule.saved(next + Duration::from_millis(500), true);
        assert_eq!(schedule.due(), None);
    }

    #[test]
    fn counters_alone_are_written_once_a_minute() {
        let start = Instant::now();
        let mut schedule = SaveSchedule::new(start);
        schedule.counters_moved(start + Duration::from_secs(30));
        assert_eq!(schedule.due(), None);
        schedule.counters_moved(start + COUNTERS_EVERY);
        assert!(schedule.is_due(start + COUNTERS_EVERY));
    }
}
