//! Following WireGuard session indices: a completed handshake, told from an attempt,
//! and a roam, reported on the ring buffer the moment they happen; a completed
//! handshake carries its round trip, timed with the precise clock (read only on
//! handshake messages and the one data message that confirms a response).

use crate::account::*;
use crate::maps::*;
use agent_common::{
    EndpointKey, SessionEvent, SessionKey, SessionState, EVENT_ENDPOINT_CHANGED,
    EVENT_HANDSHAKE_COMPLETE, ROLE_INITIATOR, ROLE_RESPONDER, SESSION_ESTABLISHED,
    SESSION_INITIATION_SENT, SESSION_RESPONSE_SENT,
};
use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};

/// `CLOCK_MONOTONIC`, precise: the coarse clock's jiffy (4 ms at HZ=250) would swamp
/// a LAN round trip.
#[inline(always)]
fn precise_now() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// How long after sending a response its confirming data is looked for: the
/// initiator confirms within a round trip (keepalive at once if it has no data).
pub(crate) const CONFIRM_WINDOW_NS: u64 = 30_000_000_000;

/// Follows session indices: a response to our initiation, or the first data on the
/// index of our response, completes a handshake; data on an established session from
/// another endpoint is roaming.
#[inline(always)]
pub(crate) fn track_session<const INGRESS: bool>(
    class: Class,
    endpoint: &EndpointKey,
    first_index: u32,
    second_index: u32,
    now: u64,
    fresh_endpoint: bool,
) {
    match (INGRESS, class) {
        // We initiate: sender index at offset 4 is ours.
        (false, Class::Initiation) => initiation_sent(endpoint, first_index, now),
        // We respond: our sender index at 4, the initiator's index at 8.
        (false, Class::Response) => response_sent(endpoint, first_index, second_index, now),
        // A response to us: their sender index at 4, our index at 8.
        (true, Class::Response) => response_received(endpoint, first_index, second_index, now),
        // Data to us: our index at 4.
        (true, Class::Data) => data_received(endpoint, first_index, now, fresh_endpoint),
        _ => {}
    }
}

#[inline(always)]
fn initiation_sent(endpoint: &EndpointKey, local_index: u32, now: u64) {
    let state = SessionState {
        endpoint: *endpoint,
        state: SESSION_INITIATION_SENT,
        remote_index: 0,
        updated_ns: now,
        sent_ns: precise_now(),
    };
    remember_session(endpoint.device, local_index, &state);
}

#[inline(always)]
fn response_sent(endpoint: &EndpointKey, local_index: u32, remote_index: u32, now: u64) {
    if let Some(last) = LAST_RESPONSE.get_ptr_mut(endpoint.device) {
        // SAFETY: a plain array slot; a racing writer stores a similar time.
        unsafe { *last = now };
    }
    let state = SessionState {
        endpoint: *endpoint,
        state: SESSION_RESPONSE_SENT,
        remote_index,
        updated_ns: now,
        sent_ns: precise_now(),
    };
    remember_session(endpoint.device, local_index, &state);
}

/// A response to our initiation completes the handshake (we are the initiator).
#[inline(always)]
fn response_received(endpoint: &EndpointKey, remote_index: u32, local_index: u32, now: u64) {
    let key = SessionKey {
        device: endpoint.device,
        index: local_index,
    };
    let Some(session) = SESSIONS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: an LRU map value; racing writers can at worst duplicate an event,
    // which userspace de-duplicates by (device, local index).
    let session = unsafe { &mut *session };
    if session.state == SESSION_INITIATION_SENT {
        session.remote_index = remote_index;
        complete(session, ROLE_INITIATOR, endpoint, local_index, now);
    }
}

/// Marks a session established from `endpoint` and reports the completed handshake
/// with its round trip.
#[inline(always)]
fn complete(
    session: &mut SessionState,
    role: u32,
    endpoint: &EndpointKey,
    local_index: u32,
    now: u64,
) {
    session.state = SESSION_ESTABLISHED;
    session.endpoint = *endpoint;
    session.updated_ns = now;
    emit(
        EVENT_HANDSHAKE_COMPLETE,
        role,
        now,
        local_index,
        session.remote_index,
        endpoint,
        None,
        round_trip(session.sent_ns),
    );
}

/// Data on our index: the first after our response completes the handshake (we are
/// the responder); on an established session from another endpoint it is a roam.
/// Only a response awaiting confirmation or a new endpoint can make it an event, so
/// the lookup is skipped otherwise.
#[inline(always)]
fn data_received(endpoint: &EndpointKey, local_index: u32, now: u64, fresh_endpoint: bool) {
    let recent_response = LAST_RESPONSE
        .get(endpoint.device)
        .is_some_and(|last| now.wrapping_sub(*last) < CONFIRM_WINDOW_NS);
    if !(fresh_endpoint || recent_response) {
        return;
    }
    let key = SessionKey {
        device: endpoint.device,
        index: local_index,
    };
    let Some(session) = SESSIONS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: as in `response_received`.
    let session = unsafe { &mut *session };
    if session.state == SESSION_RESPONSE_SENT {
        complete(session, ROLE_RESPONDER, endpoint, local_index, now);
    } else if session.state == SESSION_ESTABLISHED && !same_endpoint(&session.endpoint, endpoint) {
        let previous = session.endpoint;
        session.endpoint = *endpoint;
        session.updated_ns = now;
        emit(
            EVENT_ENDPOINT_CHANGED,
            0,
            now,
            local_index,
            session.remote_index,
            endpoint,
            Some(&previous),
            0,
        );
    }
}

#[inline(always)]
pub(crate) fn same_endpoint(a: &EndpointKey, b: &EndpointKey) -> bool {
    a.family == b.family && a.port == b.port && a.addr == b.addr
}

#[inline(always)]
pub(crate) fn remember_session(device: u32, index: u32, state: &SessionState) {
    let key = SessionKey { device, index };
    if SESSIONS.insert(&key, state, BPF_ANY as u64).is_err() {
        bump_global(|g| g.session_errors += 1);
    }
}

/// The round trip from a session's send time to now (0 when unknown).
#[inline(always)]
fn round_trip(sent_ns: u64) -> u64 {
    if sent_ns == 0 {
        return 0;
    }
    precise_now().saturating_sub(sent_ns)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit(
    kind: u32,
    role: u32,
    now: u64,
    local_index: u32,
    remote_index: u32,
    endpoint: &EndpointKey,
    previous: Option<&EndpointKey>,
    rtt_ns: u64,
) {
    match EVENTS.reserve::<SessionEvent>(0) {
        Some(mut entry) => {
            entry.write(SessionEvent {
                kind,
                role,
                timestamp_ns: now,
                local_index,
                remote_index,
                endpoint: *endpoint,
                previous: match previous {
                    Some(p) => *p,
                    None => EndpointKey {
                        device: 0,
                        family: 0,
                        port: 0,
                        addr: [0; 16],
                    },
                },
                rtt_ns,
            });
            entry.submit(0);
        }
        None => bump_global(|g| g.events_lost += 1),
    }
}
