//! Plain `#[repr(C)]` types and constants shared by the wgpulse eBPF program and the
//! userspace agent: map names, map keys and values, and ring-buffer records.
//!
//! Every type here has an explicit layout with no hidden padding (explicit `_pad`
//! fields, integers instead of `bool` or enums) so that the kernel and userspace agree
//! byte for byte. With the `user` feature each type also implements `aya::Pod`.
#![no_std]

/// Name of the per-CPU hash map of per-endpoint counters ([`EndpointKey`] -> [`EndpointEntry`]).
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
/// Name of the ring buffer of [`EndpointKey`] records: an endpoint whose counters
/// moved, written once per CPU per drain epoch, so that a drain reads only those.
pub const MAP_ENDPOINT_CHANGES: &str = "ENDPOINT_CHANGES";
/// Name of the array (one `u64`) holding the drain epoch userspace sets before each
/// drain; an endpoint announces itself in [`MAP_ENDPOINT_CHANGES`] the first time it
/// moves in an epoch.
pub const MAP_DRAIN_EPOCH: &str = "DRAIN_EPOCH";
/// Size in bytes of the endpoint-change ring buffer: 16384 records of 32 bytes (the
/// key and the record header). More changes than that between two drains and the
/// rest are counted in [`GlobalStats::changes_lost`]; the drain then reads the whole
/// map, which is the cheaper read at that many changes anyway.
pub const ENDPOINT_CHANGES_RING_BYTES: u32 = 512 * 1024;
/// Name of the array map indexed by local UDP port; value is a device id + 1 (0: not a WireGuard port).
pub const MAP_PORTS: &str = "PORTS";
/// Name of the LRU hash of WireGuard session indices ([`SessionKey`] -> [`SessionState`]).
pub const MAP_SESSIONS: &str = "SESSIONS";
/// Name of the per-CPU array (one entry) of [`GlobalStats`].
pub const MAP_GLOBALS: &str = "GLOBALS";
/// Name of the ring buffer of [`SessionEvent`] records.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the array (one entry) holding the kernel structure offsets ([`KernelOffsets`]).
pub const MAP_OFFSETS: &str = "OFFSETS";
/// Name of the LRU per-CPU hash of kernel-mode peer readings (WireGuard's internal
/// peer id -> [`WgPeerReading`]).
pub const MAP_WG_PEERS: &str = "WG_PEERS";
/// Name of the array (one entry) holding the `struct wg_peer` offsets ([`WgPeerOffsets`]).
pub const MAP_WG_OFFSETS: &str = "WG_OFFSETS";
/// Name of the array of per-session transport counters ([`PathState`] slots, two-way
/// set-associative by session index; userspace maps it read-only).
pub const MAP_PATHS: &str = "PATHS";
/// Name of the array of `u64` words, one bit per [`MAP_PATHS`] slot, that the datapath
/// sets when it writes the slot and userspace clears when it has read it (mapped).
pub const MAP_PATH_DIRTY: &str = "PATH_DIRTY";
/// Name of the global (`.rodata`) holding the slot mask of [`MAP_PATHS`] (slots - 1).
pub const GLOBAL_PATH_SLOT_MASK: &str = "PATH_SLOT_MASK";
/// Default number of path slots (a power of two; userspace sizes it from `max_peers`).
pub const DEFAULT_PATH_SLOTS: u32 = 2 * DEFAULT_MAX_PEERS;
/// A slot is taken over by a new session once its occupant is idle this long (ns):
/// WireGuard rejects a keypair after 180 s, and userspace has read it since.
pub const PATH_RETIRE_NS: u64 = 200_000_000_000;
/// ... or once an occupant with a single message is idle this long (ns): forged or
/// stray indices do not keep a slot.
pub const PATH_STRAY_NS: u64 = 2_000_000_000;

/// Default bound of the endpoint map (`max_peers` in the configuration).
pub const DEFAULT_MAX_PEERS: u32 = 65_536;
/// Number of entries in the port map: one per UDP port.
pub const PORT_MAP_ENTRIES: u32 = 65_536;
/// Largest device id + 1 the datapath can hold (size of the per-device arrays).
pub const MAX_DEVICES: u32 = 1_024;
/// Size in bytes of the session-event ring buffer.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Default bound of the session-index map.
pub const DEFAULT_MAX_SESSIONS: u32 = 4 * DEFAULT_MAX_PEERS;

/// Program names in the object, as userspace loads them.
pub mod programs {
    /// TC ingress classifier for interfaces whose frames start with an Ethernet header.
    pub const INGRESS: &str = "wgpulse_ingress";
    /// TC egress classifier for interfaces whose frames start with an Ethernet header.
    pub const EGRESS: &str = "wgpulse_egress";
    /// TC ingress classifier for layer-3 interfaces (tun, ip tunnels): frames start at the IP header.
    pub const INGRESS_L3: &str = "wgpulse_ingress_l3";
    /// TC egress classifier for layer-3 interfaces.
    pub const EGRESS_L3: &str = "wgpulse_egress_l3";
    /// BTF tracepoint program counting UDP datagrams the socket layer dropped.
    pub const UDP_DROPS: &str = "wgpulse_udp_drop";
    /// The BTF tracepoint the drop program attaches to.
    pub const UDP_DROPS_TRACEPOINT: &str = "udp_fail_queue_rcv_skb";
    /// A classifier that only returns `TC_ACT_PIPE`: the baseline of the datapath benchmark.
    pub const NOOP: &str = "wgpulse_noop";
    /// [`INGRESS`] without the per-session counter window (loss, reordering): the
    /// benchmark measures what path tracking adds, side by side. Never attached.
    pub const INGRESS_NO_PATHS: &str = "wgpulse_ingress_no_paths";
    /// Kernel-mode attribution: a kprobe that reads the `struct wg_peer` its function
    /// takes as first argument into [`super::MAP_WG_PEERS`].
    pub const WG_PEER_PROBE: &str = "wgpulse_wg_peer";
    /// The kernel WireGuard functions [`WG_PEER_PROBE`] is attached to. Each takes the
    /// peer first and is called after one of WireGuard's (inlined) statistics updates
    /// on every path: `wg_peer_put` after each received data packet and each sent data
    /// batch, `wg_timers_any_authenticated_packet_received` after a received handshake
    /// message (and the response sent for it), `wg_timers_handshake_initiated` after a
    /// sent initiation.
    pub const WG_PEER_PROBE_FUNCTIONS: [&str; 3] = [
        "wg_peer_put",
        "wg_timers_any_authenticated_packet_received",
        "wg_timers_handshake_initiated",
    ];
}

/// Address family values used in [`EndpointKey::family`] (Linux `AF_INET`).
pub const FAMILY_IPV4: u16 = 2;
/// Address family values used in [`EndpointKey::family`] (Linux `AF_INET6`).
pub const FAMILY_IPV6: u16 = 10;

/// WireGuard message types (first byte of the UDP payload, followed by three zero bytes).
pub mod message {
    /// Handshake initiation.
    pub const INITIATION: u8 = 1;
    /// Handshake response.
    pub const RESPONSE: u8 = 2;
    /// Cookie reply.
    pub const COOKIE: u8 = 3;
    /// Transport data (also keepalives).
    pub const DATA: u8 = 4;
    /// Exact UDP payload length of an initiation.
    pub const INITIATION_LEN: u32 = 148;
    /// Exact UDP payload length of a response.
    pub const RESPONSE_LEN: u32 = 92;
    /// Exact UDP payload length of a cookie reply.
    pub const COOKIE_LEN: u32 = 64;
    /// Smallest UDP payload length of a data message (a keepalive).
    pub const DATA_MIN_LEN: u32 = 32;
}

/// One remote endpoint of one WireGuard device: the key of the endpoint map.
///
/// `addr` holds an IPv4 address in its first four bytes (rest zero) or a full IPv6
/// address, in network byte order; `port` is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// Device id assigned by userspace (value in the port map minus one).
    pub device: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u16,
    /// Remote UDP port, host byte order.
    pub port: u16,
    /// Remote address, network byte order.
    pub addr: [u8; 16],
}

/// Counters of one message class in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Handshake initiations (148 bytes).
    pub initiations: u64,
    /// Handshake responses (92 bytes).
    pub responses: u64,
    /// Cookie replies (64 bytes).
    pub cookies: u64,
    /// Data messages, keepalives included (>= 32 bytes).
    pub data: u64,
}

/// Traffic of one endpoint in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Valid WireGuard messages (datagrams; a GSO skb counts each segment).
    pub packets: u64,
    /// UDP payload bytes of those messages.
    pub bytes: u64,
    /// Datagrams on the WireGuard port that are no WireGuard message (wrong type, length or reserved bytes).
    pub invalid_packets: u64,
    /// UDP payload bytes of the invalid datagrams.
    pub invalid_bytes: u64,
    /// Per message type.
    pub messages: MessageCounts,
    /// `CLOCK_MONOTONIC (coarse)` ns of the last datagram (valid or not); 0 if none.
    pub last_packet_ns: u64,
    /// `CLOCK_MONOTONIC (coarse)` ns of the last initiation or response; 0 if none.
    pub last_handshake_ns: u64,
}

/// Per-CPU value of the endpoint map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams received from the endpoint (TC ingress).
    pub rx: DirectionStats,
    /// Datagrams sent to the endpoint (TC egress).
    pub tx: DirectionStats,
    /// Datagrams from the endpoint that the UDP socket dropped before WireGuard read them.
    pub socket_drops: u64,
    /// UDP payload bytes of those dropped datagrams.
    pub socket_drop_bytes: u64,
}

/// Per-CPU value of the endpoint map: the counters and the drain epoch in which this
/// CPU's copy last announced the endpoint in [`MAP_ENDPOINT_CHANGES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointEntry {
    /// The counters.
    pub stats: EndpointStats,
    /// The [`MAP_DRAIN_EPOCH`] value when this copy was last announced (0: never).
    pub announced_epoch: u64,
}

/// Datapath-wide counters (one per-CPU entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// WireGuard-port datagrams not accounted to an endpoint because the endpoint map was full.
    pub overflow_packets: u64,
    /// UDP payload bytes of those datagrams.
    pub overflow_bytes: u64,
    /// Non-first IPv4/IPv6 UDP fragments received (no UDP header: counted apart, never per endpoint).
    pub rx_fragments: u64,
    /// Non-first fragments sent.
    pub tx_fragments: u64,
    /// Frames whose headers ended before the UDP header or that were otherwise malformed.
    pub malformed: u64,
    /// Session events that could not be written to the full ring buffer.
    pub events_lost: u64,
    /// Socket drops on WireGuard ports that could not be attributed to an endpoint.
    pub unattributed_drops: u64,
    /// Session-index inserts that failed.
    pub session_errors: u64,
    /// Sessions whose transport counters were not followed: both path slots of their
    /// index were held by busy sessions.
    pub path_collisions: u64,
    /// Endpoint-change records that did not fit in the full ring buffer (the next
    /// drain reads the whole endpoint map).
    pub changes_lost: u64,
}

/// Key of the session-index map: a local WireGuard session index of one device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionKey {
    /// Device id.
    pub device: u32,
    /// Our own index (sender index of the initiation or response we sent).
    pub index: u32,
}

/// The session is one we initiated; the response has not been seen.
pub const SESSION_INITIATION_SENT: u32 = 1;
/// We answered an initiation; no data on the new index yet.
pub const SESSION_RESPONSE_SENT: u32 = 2;
/// The handshake completed (response received, or first data after our response).
pub const SESSION_ESTABLISHED: u32 = 3;

/// Value of the session-index map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The remote endpoint the session was last seen with.
    pub endpoint: EndpointKey,
    /// One of the `SESSION_*` constants.
    pub state: u32,
    /// The peer's index for this session (0 until known).
    pub remote_index: u32,
    /// `CLOCK_MONOTONIC (coarse)` ns of the last state change.
    pub updated_ns: u64,
    /// `CLOCK_MONOTONIC` (precise) ns when our initiation or response was sent: the
    /// start of the handshake round trip.
    pub sent_ns: u64,
}

/// Ring-buffer record kind: a handshake completed.
pub const EVENT_HANDSHAKE_COMPLETE: u32 = 1;
/// Ring-buffer record kind: data on an established session arrived from another endpoint (roaming).
pub const EVENT_ENDPOINT_CHANGED: u32 = 2;
/// Role of the local device in a handshake: it sent the initiation.
pub const ROLE_INITIATOR: u32 = 1;
/// Role of the local device in a handshake: it sent the response.
pub const ROLE_RESPONDER: u32 = 2;

/// A record on the session-event ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionEvent {
    /// [`EVENT_HANDSHAKE_COMPLETE`] or [`EVENT_ENDPOINT_CHANGED`].
    pub kind: u32,
    /// [`ROLE_INITIATOR`] or [`ROLE_RESPONDER`] (for a handshake), 0 otherwise.
    pub role: u32,
    /// `CLOCK_MONOTONIC (coarse)` ns when the datapath saw the completing packet.
    pub timestamp_ns: u64,
    /// Our session index.
    pub local_index: u32,
    /// The peer's session index.
    pub remote_index: u32,
    /// The endpoint of the completing packet (the new endpoint for a change).
    pub endpoint: EndpointKey,
    /// The previous endpoint (endpoint changes only; zero otherwise).
    pub previous: EndpointKey,
    /// Handshake round trip in ns, from the programs' own precise timestamps: our
    /// initiation out -> its response in (initiator), our response out -> the first
    /// data on its index in (responder). 0 when unknown or not a handshake.
    pub rtt_ns: u64,
}

/// [`PathKey::direction`]: data messages received (the index is ours).
pub const PATH_RX: u32 = 0;
/// [`PathKey::direction`]: data messages sent (the index is the peer's).
pub const PATH_TX: u32 = 1;
/// Width of the per-session window of recent counters ([`PathState::window`]): one
/// 64-bit word, so that telling a late packet from a duplicate costs one shift and
/// one AND. Late packets further back are still counted as late (and as received),
/// only a duplicate further back cannot be told from a late packet.
pub const PATH_WINDOW: u64 = 64;
/// A counter this far above the highest seen is not believed (counted in
/// [`PathState::jumps`], the window untouched): a session lives at most three minutes,
/// so no real sender numbers 2^31 packets between two that reach us. It bounds what
/// one forged packet (TC sees packets before WireGuard authenticates them) can do to
/// the loss figures.
pub const PATH_MAX_JUMP: u64 = 1 << 31;

/// One WireGuard session index in one direction of one device: the owner of a path slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathKey {
    /// Device id.
    pub device: u32,
    /// The receiver index in the data messages: ours for [`PATH_RX`], the peer's for
    /// [`PATH_TX`].
    pub index: u32,
    /// [`PATH_RX`] or [`PATH_TX`].
    pub direction: u32,
    /// Zero.
    pub _pad: u32,
}

/// One slot of the path map: what the datapath knows of one session's counters in one
/// direction. The counters of one keypair start at 0 and rise by one per message
/// (keepalives included), so `highest - first + 1` messages were numbered by the
/// sender; `packets - duplicates - early` of them reached this hook.
///
/// `seq_begin` and `seq_end` frame every update (begin is raised first, end set to it
/// last): a copy read while an update is under way has them differ and is skipped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathState {
    /// Raised before each update.
    pub seq_begin: u64,
    /// The session the slot holds (all zero: a free slot).
    pub owner: PathKey,
    /// The endpoint of the last message (attribution to the peer).
    pub endpoint: EndpointKey,
    /// The lowest counter the window accounts from: 0 when the session was seen from
    /// its start (its first message had a counter below [`PATH_WINDOW`]), else the
    /// first counter seen.
    pub first: u64,
    /// The highest counter seen.
    pub highest: u64,
    /// Bit i set: counter `highest - i` was seen.
    pub window: u64,
    /// Data messages seen (duplicates included; a GSO skb counts each segment).
    pub packets: u64,
    /// Messages that arrived below the highest counter seen (reordered), not duplicates.
    pub late: u64,
    /// Messages whose counter was already seen within the window.
    pub duplicates: u64,
    /// Messages below `first` (sent before the session was first seen): received,
    /// but not part of the expected range.
    pub early: u64,
    /// Messages whose counter jumped more than [`PATH_MAX_JUMP`] ahead: ignored.
    pub jumps: u64,
    /// `CLOCK_MONOTONIC (coarse)` ns of the last message.
    pub updated_ns: u64,
    /// Set to `seq_begin` after each update.
    pub seq_end: u64,
}

/// Offsets of kernel structure fields the drop tracepoint reads, resolved by
/// userspace from the running kernel's BTF (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 when the offsets are filled and the tracepoint passes the skb.
    pub valid: u32,
    /// Offset of `sock.__sk_common.skc_num` (local port, host order).
    pub sk_num: u32,
    /// Offset of `sk_buff.head`.
    pub skb_head: u32,
    /// Offset of `sk_buff.transport_header` (u16).
    pub skb_transport_header: u32,
    /// Offset of `sk_buff.network_header` (u16).
    pub skb_network_header: u32,
    /// Offset of `sk_buff.len`.
    pub skb_len: u32,
}

/// Offsets into kernel WireGuard's structures for the kernel-mode probe, resolved by
/// userspace from the `wireguard` module's BTF (split on top of vmlinux's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgPeerOffsets {
    /// 1 when filled.
    pub valid: u32,
    /// `wg_peer.internal_id` (u64).
    pub internal_id: u32,
    /// `wg_peer.rx_bytes` (u64).
    pub rx_bytes: u32,
    /// `wg_peer.tx_bytes` (u64).
    pub tx_bytes: u32,
    /// `wg_peer.walltime_last_handshake` (`struct timespec64`).
    pub walltime_last_handshake: u32,
    /// `wg_peer.endpoint` (`struct endpoint`, starting with a `sockaddr_in6` union).
    pub endpoint: u32,
    /// `wg_peer.handshake.remote_static` (the peer's public key, 32 bytes).
    pub remote_static: u32,
    /// `wg_peer.device` (pointer to `struct wg_device`).
    pub device: u32,
    /// `wg_device.dev` (pointer to `struct net_device`).
    pub device_dev: u32,
    /// `net_device.ifindex` (int).
    pub ifindex: u32,
    /// `net_device.nd_net` (pointer to `struct net`).
    pub nd_net: u32,
    /// `net.ns.inum` (the network namespace's inode number); 0: not resolved.
    pub net_inum: u32,
}

/// Per-CPU value of [`MAP_WG_PEERS`]: what one CPU last read from a `struct wg_peer`.
/// The counters only grow during a peer's life, so userspace takes the largest value
/// over the CPUs: every statistics update is followed by a read on the CPU that made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgPeerReading {
    /// `rx_bytes`: bytes WireGuard accepted from the peer.
    pub rx_bytes: u64,
    /// `tx_bytes`: bytes WireGuard sent to the peer.
    pub tx_bytes: u64,
    /// `walltime_last_handshake.tv_sec` (0: never).
    pub handshake_sec: u64,
    /// `walltime_last_handshake.tv_nsec`.
    pub handshake_nsec: u64,
    /// `CLOCK_MONOTONIC` ns of this read (kprobes may not use the coarse clock).
    pub read_ns: u64,
    /// Endpoint address family ([`FAMILY_IPV4`], [`FAMILY_IPV6`], 0: none).
    pub family: u16,
    /// Endpoint port, host byte order.
    pub port: u16,
    /// Endpoint address, network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Interface index of the peer's device.
    pub ifindex: u32,
    /// Inode number of the device's network namespace (0: unknown).
    pub netns: u32,
    /// 1 once the fields below and `ifindex`/`netns` are filled on this CPU.
    pub filled: u32,
    /// The peer's public key.
    pub public_key: [u8; 32],
}

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for the shared types: all are `repr(C)` integers and arrays without padding.
    use super::*;
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and integer
    // arrays, and its fields are laid out without implicit padding.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointStats {}
    // SAFETY: repr(C), integers only, no padding.
    unsafe impl aya::Pod for EndpointEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for GlobalStats {}
    // SAFETY: as above.
    // SAFETY: as above.
    unsafe impl aya::Pod for SessionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SessionState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SessionEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PathKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PathState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WgPeerOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WgPeerReading {}
}

#[cfg(test)]
mod tests;
