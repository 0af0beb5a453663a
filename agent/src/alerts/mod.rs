//! Alerts only the wire can raise: handshakes nobody answers, floods of invalid
//! datagrams, cookie storms, socket drops, and peers appearing from addresses they
//! never used. Pure logic over drained samples (the caller passes the time); every
//! alert has a stable type, a severity and its evidence, and is suppressed for
//! `suppress_for` per type and subject after it fires.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::events::payload::time;
use crate::peers::{PeerState, WireSample};
use crate::wg::PublicKey;

/// Most peers named in a `socket_drops` alert's `DropsByPeer` (those with the most
/// drops); the others are summed in `OtherPeers`.
pub const DROPS_BY_PEER_LISTED: usize = 20;

/// `[alerts]` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Raise alerts at all (default true).
    pub enabled: bool,
    /// Rates are averaged over this window (default 10 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// No repeat of the same type and subject within this (default 1 h).
    #[serde(with = "humantime_serde")]
    pub suppress_for: Duration,
    /// Initiations from (or to) an endpoint left unanswered this long raise
    /// `handshake_unanswered` (default 30 s; WireGuard retries every 5 s).
    #[serde(with = "humantime_serde")]
    pub handshake_unanswered_after: Duration,
    /// Invalid datagrams per second from one source address that raise
    /// `invalid_flood` (default 20).
    pub invalid_flood_per_second: f64,
    /// Cookie replies per second sent by one device that raise `cookie_storm`
    /// (default 5).
    pub cookie_storm_per_second: f64,
    /// Socket drops per second on one device that raise `socket_drops` (default 1).
    pub socket_drops_per_second: f64,
    /// Raise `endpoint_new_address` when a peer's endpoint moves to an address it
    /// never used before (default true).
    pub endpoint_new_address: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(10),
            suppress_for: Duration::from_secs(3600),
            handshake_unanswered_after: Duration::from_secs(30),
            invalid_flood_per_second: 20.0,
            cookie_storm_per_second: 5.0,
            socket_drops_per_second: 1.0,
            endpoint_new_address: true,
        }
    }
}

impl AlertsConfig {
    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.window < Duration::from_secs(1) {
            problems.push(("window".into(), "must be at least 1s".into()));
        }
        for (key, value) in [
            ("invalid_flood_per_second", self.invalid_flood_per_second),
            ("cookie_storm_per_second", self.cookie_storm_per_second),
            ("socket_drops_per_second", self.socket_drops_per_second),
        ] {
            if !(value.is_finite() && value > 0.0) {
                problems.push((key.into(), "must be a positive number".into()));
            }
        }
        problems
    }
}

/// The stable alert types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertType {
    /// Initiations nobody answers (wrong key, removed peer, attack, dead peer).
    HandshakeUnanswered,
    /// Invalid datagrams on a WireGuard port above a rate (scanning, DoS).
    InvalidFlood,
    /// Cookie replies sent above a rate (WireGuard under load).
    CookieStorm,
    /// Datagrams dropped before WireGuard read them, above a rate.
    SocketDrops,
    /// A peer's endpoint moved to an address it never used before.
    EndpointNewAddress,
}

impl AlertType {
    /// The event name (`alert.<type>`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::HandshakeUnanswered => "handshake_unanswered",
            AlertType::InvalidFlood => "invalid_flood",
            AlertType::CookieStorm => "cookie_storm",
            AlertType::SocketDrops => "socket_drops",
            AlertType::EndpointNewAddress => "endpoint_new_address",
        }
    }
}

/// How bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Someone should look.
    Warning,
    /// Traffic is being lost.
    Critical,
}

/// One alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Its type.
    pub kind: AlertType,
    /// Its severity.
    pub severity: Severity,
    /// The device it concerns.
    pub device: String,
    /// What it is about: a peer's key, `device/address`, or the device.
    pub subject: String,
    /// The evidence (counts, rates, addresses, times).
    pub evidence: Value,
    /// No repeat for this type and subject until then.
    pub suppress_until: SystemTime,
}

impl Alert {
    /// The event payload.
    pub fn payload(&self) -> Value {
        json!({
            "Type": self.kind,
            "Severity": self.severity,
            "Device": self.device,
            "Subject": self.subject,
            "Evidence": self.evidence,
            "SuppressUntil": time(Some(self.suppress_until)),
        })
    }
}

/// Which side sent the initiations nobody answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
enum Direction {
    /// The remote initiates, the local device never responds.
    Inbound,
    /// The local device initiates, the remote never responds.
    Outbound,
}

#[derive(Debug)]
struct Unanswered {
    since: SystemTime,
    last: SystemTime,
    initiations: u64,
}

/// Counts over a sliding window.
#[derive(Debug, Default)]
struct Window {
    entries: VecDeque<(SystemTime, u64)>,
}

impl Window {
    fn add(&mut self, at: SystemTime, count: u64, width: Duration) -> u64 {
        if count > 0 {
            self.entries.push_back((at, count));
        }
        while self
            .entries
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t).unwrap_or_default() >= width)
        {
            self.entries.pop_front();
        }
        self.entries.iter().map(|(_, c)| c).sum()
    }
}

/// Evaluates the alert rules drain by drain.
#[derive(Debug)]
pub struct AlertEngine {
    config: AlertsConfig,
    unanswered: HashMap<(String, SocketAddr, Direction), Unanswered>,
    windows: HashMap<(AlertType, String), Window>,
    suppressed_until: HashMap<(AlertType, String), SystemTime>,
    /// Socket drops per peer within the window, for the evidence.
    drops_by_peer: HashMap<String, BTreeMap<String, Window>>,
}

impl AlertEngine {
    /// An engine with `config`'s thresholds.
    pub fn new(config: AlertsConfig) -> Self {
        Self {
            config,
            unanswered: HashMap::new(),
            windows: HashMap::new(),
            suppressed_until: HashMap::new(),
            drops_by_peer: HashMap::new(),
        }
    }

    /// Evaluates one drain. `owner` names the peer (public key) an endpoint belongs
    /// to, if any.
    pub fn on_drain(
        &mut self,
        samples: &[WireSample],
        owner: impl Fn(&str, &SocketAddr) -> Option<PublicKey>,
        now: SystemTime,
    ) -> Vec<Alert> {
        if !self.config.enabled {
            return Vec::new();
        }
        let mut alerts = Vec::new();
        let width = self.config.window;
        let per_second = width.as_secs_f64();
        let mut cookies: BTreeMap<&str, u64> = BTreeMap::new();
        let mut drops: BTreeMap<&str, u64> = BTreeMap::new();
        let mut invalid: BTreeMap<(&str, IpAddr), u64> = BTreeMap::new();
        for sample in samples {
            let delta = &sample.delta;
            self.track_unanswered(
                sample,
                Direction::Inbound,
                delta.rx.messages.initiations,
                delta.tx.messages.responses + delta.tx.messages.cookies,
                now,
            );
            self.track_unanswered(
                sample,
                Direction::Outbound,
                delta.tx.messages.initiations,
                delta.rx.messages.responses + delta.rx.messages.cookies,
                now,
            );
            *cookies.entry(&sample.device).or_default() += delta.tx.messages.cookies;
            *drops.entry(&sample.device).or_default() += delta.socket_drops;
            *invalid
                .entry((&sample.device, sample.endpoint.ip()))
                .or_default() += delta.rx.invalid_packets;
            if delta.socket_drops > 0 {
                let peer = owner(&sample.device, &sample.endpoint)
                    .map(|k| k.to_base64())
                    .unwrap_or_else(|| "unknown".into());
                self.drops_by_peer
                    .entry(sample.device.clone())
                    .or_default()
                    .entry(peer)
                    .or_default()
                    .add(now, delta.socket_drops, width);
            }
        }

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
            let entry = &self.unanswered[&(device.clone(), endpoint, direction)];
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

        for ((device, source), count) in invalid {
            let subject = format!("{device}/{source}");
            let total = self
                .window(AlertType::InvalidFlood, &subject)
                .add(now, count, width);
            let rate = total as f64 / per_second;
            if count > 0 && rate >= self.config.invalid_flood_per_second {
                let evidence = json!({
                    "Source": source.to_string(),
                    "InvalidPackets": total,
                    "PerSecond": rate,
                    "WindowSeconds": per_second,
                });
                alerts.extend(self.fire(
                    AlertType::InvalidFlood,
                    Severity::Warning,
                    device,
                    subject,
                    evidence,
                    now,
                ));
            }
        }
        for (device, count) in cookies {
            let total = self
                .window(AlertType::CookieStorm, device)
                .add(now, count, width);
            let rate = total as f64 / per_second;
            if count > 0 && rate >= self.config.cookie_storm_per_second {
                let evidence = json!({
                    "CookieReplies": total,
                    "PerSecond": rate,
                    "WindowSeconds": per_second,
                });
                alerts.extend(self.fire(
                    AlertType::CookieStorm,
                    Severity::Warning,
                    device,
                    device.to_owned(),
                    evidence,
                    now,
                ));
            }
        }
        for (device, count) in drops {
            let total = self
                .window(AlertType::SocketDrops, device)
                .add(now, count, width);
            let rate = total as f64 / per_second;
            if count > 0 && rate >= self.config.socket_drops_per_second {
                let mut by_peer: Vec<(String, u64)> = self
                    .drops_by_peer
                    .get_mut(device)
                    .map(|peers| {
                        peers
                            .iter_mut()
                            .map(|(peer, window)| (peer.clone(), window.add(now, 0, width)))
                            .filter(|(_, n)| *n > 0)
                            .collect()
                    })
                    .unwrap_or_default();
                // The peers with the most drops; the rest summed, so that a device with
                // thousands of peers does not make a payload (and a log line) of
                // hundreds of kilobytes.
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
                    device.to_owned(),
                    evidence,
                    now,
                ));
            }
        }
        self.windows.retain(|_, w| !w.entries.is_empty());
        alerts
    }

    /// A peer's endpoint moved to an address it never used before.
    pub fn on_new_address(
        &mut self,
        peer: &PeerState,
        address: IpAddr,
        now: SystemTime,
    ) -> Vec<Alert> {
        if !(self.config.enabled && self.config.endpoint_new_address) {
            return Vec::new();
        }
        let evidence = json!({
            "Peer": peer.key.public_key.to_base64(),
            "Address": address.to_string(),
            "Endpoint": peer.endpoint.map(|e| e.to_string()),
            "AddressesSeen": peer.addresses_seen.len(),
        });
        let subject = format!("{}/{address}", peer.key.public_key.to_base64());
        self.fire(
            AlertType::EndpointNewAddress,
            Severity::Info,
            &peer.key.device,
            subject,
            evidence,
            now,
        )
        .into_iter()
        .collect()
    }

    fn track_unanswered(
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

    fn window(&mut self, kind: AlertType, subject: &str) -> &mut Window {
        self.windows.entry((kind, subject.to_owned())).or_default()
    }

    fn fire(
        &mut self,
        kind: AlertType,
        severity: Severity,
        device: &str,
        subject: String,
        evidence: Value,
        now: SystemTime,
    ) -> Option<Alert> {
        let key = (kind, subject.clone());
        if self
            .suppressed_until
            .get(&key)
            .is_some_and(|until| *until > now)
        {
            return None;
        }
        let suppress_until = now + self.config.suppress_for;
        self.suppressed_until.insert(key, suppress_until);
        self.suppressed_until.retain(|_, until| *until > now);
        Some(Alert {
            kind,
            severity,
            device: device.to_owned(),
            subject,
            evidence,
            suppress_until,
        })
    }
}

#[cfg(test)]
mod tests;
