//! The network interfaces of the agent's network namespace, and which of them the
//! classifiers attach to (the underlay that carries WireGuard's UDP traffic).

use std::collections::BTreeMap;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// `ARPHRD_ETHER`: frames start with an Ethernet header.
const ARPHRD_ETHER: u16 = 1;

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Kernel interface index.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// The loopback interface.
    pub loopback: bool,
    /// Frames carry an Ethernet header (else they start at the IP header).
    pub ethernet: bool,
}

/// Errors listing interfaces.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    /// getifaddrs(3) failed.
    #[error("listing network interfaces: {0}")]
    List(#[source] nix::Error),
    /// A configured interface does not exist.
    #[error("interface {0} does not exist in this network namespace")]
    Missing(String),
}

/// Every interface of the calling thread's network namespace, by name.
pub fn list() -> Result<BTreeMap<String, Interface>, LinksError> {
    let mut interfaces = BTreeMap::new();
    for entry in getifaddrs().map_err(LinksError::List)? {
        let Some(link) = entry.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        interfaces.insert(
            entry.interface_name.clone(),
            Interface {
                name: entry.interface_name.clone(),
                index: link.ifindex() as u32,
                up: entry.flags.contains(InterfaceFlags::IFF_UP),
                loopback: entry.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                ethernet: link.hatype() == ARPHRD_ETHER,
            },
        );
    }
    Ok(interfaces)
}

/// The interfaces to attach to: the configured ones (each must exist), or by default
/// every UP, non-loopback interface that is not one of the WireGuard devices.
pub fn select(
    all: &BTreeMap<String, Interface>,
    configured: &[String],
    wireguard_devices: &[String],
) -> Result<Vec<Interface>, LinksError> {
    if !configured.is_empty() {
        return configured
            .iter()
            .map(|name| {
                all.get(name)
                    .cloned()
                    .ok_or_else(|| LinksError::Missing(name.clone()))
            })
            .collect();
    }
    Ok(all
        .values()
        .filter(|i| i.up && !i.loopback && !wireguard_devices.contains(&i.name))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, up: bool, loopback: bool) -> Interface {
        Interface {
            name: name.into(),
            index: 1,
            up,
            loopback,
            ethernet: !loopback,
        }
    }

    #[test]
    fn default_selection_skips_down_loopback_and_wireguard() {
        let all: BTreeMap<_, _> = [
            interface("lo", true, true),
            interface("eth0", true, false),
            interface("eth1", false, false),
            interface("wg0", true, false),
        ]
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
        let chosen = select(&all, &[], &["wg0".into()]).unwrap();
        assert_eq!(
            chosen.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["eth0"]
        );
        let chosen = select(&all, &["eth1".into()], &[]).unwrap();
        assert_eq!(chosen[0].name, "eth1");
        let err = select(&all, &["eth9".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("eth9"));
    }

    #[test]
    fn this_namespace_has_a_loopback() {
        let all = list().unwrap();
        assert!(all.values().any(|i| i.loopback), "{all:?}");
    }
}
