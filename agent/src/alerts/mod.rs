//! Alerts only the wire can raise: handshakes nobody answers, floods of invalid
//! datagrams, cookie storms, socket drops, peers appearing from addresses they
//! never used, and unhealthy paths (loss from counter gaps, slow handshakes). Pure logic over drained samples (the caller passes the time); every
//! alert has a stable type, a severity and its evidence, and is suppressed for
//! `suppress_for` per type and subject after it fires.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::events::payload::time;
use crate::peers::WireSample;
use crate::wg::PublicKey;
use window::Window;

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
    /// Share of a peer's data messages lost on the way to us over `window` that
    /// raises `path_loss` (default 0.02).
    pub path_loss_ratio: f64,
    /// Messages the peer must have numbered within `window` before `path_loss` is
    /// judged (default 100).
    pub path_loss_min_packets: u64,
    /// A handshake round trip above this raises `path_latency` (default: off).
    #[serde(with = "humantime_serde")]
    pub path_latency_above: Option<Duration>,
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
            path_loss_ratio: 0.02,
            path_loss_min_packets: 100,
            path_latency_above: None,
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
        if !(self.path_loss_ratio.is_finite()
            && self.path_loss_ratio > 0.0
            && self.path_loss_ratio < 1.0)
        {
            problems.push((
                "path_loss_ratio".into(),
                "must be a share between 0 and 1 (0.02 is 2%)".into(),
            ));
        }
        if self.path_latency_above == Some(Duration::ZERO) {
            problems.push((
                "path_latency_above".into(),
                "must be above 0 (leave it out to turn path_latency off)".into(),
            ));
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
    /// A peer's data messages lost on the way above a share.
    PathLoss,
    /// A handshake round trip above a threshold.
    PathLatency,
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
            AlertType::PathLoss => "path_loss",
            AlertType::PathLatency => "path_latency",
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
pub(super) enum Direction {
    /// The remote initiates, the local device never responds.
    Inbound,
    /// The local device initiates, the remote never responds.
    Outbound,
}

#[derive(Debug)]
pub(super) struct Unanswered {
    since: SystemTime,
    last: SystemTime,
    initiations: u64,
}

/// Evaluates the alert rules drain by drain.
#[derive(Debug)]
pub struct AlertEngine {
    config: AlertsConfig,
    unanswered: HashMap<(String, SocketAddr, Direction), Unanswered>,
    windows: HashMap<(AlertType, String), Window>,
    /// Each peer's path-loss window (lost, received), by device and public key: one
    /// entry per peer, no formatted keys per drain.
    path_windows: HashMap<String, HashMap<PublicKey, Window<(u64, u64)>>>,
    /// When quiet peers' path windows were last dropped.
    paths_pruned_at: Option<SystemTime>,
    suppressed_until: HashMap<(AlertType, String), SystemTime>,
    /// Socket drops per peer within the window, for the evidence.
    drops_by_peer: HashMap<String, BTreeMap<String, Window>>,
}

impl AlertEngine {
    /// Evaluates one drain. `owner` names the peer (public key) an endpoint belongs
    /// to, if any. Each rule is a file of this module.
    pub fn on_drain(
        &mut self,
        samples: &[WireSample],
        owner: impl Fn(&str, &SocketAddr) -> Option<PublicKey>,
        now: SystemTime,
    ) -> Vec<Alert> {
        if !self.config.enabled {
            return Vec::new();
        }
        let mut cookies: BTreeMap<&str, u64> = BTreeMap::new();
        let mut drops: BTreeMap<&str, u64> = BTreeMap::new();
        let mut invalid: BTreeMap<(&str, IpAddr), u64> = BTreeMap::new();
        for sample in samples {
            let delta = &sample.delta;
            self.track_unanswered(sample, now);
            *cookies.entry(&sample.device).or_default() += delta.tx.messages.cookies;
            *drops.entry(&sample.device).or_default() += delta.socket_drops;
            *invalid
                .entry((&sample.device, sample.endpoint.ip()))
                .or_default() += delta.rx.invalid_packets;
            self.track_drops_by_peer(sample, &owner, now);
        }
        let mut alerts = self.unanswered_alerts(&owner, now);
        alerts.extend(self.invalid_floods(&invalid, now));
        alerts.extend(self.cookie_storms(&cookies, now));
        alerts.extend(self.socket_drops(&drops, now));
        self.windows.retain(|_, w| !w.is_empty());
        alerts
    }

    /// An engine with `config`'s thresholds.
    pub fn new(config: AlertsConfig) -> Self {
        Self {
            config,
            unanswered: HashMap::new(),
            windows: HashMap::new(),
            path_windows: HashMap::new(),
            paths_pruned_at: None,
            suppressed_until: HashMap::new(),
            drops_by_peer: HashMap::new(),
        }
    }

    fn window(&mut self, kind: AlertType, subject: &str) -> &mut Window {
        self.windows.entry((kind, subject.to_owned())).or_default()
    }

    pub(super) fn fire(
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

mod cookie_storm;
mod endpoint_new_address;
mod handshake_unanswered;
mod invalid_flood;
mod path_health;
mod socket_drops;
mod window;

#[cfg(test)]
mod tests;
