//! In-kernel WireGuard devices for the kernel VM tests (`cargo xtask vmtest`): the
//! same shape as [`crate::wireguard`]'s wireguard-go pair, with `ip link add ... type
//! wireguard` devices instead. Devices go away with their namespaces.

use std::net::{Ipv4Addr, SocketAddr};

use crate::netns::{NetNs, Veth};
use crate::wgshow::WgDump;
use crate::wireguard::WgKeys;

/// A kernel WireGuard device in a namespace.
pub struct KernelDevice {
    /// Interface name.
    pub name: String,
    /// Listen port.
    pub port: u16,
    /// Its keys.
    pub keys: WgKeys,
    netns: String,
}

impl KernelDevice {
    /// Creates the device with a fresh key, `port` and `tunnel_cidr`, and brings it up.
    pub fn create(ns: &NetNs, prefix: &str, port: u16, tunnel_cidr: &str) -> Self {
        let name = crate::unique_name(prefix);
        ns.run(&["ip", "link", "add", &name, "type", "wireguard"]);
        let keys = WgKeys::generate();
        let key_file = keys.private_key_file();
        ns.run(&[
            "wg",
            "set",
            &name,
            "private-key",
            key_file.0.to_str().unwrap(),
            "listen-port",
            &port.to_string(),
        ]);
        ns.run(&["ip", "addr", "add", tunnel_cidr, "dev", &name]);
        ns.run(&["ip", "link", "set", &name, "up"]);
        Self {
            name,
            port,
            keys,
            netns: ns.name().to_owned(),
        }
    }

    /// Runs `wg <args>` in the device's namespace.
    pub fn wg(&self, args: &[&str]) -> std::process::Output {
        crate::process::run(
            "ip",
            &[&["netns", "exec", &self.netns, "wg"], args].concat(),
        )
    }

    /// Adds or updates a peer.
    pub fn set_peer(&self, public_key: &str, endpoint: Option<SocketAddr>, allowed_ips: &str) {
        let endpoint = endpoint.map(|e| e.to_string());
        let mut args = vec![
            "set",
            &self.name,
            "peer",
            public_key,
            "allowed-ips",
            allowed_ips,
        ];
        if let Some(endpoint) = &endpoint {
            args.extend(["endpoint", endpoint]);
        }
        self.wg(&args);
    }

    /// `wg show <dev> dump`, parsed.
    pub fn dump(&self) -> WgDump {
        let out = self.wg(&["show", &self.name, "dump"]);
        WgDump::parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Two namespaces joined by a veth, a kernel WireGuard device in each, peered over
/// the veth's IPv4 addresses; tunnel addresses `10.<t>.0.{1,2}`.
pub struct KernelPair {
    /// A's device.
    pub wg_a: KernelDevice,
    /// B's device.
    pub wg_b: KernelDevice,
    /// The veth.
    pub link: Veth,
    /// Namespace A.
    pub a: NetNs,
    /// Namespace B.
    pub b: NetNs,
    /// A's tunnel address.
    pub tunnel_a: Ipv4Addr,
    /// B's tunnel address.
    pub tunnel_b: Ipv4Addr,
}

impl KernelPair {
    /// Builds the pair.
    pub fn new() -> Self {
        let a = NetNs::new("kwa");
        let b = NetNs::new("kwb");
        let t = crate::unique_octet();
        let link = Veth::connect(&a, &b, t, 1);
        let tunnel_a = Ipv4Addr::new(10, t, 0, 1);
        let tunnel_b = Ipv4Addr::new(10, t, 0, 2);
        let wg_a = KernelDevice::create(&a, "kwga", 51821, &format!("{tunnel_a}/24"));
        let wg_b = KernelDevice::create(&b, "kwgb", 51820, &format!("{tunnel_b}/24"));
        wg_a.set_peer(
            &wg_b.keys.public,
            Some(SocketAddr::new(link.b.v4.into(), wg_b.port)),
            &format!("{tunnel_b}/32"),
        );
        wg_b.set_peer(
            &wg_a.keys.public,
            Some(SocketAddr::new(link.a.v4.into(), wg_a.port)),
            &format!("{tunnel_a}/32"),
        );
        Self {
            wg_a,
            wg_b,
            link,
            a,
            b,
            tunnel_a,
            tunnel_b,
        }
    }

    /// A's endpoint on the underlay.
    pub fn endpoint_a(&self) -> SocketAddr {
        SocketAddr::new(self.link.a.v4.into(), self.wg_a.port)
    }
}

impl Default for KernelPair {
    fn default() -> Self {
        Self::new()
    }
}
