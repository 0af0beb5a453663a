//! `path_loss` (warning): the share of a peer's data messages lost on the way to us
//! over `alerts.window` above `path_loss_ratio`, once at least `path_loss_min_packets`
//! were numbered in the window (three lost keepalives page nobody). `path_latency`
//! (warning): a handshake round trip above `path_latency_above` (off unless set).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::{Alert, AlertEngine, AlertType, Severity};
use crate::peers::PeerState;
use crate::snapshot::{PathDirection, PathSample};
use crate::wg::PublicKey;

impl AlertEngine {
    /// Evaluates a drain's path figures per peer (`owner` names the peer of an
    /// endpoint on a device).
    pub fn on_paths(
        &mut self,
        samples: &[(String, PathSample)],
        owner: impl Fn(&str, &std::net::SocketAddr) -> Option<PublicKey>,
        now: SystemTime,
    ) -> Vec<Alert> {
        if !self.config.enabled {
            return Vec::new();
        }
        let width = self.config.window;
        // Per (device, peer): lost and received in this drain.
        let mut moved: std::collections::BTreeMap<(&str, PublicKey), (u64, u64)> =
            Default::default();
        for (device, sample) in samples {
            if sample.direction != PathDirection::Receive {
                continue;
            }
            let Some(peer) = owner(device, &sample.endpoint.addr) else {
                continue;
            };
            let entry = moved.entry((device.as_str(), peer)).or_default();
            entry.0 += sample.delta.lost;
            entry.1 += sample.delta.packets;
        }
        self.forget_quiet_paths(now);
        let mut alerts = Vec::new();
        for ((device, peer), (lost, received)) in moved {
            if !self.path_windows.contains_key(device) {
                self.path_windows.insert(device.to_owned(), HashMap::new());
            }
            let (lost_total, received_total) = self
                .path_windows
                .get_mut(device)
                .expect("inserted above")
                .entry(peer)
                .or_default()
                .add(now, (lost, received), width);
            let numbered = lost_total + received_total;
            if lost == 0 || numbered < self.config.path_loss_min_packets || numbered == 0 {
                continue;
            }
            let ratio = lost_total as f64 / numbered as f64;
            if ratio <= self.config.path_loss_ratio {
                continue;
            }
            let subject = peer.to_base64();
            let evidence = json!({
                "Peer": subject,
                "Lost": lost_total,
                "Received": received_total,
                "LossRatio": ratio,
                "WindowSeconds": width.as_secs_f64(),
                "Hint": "gaps in the counters of the peer's data messages: packets it sent that never reached this host (the path, or the peer's own drops after numbering them)",
            });
            alerts.extend(self.fire(
                AlertType::PathLoss,
                Severity::Warning,
                device,
                subject,
                evidence,
                now,
            ));
        }
        alerts
    }

    /// A handshake round trip of `peer` above the threshold (if one is set).
    pub fn on_round_trip(
        &mut self,
        peer: &PeerState,
        rtt: Duration,
        now: SystemTime,
    ) -> Vec<Alert> {
        let Some(limit) = self.config.path_latency_above else {
            return Vec::new();
        };
        if !self.config.enabled || rtt <= limit {
            return Vec::new();
        }
        let evidence = json!({
            "Peer": peer.key.public_key.to_base64(),
            "RoundTripSeconds": rtt.as_secs_f64(),
            "ThresholdSeconds": limit.as_secs_f64(),
            "MinimumLastHourSeconds": peer.path.min_rtt(now).map(|s| s.seconds()),
            "Endpoint": peer.endpoint.map(|e| e.to_string()),
        });
        self.fire(
            AlertType::PathLatency,
            Severity::Warning,
            &peer.key.device,
            peer.key.public_key.to_base64(),
            evidence,
            now,
        )
        .into_iter()
        .collect()
    }
}

impl AlertEngine {
    /// Drops the windows of peers whose traffic left the window (a peer that went
    /// quiet kept its window for ever): at most once per window width, so a drain
    /// does not scan every peer's window.
    fn forget_quiet_paths(&mut self, now: SystemTime) {
        let width = self.config.window;
        if self
            .paths_pruned_at
            .is_some_and(|at| now.duration_since(at).unwrap_or_default() < width)
        {
            return;
        }
        self.paths_pruned_at = Some(now);
        for windows in self.path_windows.values_mut() {
            windows.retain(|_, window| {
                window.expire(now, width);
                !window.is_empty()
            });
        }
        self.path_windows.retain(|_, windows| !windows.is_empty());
    }

    /// How many peers have a path-loss window (for tests).
    #[cfg(test)]
    pub(super) fn path_windows(&self) -> usize {
        self.path_windows.values().map(HashMap::len).sum()
    }
}
