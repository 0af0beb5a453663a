//! Programs, maps and the packet parser (BPF target only).

use agent_common::{
    message, EndpointKey, EndpointStats, GlobalStats, KernelOffsets, SessionEvent, SessionKey,
    SessionState, DEFAULT_MAX_PEERS, DEFAULT_MAX_SESSIONS, EVENTS_RING_BYTES,
    EVENT_ENDPOINT_CHANGED, EVENT_HANDSHAKE_COMPLETE, FAMILY_IPV4, FAMILY_IPV6, MAX_DEVICES,
    PORT_MAP_ENTRIES, ROLE_INITIATOR, ROLE_RESPONDER, SESSION_ESTABLISHED, SESSION_INITIATION_SENT,
    SESSION_RESPONSE_SENT,
};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_PIPE},
    helpers::{bpf_ktime_get_coarse_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, classifier, map},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, TcContext},
};
use aya_log_ebpf::warn;

/// Per-endpoint counters; userspace sets `max_entries` to `max_peers` before loading.
#[map]
static ENDPOINTS: PerCpuHashMap<EndpointKey, EndpointStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_PEERS, 0);

/// Local UDP port -> device id + 1 (0: not a WireGuard port).
#[map]
static PORTS: Array<u32> = Array::with_max_entries(PORT_MAP_ENTRIES, 0);

/// Our WireGuard session indices, to recognise completed handshakes and roaming.
#[map]
static SESSIONS: LruHashMap<SessionKey, SessionState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SESSIONS, 0);

/// Datapath-wide counters.
#[map]
static GLOBALS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

/// Completed handshakes and endpoint changes, for userspace to act on at once.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Per device: monotonic (coarse) ns of the last handshake response we sent. Ingress
/// data consults the session map only while a responder handshake may be waiting
/// for its confirming data (or for an endpoint seen for the first time).
#[map]
static LAST_RESPONSE: Array<u64> = Array::with_max_entries(MAX_DEVICES, 0);

/// How long after sending a response its confirming data is looked for: the
/// initiator confirms within a round trip (keepalive at once if it has no data).
const CONFIRM_WINDOW_NS: u64 = 30_000_000_000;

/// Kernel structure offsets for the drop tracepoint, written by userspace from BTF.
#[map]
static OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

/// A zeroed value to create new endpoint entries from (kept out of the 512-byte stack).
static ZERO_STATS: EndpointStats = EndpointStats {
    rx: ZERO_DIRECTION,
    tx: ZERO_DIRECTION,
    socket_drops: 0,
    socket_drop_bytes: 0,
};
const ZERO_DIRECTION: agent_common::DirectionStats = agent_common::DirectionStats {
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

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
/// How many IPv6 extension headers the parser walks before giving up (bounded loop).
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Ethernet-framed ingress.
#[classifier]
pub fn wgpulse_ingress(ctx: TcContext) -> i32 {
    let _ = observe::<true, true>(&ctx);
    TC_ACT_PIPE
}

/// Ethernet-framed egress.
#[classifier]
pub fn wgpulse_egress(ctx: TcContext) -> i32 {
    let _ = observe::<true, false>(&ctx);
    TC_ACT_PIPE
}

/// Layer-3 (no link header) ingress.
#[classifier]
pub fn wgpulse_ingress_l3(ctx: TcContext) -> i32 {
    let _ = observe::<false, true>(&ctx);
    TC_ACT_PIPE
}

/// Layer-3 (no link header) egress.
#[classifier]
pub fn wgpulse_egress_l3(ctx: TcContext) -> i32 {
    let _ = observe::<false, false>(&ctx);
    TC_ACT_PIPE
}

/// Baseline for the datapath benchmark.
#[classifier]
pub fn wgpulse_noop(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

/// Why a frame was not accounted; only `Malformed` is counted.
enum Skip {
    /// Not IP, not UDP, or not a WireGuard port: nothing to do.
    NotOurs,
    /// Headers end early or contradict themselves.
    Malformed,
    /// A non-first IP fragment (counted apart).
    Fragment,
}

/// The transport facts the parser extracts from a frame.
struct Datagram {
    family: u16,
    src: [u8; 16],
    dst: [u8; 16],
    /// Offset of the UDP header from the start of the frame.
    udp_offset: usize,
}

#[inline(always)]
fn observe<const ETHERNET: bool, const INGRESS: bool>(ctx: &TcContext) -> Result<(), ()> {
    if let Some(parsed) = parse_direct::<ETHERNET>(ctx) {
        return account::<INGRESS>(ctx, &parsed);
    }
    let parsed = match parse::<ETHERNET>(ctx).and_then(|d| load_transport(ctx, d)) {
        Ok(parsed) => parsed,
        Err(Skip::NotOurs) => return Ok(()),
        Err(Skip::Malformed) => {
            bump_global(|g| g.malformed += 1);
            return Ok(());
        }
        Err(Skip::Fragment) => {
            if INGRESS {
                bump_global(|g| g.rx_fragments += 1);
            } else {
                bump_global(|g| g.tx_fragments += 1);
            }
            return Ok(());
        }
    };
    account::<INGRESS>(ctx, &parsed)
}

/// Headers up to the first 12 bytes of the WireGuard message.
struct Parsed {
    family: u16,
    src: [u8; 16],
    dst: [u8; 16],
    udp: [u8; UDP_HLEN],
    /// Type, reserved bytes and indices of the message (zero if the payload is shorter).
    head: [u8; 12],
    udp_offset: usize,
}

/// Bytes the fast path needs in the linear part of the skb (IPv6 case).
const DIRECT_V4: usize = 20 + UDP_HLEN + 12;
const DIRECT_V6: usize = IPV6_HLEN + UDP_HLEN + 12;

/// The fast path: untagged IPv4 without options or IPv6 without extension headers,
/// read in place from the packet (one bounds check instead of a helper call per
/// header). Anything else, or a frame too short, takes the general path.
#[inline(always)]
fn parse_direct<const ETHERNET: bool>(ctx: &TcContext) -> Option<Parsed> {
    let start = ctx.data();
    let end = ctx.data_end();
    let l3 = if ETHERNET { ETH_HLEN } else { 0 };
    if start + l3 + DIRECT_V4 > end {
        return None;
    }
    let at = |offset: usize| (start + offset) as *const u8;
    // SAFETY: every read below is within [start, start + l3 + DIRECT_V4), checked above.
    let version = unsafe { *at(l3) } >> 4;
    if ETHERNET {
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let ethertype = u16::from_be(unsafe { (at(12) as *const u16).read_unaligned() });
        if !((ethertype == ETH_P_IP && version == 4) || (ethertype == ETH_P_IPV6 && version == 6)) {
            return None;
        }
    }
    if version == 4 {
        // SAFETY: 20 bytes at l3, within the DIRECT_V4 bound checked above.
        let header: [u8; 20] = unsafe { (at(l3) as *const [u8; 20]).read_unaligned() };
        let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
        if header[0] != 0x45 || header[9] != IPPROTO_UDP || fragment != 0 {
            return None;
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&header[12..16]);
        dst[..4].copy_from_slice(&header[16..20]);
        let udp_offset = l3 + 20;
        return Some(Parsed {
            family: FAMILY_IPV4,
            src,
            dst,
            // SAFETY: the UDP header and message head lie within the direct bound checked
            // above (DIRECT_V4 / DIRECT_V6 cover them).
            udp: unsafe { (at(udp_offset) as *const [u8; UDP_HLEN]).read_unaligned() },
            // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
            head: unsafe { (at(udp_offset + UDP_HLEN) as *const [u8; 12]).read_unaligned() },
            udp_offset,
        });
    }
    if version != 6 || start + l3 + DIRECT_V6 > end {
        return None;
    }
    // SAFETY: within [start, start + l3 + DIRECT_V6), checked above.
    let next = unsafe { *at(l3 + 6) };
    if next != IPPROTO_UDP {
        return None;
    }
    let udp_offset = l3 + IPV6_HLEN;
    Some(Parsed {
        family: FAMILY_IPV6,
        // SAFETY: source and destination addresses at l3+8 and l3+24, within
        // DIRECT_V6 checked above.
        src: unsafe { (at(l3 + 8) as *const [u8; 16]).read_unaligned() },
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        dst: unsafe { (at(l3 + 24) as *const [u8; 16]).read_unaligned() },
        // SAFETY: the UDP header and message head lie within the direct bound checked
        // above (DIRECT_V4 / DIRECT_V6 cover them).
        udp: unsafe { (at(udp_offset) as *const [u8; UDP_HLEN]).read_unaligned() },
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        head: unsafe { (at(udp_offset + UDP_HLEN) as *const [u8; 12]).read_unaligned() },
        udp_offset,
    })
}

/// The general path's UDP header and message head, loaded with helpers.
#[inline(always)]
fn load_transport(ctx: &TcContext, datagram: Datagram) -> Result<Parsed, Skip> {
    let udp: [u8; UDP_HLEN] = load(ctx, datagram.udp_offset)?;
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    let head = if udp_len >= UDP_HLEN + 12 {
        load::<[u8; 12]>(ctx, datagram.udp_offset + UDP_HLEN).unwrap_or([0u8; 12])
    } else {
        [0u8; 12]
    };
    Ok(Parsed {
        family: datagram.family,
        src: datagram.src,
        dst: datagram.dst,
        udp,
        head,
        udp_offset: datagram.udp_offset,
    })
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Skip> {
    ctx.load::<T>(offset).map_err(|_| Skip::Malformed)
}

/// Walks link, VLAN and IP headers up to UDP.
#[inline(always)]
fn parse<const ETHERNET: bool>(ctx: &TcContext) -> Result<Datagram, Skip> {
    let (ethertype, l3) = if ETHERNET {
        let mut ethertype = u16::from_be(load::<u16>(ctx, 12)?);
        let mut offset = ETH_HLEN;
        // Up to two VLAN tags (802.1ad outer + 802.1Q inner) carried in the frame; a tag
        // the NIC stripped into the skb metadata is not in the data at all.
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be(load::<u16>(ctx, offset + 2)?);
            offset += 4;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                ethertype = u16::from_be(load::<u16>(ctx, offset + 2)?);
                offset += 4;
            }
        }
        (ethertype, offset)
    } else {
        let first: u8 = load(ctx, 0)?;
        match first >> 4 {
            4 => (ETH_P_IP, 0),
            6 => (ETH_P_IPV6, 0),
            _ => return Err(Skip::NotOurs),
        }
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Err(Skip::NotOurs),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, l3: usize) -> Result<Datagram, Skip> {
    let header: [u8; 20] = load(ctx, l3)?;
    if header[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = ((header[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Skip::Malformed);
    }
    if header[9] != IPPROTO_UDP {
        return Err(Skip::NotOurs);
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return Err(Skip::Fragment);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&header[12..16]);
    dst[..4].copy_from_slice(&header[16..20]);
    Ok(Datagram {
        family: FAMILY_IPV4,
        src,
        dst,
        udp_offset: l3 + ihl,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, l3: usize) -> Result<Datagram, Skip> {
    let header: [u8; IPV6_HLEN] = load(ctx, l3)?;
    if header[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let mut next = header[6];
    let mut offset = l3 + IPV6_HLEN;
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_UDP => break,
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let ext: [u8; 2] = load(ctx, offset)?;
                next = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; only the first fragment carries the UDP header.
            44 => {
                let ext: [u8; 4] = load(ctx, offset)?;
                next = ext[0];
                let fragment_offset = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8;
                if fragment_offset != 0 {
                    return if next == IPPROTO_UDP {
                        Err(Skip::Fragment)
                    } else {
                        Err(Skip::NotOurs)
                    };
                }
                offset += 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let ext: [u8; 2] = load(ctx, offset)?;
                next = ext[0];
                offset += (ext[1] as usize + 2) * 4;
            }
            _ => return Err(Skip::NotOurs),
        }
        i += 1;
    }
    if next != IPPROTO_UDP {
        return Err(Skip::NotOurs);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    Ok(Datagram {
        family: FAMILY_IPV6,
        src,
        dst,
        udp_offset: offset,
    })
}

/// The WireGuard message class of a UDP payload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Initiation,
    Response,
    Cookie,
    Data,
    Invalid,
}

#[inline(always)]
fn account<const INGRESS: bool>(ctx: &TcContext, datagram: &Parsed) -> Result<(), ()> {
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
    let mut class = Class::Invalid;
    let single_len = if segments > 1 { 0 } else { payload };
    if payload >= message::DATA_MIN_LEN && head[1] == 0 && head[2] == 0 && head[3] == 0 {
        class = match head[0] {
            message::INITIATION if single_len == message::INITIATION_LEN => Class::Initiation,
            message::RESPONSE if single_len == message::RESPONSE_LEN => Class::Response,
            message::COOKIE if single_len == message::COOKIE_LEN => Class::Cookie,
            message::DATA => Class::Data,
            _ => Class::Invalid,
        };
    }
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
    let Some((stats, fresh)) = endpoint_stats(&key) else {
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
        return Ok(());
    };
    // SAFETY: a per-CPU map value of this CPU; nothing else writes it concurrently.
    let direction = unsafe {
        if INGRESS {
            &mut (*stats).rx
        } else {
            &mut (*stats).tx
        }
    };
    direction.last_packet_ns = now;
    match class {
        Class::Invalid => {
            direction.invalid_packets += packets;
            direction.invalid_bytes += payload as u64;
            return Ok(());
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

    track_session::<INGRESS>(class, &key, first_index, second_index, now, fresh);
    Ok(())
}

/// The endpoint's per-CPU counters, created on first sight (then `fresh` is true);
/// `None` when the map is full.
#[inline(always)]
fn endpoint_stats(key: &EndpointKey) -> Option<(*mut EndpointStats, bool)> {
    if let Some(stats) = ENDPOINTS.get_ptr_mut(key) {
        return Some((stats, false));
    }
    // Another CPU may create the entry between the lookup and the insert (EEXIST):
    // either way, look it up again.
    let _ = ENDPOINTS.insert(key, &ZERO_STATS, BPF_NOEXIST as u64);
    ENDPOINTS.get_ptr_mut(key).map(|stats| (stats, true))
}

/// Follows session indices: a response to our initiation, or the first data on the
/// index of our response, completes a handshake; data on an established session from
/// another endpoint is roaming.
#[inline(always)]
fn track_session<const INGRESS: bool>(
    class: Class,
    endpoint: &EndpointKey,
    first_index: u32,
    second_index: u32,
    now: u64,
    fresh_endpoint: bool,
) {
    let device = endpoint.device;
    match (INGRESS, class) {
        // We initiate: sender index at offset 4 is ours.
        (false, Class::Initiation) => {
            let state = SessionState {
                endpoint: *endpoint,
                state: SESSION_INITIATION_SENT,
                remote_index: 0,
                updated_ns: now,
            };
            remember_session(device, first_index, &state);
        }
        // We respond: our sender index at 4, the initiator's index at 8.
        (false, Class::Response) => {
            if let Some(last) = LAST_RESPONSE.get_ptr_mut(device) {
                // SAFETY: a plain array slot; a racing writer stores a similar time.
                unsafe { *last = now };
            }
            let state = SessionState {
                endpoint: *endpoint,
                state: SESSION_RESPONSE_SENT,
                remote_index: second_index,
                updated_ns: now,
            };
            remember_session(device, first_index, &state);
        }
        // A response to us: their sender index at 4, our index at 8.
        (true, Class::Response) => {
            let key = SessionKey {
                device,
                index: second_index,
            };
            if let Some(session) = SESSIONS.get_ptr_mut(&key) {
                // SAFETY: an LRU map value; racing writers can at worst duplicate an
                // event, which userspace de-duplicates by (device, local index).
                let session = unsafe { &mut *session };
                if session.state == SESSION_INITIATION_SENT {
                    session.state = SESSION_ESTABLISHED;
                    session.remote_index = first_index;
                    session.endpoint = *endpoint;
                    session.updated_ns = now;
                    emit(
                        EVENT_HANDSHAKE_COMPLETE,
                        ROLE_INITIATOR,
                        now,
                        second_index,
                        first_index,
                        endpoint,
                        None,
                    );
                }
            }
        }
        // Data to us: our index at 4. Only a response awaiting confirmation or a new
        // endpoint (roaming) can make it an event, so the lookup is skipped otherwise.
        (true, Class::Data) => {
            let recent_response = LAST_RESPONSE
                .get(device)
                .is_some_and(|last| now.wrapping_sub(*last) < CONFIRM_WINDOW_NS);
            if !(fresh_endpoint || recent_response) {
                return;
            }
            let key = SessionKey {
                device,
                index: first_index,
            };
            if let Some(session) = SESSIONS.get_ptr_mut(&key) {
                // SAFETY: as above.
                let session = unsafe { &mut *session };
                if session.state == SESSION_RESPONSE_SENT {
                    session.state = SESSION_ESTABLISHED;
                    session.endpoint = *endpoint;
                    session.updated_ns = now;
                    emit(
                        EVENT_HANDSHAKE_COMPLETE,
                        ROLE_RESPONDER,
                        now,
                        first_index,
                        session.remote_index,
                        endpoint,
                        None,
                    );
                } else if session.state == SESSION_ESTABLISHED
                    && !same_endpoint(&session.endpoint, endpoint)
                {
                    let previous = session.endpoint;
                    session.endpoint = *endpoint;
                    session.updated_ns = now;
                    emit(
                        EVENT_ENDPOINT_CHANGED,
                        0,
                        now,
                        first_index,
                        session.remote_index,
                        endpoint,
                        Some(&previous),
                    );
                }
            }
        }
        _ => {}
    }
}

#[inline(always)]
fn same_endpoint(a: &EndpointKey, b: &EndpointKey) -> bool {
    a.family == b.family && a.port == b.port && a.addr == b.addr
}

#[inline(always)]
fn remember_session(device: u32, index: u32, state: &SessionState) {
    let key = SessionKey { device, index };
    if SESSIONS.insert(&key, state, BPF_ANY as u64).is_err() {
        bump_global(|g| g.session_errors += 1);
    }
}

#[inline(always)]
fn emit(
    kind: u32,
    role: u32,
    now: u64,
    local_index: u32,
    remote_index: u32,
    endpoint: &EndpointKey,
    previous: Option<&EndpointKey>,
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
            });
            entry.submit(0);
        }
        None => bump_global(|g| g.events_lost += 1),
    }
}

#[inline(always)]
fn bump_global(update: impl FnOnce(&mut GlobalStats)) {
    if let Some(globals) = GLOBALS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        update(unsafe { &mut *globals });
    }
}

/// Counts a UDP datagram the socket layer dropped (receive buffer full) on a
/// WireGuard port, per endpoint where the skb is available, always per device.
#[btf_tracepoint(function = "udp_fail_queue_rcv_skb")]
pub fn wgpulse_udp_drop(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: reads go through bpf_probe_read_kernel at offsets from the kernel's BTF.
    let _ = unsafe { count_drop(&ctx) };
    0
}

/// `valid` value meaning the tracepoint passes `(rc, sk)` only.
const OFFSETS_SOCK_ONLY: u32 = 2;

/// # Safety
/// `ctx` must be the `udp_fail_queue_rcv_skb` tracepoint's context: argument 1 a
/// `struct sock *`, argument 2 (when the offsets say so) a `struct sk_buff *`. Every
/// read goes through `bpf_probe_read_kernel`, which faults safely.
// SAFETY: a probe read at a BTF offset (faults are caught by the helper).
unsafe fn count_drop(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let offsets = match OFFSETS.get(0) {
        Some(o) if o.valid != 0 => *o,
        _ => return Ok(()),
    };
    let sk: *const u8 = ctx.arg(1);
    let local_port: u16 =
        // SAFETY: sk is the tracepoint's socket; the read is a probe read at an
        // offset from the kernel's BTF.
        unsafe { bpf_probe_read_kernel(sk.add(offsets.sk_num as usize) as *const u16)? };
    let device = match PORTS.get(local_port as u32) {
        Some(&d) if d != 0 => d - 1,
        _ => return Ok(()),
    };
    let mut attributed = false;
    if offsets.valid != OFFSETS_SOCK_ONLY {
        let skb: *const u8 = ctx.arg(2);
        // SAFETY (this block and the next reads): probe reads of the skb's fields at
        // offsets from the kernel's BTF; a bad pointer makes the helper fail, not fault.
        let head: *const u8 = unsafe {
            bpf_probe_read_kernel(skb.add(offsets.skb_head as usize) as *const *const u8)?
        };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let network: u16 = unsafe {
            bpf_probe_read_kernel(skb.add(offsets.skb_network_header as usize) as *const u16)?
        };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let transport: u16 = unsafe {
            bpf_probe_read_kernel(skb.add(offsets.skb_transport_header as usize) as *const u16)?
        };
        // SAFETY: pointer arithmetic only; the result is only probe-read.
        let ip = unsafe { head.add(network as usize) };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let udp: [u8; UDP_HLEN] = unsafe {
            bpf_probe_read_kernel(head.add(transport as usize) as *const [u8; UDP_HLEN])?
        };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let version: u8 = unsafe { bpf_probe_read_kernel(ip)? } >> 4;
        let mut addr = [0u8; 16];
        let family = if version == 4 {
            // SAFETY: a probe read of the IPv4 source address.
            let a: [u8; 4] = unsafe { bpf_probe_read_kernel(ip.add(12) as *const [u8; 4])? };
            addr[..4].copy_from_slice(&a);
            FAMILY_IPV4
        } else {
            // SAFETY: a probe read of the IPv6 source address.
            addr = unsafe { bpf_probe_read_kernel(ip.add(8) as *const [u8; 16])? };
            FAMILY_IPV6
        };
        let key = EndpointKey {
            device,
            family,
            port: u16::from_be_bytes([udp[0], udp[1]]),
            addr,
        };
        let bytes = (u16::from_be_bytes([udp[4], udp[5]]) as u64).saturating_sub(UDP_HLEN as u64);
        if let Some(stats) = ENDPOINTS.get_ptr_mut(&key) {
            // SAFETY: this CPU's slot of a per-CPU hash value.
            let stats = unsafe { &mut *stats };
            stats.socket_drops += 1;
            stats.socket_drop_bytes += bytes;
            attributed = true;
        }
    }
    if !attributed {
        bump_global(|g| g.unattributed_drops += 1);
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
