//! `handshake_unanswered` (warning): initiations from an endpoint (inbound: wrong key,
//! removed peer, attack) or to it (outbound: a dead peer) get no response or cookie
//! for `handshake_unanswered_after`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::{Alert, AlertEngine, AlertType, Direction, Severity, Unanswered};
use crate::events::payload::time;
use crate::peers::WireSample;
use crate::wg::PublicKey;

impl AlertEngine {
    /// Follows a drained sample's initiations and answers, both ways.
    pub(super) fn track_unanswered(&mut self, sample: &WireSample, now: SystemTime) {
        let delta = &sample.delta;
        self.track_direction(
            sample,
            Direction::Inbound,
            delta.rx.messages.initiations,
            delta.tx.messages.responses + delta.tx.messages.cookies,
            now,
        );
        self.track_direction(
            sample,
            Direction::Outbound,
            delta.tx.messages.initiations,
            delta.rx.messages.responses + delta.rx.messages.cookies,
            now,
        );
    }

    fn track_direction(
        &mut self,
        sample: &WireSample,
        direction: Direction,
        initiations: u64,
        answers: u64,
        now: SystemTime,
    ) {
        let key = (sample.device.clone(), sample.endpoint, direction);
        if answers > 0 {
            self.unanswered.remove(&key);
            return;
        }
        if initiations > 0 {
            let entry = self.unanswered.entry(key).or_insert(Unanswered {
                since: now,
                last: now,
                initiations: 0,
            });
            entry.initiations += initiations;
            entry.last = now;
        }
    }

    /// Alerts for the endpoints whose initiations went unanswered long enough.
    pub(super) fn unanswered_alerts(
        &mut self,
        owner: &impl Fn(&str, &SocketAddr) -> Option<PublicKey>,
        now: SystemTime,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let due: Vec<(String, SocketAddr, Direction)> = self
            .unanswered
            .iter()
            .filter(|(_, u)| {
                u.initiations >= 2
                    && now.duration_since(u.since).unwrap_or_default()
                        >= self.config.handshake_unanswered_after
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (device, endpoint, direction) in due {
            let entry: &Unanswered = &self.unanswered[&(device.clone(), endpoint, direction)];
            let peer = owner(&device, &endpoint).map(|k| k.to_base64());
            let evidence = json!({
                "Endpoint": endpoint.to_string(),
                "Direction": direction,
                "Initiations": entry.initiations,
                "UnansweredSince": time(Some(entry.since)),
                "Peer": peer,
            });
            let subject = format!("{device}/{endpoint}");
            alerts.extend(self.fire(
                AlertType::HandshakeUnanswered,
                Severity::Warning,
                &device,
                subject,
                evidence,
                now,
            ));
        }
        let forget_after = self
            .config
            .handshake_unanswered_after
            .max(Duration::from_secs(300));
        self.unanswered
            .retain(|_, u| now.duration_since(u.last).unwrap_or_default() < forget_after);
        alerts
    }
}
