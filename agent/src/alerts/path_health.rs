//! `path_loss` (warning): the share of a peer's data messages lost on the way to us
//! over `alerts.window` above `path_loss_ratio`, once at least `path_loss_min_packets`
//! were numbered in the window (three lost keepalives page nobody). `path_latency`
//! (warning): a handshake round trip above `path_latency_above` (off unless set).

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
        let mut moved: std::collections::BTreeMap<(String, String), (u64, u64)> =
            Default::default();
        for (device, sample) in samples {
            if sample.direction != PathDirection::Receive {
                continue;
            }
            let Some(peer) = owner(device, &sample.endpoint.addr) else {
                continue;
            };
            let entry = moved.entry((device.clone(), peer.to_base64())).or_default();
            entry.0 += sample.delta.lost;
            entry.1 += sample.delta.packets;
        }
        let mut alerts = Vec::new();
        for ((device, peer), (lost, received)) in moved {
            let subject = peer;
            let lost_total = self
                .window(AlertType::PathLoss, &format!("lost/{device}/{subject}"))
                .add(now, lost, width);
            let received_total = self
                .window(AlertType::PathLoss, &format!("received/{device}/{subject}"))
                .add(now, received, width);
            let numbered = lost_total + received_total;
            if lost == 0 || numbered < self.config.path_loss_min_packets || numbered == 0 {
                continue;
            }
            let ratio = lost_total as f64 / numbered as f64;
            if ratio <= self.config.path_loss_ratio {
                continue;
            }
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
                &device,
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
