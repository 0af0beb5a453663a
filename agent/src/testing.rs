//! Crafted frames for exercising the classifier through `BPF_PROG_TEST_RUN` (unit
//! tests and the datapath benchmark): Ethernet with optional VLAN tags, IPv4 with
//! options and fragments, IPv6 with extension headers, UDP, and WireGuard messages.

use std::net::{IpAddr, SocketAddr};

use agent_common::message;

/// Link and network-layer options of a crafted frame.
#[derive(Clone, Debug, Default)]
pub struct FrameOptions {
    /// VLAN tag protocol ids in order (0x88a8 outer, 0x8100 inner).
    pub vlan_tags: Vec<u16>,
    /// Bytes of IPv4 options (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    /// IPv4 fragment offset in 8-byte units (non-zero: a non-first fragment).
    pub ipv4_fragment_offset: u16,
    /// IPv6 extension headers to insert before UDP (0 hop-by-hop, 60 destination
    /// options, 44 fragment), each 8 bytes long.
    pub ipv6_extensions: Vec<u8>,
    /// IPv6 fragment offset in 8-byte units used by a fragment extension header.
    pub ipv6_fragment_offset: u16,
    /// Cut the frame to this many bytes (truncated headers).
    pub truncate: Option<usize>,
    /// Omit the Ethernet header (layer-3 interfaces).
    pub no_ethernet: bool,
}

/// An Ethernet/IP/UDP frame from `src` to `dst` carrying `payload`.
pub fn udp_frame(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    options: &FrameOptions,
) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);

    let (ethertype, ip) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ihl = 20 + options.ipv4_options;
            let mut ip = Vec::with_capacity(ihl + udp.len());
            ip.push(0x40 | (ihl / 4) as u8);
            ip.push(0);
            ip.extend_from_slice(&((ihl + udp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34]);
            ip.extend_from_slice(&(options.ipv4_fragment_offset & 0x1fff).to_be_bytes());
            ip.push(64);
            ip.push(17);
            ip.extend_from_slice(&[0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            // Options: NOPs (type 1), which any parser must step over by IHL.
            ip.extend(std::iter::repeat_n(1u8, options.ipv4_options));
            ip.extend_from_slice(&udp);
            (0x0800u16, ip)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ext = Vec::new();
            let headers = &options.ipv6_extensions;
            for (i, kind) in headers.iter().enumerate() {
                let next = headers.get(i + 1).copied().unwrap_or(17);
                if *kind == 44 {
                    ext.extend_from_slice(&[next, 0]);
                    ext.extend_from_slice(&((options.ipv6_fragment_offset << 3) | 1).to_be_bytes());
                    ext.extend_from_slice(&[0, 0, 0, 1]);
                } else {
                    ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            let first_next = headers.first().copied().unwrap_or(17);
            let mut ip = Vec::with_capacity(40 + ext.len() + udp.len());
            ip.extend_from_slice(&[0x60, 0, 0, 0]);
            ip.extend_from_slice(&((ext.len() + udp.len()) as u16).to_be_bytes());
            ip.push(first_next);
            ip.push(64);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&ext);
            ip.extend_from_slice(&udp);
            (0x86ddu16, ip)
        }
        _ => panic!("source and destination must be of one address family"),
    };

    let mut frame = Vec::with_capacity(22 + ip.len());
    if !options.no_ethernet {
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        for (i, tpid) in options.vlan_tags.iter().enumerate() {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        frame.extend_from_slice(&ethertype.to_be_bytes());
    }
    frame.extend_from_slice(&ip);
    if let Some(len) = options.truncate {
        frame.truncate(len);
    }
    frame
}

/// An ARP request frame (not IP at all).
pub fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&[0u8; 20]);
    frame
}

fn header(kind: u8, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[0] = kind;
    m
}

/// A handshake initiation (148 bytes) with our `sender` index.
pub fn initiation(sender: u32) -> Vec<u8> {
    let mut m = header(message::INITIATION, message::INITIATION_LEN as usize);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m
}

/// A handshake response (92 bytes).
pub fn response(sender: u32, receiver: u32) -> Vec<u8> {
    let mut m = header(message::RESPONSE, message::RESPONSE_LEN as usize);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m[8..12].copy_from_slice(&receiver.to_le_bytes());
    m
}

/// A cookie reply (64 bytes).
pub fn cookie(receiver: u32) -> Vec<u8> {
    let mut m = header(message::COOKIE, message::COOKIE_LEN as usize);
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m
}

/// A transport data message of `len` bytes (>= 32; 32 is a keepalive).
pub fn data(receiver: u32, counter: u64, len: usize) -> Vec<u8> {
    let mut m = header(message::DATA, len);
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m[8..16].copy_from_slice(&counter.to_le_bytes());
    m
}

/// Polls `condition` every millisecond until it holds; panics after 10 s naming `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
