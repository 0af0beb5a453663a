//! Transport counters per session and direction: every data message carries the
//! sender's 64-bit counter (offset 8, little endian), numbered from 0 per keypair.
//! Gaps are messages the sender numbered that never reached this hook, counters below
//! the highest are late (reordered), and a 64-wide window tells duplicates apart.
//!
//! The sessions live in an array, two-way set-associative by receiver index (indices
//! are random 32-bit numbers, so their low bits spread evenly): an array lookup is
//! inlined by the verifier, where a hash map would cost a hash and a bucket walk on
//! every packet. A slot is taken over once its session is long idle, or idle with a
//! single message (a stray or forged index); a session finding both slots busy is not
//! followed and counted in `path_collisions`.
//!
//! The value is updated with plain reads and writes, not atomics: WireGuard hands one
//! peer's messages to the wire one after another (kernel: one tx worker per peer;
//! wireguard-go: one sending goroutine per peer), and one UDP flow is received on one
//! CPU unless the receive path spreads it (RPS off, a real NIC's RSS hashes a flow to
//! one queue). Where two CPUs do update one session at once, one message may be
//! counted twice or not at all; the byte and packet counters (per-CPU) stay exact.
//! `seq_begin`/`seq_end` frame each update so that userspace never takes a half-written
//! slot.

use core::sync::atomic::{compiler_fence, Ordering};

use crate::account::bump_global;
use crate::maps::*;
use agent_common::{
    EndpointKey, PathKey, PathState, PATH_MAX_JUMP, PATH_RETIRE_NS, PATH_RX, PATH_STRAY_NS,
    PATH_TX, PATH_WINDOW,
};

/// Mask of the `n` lowest bits (`n` in 1..=64).
#[inline(always)]
fn low_bits(n: u64) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[inline(always)]
fn same_owner(a: &PathKey, b: &PathKey) -> bool {
    a.index == b.index && a.device == b.device && a.direction == b.direction
}

/// Whether a slot may be given to a new session.
#[inline(always)]
fn free(slot: &PathState, now: u64) -> bool {
    let idle = now.wrapping_sub(slot.updated_ns);
    slot.packets == 0 || idle > PATH_RETIRE_NS || (slot.packets <= 1 && idle > PATH_STRAY_NS)
}

/// Counts `segments` data messages from `counter` upwards (a GSO skb carries
/// consecutive counters of one sender) on session `index` in one direction.
#[inline(always)]
pub(crate) fn track_path<const INGRESS: bool>(
    endpoint: &EndpointKey,
    index: u32,
    counter: u64,
    segments: u64,
    now: u64,
) {
    let owner = PathKey {
        device: endpoint.device,
        index,
        direction: if INGRESS { PATH_RX } else { PATH_TX },
        _pad: 0,
    };
    // SAFETY: a read-only global userspace sets before loading.
    let mask = unsafe { core::ptr::read_volatile(&PATH_SLOT_MASK) };
    let spread = index ^ if INGRESS { 0 } else { 0x9e37_79b9 };
    let first_way = spread & mask;
    // SAFETY: array slots stay valid for the program's run; see the module comment.
    let (Some(a), Some(b)) = (
        PATHS.get_ptr_mut(first_way),
        PATHS.get_ptr_mut(first_way ^ 1),
    ) else {
        return;
    };
    let (a, b) = unsafe { (&mut *a, &mut *b) };
    let (state, slot) = if same_owner(&a.owner, &owner) {
        (a, first_way)
    } else if same_owner(&b.owner, &owner) {
        (b, first_way ^ 1)
    } else if free(a, now) {
        start(a, &owner, endpoint, counter, segments, now);
        mark(first_way);
        return;
    } else if free(b, now) {
        start(b, &owner, endpoint, counter, segments, now);
        mark(first_way ^ 1);
        return;
    } else {
        bump_global(|g| g.path_collisions += 1);
        return;
    };
    let seq = state.seq_begin.wrapping_add(1);
    state.seq_begin = seq;
    compiler_fence(Ordering::SeqCst);
    update(state, endpoint, counter, segments, now);
    compiler_fence(Ordering::SeqCst);
    state.seq_end = seq;
    mark(slot);
}

/// Sets the slot's dirty bit (read first: the word is written only when the bit is
/// new, so a busy session costs a read of a cached word).
#[inline(always)]
fn mark(slot: u32) {
    let Some(word) = PATH_DIRTY.get_ptr_mut(slot >> 6) else {
        return;
    };
    let bit = 1u64 << (slot & 63);
    // SAFETY: an array slot; see PATH_DIRTY on concurrent writers.
    unsafe {
        if *word & bit == 0 {
            *word |= bit;
        }
    }
}

#[inline(always)]
fn update(state: &mut PathState, endpoint: &EndpointKey, counter: u64, segments: u64, now: u64) {
    // At most 64 segments in one skb (UDP GSO's limit); more are counted as one range
    // of 64 and the rest as received.
    let n = if segments == 0 { 1 } else { segments };
    let span = if n > PATH_WINDOW { PATH_WINDOW } else { n };
    let last = counter.saturating_add(n - 1);
    state.endpoint = *endpoint;
    state.updated_ns = now;
    if last > state.highest {
        let advance = last - state.highest;
        if advance > PATH_MAX_JUMP {
            state.jumps += n;
            return;
        }
        state.packets += n;
        state.window = if advance >= PATH_WINDOW {
            low_bits(span)
        } else {
            (state.window << advance) | low_bits(span)
        };
        state.highest = last;
        return;
    }
    state.packets += n;
    if counter < state.first {
        state.early += n;
        return;
    }
    let behind = state.highest - counter;
    if behind < PATH_WINDOW {
        let bit = 1u64 << behind;
        if state.window & bit != 0 {
            state.duplicates += n;
            return;
        }
        state.window |= bit;
    }
    state.late += n;
}

/// The first message of a session index in a free slot: a counter within the first
/// window means the session is seen from its start (counters below it are missing or
/// late).
#[inline(always)]
fn start(
    slot: &mut PathState,
    owner: &PathKey,
    endpoint: &EndpointKey,
    counter: u64,
    segments: u64,
    now: u64,
) {
    let n = if segments == 0 { 1 } else { segments };
    let span = if n > PATH_WINDOW { PATH_WINDOW } else { n };
    let last = counter.saturating_add(n - 1);
    let seq = slot.seq_begin.wrapping_add(1);
    slot.seq_begin = seq;
    compiler_fence(Ordering::SeqCst);
    slot.owner = *owner;
    slot.endpoint = *endpoint;
    slot.first = if last < PATH_WINDOW { 0 } else { counter };
    slot.highest = last;
    slot.window = low_bits(span);
    slot.packets = n;
    slot.late = 0;
    slot.duplicates = 0;
    slot.early = 0;
    slot.jumps = 0;
    slot.updated_ns = now;
    compiler_fence(Ordering::SeqCst);
    slot.seq_end = seq;
}
