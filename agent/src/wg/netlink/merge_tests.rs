//! Tests of the dump merge with messages built from netlink-packet-wireguard's own
//! types, serialized and decoded again like a kernel reply.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAllowedIp, WireguardCmd, WireguardMessage, WireguardPeer, WireguardTimeSpec,
};

use super::*;
use crate::wg::netlink::socket::{dump_datagram, parse_replies};

const PRIVATE: [u8; 32] = [0x11; 32];
const PRESHARED: [u8; 32] = [0x99; 32];
const WG_FAMILY: u16 = 0x1d;

fn key(n: u16) -> [u8; 32] {
    let mut k = [7u8; 32];
    k[..2].copy_from_slice(&n.to_be_bytes());
    k
}

fn allowed(n: u16) -> WireguardAllowedIp {
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(netlink_packet_wireguard::WireguardAddressFamily::Ipv4),
        WireguardAllowedIpAttr::IpAddr(IpAddr::V4(Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 1))),
        WireguardAllowedIpAttr::Cidr(32),
    ])
}

fn peer(n: u16) -> WireguardPeer {
    WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(key(n)),
        WireguardPeerAttribute::PresharedKey(if n.is_multiple_of(2) {
            PRESHARED
        } else {
            [0u8; 32]
        }),
        WireguardPeerAttribute::Endpoint(SocketAddr::from(([192, 0, 2, 1], 10_000 + n))),
        WireguardPeerAttribute::PersistentKeepalive(n % 30),
        WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
            seconds: if n == 0 {
                0
            } else {
                1_700_000_000 + i64::from(n)
            },
            nano_seconds: 0,
        }),
        WireguardPeerAttribute::RxBytes(u64::from(n)),
        WireguardPeerAttribute::TxBytes(u64::from(n) * 2),
        WireguardPeerAttribute::AllowedIps(vec![allowed(n)]),
    ])
}

/// One message of a device dump, as the kernel builds it: device attributes, peers.
fn part(first: bool, peers: Vec<WireguardPeer>) -> GenlMessage<WireguardMessage> {
    let mut attributes = vec![
        WireguardAttribute::IfIndex(7),
        WireguardAttribute::IfName("wg0".into()),
    ];
    if first {
        attributes.extend([
            WireguardAttribute::PrivateKey(PRIVATE),
            WireguardAttribute::PublicKey([2u8; 32]),
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Fwmark(0x42),
        ]);
    }
    attributes.push(WireguardAttribute::Peers(peers));
    let mut message = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes,
    });
    message.set_resolved_family_id(WG_FAMILY);
    message
}

/// A 300-peer device split over 4 messages (75 peers each), peer 149's allowed IPs
/// continued at the start of the third message: serialized, decoded, merged.
#[test]
fn every_part_of_a_large_dump_is_merged() {
    let mut parts = Vec::new();
    for chunk in 0..4u16 {
        let mut peers: Vec<WireguardPeer> = (chunk * 75..(chunk + 1) * 75).map(peer).collect();
        if chunk == 2 {
            peers.insert(
                0,
                WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(key(149)),
                    WireguardPeerAttribute::AllowedIps(vec![allowed(1000)]),
                ]),
            );
        }
        parts.push(part(chunk == 0, peers));
    }
    let datagram = dump_datagram(parts);
    let batch = parse_replies::<GenlMessage<WireguardMessage>>(&datagram, "get device").unwrap();
    assert!(batch.complete);
    assert_eq!(batch.messages.len(), 4);

    let device = merge_device(
        "wg0",
        batch.messages.into_iter().map(|m| m.payload.attributes),
    );
    assert_eq!(device.name, "wg0");
    assert_eq!(device.kind, DeviceKind::Kernel);
    assert_eq!(
        device.peers.len(),
        300,
        "every part merged, not just the first"
    );
    assert_eq!(device.listen_port, 51820);
    assert_eq!(device.fwmark, 0x42);
    assert_eq!(device.public_key, Some(PublicKey([2u8; 32])));
    for (n, peer) in device.peers.iter().enumerate() {
        let n = n as u16;
        assert_eq!(peer.public_key, PublicKey(key(n)), "order kept");
        assert_eq!(peer.has_preshared_key, n.is_multiple_of(2));
        assert_eq!(
            peer.endpoint,
            Some(SocketAddr::from(([192, 0, 2, 1], 10_000 + n)))
        );
        assert_eq!(peer.persistent_keepalive, n % 30);
        assert_eq!(
            (peer.rx_bytes, peer.tx_bytes),
            (u64::from(n), u64::from(n) * 2)
        );
        let expected_handshake = (n != 0)
            .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(n)));
        assert_eq!(peer.last_handshake, expected_handshake);
        if n != 149 {
            assert_eq!(
                peer.allowed_ips,
                [format!("10.{}.{}.1/32", n >> 8, n & 0xff)]
            );
        }
    }
    assert_eq!(
        device.peers[149].allowed_ips,
        ["10.0.149.1/32", "10.3.232.1/32"]
    );

    let shown = format!("{device:?}");
    for secret in [PRIVATE, PRESHARED] {
        assert!(
            !shown.contains(&PublicKey(secret).to_base64()),
            "secret kept"
        );
        assert!(!shown.contains(&hex::encode(secret)), "secret kept");
    }
}

#[test]
fn a_device_without_peers_or_key() {
    let device = merge_device(
        "wg1",
        [vec![
            WireguardAttribute::IfName("wg1".into()),
            WireguardAttribute::PrivateKey([0u8; 32]),
            WireguardAttribute::PublicKey([0u8; 32]),
            WireguardAttribute::ListenPort(0),
        ]],
    );
    assert_eq!(device.public_key, None);
    assert!(device.peers.is_empty());
}
