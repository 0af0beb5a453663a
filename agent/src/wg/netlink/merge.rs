//! Folding the messages of one `WG_CMD_GET_DEVICE` dump into one [`Device`]: a pure
//! function over decoded attributes, so the multi-message case is testable without a
//! kernel. Secret keys are dropped here.

use std::time::{Duration, SystemTime};

use netlink_packet_wireguard::{
    WireguardAllowedIpAttr, WireguardAttribute, WireguardPeerAttribute,
};

use crate::wg::{Device, DeviceKind, Peer, PublicKey};

/// Folds the messages of one device dump into a device: device attributes from any
/// message, peers from all of them, and a peer continued at the start of the next
/// message (same public key, only more allowed IPs) merged with its first part.
/// Private and preshared keys are dropped (only "preshared key set" is kept).
pub fn merge_device(
    name: &str,
    parts: impl IntoIterator<Item = Vec<WireguardAttribute>>,
) -> Device {
    let mut device = Device {
        name: name.to_owned(),
        kind: DeviceKind::Kernel,
        public_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
    };
    for attributes in parts {
        for attribute in attributes {
            match attribute {
                WireguardAttribute::PublicKey(key) if key != [0u8; 32] => {
                    device.public_key = Some(PublicKey(key))
                }
                WireguardAttribute::ListenPort(port) => device.listen_port = port,
                WireguardAttribute::Fwmark(mark) => device.fwmark = mark,
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        merge_peer(&mut device.peers, peer.0);
                    }
                }
                // The private key (and anything else) is not kept.
                _ => {}
            }
        }
    }
    device
}

fn merge_peer(peers: &mut Vec<Peer>, attributes: Vec<WireguardPeerAttribute>) {
    let Some(key) = attributes.iter().find_map(|a| match a {
        WireguardPeerAttribute::PublicKey(k) => Some(PublicKey(*k)),
        _ => None,
    }) else {
        return;
    };
    let peer = match peers.last_mut() {
        Some(last) if last.public_key == key => last,
        _ => {
            peers.push(Peer::new(key));
            let Some(pushed) = peers.last_mut() else {
                return;
            };
            pushed
        }
    };
    for attribute in attributes {
        match attribute {
            WireguardPeerAttribute::PresharedKey(psk) => {
                peer.has_preshared_key = psk != [0u8; 32];
            }
            WireguardPeerAttribute::Endpoint(endpoint) => peer.endpoint = Some(endpoint),
            WireguardPeerAttribute::PersistentKeepalive(seconds) => {
                peer.persistent_keepalive = seconds
            }
            WireguardPeerAttribute::LastHandshake(time) => {
                let since_epoch = Duration::new(
                    time.seconds.max(0) as u64,
                    time.nano_seconds.clamp(0, 999_999_999) as u32,
                );
                peer.last_handshake = if since_epoch.is_zero() {
                    None
                } else {
                    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
                };
            }
            WireguardPeerAttribute::RxBytes(bytes) => peer.rx_bytes = bytes,
            WireguardPeerAttribute::TxBytes(bytes) => peer.tx_bytes = bytes,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let address = ip.0.iter().find_map(|a| match a {
                        WireguardAllowedIpAttr::IpAddr(addr) => Some(*addr),
                        _ => None,
                    });
                    let cidr = ip.0.iter().find_map(|a| match a {
                        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
                        _ => None,
                    });
                    if let (Some(address), Some(cidr)) = (address, cidr) {
                        peer.allowed_ips.push(format!("{address}/{cidr}"));
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
