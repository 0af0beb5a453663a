//! `socket_drops` (critical): datagrams dropped before WireGuard read them above
//! `socket_drops_per_second` on a device; the evidence names the peers with the most
//! drops and sums the rest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::json;

use super::{Alert, AlertEngine, AlertType, Severity, DROPS_BY_PEER_LISTED};
use crate::peers::WireSample;
use crate::wg::PublicKey;

impl AlertEngine {
    /// Counts a sample's drops for its peer, for the evidence.
    pub(super) fn track_drops_by_peer(
        &mut self,
        sample: &WireSample,
        owner: &impl Fn(&str, &SocketAddr) -> Option<PublicKey>,
        now: SystemTime,
    ) {
        if sample.delta.socket_drops == 0 {
            return;
        }
        let peer = owner(&sample.device, &sample.endpoint)
            .map(|k| k.to_base64())
            .unwrap_or_else(|| "unknown".into());
        let width = self.config.window;
        self.drops_by_peer
            .entry(sample.device.clone())
            .or_default()
            .entry(peer)
            .or_default()
            .add(now, sample.delta.socket_drops, width);
    }

    /// Alerts for the devices above the rate, from this drain's counts.
    pub(super) fn socket_drops(
        &mut self,
        drops: &BTreeMap<&str, u64>,
        now: SystemTime,
    ) -> Vec<Alert> {
        let width = self.config.window;
        let per_second = width.as_secs_f64();
        let mut alerts = Vec::new();
        for (device, count) in drops {
            let total = self
                .window(AlertType::SocketDrops, device)
                .add(now, *count, width);
            let rate = total as f64 / per_second;
            if *count == 0 || rate < self.config.socket_drops_per_second {
                continue;
            }
            let mut by_peer: Vec<(String, u64)> = self
                .drops_by_peer
                .get_mut(*device)
                .map(|peers| {
                    peers
                        .iter_mut()
                        .map(|(peer, window)| (peer.clone(), window.add(now, 0, width)))
                        .filter(|(_, n)| *n > 0)
                        .collect()
                })
                .unwrap_or_default();
            // The peers with the most drops; the rest summed, so that a device with
            // thousands of peers does not make a payload (and a log line) of hundreds
            // of kilobytes.
            by_peer.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let others = by_peer.split_off(by_peer.len().min(DROPS_BY_PEER_LISTED));
            let mut evidence = json!({
                "Drops": total,
                "PerSecond": rate,
                "WindowSeconds": per_second,
                "DropsByPeer": by_peer.into_iter().collect::<BTreeMap<String, u64>>(),
                "Hint": "the WireGuard socket's receive buffer overflowed: raise net.core.rmem_max (sysctl -w net.core.rmem_max=16777216) and the buffer the WireGuard implementation requests, or give it more CPU",
            });
            if !others.is_empty() {
                evidence["OtherPeers"] = json!({
                    "Peers": others.len(),
                    "Drops": others.iter().map(|(_, n)| n).sum::<u64>(),
                });
            }
            alerts.extend(self.fire(
                AlertType::SocketDrops,
                Severity::Critical,
                device,
                (*device).to_owned(),
                evidence,
                now,
            ));
        }
        alerts
    }
}
