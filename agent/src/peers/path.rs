//! Path health per peer: the transport-counter figures of its sessions (received,
//! lost, late, duplicates; sent and unsent) and its handshake round trips, with the
//! last hour's minimum, and a per-device histogram of round-trip samples.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::*;
use crate::snapshot::{PathCounts, PathDirection, PathSample};

/// How long round-trip samples are kept for the minimum.
pub const RTT_MIN_WINDOW: Duration = Duration::from_secs(3600);
/// At most this many samples are kept per peer (one per two minutes is 30 an hour;
/// retried handshakes add more).
pub const RTT_SAMPLES_KEPT: usize = 64;

/// One handshake round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttSample {
    /// When the handshake completed.
    pub at: SystemTime,
    /// The round trip in nanoseconds.
    pub nanos: u64,
}

impl RttSample {
    /// The round trip in seconds.
    pub fn seconds(&self) -> f64 {
        self.nanos as f64 / 1e9
    }
}

/// A peer's path figures, running totals over its sessions (persisted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PathHealth {
    /// What the peer sent us: `lost` are messages it numbered that never reached us.
    pub receive: PathCounts,
    /// What we sent: `lost` are messages our WireGuard numbered that never reached
    /// the wire (unsent).
    pub transmit: PathCounts,
    /// Round-trip samples of the last hour, oldest first (at most [`RTT_SAMPLES_KEPT`]).
    pub rtt_samples: Vec<RttSample>,
    /// The figures at the last completed handshake (for the handshake feed).
    pub at_last_handshake: PathTotals,
}

/// Receive and transmit figures together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PathTotals {
    /// Received.
    pub receive: PathCounts,
    /// Sent.
    pub transmit: PathCounts,
}

impl PathTotals {
    /// `self - earlier`.
    pub fn since(&self, earlier: &PathTotals) -> PathTotals {
        PathTotals {
            receive: self.receive.since(&earlier.receive),
            transmit: self.transmit.since(&earlier.transmit),
        }
    }

    /// Adds a session's delta in its direction.
    pub fn add(&mut self, direction: PathDirection, delta: &PathCounts) {
        match direction {
            PathDirection::Receive => self.receive.add(delta),
            PathDirection::Transmit => self.transmit.add(delta),
        }
    }

    /// Received messages lost, as a share of those the peer numbered (`None`: none).
    pub fn receive_loss_ratio(&self) -> Option<f64> {
        loss_ratio(&self.receive)
    }
}

/// `lost / (received + lost)`, `None` when nothing was numbered.
pub fn loss_ratio(counts: &PathCounts) -> Option<f64> {
    let numbered = counts.packets + counts.lost;
    (numbered > 0).then(|| counts.lost as f64 / numbered as f64)
}

impl PathHealth {
    /// Both directions' running figures.
    pub fn totals(&self) -> PathTotals {
        PathTotals {
            receive: self.receive,
            transmit: self.transmit,
        }
    }

    /// Adds a session's delta.
    pub fn add(&mut self, direction: PathDirection, delta: &PathCounts) {
        match direction {
            PathDirection::Receive => self.receive.add(delta),
            PathDirection::Transmit => self.transmit.add(delta),
        }
    }

    /// Records a round trip completed at `at`; samples older than an hour go.
    pub fn record_rtt(&mut self, at: SystemTime, rtt: Duration) {
        self.rtt_samples.push(RttSample {
            at,
            nanos: rtt.as_nanos().min(u128::from(u64::MAX)) as u64,
        });
        self.rtt_samples.sort_by_key(|s| s.at);
        let cutoff = at.checked_sub(RTT_MIN_WINDOW);
        self.rtt_samples
            .retain(|s| cutoff.is_none_or(|cutoff| s.at >= cutoff));
        if self.rtt_samples.len() > RTT_SAMPLES_KEPT {
            let excess = self.rtt_samples.len() - RTT_SAMPLES_KEPT;
            self.rtt_samples.drain(..excess);
        }
    }

    /// The latest round trip.
    pub fn last_rtt(&self) -> Option<RttSample> {
        self.rtt_samples.last().copied()
    }

    /// The smallest round trip of the hour before `now`.
    pub fn min_rtt(&self, now: SystemTime) -> Option<RttSample> {
        let cutoff = now.checked_sub(RTT_MIN_WINDOW);
        self.rtt_samples
            .iter()
            .filter(|s| cutoff.is_none_or(|cutoff| s.at >= cutoff))
            .min_by_key(|s| s.nanos)
            .copied()
    }
}

/// Upper bounds (seconds) of the per-device round-trip histogram's buckets.
pub const RTT_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A cumulative histogram of a device's round-trip samples (Prometheus style).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RttHistogram {
    /// Samples at or below each bound of [`RTT_BUCKETS`], not cumulative.
    pub buckets: Vec<u64>,
    /// Samples above the last bound.
    pub overflow: u64,
    /// Sum of all samples, nanoseconds.
    pub sum_nanos: u64,
    /// Number of samples.
    pub count: u64,
}

impl RttHistogram {
    /// Adds a sample.
    pub fn observe(&mut self, rtt: Duration) {
        if self.buckets.len() != RTT_BUCKETS.len() {
            self.buckets.resize(RTT_BUCKETS.len(), 0);
        }
        let seconds = rtt.as_secs_f64();
        match RTT_BUCKETS.iter().position(|bound| seconds <= *bound) {
            Some(i) => self.buckets[i] += 1,
            None => self.overflow += 1,
        }
        self.sum_nanos = self
            .sum_nanos
            .saturating_add(rtt.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.count += 1;
    }

    /// Cumulative counts per bound, as the exposition writes them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut running = 0;
        RTT_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, bound)| {
                running += self.buckets.get(i).copied().unwrap_or(0);
                (*bound, running)
            })
            .collect()
    }
}

impl PeerTable {
    /// Applies a drain's session figures (`device` resolved from each sample's id):
    /// each to the peer that owns its endpoint, or kept for the next device read.
    pub fn apply_paths(&mut self, samples: &[(String, PathSample)]) {
        for (device, sample) in samples {
            let id = (device.clone(), sample.endpoint.addr);
            let owner = self
                .owner(&id)
                .or_else(|| self.former.get(&id).map(|(key, _)| *key));
            let peer = owner.and_then(|public_key| {
                self.peers.get_mut(&PeerKey {
                    device: device.clone(),
                    public_key,
                })
            });
            match peer {
                Some(peer) => peer.path.add(sample.direction, &sample.delta),
                None => self
                    .pending
                    .entry(id)
                    .or_default()
                    .path
                    .add(sample.direction, &sample.delta),
            }
        }
    }

    /// Records a handshake round trip for a peer and its device's histogram.
    pub(super) fn record_rtt(&mut self, key: &PeerKey, at: SystemTime, rtt: Duration) {
        if let Some(peer) = self.peers.get_mut(key) {
            peer.path.record_rtt(at, rtt);
        }
        if let Some(device) = self.devices.get_mut(&key.device) {
            device.rtt.observe(rtt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn the_minimum_covers_the_last_hour_only() {
        let mut path = PathHealth::default();
        path.record_rtt(t(0), Duration::from_millis(5));
        path.record_rtt(t(120), Duration::from_millis(40));
        path.record_rtt(t(240), Duration::from_millis(30));
        assert_eq!(path.last_rtt().unwrap().nanos, 30_000_000);
        assert_eq!(path.min_rtt(t(300)).unwrap().nanos, 5_000_000);
        // An hour after the 5 ms sample it no longer counts.
        assert_eq!(path.min_rtt(t(3601)).unwrap().nanos, 30_000_000);
        path.record_rtt(t(3700), Duration::from_millis(50));
        assert_eq!(path.rtt_samples.len(), 3, "the sample of t(0) dropped");
    }

    #[test]
    fn samples_are_bounded() {
        let mut path = PathHealth::default();
        for i in 0..200 {
            path.record_rtt(t(i), Duration::from_millis(i + 1));
        }
        assert_eq!(path.rtt_samples.len(), RTT_SAMPLES_KEPT);
        assert_eq!(path.last_rtt().unwrap().nanos, 200_000_000);
    }

    #[test]
    fn the_histogram_is_cumulative() {
        let mut h = RttHistogram::default();
        for ms in [0.3, 0.8, 3.0, 3.5, 20_000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let c = h.cumulative();
        assert_eq!(c[0], (0.0005, 1));
        assert_eq!(c[1], (0.001, 2));
        assert_eq!(c[3], (0.005, 4));
        assert_eq!(c.last().unwrap().1, 4, "20 s is beyond the last bound");
        assert_eq!(h.count, 5);
    }

    #[test]
    fn loss_ratio_is_lost_over_numbered() {
        let counts = PathCounts {
            packets: 98,
            lost: 2,
            late: 0,
            duplicates: 0,
        };
        assert_eq!(loss_ratio(&counts), Some(0.02));
        assert_eq!(loss_ratio(&PathCounts::default()), None);
    }
}
