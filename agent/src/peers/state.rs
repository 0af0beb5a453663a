//! What the agent keeps per device and per peer: WireGuard's configuration, the
//! connection state, the wire counters attributed from the datapath and WireGuard's
//! own counters. These types are persisted (see [`super::persist`]) and read by the
//! metrics, the API and the event payloads.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::snapshot::EndpointStats;
use crate::wg::{DeviceKind, PublicKey};

/// A peer is identified by its device and its public key: the same key may be a peer
/// of two devices on one host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerKey {
    /// The WireGuard device (interface name).
    pub device: String,
    /// The peer's public key.
    pub public_key: PublicKey,
}

/// One WireGuard device as the agent keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Interface name.
    pub name: String,
    /// Kernel or userspace implementation.
    pub kind: DeviceKind,
    /// The device's public key, if it has a private key.
    pub public_key: Option<PublicKey>,
    /// UDP listen port.
    pub listen_port: u16,
    /// Firewall mark (0: none).
    pub fwmark: u32,
    /// When the agent first saw the device.
    pub created_at: SystemTime,
    /// When the agent last saw its configuration change.
    pub updated_at: SystemTime,
    /// Traffic on the device's port from endpoints that belong to no peer.
    pub unknown: UnknownTraffic,
    /// Handshake round trips of all the device's peers.
    #[serde(default)]
    pub rtt: super::path::RttHistogram,
}

/// Traffic on a device's port that no peer owns: stray senders, scanners, peers that
/// were removed. Kept apart and never mixed into a peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownTraffic {
    /// Counters over every unknown endpoint.
    pub totals: WireCounters,
    /// Distinct unknown endpoints seen (also those beyond [`UNKNOWN_ENDPOINTS_KEPT`]).
    pub endpoints_seen: u64,
    /// Completed handshakes whose endpoint belonged to no peer even after a re-read.
    pub handshakes_completed: u64,
    /// Per-endpoint counters of the most recently active unknown endpoints.
    pub endpoints: Vec<UnknownEndpoint>,
}

/// How many unknown endpoints are kept one by one per device (a scanner spraying
/// source addresses must not grow memory without bound; the totals stay exact).
pub const UNKNOWN_ENDPOINTS_KEPT: usize = 256;

/// One unknown endpoint's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownEndpoint {
    /// The remote address.
    pub endpoint: SocketAddr,
    /// Its counters.
    pub counters: WireCounters,
    /// Last time traffic from or to it was drained.
    pub last_seen: SystemTime,
}

/// Counters of the wire view (the datapath) for one peer or one set of endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCounters {
    /// Valid WireGuard datagrams received.
    pub rx_packets: u64,
    /// Their UDP payload bytes.
    pub rx_bytes: u64,
    /// Valid WireGuard datagrams sent.
    pub tx_packets: u64,
    /// Their UDP payload bytes.
    pub tx_bytes: u64,
    /// Received datagrams that are not WireGuard messages.
    pub rx_invalid_packets: u64,
    /// Their bytes.
    pub rx_invalid_bytes: u64,
    /// Handshake messages by direction and type.
    pub handshakes: HandshakeMessages,
    /// Datagrams the socket dropped before WireGuard read them.
    pub socket_drops: u64,
    /// Their bytes.
    pub socket_drop_bytes: u64,
}

/// Handshake messages seen on the wire, by direction and type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeMessages {
    /// Initiations received.
    pub rx_initiations: u64,
    /// Responses received.
    pub rx_responses: u64,
    /// Cookie replies received.
    pub rx_cookies: u64,
    /// Initiations sent.
    pub tx_initiations: u64,
    /// Responses sent.
    pub tx_responses: u64,
    /// Cookie replies sent.
    pub tx_cookies: u64,
}

impl WireCounters {
    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &WireCounters) -> WireCounters {
        let h = &self.handshakes;
        let e = &earlier.handshakes;
        WireCounters {
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            rx_invalid_packets: self
                .rx_invalid_packets
                .saturating_sub(earlier.rx_invalid_packets),
            rx_invalid_bytes: self
                .rx_invalid_bytes
                .saturating_sub(earlier.rx_invalid_bytes),
            handshakes: HandshakeMessages {
                rx_initiations: h.rx_initiations.saturating_sub(e.rx_initiations),
                rx_responses: h.rx_responses.saturating_sub(e.rx_responses),
                rx_cookies: h.rx_cookies.saturating_sub(e.rx_cookies),
                tx_initiations: h.tx_initiations.saturating_sub(e.tx_initiations),
                tx_responses: h.tx_responses.saturating_sub(e.tx_responses),
                tx_cookies: h.tx_cookies.saturating_sub(e.tx_cookies),
            },
            socket_drops: self.socket_drops.saturating_sub(earlier.socket_drops),
            socket_drop_bytes: self
                .socket_drop_bytes
                .saturating_sub(earlier.socket_drop_bytes),
        }
    }

    /// Adds a drained per-endpoint delta.
    pub fn add(&mut self, delta: &EndpointStats) {
        self.rx_packets += delta.rx.packets;
        self.rx_bytes += delta.rx.bytes;
        self.tx_packets += delta.tx.packets;
        self.tx_bytes += delta.tx.bytes;
        self.rx_invalid_packets += delta.rx.invalid_packets;
        self.rx_invalid_bytes += delta.rx.invalid_bytes;
        self.handshakes.rx_initiations += delta.rx.messages.initiations;
        self.handshakes.rx_responses += delta.rx.messages.responses;
        self.handshakes.rx_cookies += delta.rx.messages.cookies;
        self.handshakes.tx_initiations += delta.tx.messages.initiations;
        self.handshakes.tx_responses += delta.tx.messages.responses;
        self.handshakes.tx_cookies += delta.tx.messages.cookies;
        self.socket_drops += delta.socket_drops;
        self.socket_drop_bytes += delta.socket_drop_bytes;
    }

    /// Adds another set of counters.
    pub fn add_counters(&mut self, other: &WireCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.rx_invalid_packets += other.rx_invalid_packets;
        self.rx_invalid_bytes += other.rx_invalid_bytes;
        self.handshakes.rx_initiations += other.handshakes.rx_initiations;
        self.handshakes.rx_responses += other.handshakes.rx_responses;
        self.handshakes.rx_cookies += other.handshakes.rx_cookies;
        self.handshakes.tx_initiations += other.handshakes.tx_initiations;
        self.handshakes.tx_responses += other.handshakes.tx_responses;
        self.handshakes.tx_cookies += other.handshakes.tx_cookies;
        self.socket_drops += other.socket_drops;
        self.socket_drop_bytes += other.socket_drop_bytes;
    }
}

/// WireGuard's own transfer counters (`wg show transfer`), made monotonic: when the
/// device is recreated its counters restart at zero, and the agent keeps counting from
/// where it was instead of going backwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgCounters {
    /// Bytes WireGuard accepted from the peer, monotonic.
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer, monotonic.
    pub tx_bytes: u64,
    /// The last raw value WireGuard reported (to detect a reset).
    pub raw_rx_bytes: u64,
    /// The last raw value WireGuard reported.
    pub raw_tx_bytes: u64,
    /// How many times the raw counters went backwards (device or peer recreated).
    pub resets: u64,
}

impl WgCounters {
    /// Starts from the first reading (what WireGuard counted before the agent saw it
    /// is WireGuard's total, so it is taken as is).
    pub fn first(rx: u64, tx: u64) -> Self {
        Self {
            rx_bytes: rx,
            tx_bytes: tx,
            raw_rx_bytes: rx,
            raw_tx_bytes: tx,
            resets: 0,
        }
    }

    /// Folds in a new reading.
    pub fn update(&mut self, rx: u64, tx: u64) {
        if rx < self.raw_rx_bytes || tx < self.raw_tx_bytes {
            // The counters restarted: everything counted since the restart is new.
            self.resets += 1;
            self.rx_bytes += rx;
            self.tx_bytes += tx;
        } else {
            self.rx_bytes += rx - self.raw_rx_bytes;
            self.tx_bytes += tx - self.raw_tx_bytes;
        }
        self.raw_rx_bytes = rx;
        self.raw_tx_bytes = tx;
    }
}

/// The kernel-mode view of a peer (kernel WireGuard with kernel-mode attribution on):
/// WireGuard's own counters read at every drain, keyed by the peer itself, and how far
/// the wire view is from them since a quiet moment of this run.
///
/// The difference needs a baseline at which both views agree on what was in flight:
/// the first drain at which neither the wire counters nor WireGuard's changed since the
/// drain before (no datagram between the classifier and WireGuard then). Until such a
/// moment the difference is unknown (`None`) rather than off by a packet in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KernelView {
    /// WireGuard's internal id of the peer.
    pub internal_id: u64,
    /// Bytes WireGuard accepted from the peer (`wg show transfer` received).
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer (`wg show transfer` sent).
    pub tx_bytes: u64,
    /// WireGuard's last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Received bytes the wire saw from the peer's endpoints (valid and invalid
    /// datagrams) that WireGuard did not accept: invalid or replayed messages, failed
    /// authentication, cookie replies, socket drops. Since the baseline.
    pub rejected_rx_bytes: Option<i64>,
    /// Sent bytes on the wire that WireGuard's counter does not hold (cookie replies),
    /// since the baseline.
    pub unaccounted_tx_bytes: Option<i64>,
    /// Kernel (rx, tx) and wire (rx, tx) bytes at the baseline.
    #[serde(skip)]
    baseline: Option<[u64; 4]>,
    /// Kernel (rx, tx) and wire (rx, tx) bytes at this reading.
    #[serde(skip)]
    counters: [u64; 4],
}

impl KernelView {
    /// The view after a new reading, given the peer's wire counters now.
    pub fn observe(
        previous: Option<KernelView>,
        reading: &crate::snapshot::KernelPeerReading,
        wire: &WireCounters,
    ) -> Self {
        let counters = [
            reading.rx_bytes,
            reading.tx_bytes,
            wire.rx_bytes + wire.rx_invalid_bytes,
            wire.tx_bytes,
        ];
        let baseline = match previous {
            // A peer removed and added again is a new peer with new counters.
            Some(view) if view.internal_id == reading.internal_id => view
                .baseline
                .or((view.counters == counters).then_some(counters)),
            _ => None,
        };
        let since =
            |i: usize| -> Option<i64> { baseline.map(|b| counters[i] as i64 - b[i] as i64) };
        let difference =
            |kernel: usize, wire: usize| -> Option<i64> { Some(since(wire)? - since(kernel)?) };
        Self {
            internal_id: reading.internal_id,
            rx_bytes: reading.rx_bytes,
            tx_bytes: reading.tx_bytes,
            last_handshake: reading.last_handshake,
            rejected_rx_bytes: difference(0, 2),
            unaccounted_tx_bytes: difference(1, 3),
            baseline,
            counters,
        }
    }
}

/// One peer as the agent keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    /// Device and public key.
    pub key: PeerKey,
    /// The endpoint the peer uses now (WireGuard's, or the datapath's when it saw a roam
    /// first).
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs as WireGuard lists them.
    pub allowed_ips: Vec<String>,
    /// Persistent keepalive in seconds (0: off).
    pub persistent_keepalive: u16,
    /// Whether a preshared key is configured (never the key).
    pub has_preshared_key: bool,
    /// Connected: the last completed handshake is younger than `disconnect_after`.
    pub connected: bool,
    /// Start of the current connected period (the handshake that connected it).
    pub connected_since: Option<SystemTime>,
    /// End of the last connected period.
    pub disconnected_at: Option<SystemTime>,
    /// Last completed handshake (the datapath's notice or WireGuard's, the later).
    pub last_handshake: Option<SystemTime>,
    /// When the handshake that started the current (or last) session completed.
    pub session_start: Option<SystemTime>,
    /// Completed handshakes the datapath saw, as initiator.
    pub handshakes_initiated: u64,
    /// Completed handshakes the datapath saw, as responder.
    pub handshakes_responded: u64,
    /// Wire counters attributed to the peer.
    pub wire: WireCounters,
    /// WireGuard's own counters.
    pub wg: WgCounters,
    /// Last datagram received from the peer (wire).
    pub last_rx: Option<SystemTime>,
    /// Last datagram sent to the peer (wire).
    pub last_tx: Option<SystemTime>,
    /// When the agent first saw the peer.
    pub created_at: SystemTime,
    /// When the agent last saw its configuration change.
    pub updated_at: SystemTime,
    /// WireGuard's endpoint at the last device read (to tell WireGuard's roams from
    /// a read that has not caught up with the datapath yet).
    #[serde(default)]
    pub wg_endpoint: Option<SocketAddr>,
    /// When the datapath last moved the endpoint (a roam notice).
    #[serde(default)]
    pub endpoint_noticed_at: Option<SystemTime>,
    /// Addresses the peer's endpoint has used (the most recent [`ADDRESSES_KEPT`]).
    #[serde(default)]
    pub addresses_seen: Vec<IpAddr>,
    /// The wire counters at the last completed handshake (for the handshake feed).
    #[serde(default)]
    pub at_last_handshake: WireCounters,
    /// Name, user, email and tags from `peers_file`, if it names the peer. Not
    /// saved (the file is read again at start); older state files that have it still
    /// load.
    #[serde(default, skip_serializing)]
    pub name: Option<std::sync::Arc<super::names::PeerName>>,
    /// The kernel-mode view (kernel WireGuard only; starts over with every run).
    /// Boxed: 144 bytes most peers (userspace WireGuard) never fill.
    #[serde(skip)]
    pub kernel: Option<Box<KernelView>>,
    /// Path health: transport-counter figures and handshake round trips.
    #[serde(default)]
    pub path: super::path::PathHealth,
}

/// How many endpoint addresses are remembered per peer.
pub const ADDRESSES_KEPT: usize = 64;

impl PeerState {
    /// Completed handshakes the datapath saw, both roles.
    pub fn handshakes_completed(&self) -> u64 {
        self.handshakes_initiated + self.handshakes_responded
    }

    /// Records the address of a new endpoint; true if the peer never used it before.
    pub fn remember_address(&mut self, address: IpAddr) -> bool {
        if let Some(i) = self.addresses_seen.iter().position(|a| *a == address) {
            let known = self.addresses_seen.remove(i);
            self.addresses_seen.push(known);
            return false;
        }
        self.addresses_seen.push(address);
        if self.addresses_seen.len() > ADDRESSES_KEPT {
            self.addresses_seen.remove(0);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::KernelPeerReading;

    fn reading(internal_id: u64, rx: u64, tx: u64) -> KernelPeerReading {
        KernelPeerReading {
            internal_id,
            public_key: PublicKey([1; 32]),
            ifindex: 3,
            device: Some("wg0".into()),
            netns: 0,
            rx_bytes: rx,
            tx_bytes: tx,
            last_handshake: None,
            endpoint: None,
        }
    }

    fn wire(rx: u64, invalid: u64, tx: u64) -> WireCounters {
        WireCounters {
            rx_bytes: rx,
            rx_invalid_bytes: invalid,
            tx_bytes: tx,
            ..WireCounters::default()
        }
    }

    #[test]
    fn the_difference_waits_for_a_quiet_drain_then_counts_what_wireguard_rejected() {
        // First reading: a packet may be in flight between the two views.
        let first = KernelView::observe(None, &reading(7, 100, 50), &wire(164, 0, 50));
        assert_eq!(first.rejected_rx_bytes, None);
        // Still moving: no baseline yet.
        let moving = KernelView::observe(Some(first), &reading(7, 164, 50), &wire(164, 0, 50));
        assert_eq!(moving.rejected_rx_bytes, None);
        // Quiet: both views unchanged since the drain before.
        let quiet = KernelView::observe(Some(moving), &reading(7, 164, 50), &wire(164, 0, 50));
        assert_eq!(
            (quiet.rejected_rx_bytes, quiet.unaccounted_tx_bytes),
            (Some(0), Some(0))
        );
        // 64 bytes WireGuard dropped, 3 invalid bytes, 92 accepted, a 64-byte cookie
        // reply it does not count as sent.
        let later = KernelView::observe(
            Some(quiet),
            &reading(7, 164 + 92, 50),
            &wire(164 + 64 + 92, 3, 50 + 64),
        );
        assert_eq!(
            (later.rejected_rx_bytes, later.unaccounted_tx_bytes),
            (Some(67), Some(64))
        );
        assert_eq!((later.rx_bytes, later.tx_bytes), (256, 50));
    }

    #[test]
    fn a_peer_added_again_starts_without_a_baseline() {
        let quiet = KernelView::observe(None, &reading(7, 10, 10), &wire(10, 0, 10));
        let quiet = KernelView::observe(Some(quiet), &reading(7, 10, 10), &wire(10, 0, 10));
        assert_eq!(quiet.rejected_rx_bytes, Some(0));
        let again = KernelView::observe(Some(quiet), &reading(8, 10, 10), &wire(10, 0, 10));
        assert_eq!(again.internal_id, 8);
        assert_eq!(again.rejected_rx_bytes, None);
    }
}
