//! Drained traffic: each endpoint's delta to the peer that owns it, traffic nobody
//! owns to the device's unknown counters, the handshake feed, and the kernel-mode
//! readings.

use std::time::SystemTime;

use super::*;

impl PeerTable {
    /// Applies one drain: each endpoint's delta goes to its owner, or waits for the
    /// next device read. `taken_at` is the drain's time. Returns the handshake feed:
    /// one [`Change::Handshake`] per handshake completed since the previous drain.
    pub fn apply_samples(&mut self, samples: &[WireSample], taken_at: SystemTime) -> Vec<Change> {
        for sample in samples.iter().filter(|s| has_traffic(&s.delta)) {
            let id = (sample.device.clone(), sample.endpoint);
            let owner = self
                .owner(&id)
                .or_else(|| self.former.get(&id).map(|(key, _)| *key));
            let mut counters = WireCounters::default();
            counters.add(&sample.delta);
            let peer = owner.and_then(|public_key| {
                self.peers.get_mut(&PeerKey {
                    device: sample.device.clone(),
                    public_key,
                })
            });
            match peer {
                Some(peer) => add_traffic(peer, &counters, sample.last_rx, sample.last_tx),
                None => {
                    let pending = self.pending.entry(id).or_default();
                    pending.since.get_or_insert(taken_at);
                    pending.counters.add_counters(&counters);
                    pending.last_rx = pending.last_rx.max(sample.last_rx);
                    pending.last_tx = pending.last_tx.max(sample.last_tx);
                }
            }
        }
        // Every packet sent before a roam has now been drained.
        self.former
            .retain(|_, (_, roamed_at)| *roamed_at > taken_at);

        let mut changes = Vec::new();
        for (key, role, endpoint, at, rtt) in std::mem::take(&mut self.handshakes_due) {
            let device_public_key = self.devices.get(&key.device).and_then(|d| d.public_key);
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            let since_previous = peer.wire.since(&peer.at_last_handshake);
            peer.at_last_handshake = peer.wire;
            let path_now = peer.path.totals();
            let path_since_previous = path_now.since(&peer.path.at_last_handshake);
            peer.path.at_last_handshake = path_now;
            changes.push(Change::Handshake {
                peer: PeerState::clone(peer),
                device_public_key,
                role,
                endpoint,
                at,
                since_previous,
                rtt,
                path_since_previous,
            });
        }
        changes
    }

    /// Applies the kernel-mode readings of a drain (after its wire samples) to the
    /// peers they belong to; readings of devices or peers the table does not know yet
    /// wait for the next drain.
    pub fn apply_kernel(&mut self, readings: &[crate::snapshot::KernelPeerReading]) {
        for reading in readings {
            let Some(device) = &reading.device else {
                continue;
            };
            let key = PeerKey {
                device: device.clone(),
                public_key: reading.public_key,
            };
            if let Some(peer) = self.peers.get_mut(&key) {
                let view =
                    KernelView::observe(peer.kernel.as_deref().copied(), reading, &peer.wire);
                match &mut peer.kernel {
                    Some(kept) => **kept = view,
                    None => peer.kernel = Some(Box::new(view)),
                }
            }
        }
    }

    pub(super) fn add_unknown(
        &mut self,
        id: &EndpointId,
        counters: &WireCounters,
        now: SystemTime,
    ) {
        let Some(device) = self.devices.get_mut(&id.0) else {
            tracing::debug!(device = %id.0, endpoint = %id.1, "traffic of a device that is gone: dropped");
            return;
        };
        let unknown = &mut device.unknown;
        unknown.totals.add_counters(counters);
        match unknown.endpoints.iter_mut().find(|e| e.endpoint == id.1) {
            Some(entry) => {
                entry.counters.add_counters(counters);
                entry.last_seen = now;
            }
            None => {
                unknown.endpoints_seen += 1;
                unknown.endpoints.push(UnknownEndpoint {
                    endpoint: id.1,
                    counters: *counters,
                    last_seen: now,
                });
                if unknown.endpoints.len() > UNKNOWN_ENDPOINTS_KEPT {
                    let oldest = unknown
                        .endpoints
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| e.last_seen)
                        .map(|(i, _)| i)
                        .expect("not empty");
                    unknown.endpoints.swap_remove(oldest);
                }
            }
        }
    }
}

/// Adds path figures that waited for the peer's endpoint to be known.
pub(super) fn add_path(peer: &mut PeerState, path: &super::path::PathTotals) {
    peer.path.receive.add(&path.receive);
    peer.path.transmit.add(&path.transmit);
}

pub(super) fn add_traffic(
    peer: &mut PeerState,
    counters: &WireCounters,
    last_rx: Option<SystemTime>,
    last_tx: Option<SystemTime>,
) {
    peer.wire.add_counters(counters);
    peer.last_rx = peer.last_rx.max(last_rx);
    peer.last_tx = peer.last_tx.max(last_tx);
}
