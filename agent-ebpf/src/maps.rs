//! The maps the programs share with userspace (names and sizes from `agent-common`).

use agent_common::{
    EndpointEntry, EndpointKey, EndpointStats, GlobalStats, KernelOffsets, PathState, SessionKey,
    SessionState, DEFAULT_MAX_PEERS, DEFAULT_MAX_SESSIONS, DEFAULT_PATH_SLOTS,
    ENDPOINT_CHANGES_RING_BYTES, EVENTS_RING_BYTES, MAX_DEVICES, PORT_MAP_ENTRIES,
};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

/// Per-endpoint counters; userspace sets `max_entries` to `max_peers` before loading.
#[map]
pub(crate) static ENDPOINTS: PerCpuHashMap<EndpointKey, EndpointEntry> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_PEERS, 0);

/// Endpoints whose counters moved, once per CPU per drain epoch: a drain reads only
/// those instead of the whole map.
#[map]
pub(crate) static ENDPOINT_CHANGES: RingBuf =
    RingBuf::with_byte_size(ENDPOINT_CHANGES_RING_BYTES, 0);

/// The drain epoch, set by userspace before each drain (0 until the first).
#[map]
pub(crate) static DRAIN_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Local UDP port -> device id + 1 (0: not a WireGuard port).
#[map]
pub(crate) static PORTS: Array<u32> = Array::with_max_entries(PORT_MAP_ENTRIES, 0);

/// Our WireGuard session indices, to recognise completed handshakes and roaming.
#[map]
pub(crate) static SESSIONS: LruHashMap<SessionKey, SessionState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SESSIONS, 0);

/// Per session index and direction: the transport counters seen (loss, reordering).
/// An array (lookups are inlined by the verifier: no hash on the per-packet path),
/// two-way set-associative by index; userspace sets `max_entries` from `max_peers`
/// and maps it read-only.
#[map]
pub(crate) static PATHS: Array<PathState> =
    Array::with_max_entries(DEFAULT_PATH_SLOTS, BPF_F_MMAPABLE);

/// One bit per `PATHS` slot, set when the slot is written, cleared by userspace once
/// read: a drain reads only the slots that moved. The bit is set with a plain
/// read-modify-write (two CPUs setting bits of one word at once can lose one; a
/// periodic full scan by userspace catches it).
#[map]
pub(crate) static PATH_DIRTY: Array<u64> =
    Array::with_max_entries(DEFAULT_PATH_SLOTS / 64, BPF_F_MMAPABLE);

/// `PATHS` slots - 1 (a power of two minus one), set by userspace before loading.
#[no_mangle]
pub(crate) static PATH_SLOT_MASK: u32 = DEFAULT_PATH_SLOTS - 1;

/// Datapath-wide counters.
#[map]
pub(crate) static GLOBALS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

/// Completed handshakes and endpoint changes, for userspace to act on at once.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Per device: monotonic (coarse) ns of the last handshake response we sent. Ingress
/// data consults the session map only while a responder handshake may be waiting
/// for its confirming data (or for an endpoint seen for the first time).
#[map]
pub(crate) static LAST_RESPONSE: Array<u64> = Array::with_max_entries(MAX_DEVICES, 0);

/// Kernel structure offsets for the drop tracepoint, written by userspace from BTF.
#[map]
pub(crate) static OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

/// A zeroed value to create new endpoint entries from (kept out of the 512-byte stack).
pub(crate) static ZERO_ENTRY: EndpointEntry = EndpointEntry {
    stats: EndpointStats {
        rx: ZERO_DIRECTION,
        tx: ZERO_DIRECTION,
        socket_drops: 0,
        socket_drop_bytes: 0,
    },
    announced_epoch: 0,
};

pub(crate) const ZERO_DIRECTION: agent_common::DirectionStats = agent_common::DirectionStats {
    packets: 0,
    bytes: 0,
    invalid_packets: 0,
    invalid_bytes: 0,
    messages: agent_common::MessageCounts {
        initiations: 0,
        responses: 0,
        cookies: 0,
        data: 0,
    },
    last_packet_ns: 0,
    last_handshake_ns: 0,
};
