//! Typed output of the drain: per-endpoint totals and deltas with wall-clock
//! timestamps, datapath-wide counters, and the session notices of the ring buffer.
//! Everything downstream (peers, metrics, events) consumes these types only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

pub use agent_common::{DirectionStats, EndpointStats, GlobalStats, MessageCounts};
use agent_common::{EndpointKey, FAMILY_IPV4, FAMILY_IPV6};

/// A remote endpoint of one WireGuard device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Datapath device id (see [`crate::pipeline::device_ids::DeviceIds`]).
    pub device: u32,
    /// Remote address and port.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Decodes a map key; `None` for an unknown address family.
    pub fn from_key(key: &EndpointKey) -> Option<Self> {
        let ip = match key.family {
            FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::new(
                key.addr[0],
                key.addr[1],
                key.addr[2],
                key.addr[3],
            )),
            FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(key.addr)),
            _ => return None,
        };
        Some(Self {
            device: key.device,
            addr: SocketAddr::new(ip, key.port),
        })
    }

    /// Encodes the endpoint as a map key.
    pub fn to_key(&self) -> EndpointKey {
        let mut addr = [0u8; 16];
        let family = match self.addr.ip() {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                FAMILY_IPV4
            }
            IpAddr::V6(v6) => {
                addr = v6.octets();
                FAMILY_IPV6
            }
        };
        EndpointKey {
            device: self.device,
            family,
            port: self.addr.port(),
            addr,
        }
    }
}

/// Adds `b` to `a` field by field (counters) and keeps the later timestamps.
pub fn merge_direction(a: &mut DirectionStats, b: &DirectionStats) {
    a.packets += b.packets;
    a.bytes += b.bytes;
    a.invalid_packets += b.invalid_packets;
    a.invalid_bytes += b.invalid_bytes;
    a.messages.initiations += b.messages.initiations;
    a.messages.responses += b.messages.responses;
    a.messages.cookies += b.messages.cookies;
    a.messages.data += b.messages.data;
    a.last_packet_ns = a.last_packet_ns.max(b.last_packet_ns);
    a.last_handshake_ns = a.last_handshake_ns.max(b.last_handshake_ns);
}

/// Adds `b` to `a` (both directions and drops).
pub fn merge_stats(a: &mut EndpointStats, b: &EndpointStats) {
    merge_direction(&mut a.rx, &b.rx);
    merge_direction(&mut a.tx, &b.tx);
    a.socket_drops += b.socket_drops;
    a.socket_drop_bytes += b.socket_drop_bytes;
}

/// `now - before` for counters (saturating), timestamps from `now`.
pub fn direction_delta(now: &DirectionStats, before: &DirectionStats) -> DirectionStats {
    DirectionStats {
        packets: now.packets.saturating_sub(before.packets),
        bytes: now.bytes.saturating_sub(before.bytes),
        invalid_packets: now.invalid_packets.saturating_sub(before.invalid_packets),
        invalid_bytes: now.invalid_bytes.saturating_sub(before.invalid_bytes),
        messages: MessageCounts {
            initiations: now
                .messages
                .initiations
                .saturating_sub(before.messages.initiations),
            responses: now
                .messages
                .responses
                .saturating_sub(before.messages.responses),
            cookies: now.messages.cookies.saturating_sub(before.messages.cookies),
            data: now.messages.data.saturating_sub(before.messages.data),
        },
        last_packet_ns: now.last_packet_ns,
        last_handshake_ns: now.last_handshake_ns,
    }
}

/// `now - before` for both directions and drops.
pub fn stats_delta(now: &EndpointStats, before: &EndpointStats) -> EndpointStats {
    EndpointStats {
        rx: direction_delta(&now.rx, &before.rx),
        tx: direction_delta(&now.tx, &before.tx),
        socket_drops: now.socket_drops.saturating_sub(before.socket_drops),
        socket_drop_bytes: now
            .socket_drop_bytes
            .saturating_sub(before.socket_drop_bytes),
    }
}

/// Whether any counter of `stats` is non-zero.
pub fn has_traffic(stats: &EndpointStats) -> bool {
    stats.rx.packets
        + stats.rx.invalid_packets
        + stats.tx.packets
        + stats.tx.invalid_packets
        + stats.socket_drops
        > 0
}

/// Converts the datapath's `CLOCK_MONOTONIC` (coarse) nanoseconds into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    wall: SystemTime,
    boot_ns: u64,
}

impl BootClock {
    /// Pairs the current wall clock with the current monotonic clock.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own. The datapath reads
        // CLOCK_MONOTONIC_COARSE, which is CLOCK_MONOTONIC at jiffy resolution.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Self {
            wall: SystemTime::now(),
            boot_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    /// Monotonic nanoseconds of this reading.
    pub fn boot_ns(&self) -> u64 {
        self.boot_ns
    }

    /// Wall-clock time of a monotonic timestamp; `None` for 0 (never).
    pub fn wall(&self, boot_ns: u64) -> Option<SystemTime> {
        if boot_ns == 0 {
            return None;
        }
        Some(if boot_ns <= self.boot_ns {
            self.wall - Duration::from_nanos(self.boot_ns - boot_ns)
        } else {
            self.wall + Duration::from_nanos(boot_ns - self.boot_ns)
        })
    }
}

/// One endpoint in a drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSample {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// Counters since the agent started watching (survive map evictions).
    pub totals: EndpointStats,
    /// Counters since the previous drain.
    pub delta: EndpointStats,
    /// Wall time of the last datagram received, if any.
    pub last_rx: Option<SystemTime>,
    /// Wall time of the last datagram sent, if any.
    pub last_tx: Option<SystemTime>,
    /// Wall time of the last handshake message received or sent, if any.
    pub last_handshake_message: Option<SystemTime>,
}

/// The result of one drain cycle.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one per drain.
    pub sequence: u64,
    /// When the drain ran.
    pub taken_at: Option<SystemTime>,
    /// How long reading the maps and computing deltas took.
    pub duration: Duration,
    /// The endpoints whose counters moved since the last drain, and those that left
    /// the map since (once, with a zero delta). An endpoint that did not move is not
    /// here: its totals are those of its last sample.
    pub endpoints: Vec<EndpointSample>,
    /// Entries in the endpoint map at drain time.
    pub map_entries: usize,
    /// Capacity of the endpoint map (`max_peers`).
    pub map_capacity: u32,
    /// Datapath-wide counters (totals).
    pub globals: GlobalStats,
    /// Kernel-mode readings of every kernel WireGuard peer in the agent's namespace
    /// (`None`: kernel-mode attribution is off).
    pub kernel_peers: Option<Vec<KernelPeerReading>>,
    /// Sessions whose transport counters moved since the last drain.
    pub paths: Vec<PathSample>,
}

/// Which way a session's data messages went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathDirection {
    /// Received from the peer (the counters are the peer's numbering).
    Receive,
    /// Sent to the peer (our WireGuard's numbering).
    Transmit,
}

/// What one session's counters tell, as running figures (each only ever grows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathCounts {
    /// Distinct data messages that reached the hook (duplicates not counted).
    pub packets: u64,
    /// Messages the sender numbered that never reached the hook (counter gaps), once
    /// they can no longer be merely late.
    pub lost: u64,
    /// Messages that came below the highest counter seen (reordered).
    pub late: u64,
    /// Messages whose counter was seen before (within the 64-message window).
    pub duplicates: u64,
}

impl PathCounts {
    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &PathCounts) -> PathCounts {
        PathCounts {
            packets: self.packets.saturating_sub(earlier.packets),
            lost: self.lost.saturating_sub(earlier.lost),
            late: self.late.saturating_sub(earlier.late),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
        }
    }

    /// Adds another set of figures.
    pub fn add(&mut self, other: &PathCounts) {
        self.packets += other.packets;
        self.lost += other.lost;
        self.late += other.late;
        self.duplicates += other.duplicates;
    }

    /// Whether anything moved.
    pub fn is_empty(&self) -> bool {
        *self == PathCounts::default()
    }
}

/// One session's transport figures that moved in a drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSample {
    /// The endpoint of the session's last message (the peer it belongs to).
    pub endpoint: Endpoint,
    /// Received or sent.
    pub direction: PathDirection,
    /// The session index (ours when received, the peer's when sent).
    pub index: u32,
    /// What moved since the last drain.
    pub delta: PathCounts,
}

/// Role of the local device in a completed handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// We sent the initiation and received the response.
    Initiator,
    /// We answered an initiation and then received data on the new session.
    Responder,
}

/// A ring-buffer record, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionNotice {
    /// A handshake completed.
    HandshakeComplete {
        /// The endpoint of the completing packet.
        endpoint: Endpoint,
        /// Our role.
        role: Role,
        /// When the datapath saw the completing packet.
        at: SystemTime,
        /// Our session index.
        local_index: u32,
        /// The peer's session index.
        remote_index: u32,
        /// The handshake's round trip, timed by the datapath (`None`: unknown).
        rtt: Option<Duration>,
    },
    /// Data on an established session came from another endpoint (roaming).
    EndpointChanged {
        /// Where the session's data came from before.
        previous: Endpoint,
        /// Where it comes from now.
        endpoint: Endpoint,
        /// When the datapath saw it.
        at: SystemTime,
        /// Our session index.
        local_index: u32,
    },
}

/// What the drain thread sends downstream, in the order it happened.
#[derive(Clone, Debug)]
pub enum DatapathMessage {
    /// A periodic drain of the maps.
    Snapshot(Snapshot),
    /// A session notice from the ring buffer, sent as soon as it is read.
    Session(SessionNotice),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_key_round_trips_both_families() {
        for addr in ["192.0.2.7:51820", "[2001:db8::1]:40000"] {
            let endpoint = Endpoint {
                device: 3,
                addr: addr.parse().unwrap(),
            };
            assert_eq!(Endpoint::from_key(&endpoint.to_key()), Some(endpoint));
        }
        let bad = EndpointKey {
            family: 99,
            ..Default::default()
        };
        assert_eq!(Endpoint::from_key(&bad), None);
    }

    #[test]
    fn delta_subtracts_counters_and_keeps_timestamps() {
        let mut before = EndpointStats::default();
        before.rx.packets = 3;
        before.rx.bytes = 300;
        before.rx.last_packet_ns = 5;
        let mut now = before;
        now.rx.packets = 10;
        now.rx.bytes = 1000;
        now.rx.last_packet_ns = 9;
        now.socket_drops = 2;
        let delta = stats_delta(&now, &before);
        assert_eq!(delta.rx.packets, 7);
        assert_eq!(delta.rx.bytes, 700);
        assert_eq!(delta.rx.last_packet_ns, 9);
        assert_eq!(delta.socket_drops, 2);
    }

    #[test]
    fn boot_clock_maps_past_and_zero() {
        let clock = BootClock::now();
        assert_eq!(clock.wall(0), None);
        let earlier = clock.wall(clock.boot_ns() - 1_000_000_000).unwrap();
        assert_eq!(
            clock.wall.duration_since(earlier).unwrap(),
            Duration::from_secs(1)
        );
    }
}

/// One kernel WireGuard peer as the probe last read it, folded over the CPUs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelPeerReading {
    /// WireGuard's internal id of the peer (new for every peer added).
    pub internal_id: u64,
    /// The peer's public key.
    pub public_key: crate::wg::PublicKey,
    /// Interface index of its device.
    pub ifindex: u32,
    /// Name of its device (resolved in the agent's namespace when read).
    pub device: Option<String>,
    /// Inode number of the device's network namespace (0: unknown).
    pub netns: u32,
    /// Bytes WireGuard accepted from the peer (`wg show transfer` received).
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer (`wg show transfer` sent).
    pub tx_bytes: u64,
    /// WireGuard's last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// WireGuard's endpoint for the peer.
    pub endpoint: Option<SocketAddr>,
}
