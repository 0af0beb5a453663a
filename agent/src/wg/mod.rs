//! WireGuard device discovery: what devices exist, their listen ports and their peers,
//! read from kernel WireGuard over generic netlink ([`netlink`]) and from userspace
//! implementations over their UAPI socket ([`uapi`]).
//!
//! Private and preshared keys are never read into anything this module returns.

pub mod key;
pub mod netlink;
pub mod uapi;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

pub use key::PublicKey;

/// Where a device's configuration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// In-kernel WireGuard, read over generic netlink.
    Kernel,
    /// A userspace implementation (wireguard-go, boringtun), read over its UAPI socket.
    Userspace,
}

/// One WireGuard device as WireGuard itself reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Interface name (unique on the host: UAPI sockets are shared across namespaces).
    pub name: String,
    /// Kernel or userspace implementation.
    pub kind: DeviceKind,
    /// The device's public key; `None` while it has no private key.
    pub public_key: Option<PublicKey>,
    /// UDP listen port (0 while none is bound).
    pub listen_port: u16,
    /// Firewall mark, 0 if unset.
    pub fwmark: u32,
    /// The device's peers, in the order WireGuard lists them.
    pub peers: Vec<Peer>,
}

/// One peer of a device as WireGuard reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's public key: its identity.
    pub public_key: PublicKey,
    /// Current endpoint, if WireGuard knows one.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs in CIDR notation, as WireGuard lists them.
    pub allowed_ips: Vec<String>,
    /// Persistent keepalive interval in seconds, 0 when off.
    pub persistent_keepalive: u16,
    /// Time of the last completed handshake, `None` if never.
    pub last_handshake: Option<SystemTime>,
    /// Bytes WireGuard accepted from the peer.
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer.
    pub tx_bytes: u64,
    /// Whether a preshared key is configured (the key itself is never kept).
    pub has_preshared_key: bool,
}

impl Peer {
    /// A peer with only its key known (the readers fill in the rest).
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: 0,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            has_preshared_key: false,
        }
    }
}

/// Where and what to discover.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// Directory of userspace UAPI sockets (`/var/run/wireguard`).
    pub socket_dir: PathBuf,
    /// Only these devices; empty means every device found.
    pub only: Vec<String>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            socket_dir: PathBuf::from("/var/run/wireguard"),
            only: Vec::new(),
        }
    }
}

/// Errors of discovery as a whole (single broken devices are skipped, not errors).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Kernel devices could not be listed.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    /// The read panicked (a bug, e.g. on a reply no parser expected); the next read
    /// is tried as usual.
    #[error("reading the devices panicked: {0}")]
    Panicked(String),
}

/// Every WireGuard device visible from the calling thread's network namespace:
/// kernel devices over generic netlink and userspace devices over their UAPI
/// sockets in `options.socket_dir`, filtered by `options.only` (empty: all), sorted
/// by name. A name served by both (should not happen) is reported as the kernel one.
///
/// UAPI sockets are shared by all network namespaces, so a userspace device is
/// reported only if an interface of its name exists here (`if_nametoindex`); others
/// are skipped at debug level. One broken device (dead socket, timeout, garbage) is
/// skipped with a warning naming it and does not hide the others. The only error is
/// failing to talk netlink at all; a kernel without WireGuard just has no kernel
/// devices.
pub fn discover(options: &DiscoveryOptions) -> Result<Vec<Device>, DiscoveryError> {
    Ok(discover_all(options)?.devices)
}

/// What one discovery found: the devices read, and the devices that exist but could
/// not be read this time (a stopped or busy daemon) — those are not gone, and the
/// caller keeps their last reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Devices read, sorted by name.
    pub devices: Vec<Device>,
    /// Names of devices that exist here but did not answer.
    pub unreadable: Vec<String>,
}

/// [`discover`], also naming the devices that could not be read.
pub fn discover_all(options: &DiscoveryOptions) -> Result<Discovered, DiscoveryError> {
    let kernel = netlink::kernel_devices()?;
    Ok(combine_all(options, kernel, |name| {
        nix::net::if_::if_nametoindex(name).is_ok()
    }))
}

/// [`discover`] given the kernel devices and how to tell whether an interface exists
/// in the caller's namespace.
#[cfg(test)]
fn combine(
    options: &DiscoveryOptions,
    kernel: Vec<Device>,
    exists_here: impl Fn(&str) -> bool,
) -> Vec<Device> {
    combine_all(options, kernel, exists_here).devices
}

fn combine_all(
    options: &DiscoveryOptions,
    kernel: Vec<Device>,
    exists_here: impl Fn(&str) -> bool,
) -> Discovered {
    let mut unreadable = Vec::new();
    let wanted = |name: &str| options.only.is_empty() || options.only.iter().any(|n| n == name);
    let mut devices: Vec<Device> = kernel.into_iter().filter(|d| wanted(&d.name)).collect();
    for name in uapi::list_sockets(&options.socket_dir) {
        if !wanted(&name) {
            continue;
        }
        if devices.iter().any(|d| d.name == name) {
            tracing::debug!(device = %name, "UAPI socket named like a kernel device: ignored");
            continue;
        }
        if !exists_here(&name) {
            tracing::debug!(device = %name, "UAPI socket of a device in another network namespace: skipped");
            continue;
        }
        match uapi::read_device(&options.socket_dir, &name) {
            Ok(device) => devices.push(device),
            Err(err) => {
                tracing::warn!(device = %name, "userspace WireGuard device did not answer (its last reading stays): {err}");
                unreadable.push(name);
            }
        }
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Discovered {
        devices,
        unreadable,
    }
}

#[cfg(test)]
#[path = "discover_tests.rs"]
mod tests;
