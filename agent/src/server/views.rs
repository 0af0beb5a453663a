//! JSON views of the peer table for the API and `wgpulse peers`: times as RFC 3339,
//! both views of the traffic side by side, never a key other than public ones.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::peers::{DeviceState, PeerState};

fn rfc3339(at: Option<SystemTime>) -> Option<String> {
    at.map(|t| {
        time::OffsetDateTime::from(t)
            .format(&time::format_description::well_known::Rfc3339)
            .expect("formats")
    })
}

/// WireGuard's own counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireGuardView {
    /// Bytes WireGuard accepted from the peer.
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer.
    pub tx_bytes: u64,
}

/// The kernel-mode view: WireGuard's counters read from the kernel at every drain,
/// and how far the wire view is from them (kernel WireGuard only).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelModeView {
    /// WireGuard's internal peer id.
    pub internal_id: u64,
    /// Bytes WireGuard accepted from the peer (equals `wg show transfer`).
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer (equals `wg show transfer`).
    pub tx_bytes: u64,
    /// WireGuard's last completed handshake.
    pub last_handshake: Option<String>,
    /// Received bytes on the wire that WireGuard did not accept, since the first
    /// quiet drain of this run (`null` until the peer had one).
    pub rejected_rx_bytes: Option<i64>,
    /// Sent bytes on the wire that WireGuard's counter does not hold (cookie replies),
    /// since the same drain.
    pub unaccounted_tx_bytes: Option<i64>,
}

/// The wire view.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireView {
    /// Valid datagrams received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Invalid datagrams from the peer's endpoint.
    pub invalid_packets: u64,
    /// Datagrams the socket dropped.
    pub socket_drops: u64,
    /// Completed handshakes.
    pub handshakes_completed: u64,
    /// Handshake initiations received.
    pub rx_initiations: u64,
    /// Handshake initiations sent.
    pub tx_initiations: u64,
}

/// A handshake round trip.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RttView {
    /// When the handshake completed.
    pub at: Option<String>,
    /// The round trip in seconds.
    pub seconds: f64,
}

/// What a peer's counters tell in one direction.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PathDirectionView {
    /// Distinct data messages that reached the wire hook.
    pub packets: u64,
    /// Numbered by the sender but never seen (received: lost on the way or dropped by
    /// the peer; sent: dropped on this host before the wire).
    pub lost: u64,
    /// Arrived below the highest counter (reordered).
    pub reordered: u64,
    /// Counter already seen (within the 64-message window).
    pub duplicates: u64,
    /// `lost / (packets + lost)`, `null` before any data message.
    pub loss_ratio: Option<f64>,
}

impl PathDirectionView {
    fn new(counts: &crate::snapshot::PathCounts) -> Self {
        Self {
            packets: counts.packets,
            lost: counts.lost,
            reordered: counts.late,
            duplicates: counts.duplicates,
            loss_ratio: crate::peers::path::loss_ratio(counts),
        }
    }
}

/// How many recent round trips the API lists per peer.
pub const RTT_SAMPLES_SHOWN: usize = 8;

/// Path health: round trips and the transport counters' figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PathView {
    /// The last handshake round trip.
    pub rtt: Option<RttView>,
    /// The smallest round trip of the last hour, seconds.
    pub rtt_min_seconds: Option<f64>,
    /// The most recent round trips, newest last.
    pub rtt_samples: Vec<RttView>,
    /// Data messages from the peer.
    pub receive: PathDirectionView,
    /// Data messages to the peer (`lost`: unsent).
    pub transmit: PathDirectionView,
}

impl PathView {
    fn new(path: &crate::peers::path::PathHealth, now: SystemTime) -> Self {
        let view = |s: crate::peers::path::RttSample| RttView {
            at: rfc3339(Some(s.at)),
            seconds: s.seconds(),
        };
        let shown = path.rtt_samples.len().saturating_sub(RTT_SAMPLES_SHOWN);
        Self {
            rtt: path.last_rtt().map(view),
            rtt_min_seconds: path.min_rtt(now).map(|s| s.seconds()),
            rtt_samples: path.rtt_samples[shown..]
                .iter()
                .copied()
                .map(view)
                .collect(),
            receive: PathDirectionView::new(&path.receive),
            transmit: PathDirectionView::new(&path.transmit),
        }
    }
}

/// One peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    /// Device.
    pub device: String,
    /// Public key.
    pub public_key: String,
    /// Display name from `peers_file`.
    pub name: Option<String>,
    /// User from `peers_file`.
    pub user: Option<String>,
    /// Current endpoint.
    pub endpoint: Option<String>,
    /// Allowed IPs.
    pub allowed_ips: Vec<String>,
    /// Persistent keepalive (s).
    pub persistent_keepalive: u16,
    /// Connected now.
    pub connected: bool,
    /// Since when.
    pub connected_since: Option<String>,
    /// Last completed handshake.
    pub last_handshake: Option<String>,
    /// Its age in seconds.
    pub last_handshake_age_seconds: Option<f64>,
    /// Start of the last session.
    pub session_start: Option<String>,
    /// WireGuard's counters.
    pub wireguard: WireGuardView,
    /// The wire's counters.
    pub wire: WireView,
    /// The kernel-mode view (absent without kernel-mode attribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelModeView>,
    /// Path health.
    #[serde(default)]
    pub path: PathView,
}

impl PeerView {
    /// The view of a peer at `now`.
    pub fn new(peer: &PeerState, now: SystemTime) -> Self {
        Self {
            device: peer.key.device.clone(),
            public_key: peer.key.public_key.to_base64(),
            name: peer.name.as_ref().and_then(|n| n.name().map(str::to_owned)),
            user: peer.name.as_ref().and_then(|n| n.user().map(str::to_owned)),
            endpoint: peer.endpoint.map(|e| e.to_string()),
            allowed_ips: peer.allowed_ips.clone(),
            persistent_keepalive: peer.persistent_keepalive,
            connected: peer.connected,
            connected_since: rfc3339(peer.connected_since),
            last_handshake: rfc3339(peer.last_handshake),
            last_handshake_age_seconds: peer.last_handshake.map(|t| {
                now.duration_since(t)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            }),
            session_start: rfc3339(peer.session_start),
            wireguard: WireGuardView {
                rx_bytes: peer.wg.rx_bytes,
                tx_bytes: peer.wg.tx_bytes,
            },
            wire: WireView {
                rx_packets: peer.wire.rx_packets,
                rx_bytes: peer.wire.rx_bytes,
                tx_packets: peer.wire.tx_packets,
                tx_bytes: peer.wire.tx_bytes,
                invalid_packets: peer.wire.rx_invalid_packets,
                socket_drops: peer.wire.socket_drops,
                handshakes_completed: peer.handshakes_completed(),
                rx_initiations: peer.wire.handshakes.rx_initiations,
                tx_initiations: peer.wire.handshakes.tx_initiations,
            },
            kernel: peer.kernel.as_deref().map(|k| KernelModeView {
                internal_id: k.internal_id,
                rx_bytes: k.rx_bytes,
                tx_bytes: k.tx_bytes,
                last_handshake: rfc3339(k.last_handshake),
                rejected_rx_bytes: k.rejected_rx_bytes,
                unaccounted_tx_bytes: k.unaccounted_tx_bytes,
            }),
            path: PathView::new(&peer.path, now),
        }
    }
}

/// One device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceView {
    /// Name.
    pub name: String,
    /// Public key.
    pub public_key: Option<String>,
    /// Listen port.
    pub listen_port: u16,
    /// `kernel` or `userspace`.
    pub driver: String,
    /// Valid datagrams from endpoints of no peer.
    pub unknown_rx_packets: u64,
    /// Invalid datagrams from endpoints of no peer.
    pub unknown_invalid_packets: u64,
    /// Distinct unknown endpoints seen.
    pub unknown_endpoints_seen: u64,
}

impl DeviceView {
    /// The view of a device.
    pub fn new(device: &DeviceState) -> Self {
        Self {
            name: device.name.clone(),
            public_key: device.public_key.map(|k| k.to_base64()),
            listen_port: device.listen_port,
            driver: match device.kind {
                crate::wg::DeviceKind::Kernel => "kernel".into(),
                crate::wg::DeviceKind::Userspace => "userspace".into(),
            },
            unknown_rx_packets: device.unknown.totals.rx_packets,
            unknown_invalid_packets: device.unknown.totals.rx_invalid_packets,
            unknown_endpoints_seen: device.unknown.endpoints_seen,
        }
    }
}
