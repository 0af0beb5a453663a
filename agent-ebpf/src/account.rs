//! Counting a datagram for its remote endpoint: packets and bytes of valid WireGuard
//! messages by type, invalid datagrams apart, last packet and handshake times.

use crate::maps::*;
use crate::parse::*;
use crate::paths::*;
use crate::sessions::*;
use agent_common::{message, EndpointEntry, EndpointKey, GlobalStats};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use aya_log_ebpf::warn;

/// The WireGuard message class of a UDP payload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Initiation,
    Response,
    Cookie,
    Data,
    Invalid,
}

#[inline(always)]
pub(crate) fn account<const INGRESS: bool, const PATHS: bool>(
    ctx: &TcContext,
    datagram: &Parsed,
) -> Result<(), ()> {
    let udp = datagram.udp;
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
    let (local_port, remote_port, remote_addr) = if INGRESS {
        (dst_port, src_port, datagram.src)
    } else {
        (src_port, dst_port, datagram.dst)
    };
    let device = match PORTS.get(local_port as u32) {
        Some(&d) if d != 0 => d - 1,
        _ => return Ok(()),
    };
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as u32;
    if udp_len < UDP_HLEN as u32 {
        bump_global(|g| g.malformed += 1);
        return Err(());
    }
    // A GSO/GRO skb carries several datagrams behind one header: count each segment
    // and take the bytes from the skb, not from the first segment's UDP length.
    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    let segments = unsafe { (*ctx.skb.skb).gso_segs };
    let (packets, payload) = if segments > 1 {
        let total = ctx
            .len()
            .saturating_sub((datagram.udp_offset + UDP_HLEN) as u32);
        (segments as u64, total)
    } else {
        (1u64, udp_len - UDP_HLEN as u32)
    };

    // Message type and indices: type byte, three reserved zero bytes, then the indices.
    let head = datagram.head;
    let class = classify(&head, payload, segments);
    let first_index = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let second_index = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);

    let key = EndpointKey {
        device,
        family: datagram.family,
        port: remote_port,
        addr: remote_addr,
    };
    // CLOCK_MONOTONIC_COARSE: jiffy resolution is plenty for last-seen and handshake
    // times, and it costs a fraction of a precise clock read on every packet.
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let Some((entry, fresh)) = endpoint_entry(&key) else {
        count_overflow(ctx, packets, payload);
        return Ok(());
    };
    // SAFETY: a per-CPU map value of this CPU; nothing else writes it concurrently.
    let entry = unsafe { &mut *entry };
    let direction = if INGRESS {
        &mut entry.stats.rx
    } else {
        &mut entry.stats.tx
    };
    let counted = count(direction, class, packets, payload, now);
    announce(&key, entry);
    if !counted {
        return Ok(());
    }
    if PATHS && class == Class::Data {
        let counter = u64::from_le_bytes([
            head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
        ]);
        track_path::<INGRESS>(&key, first_index, counter, packets, now);
    }
    track_session::<INGRESS>(class, &key, first_index, second_index, now, fresh);
    Ok(())
}

/// The message class from the head of a payload: type byte, three reserved zero
/// bytes, and the exact length of each handshake message (a GSO skb holds data only).
#[inline(always)]
fn classify(head: &[u8; HEAD_LEN], payload: u32, segments: u32) -> Class {
    let single_len = if segments > 1 { 0 } else { payload };
    if payload < message::DATA_MIN_LEN || head[1] != 0 || head[2] != 0 || head[3] != 0 {
        return Class::Invalid;
    }
    match head[0] {
        message::INITIATION if single_len == message::INITIATION_LEN => Class::Initiation,
        message::RESPONSE if single_len == message::RESPONSE_LEN => Class::Response,
        message::COOKIE if single_len == message::COOKIE_LEN => Class::Cookie,
        message::DATA => Class::Data,
        _ => Class::Invalid,
    }
}

/// Counts a datagram in its direction's counters; false for an invalid one (counted
/// apart, and no session to follow).
#[inline(always)]
fn count(
    direction: &mut agent_common::DirectionStats,
    class: Class,
    packets: u64,
    payload: u32,
    now: u64,
) -> bool {
    direction.last_packet_ns = now;
    match class {
        Class::Invalid => {
            direction.invalid_packets += packets;
            direction.invalid_bytes += payload as u64;
            return false;
        }
        Class::Initiation => {
            direction.messages.initiations += 1;
            direction.last_handshake_ns = now;
        }
        Class::Response => {
            direction.messages.responses += 1;
            direction.last_handshake_ns = now;
        }
        Class::Cookie => direction.messages.cookies += 1,
        Class::Data => direction.messages.data += packets,
    }
    direction.packets += packets;
    direction.bytes += payload as u64;
    true
}

/// Traffic of a new endpoint while the map is full: counted as overflow (logged once).
#[inline(always)]
fn count_overflow(ctx: &TcContext, packets: u64, payload: u32) {
    let mut first = false;
    bump_global(|g| {
        first = g.overflow_packets == 0;
        g.overflow_packets += packets;
        g.overflow_bytes += payload as u64;
    });
    if first {
        warn!(
            ctx,
            "endpoint map full: traffic of new endpoints is counted as overflow"
        );
    }
}

/// The endpoint's per-CPU entry, created on first sight (then `fresh` is true);
/// `None` when the map is full.
#[inline(always)]
pub(crate) fn endpoint_entry(key: &EndpointKey) -> Option<(*mut EndpointEntry, bool)> {
    if let Some(entry) = ENDPOINTS.get_ptr_mut(key) {
        return Some((entry, false));
    }
    // Another CPU may create the entry between the lookup and the insert (EEXIST):
    // either way, look it up again.
    let _ = ENDPOINTS.insert(key, &ZERO_ENTRY, BPF_NOEXIST as u64);
    ENDPOINTS.get_ptr_mut(key).map(|entry| (entry, true))
}

/// Tells userspace the endpoint moved, the first time this CPU's copy moves in the
/// current drain epoch. Called after the counters were written: a drain sets the
/// epoch before it reads the changes, so a write it misses was announced in its
/// epoch and is read again by the next drain (userspace re-reads what it read).
#[inline(always)]
pub(crate) fn announce(key: &EndpointKey, entry: &mut EndpointEntry) {
    let Some(&epoch) = DRAIN_EPOCH.get(0) else {
        return;
    };
    if entry.announced_epoch == epoch {
        return;
    }
    entry.announced_epoch = epoch;
    if ENDPOINT_CHANGES.output::<EndpointKey>(key, 0).is_err() {
        bump_global(|g| g.changes_lost += 1);
    }
}

#[inline(always)]
pub(crate) fn bump_global(update: impl FnOnce(&mut GlobalStats)) {
    if let Some(globals) = GLOBALS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        update(unsafe { &mut *globals });
    }
}
