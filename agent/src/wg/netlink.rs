//! Kernel WireGuard over generic netlink (`WG_CMD_GET_DEVICE`), with the rust-netlink
//! crates made for it. A device with many peers comes back split over several
//! messages (about 90 peers each, a peer's allowed IPs possibly continued in the next
//! one): [`merge_device`] folds all of them into one device, never just the first.
//!
//! Private and preshared keys arrive in the reply; they are dropped while merging.

use std::time::{Duration, SystemTime};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd, WireguardMessage,
    WireguardPeerAttribute,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::{Device, DeviceKind, Peer, PublicKey};

/// Errors reading kernel WireGuard devices.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket failed.
    #[error("generic netlink {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered with an error.
    #[error("generic netlink {op}: kernel error {code}")]
    Kernel {
        /// What was being done.
        op: String,
        /// The (negative) errno.
        code: i32,
    },
    /// A reply did not decode.
    #[error("decoding a generic netlink reply: {0}")]
    Decode(String),
    /// Interfaces could not be listed.
    #[error(transparent)]
    Links(#[from] crate::links::LinksError),
}

/// Kernel WireGuard devices in the calling thread's network namespace. Without the
/// `wireguard` generic netlink family (no kernel module) the answer is "none".
pub fn kernel_devices() -> Result<Vec<Device>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_GENERIC).map_err(|source| NetlinkError::Io {
        op: "socket",
        source,
    })?;
    socket
        .bind_auto()
        .map_err(|source| NetlinkError::Io { op: "bind", source })?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|source| NetlinkError::Io {
            op: "connect",
            source,
        })?;
    let Some(family) = resolve_family(&socket)? else {
        return Ok(Vec::new());
    };
    // WireGuard devices have no link-layer header; ask the kernel about each such
    // interface (others answer ENODEV/EOPNOTSUPP and are skipped).
    let candidates: Vec<String> = crate::links::list()?
        .into_values()
        .filter(|i| !i.ethernet && !i.loopback)
        .map(|i| i.name)
        .collect();
    let mut devices = Vec::new();
    for name in candidates {
        match get_device(&socket, family, &name) {
            Ok(Some(device)) => devices.push(device),
            Ok(None) => {}
            Err(err) => tracing::warn!(device = %name, "reading kernel WireGuard device: {err}"),
        }
    }
    Ok(devices)
}

fn send<T>(
    socket: &Socket,
    mut message: NetlinkMessage<T>,
    op: &'static str,
) -> Result<(), NetlinkError>
where
    T: netlink_packet_core::NetlinkSerializable,
{
    message.finalize();
    let mut buffer = vec![0u8; message.buffer_len()];
    message.serialize(&mut buffer);
    socket
        .send(&buffer, 0)
        .map_err(|source| NetlinkError::Io { op, source })?;
    Ok(())
}

/// Reads replies until `Done` (dumps) or the first non-multipart message.
fn receive<T>(socket: &Socket, op: &str) -> Result<Vec<T>, NetlinkError>
where
    T: netlink_packet_core::NetlinkDeserializable,
{
    let mut out = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut buffer[..], 0)
            .map_err(|source| NetlinkError::Io { op: "recv", source })?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<T>::deserialize(&buffer[offset..size])
                .map_err(|e| NetlinkError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            let multipart = message.header.flags & netlink_packet_core::NLM_F_MULTIPART != 0;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(error) => {
                    if let Some(code) = error.code {
                        return Err(NetlinkError::Kernel {
                            op: op.to_owned(),
                            code: code.get(),
                        });
                    }
                }
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if !multipart {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += (length + 3) & !3;
        }
    }
}

fn resolve_family(socket: &Socket) -> Result<Option<u16>, NetlinkError> {
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".to_owned())],
    });
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    send(
        socket,
        NetlinkMessage::new(header, NetlinkPayload::from(request)),
        "get family",
    )?;
    match receive::<GenlMessage<GenlCtrl>>(socket, "get family wireguard") {
        Ok(replies) => Ok(replies.iter().find_map(|reply| {
            reply.payload.nlas.iter().find_map(|nla| match nla {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
        })),
        // ENOENT: no such family, i.e. no kernel WireGuard.
        Err(NetlinkError::Kernel { code, .. }) if code == -libc::ENOENT => Ok(None),
        Err(err) => Err(err),
    }
}

fn get_device(socket: &Socket, family: u16, name: &str) -> Result<Option<Device>, NetlinkError> {
    let mut request = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(name.to_owned())],
    });
    request.set_resolved_family_id(family);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    send(
        socket,
        NetlinkMessage::new(header, NetlinkPayload::from(request)),
        "get device",
    )?;
    match receive::<GenlMessage<WireguardMessage>>(socket, &format!("get device {name}")) {
        Ok(parts) => Ok(Some(merge_device(
            name,
            parts.into_iter().map(|p| p.payload.attributes),
        ))),
        Err(NetlinkError::Kernel { code, .. })
            if code == -libc::ENODEV || code == -libc::EOPNOTSUPP || code == -libc::EINVAL =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Folds the messages of one device dump into a device: device attributes from any
/// message, peers from all of them, a peer continued in the next message (same
/// public key first) merged with its previous part. Secret keys are dropped.
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
    let continued = peers.last().is_some_and(|p| p.public_key == key);
    if !continued {
        peers.push(Peer::new(key));
    }
    let peer = peers.last_mut().expect("pushed above");
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
                if !since_epoch.is_zero() {
                    peer.last_handshake = Some(SystemTime::UNIX_EPOCH + since_epoch);
                }
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
mod tests {
    use super::*;
    use netlink_packet_wireguard::{WireguardAllowedIp, WireguardPeer};

    fn key(n: u16) -> [u8; 32] {
        let mut k = [7u8; 32];
        k[..2].copy_from_slice(&n.to_be_bytes());
        k
    }

    fn allowed(n: u16) -> WireguardAllowedIp {
        WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::IpAddr(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                10,
                (n >> 8) as u8,
                n as u8,
                1,
            ))),
            WireguardAllowedIpAttr::Cidr(32),
        ])
    }

    fn peer(n: u16, ips: Vec<WireguardAllowedIp>) -> WireguardPeer {
        WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(key(n)),
            WireguardPeerAttribute::PresharedKey(if n % 2 == 0 { [9u8; 32] } else { [0u8; 32] }),
            WireguardPeerAttribute::RxBytes(n as u64),
            WireguardPeerAttribute::AllowedIps(ips),
        ])
    }

    /// A 300-peer device split over 4 messages, peer 150 continued across a split.
    #[test]
    fn every_chunk_of_a_large_dump_is_merged() {
        let device_attributes = |peers: Vec<WireguardPeer>| {
            vec![
                WireguardAttribute::IfName("wg0".into()),
                WireguardAttribute::PrivateKey([1u8; 32]),
                WireguardAttribute::PublicKey([2u8; 32]),
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Peers(peers),
            ]
        };
        let mut parts = Vec::new();
        for chunk in 0..4u16 {
            let mut peers: Vec<WireguardPeer> = (chunk * 75..(chunk + 1) * 75)
                .map(|n| peer(n, vec![allowed(n)]))
                .collect();
            if chunk == 2 {
                // Peer 149's second allowed IP arrives at the start of the next message.
                peers.insert(
                    0,
                    WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey(key(149)),
                        WireguardPeerAttribute::AllowedIps(vec![allowed(1000)]),
                    ]),
                );
            }
            parts.push(device_attributes(peers));
        }
        let device = merge_device("wg0", parts);
        assert_eq!(device.peers.len(), 300);
        assert_eq!(device.listen_port, 51820);
        assert_eq!(device.public_key, Some(PublicKey([2u8; 32])));
        assert_eq!(device.kind, DeviceKind::Kernel);
        let split = &device.peers[149];
        assert_eq!(split.allowed_ips, ["10.0.149.1/32", "10.3.232.1/32"]);
        assert!(device.peers[0].has_preshared_key);
        assert!(!device.peers[1].has_preshared_key);
        assert_eq!(device.peers[299].rx_bytes, 299);
        let shown = format!("{device:?}");
        assert!(
            !shown.contains(&PublicKey([1u8; 32]).to_base64()),
            "private key kept"
        );
        assert!(
            !shown.contains(&PublicKey([9u8; 32]).to_base64()),
            "preshared key kept"
        );
    }

    /// On a kernel without the wireguard module the family does not exist: no devices.
    #[test]
    fn no_module_means_no_kernel_devices() {
        if std::path::Path::new("/sys/module/wireguard").exists() {
            eprintln!("skipped: this kernel has WireGuard (covered by the VM tests)");
            return;
        }
        assert_eq!(kernel_devices().unwrap(), Vec::new());
    }
}
