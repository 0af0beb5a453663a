//! Transport counters per session and direction: every data message carries the
//! sender's 64-bit counter (offset 8, little endian), numbered from 0 per keypair.
//! Gaps are messages the sender numbered that never reached this hook, counters below
//! the highest are late (reordered), and a 64-wide window tells duplicates apart.
//!
//! The value is updated with plain reads and writes, not atomics: WireGuard hands one
//! peer's messages to the wire one after another (kernel: one tx worker per peer;
//! wireguard-go: one sending goroutine per peer), and one UDP flow is received on one
//! CPU unless the receive path spreads it (RPS off, a real NIC's RSS hashes a flow to
//! one queue). Where two CPUs do update one session at once, one message may be
//! counted twice or not at all; the byte and packet counters (per-CPU) stay exact.

use crate::maps::*;
use agent_common::{EndpointKey, PathKey, PathState, PATH_MAX_JUMP, PATH_RX, PATH_TX, PATH_WINDOW};
use aya_ebpf::bindings::BPF_NOEXIST;

/// Mask of the `n` lowest bits (`n` in 1..=64).
#[inline(always)]
fn low_bits(n: u64) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
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
    let key = PathKey {
        device: endpoint.device,
        index,
        direction: if INGRESS { PATH_RX } else { PATH_TX },
        _pad: 0,
    };
    // At most 64 segments in one skb (UDP GSO's limit); more are counted as one range
    // of 64 and the rest as received.
    let n = if segments == 0 { 1 } else { segments };
    let span = if n > PATH_WINDOW { PATH_WINDOW } else { n };
    let last = counter.saturating_add(n - 1);
    let Some(state) = PATHS.get_ptr_mut(&key) else {
        start(&key, endpoint, counter, last, span, n, now);
        return;
    };
    // SAFETY: an LRU map value; see the module comment on concurrent writers.
    let state = unsafe { &mut *state };
    state.endpoint = *endpoint;
    state.updated_ns = now;
    state.packets += n;
    if last > state.highest {
        let advance = last - state.highest;
        if advance > PATH_MAX_JUMP {
            state.jumps += n;
            state.packets -= n;
            return;
        }
        state.window = if advance >= PATH_WINDOW {
            low_bits(span)
        } else {
            (state.window << advance) | low_bits(span)
        };
        state.highest = last;
        return;
    }
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

/// The first message of a session index: a counter within the first window means the
/// session is seen from its start (counters below it are missing or late).
#[inline(always)]
fn start(
    key: &PathKey,
    endpoint: &EndpointKey,
    counter: u64,
    last: u64,
    span: u64,
    n: u64,
    now: u64,
) {
    let state = PathState {
        endpoint: *endpoint,
        first: if last < PATH_WINDOW { 0 } else { counter },
        highest: last,
        window: low_bits(span),
        packets: n,
        late: 0,
        duplicates: 0,
        early: 0,
        jumps: 0,
        updated_ns: now,
    };
    // Another CPU may have created it meanwhile: then this message is not counted.
    let _ = PATHS.insert(key, &state, BPF_NOEXIST as u64);
}
