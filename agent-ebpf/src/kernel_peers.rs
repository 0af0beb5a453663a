//! Kernel-mode attribution (BPF target only): a kprobe on kernel WireGuard functions
//! that take the peer, reading the peer's own counters, last handshake, endpoint and
//! public key out of `struct wg_peer` at offsets userspace resolved from the
//! `wireguard` module's BTF. Keyed by WireGuard's internal peer id, so what it counts
//! belongs to the peer itself, never to an endpoint guess.

use agent_common::{WgPeerOffsets, WgPeerReading, DEFAULT_MAX_PEERS, FAMILY_IPV4, FAMILY_IPV6};
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{kprobe, map},
    maps::{Array, LruPerCpuHashMap},
    programs::ProbeContext,
};

/// WireGuard's internal peer id -> this CPU's last reading of the peer.
#[map]
static WG_PEERS: LruPerCpuHashMap<u64, WgPeerReading> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_PEERS, 0);

/// `struct wg_peer` offsets, written by userspace before the probe is attached.
#[map]
static WG_OFFSETS: Array<WgPeerOffsets> = Array::with_max_entries(1, 0);

/// Reads the peer passed as the probed function's first argument.
#[kprobe]
pub fn wgpulse_wg_peer(ctx: ProbeContext) -> u32 {
    if let Some(peer) = ctx.arg::<*const u8>(0) {
        // SAFETY: every read goes through bpf_probe_read_kernel.
        let _ = unsafe { read_peer(peer) };
    }
    0
}

/// Linux `AF_INET`.
const AF_INET: u16 = 2;
/// Linux `AF_INET6`.
const AF_INET6: u16 = 10;

/// # Safety
/// `peer` must be the `struct wg_peer *` argument of a probed WireGuard function (or
/// null). Every read goes through `bpf_probe_read_kernel` at offsets resolved from the
/// module's BTF, so a wrong offset yields wrong values, never a fault.
// SAFETY: a probe read at a BTF offset (faults are caught by the helper).
unsafe fn read_peer(peer: *const u8) -> Result<(), i64> {
    if peer.is_null() {
        return Ok(());
    }
    let offsets = match WG_OFFSETS.get(0) {
        Some(o) if o.valid != 0 => *o,
        _ => return Ok(()),
    };
    // SAFETY: pointer arithmetic only; the result is only ever probe-read.
    let at = |offset: u32| unsafe { peer.add(offset as usize) };
    // SAFETY (these reads): probe reads of struct wg_peer fields at BTF offsets.
    let id: u64 = unsafe { bpf_probe_read_kernel(at(offsets.internal_id) as *const u64)? };
    let rx: u64 = unsafe { bpf_probe_read_kernel(at(offsets.rx_bytes) as *const u64)? };
    // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
    let tx: u64 = unsafe { bpf_probe_read_kernel(at(offsets.tx_bytes) as *const u64)? };
    let handshake: [u64; 2] =
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        unsafe { bpf_probe_read_kernel(at(offsets.walltime_last_handshake) as *const [u64; 2])? };
    // sockaddr_in / sockaddr_in6: family, port (network order), then the v4 address at
    // 4 or the v6 address at 8.
    let sockaddr: [u8; 24] =
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        unsafe { bpf_probe_read_kernel(at(offsets.endpoint) as *const [u8; 24])? };
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    if let Some(slot) = WG_PEERS.get_ptr_mut(&id) {
        // SAFETY: this CPU's slot of a per-CPU hash value.
        let slot = unsafe { &mut *slot };
        fill_dynamic(slot, rx, tx, handshake, &sockaddr, now);
        if slot.filled == 0 {
            // SAFETY: peer is the probed struct wg_peer (see above).
            let _ = unsafe { fill_static(slot, peer, &offsets) };
        }
        return Ok(());
    }
    let mut reading = WgPeerReading::default();
    fill_dynamic(&mut reading, rx, tx, handshake, &sockaddr, now);
    // SAFETY: peer is the probed struct wg_peer (see above).
    let _ = unsafe { fill_static(&mut reading, peer, &offsets) };
    WG_PEERS.insert(&id, &reading, BPF_ANY as u64)?;
    Ok(())
}

fn fill_dynamic(
    slot: &mut WgPeerReading,
    rx: u64,
    tx: u64,
    handshake: [u64; 2],
    sockaddr: &[u8; 24],
    now: u64,
) {
    slot.rx_bytes = rx;
    slot.tx_bytes = tx;
    slot.handshake_sec = handshake[0];
    slot.handshake_nsec = handshake[1];
    slot.read_ns = now;
    slot.port = u16::from_be_bytes([sockaddr[2], sockaddr[3]]);
    match u16::from_ne_bytes([sockaddr[0], sockaddr[1]]) {
        AF_INET => {
            slot.family = FAMILY_IPV4;
            slot.addr = [0; 16];
            slot.addr[..4].copy_from_slice(&sockaddr[4..8]);
        }
        AF_INET6 => {
            slot.family = FAMILY_IPV6;
            slot.addr.copy_from_slice(&sockaddr[8..24]);
        }
        _ => {
            slot.family = 0;
            slot.port = 0;
        }
    }
}

/// The fields that do not change during a peer's life: its public key, device and
/// namespace.
/// # Safety
/// `peer` must be a `struct wg_peer *` from a probed WireGuard function; every read
/// is a probe read at offsets from the module's BTF.
// SAFETY: a probe read at a BTF offset (faults are caught by the helper).
unsafe fn fill_static(
    slot: &mut WgPeerReading,
    peer: *const u8,
    offsets: &WgPeerOffsets,
) -> Result<(), i64> {
    // SAFETY (these reads): probe reads along peer -> device -> net_device -> net
    // at BTF offsets; a null or stale pointer makes the helper fail.
    slot.public_key = unsafe {
        bpf_probe_read_kernel(peer.add(offsets.remote_static as usize) as *const [u8; 32])?
    };
    let device: *const u8 =
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        unsafe { bpf_probe_read_kernel(peer.add(offsets.device as usize) as *const *const u8)? };
    // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
    let dev: *const u8 = unsafe {
        bpf_probe_read_kernel(device.add(offsets.device_dev as usize) as *const *const u8)?
    };
    let ifindex: i32 =
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        unsafe { bpf_probe_read_kernel(dev.add(offsets.ifindex as usize) as *const i32)? };
    slot.ifindex = ifindex as u32;
    if offsets.net_inum != 0 {
        let net: *const u8 =
            // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
            unsafe { bpf_probe_read_kernel(dev.add(offsets.nd_net as usize) as *const *const u8)? };
        slot.netns =
            // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
            unsafe { bpf_probe_read_kernel(net.add(offsets.net_inum as usize) as *const u32)? };
    }
    slot.filled = 1;
    Ok(())
}
