//! Counts over a sliding window of time: one entry per drain that moved them, the
//! entries `width` or more before the newest forgotten.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// What a window sums: one count (`u64`) or several side by side (`(lost, received)`).
pub(super) trait Counts: Copy + Default {
    /// Nothing counted (not worth an entry).
    fn is_zero(&self) -> bool;
    /// The sum of two counts.
    fn plus(self, other: Self) -> Self;
}

impl Counts for u64 {
    fn is_zero(&self) -> bool {
        *self == 0
    }

    fn plus(self, other: Self) -> Self {
        self + other
    }
}

impl Counts for (u64, u64) {
    fn is_zero(&self) -> bool {
        self.0 == 0 && self.1 == 0
    }

    fn plus(self, other: Self) -> Self {
        (self.0 + other.0, self.1 + other.1)
    }
}

/// Counts over a sliding window.
#[derive(Debug)]
pub(super) struct Window<C = u64> {
    entries: VecDeque<(SystemTime, C)>,
}

impl<C> Default for Window<C> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<C: Counts> Window<C> {
    /// Adds `counts` at `at`, forgets the entries `width` or more before it and
    /// returns the window's sum.
    pub(super) fn add(&mut self, at: SystemTime, counts: C, width: Duration) -> C {
        if !counts.is_zero() {
            self.entries.push_back((at, counts));
        }
        self.expire(at, width);
        self.entries
            .iter()
            .fold(C::default(), |sum, (_, counts)| sum.plus(*counts))
    }

    /// Forgets the entries `width` or more before `now`.
    pub(super) fn expire(&mut self, now: SystemTime, width: Duration) {
        while self
            .entries
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() >= width)
        {
            self.entries.pop_front();
        }
    }

    /// Nothing left in the window.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn sums_what_is_younger_than_the_width_and_forgets_the_rest() {
        let width = Duration::from_secs(10);
        let mut window = Window::<u64>::default();
        assert_eq!(window.add(at(100), 3, width), 3);
        assert_eq!(window.add(at(105), 4, width), 7);
        // The first entry is exactly `width` old at 110: gone.
        assert_eq!(window.add(at(110), 0, width), 4);
        assert_eq!(window.add(at(116), 0, width), 0);
        assert!(window.is_empty());
    }

    #[test]
    fn pairs_are_summed_side_by_side_and_zero_pairs_take_no_entry() {
        let width = Duration::from_secs(10);
        let mut window = Window::<(u64, u64)>::default();
        assert_eq!(window.add(at(100), (1, 9), width), (1, 9));
        assert_eq!(window.add(at(101), (0, 0), width), (1, 9));
        assert_eq!(window.add(at(102), (0, 5), width), (1, 14));
        window.expire(at(111), width);
        assert_eq!(window.add(at(111), (0, 0), width), (0, 5));
        window.expire(at(112), width);
        assert!(window.is_empty());
    }
}
