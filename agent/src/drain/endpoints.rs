//! Per-endpoint bookkeeping across drains: a map entry deleted and re-created (its
//! counters went backwards), and the bounded totals of endpoints that left the map.

use agent_common::{EndpointKey, EndpointStats};

use super::FastMap;
use crate::snapshot::merge_stats;

/// Whether any counter decreased (the map entry was deleted and re-created).
pub(super) fn went_backwards(now: &EndpointStats, before: &EndpointStats) -> bool {
    now.rx.packets + now.rx.invalid_packets < before.rx.packets + before.rx.invalid_packets
        || now.tx.packets + now.tx.invalid_packets < before.tx.packets + before.tx.invalid_packets
        || now.socket_drops < before.socket_drops
}

/// Totals of endpoints that left the map (evicted idle, or deleted and re-created),
/// so that a key coming back continues its totals. Bounded by the map's capacity:
/// beyond it the entries idle longest are forgotten (the peers' counters, built from
/// deltas, stay exact; only such an endpoint's own running total would restart).
pub(super) struct Carried {
    limit: usize,
    totals: FastMap<EndpointKey, EndpointStats>,
}

impl Carried {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            totals: FastMap::default(),
        }
    }

    /// Adds a departed incarnation's counters to the key's carried totals.
    pub(super) fn bank(&mut self, key: &EndpointKey, stats: &EndpointStats) {
        merge_stats(self.totals.entry(*key).or_default(), stats);
        if self.totals.len() > self.limit + self.limit / 8 {
            // Amortised: prune to the limit once it is exceeded by an eighth.
            let mut by_age: Vec<(u64, EndpointKey)> = self
                .totals
                .iter()
                .map(|(k, s)| (s.rx.last_packet_ns.max(s.tx.last_packet_ns), *k))
                .collect();
            by_age.sort_unstable_by_key(|(last, _)| *last);
            let excess = self.totals.len() - self.limit;
            for (_, key) in by_age.into_iter().take(excess) {
                self.totals.remove(&key);
            }
        }
    }

    /// The carried totals of a key (zero if none).
    pub(super) fn get(&self, key: &EndpointKey) -> EndpointStats {
        if self.totals.is_empty() {
            return EndpointStats::default();
        }
        self.totals.get(key).copied().unwrap_or_default()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.totals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Endpoint;

    fn key(port: u16) -> EndpointKey {
        Endpoint {
            device: 1,
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
        }
        .to_key()
    }

    #[test]
    fn carried_totals_are_bounded_and_keep_the_recent_ones() {
        let mut carried = Carried::new(100);
        for port in 0..1000u16 {
            let mut stats = EndpointStats::default();
            stats.rx.packets = 1;
            stats.rx.last_packet_ns = u64::from(port);
            carried.bank(&key(port), &stats);
            assert!(carried.len() <= 100 + 100 / 8 + 1, "{}", carried.len());
        }
        assert_eq!(carried.get(&key(999)).rx.packets, 1, "recent kept");
        assert_eq!(carried.get(&key(0)).rx.packets, 0, "oldest forgotten");
        let mut again = EndpointStats::default();
        again.rx.packets = 4;
        again.rx.last_packet_ns = 5000;
        carried.bank(&key(999), &again);
        assert_eq!(carried.get(&key(999)).rx.packets, 5, "totals add up");
    }

    #[test]
    fn a_recreated_entry_is_detected() {
        let mut before = EndpointStats::default();
        before.rx.packets = 10;
        let mut now = EndpointStats::default();
        now.rx.packets = 2;
        assert!(went_backwards(&now, &before));
        now.rx.packets = 12;
        assert!(!went_backwards(&now, &before));
    }
}
