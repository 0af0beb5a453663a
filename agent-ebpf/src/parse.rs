//! The packet parser: Ethernet (802.1Q/802.1ad tags), IPv4 with options, IPv6 with
//! extension headers, UDP; a fast path reads the common case in place.

use agent_common::{FAMILY_IPV4, FAMILY_IPV6};
use aya_ebpf::programs::TcContext;

pub(crate) const ETH_HLEN: usize = 14;

pub(crate) const ETH_P_IP: u16 = 0x0800;

pub(crate) const ETH_P_IPV6: u16 = 0x86DD;

pub(crate) const ETH_P_8021Q: u16 = 0x8100;

pub(crate) const ETH_P_8021AD: u16 = 0x88A8;

pub(crate) const IPPROTO_UDP: u8 = 17;

pub(crate) const IPV6_HLEN: usize = 40;

pub(crate) const UDP_HLEN: usize = 8;

/// How many IPv6 extension headers the parser walks before giving up (bounded loop).
pub(crate) const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Why a frame was not accounted; only `Malformed` is counted.
pub(crate) enum Skip {
    /// Not IP, not UDP, or not a WireGuard port: nothing to do.
    NotOurs,
    /// Headers end early or contradict themselves.
    Malformed,
    /// A non-first IP fragment (counted apart).
    Fragment,
}

/// The transport facts the parser extracts from a frame.
pub(crate) struct Datagram {
    pub(crate) family: u16,
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
    /// Offset of the UDP header from the start of the frame.
    pub(crate) udp_offset: usize,
}

/// Headers up to the first 16 bytes of the WireGuard message.
pub(crate) struct Parsed {
    pub(crate) family: u16,
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
    pub(crate) udp: [u8; UDP_HLEN],
    /// Type, reserved bytes, indices, and (data messages) the counter: the first
    /// [`HEAD_LEN`] bytes of the message (zero if the payload is shorter).
    pub(crate) head: [u8; HEAD_LEN],
    pub(crate) udp_offset: usize,
}

/// Bytes of the message head read: type (1), reserved (3), receiver index (4) and
/// counter (8) of a data message; sender and receiver index of a handshake message.
pub(crate) const HEAD_LEN: usize = 16;

/// Bytes the fast path needs in the linear part of the skb (IPv4 case).
pub(crate) const DIRECT_V4: usize = 20 + UDP_HLEN + HEAD_LEN;

/// Bytes the fast path needs in the linear part of the skb (IPv6 case).
pub(crate) const DIRECT_V6: usize = IPV6_HLEN + UDP_HLEN + HEAD_LEN;

/// The fast path: untagged IPv4 without options or IPv6 without extension headers,
/// read in place from the packet (one bounds check instead of a helper call per
/// header). Anything else, or a frame too short, takes the general path.
#[inline(always)]
pub(crate) fn parse_direct<const ETHERNET: bool>(ctx: &TcContext) -> Option<Parsed> {
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
            head: unsafe { (at(udp_offset + UDP_HLEN) as *const [u8; HEAD_LEN]).read_unaligned() },
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
        head: unsafe { (at(udp_offset + UDP_HLEN) as *const [u8; HEAD_LEN]).read_unaligned() },
        udp_offset,
    })
}

/// The general path's UDP header and message head, loaded with helpers.
#[inline(always)]
pub(crate) fn load_transport(ctx: &TcContext, datagram: Datagram) -> Result<Parsed, Skip> {
    let udp: [u8; UDP_HLEN] = load(ctx, datagram.udp_offset)?;
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    let head = if udp_len >= UDP_HLEN + HEAD_LEN {
        load::<[u8; HEAD_LEN]>(ctx, datagram.udp_offset + UDP_HLEN).unwrap_or([0u8; HEAD_LEN])
    } else {
        [0u8; HEAD_LEN]
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
pub(crate) fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Skip> {
    ctx.load::<T>(offset).map_err(|_| Skip::Malformed)
}

/// Walks link, VLAN and IP headers up to UDP.
#[inline(always)]
pub(crate) fn parse<const ETHERNET: bool>(ctx: &TcContext) -> Result<Datagram, Skip> {
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
pub(crate) fn parse_ipv4(ctx: &TcContext, l3: usize) -> Result<Datagram, Skip> {
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
pub(crate) fn parse_ipv6(ctx: &TcContext, l3: usize) -> Result<Datagram, Skip> {
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
