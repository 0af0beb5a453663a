//! Kernel WireGuard over generic netlink (`WG_CMD_GET_DEVICE`), with the rust-netlink
//! crates made for it, in the calling thread's network namespace.
//!
//! Devices are found with an rtnetlink link dump (`IFLA_INFO_KIND == "wireguard"`,
//! `links`), then each is read with a `GET_DEVICE` dump. A device with many peers
//! comes back split over several messages (about 90 peers each): [`merge_device`]
//! folds all of them into one device, never just the first. Private and preshared
//! keys arrive in the reply; they are dropped while merging.

mod links;
mod merge;
mod socket;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{WireguardAttribute, WireguardCmd, WireguardMessage};
use netlink_sys::protocols::{NETLINK_GENERIC, NETLINK_ROUTE};

pub use links::wireguard_link_names;
pub use merge::merge_device;

use super::Device;
use socket::Channel;

/// Errors reading kernel WireGuard devices.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket failed (or the kernel did not answer in time).
    #[error("netlink {op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered with an error.
    #[error("netlink {op}: kernel error {code} ({})", std::io::Error::from_raw_os_error(-code))]
    Kernel {
        /// What was being done.
        op: String,
        /// The (negative) errno.
        code: i32,
    },
    /// A reply did not decode.
    #[error("netlink {op}: undecodable reply: {message}")]
    Decode {
        /// What was being done.
        op: String,
        /// The decoder's complaint.
        message: String,
    },
}

/// Kernel WireGuard devices in the calling thread's network namespace, in link order.
/// Without the `wireguard` generic netlink family (no kernel module) the answer is
/// "none", not an error. A device that cannot be read (vanished, permission) is
/// skipped with a warning.
pub fn kernel_devices() -> Result<Vec<Device>, NetlinkError> {
    let mut generic = Channel::open(NETLINK_GENERIC)?;
    let Some(family) = resolve_family(&mut generic)? else {
        tracing::debug!("no wireguard generic netlink family: no kernel WireGuard devices");
        return Ok(Vec::new());
    };
    let names = links::list(&mut Channel::open(NETLINK_ROUTE)?)?;
    let mut devices = Vec::new();
    for name in names {
        match get_device(&mut generic, family, &name) {
            Ok(Some(device)) => devices.push(device),
            Ok(None) => tracing::debug!(device = %name, "WireGuard device vanished while reading"),
            Err(err) => tracing::warn!(device = %name, "skipping kernel WireGuard device: {err}"),
        }
    }
    Ok(devices)
}

/// The id of the `wireguard` generic netlink family, `None` if it does not exist.
fn resolve_family(channel: &mut Channel) -> Result<Option<u16>, NetlinkError> {
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".to_owned())],
    });
    match channel.request::<_, GenlMessage<GenlCtrl>>(
        request,
        NLM_F_REQUEST,
        "get family wireguard",
    ) {
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

/// One device by name, all dump messages merged; `None` if it is gone or not WireGuard.
fn get_device(
    channel: &mut Channel,
    family: u16,
    name: &str,
) -> Result<Option<Device>, NetlinkError> {
    let mut request = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(name.to_owned())],
    });
    request.set_resolved_family_id(family);
    let op = format!("get WireGuard device {name}");
    match channel.request::<_, GenlMessage<WireguardMessage>>(
        request,
        NLM_F_REQUEST | NLM_F_DUMP,
        &op,
    ) {
        Ok(parts) => Ok(Some(merge_device(
            name,
            parts.into_iter().map(|part| part.payload.attributes),
        ))),
        Err(NetlinkError::Kernel { code, .. })
            if code == -libc::ENODEV || code == -libc::EOPNOTSUPP =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a kernel without the wireguard module the family does not exist: no devices,
    /// no error. (The real kernel path is covered by the VM tests.)
    #[test]
    fn no_module_means_no_kernel_devices() {
        if std::path::Path::new("/sys/module/wireguard").exists() {
            eprintln!("skipped: this kernel has WireGuard");
            return;
        }
        assert_eq!(kernel_devices().unwrap(), Vec::new());
        let mut generic = Channel::open(NETLINK_GENERIC).unwrap();
        assert_eq!(resolve_family(&mut generic).unwrap(), None);
    }

    #[test]
    fn kernel_errors_are_explained() {
        let err = NetlinkError::Kernel {
            op: "get WireGuard device wg0".into(),
            code: -libc::EPERM,
        };
        let text = err.to_string();
        assert!(
            text.contains("wg0") && text.contains("-1") && text.contains("not permitted"),
            "{text}"
        );
    }
}
