//! Which interfaces of the calling thread's network namespace are kernel WireGuard
//! devices: an rtnetlink link dump, filtered by `IFLA_INFO_KIND == "wireguard"`.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::socket::Channel;
use super::NetlinkError;

/// Names of the links whose kind is `wireguard`, in dump order.
pub fn wireguard_link_names(messages: &[RouteNetlinkMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .filter(|link| {
            link.attributes.iter().any(|attribute| {
                matches!(attribute, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Wireguard))))
            })
        })
        .filter_map(|link| {
            link.attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
        })
        .collect()
}

/// Dumps the links over `channel` (a `NETLINK_ROUTE` one) and keeps the WireGuard ones.
pub(super) fn list(channel: &mut Channel) -> Result<Vec<String>, NetlinkError> {
    let replies = channel.request::<_, RouteNetlinkMessage>(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        "dump links",
    )?;
    Ok(wireguard_link_names(&replies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::netlink::socket::{dump_datagram, parse_replies, Channel};
    use netlink_sys::protocols::NETLINK_ROUTE;

    fn link(name: &str, kind: Option<InfoKind>) -> RouteNetlinkMessage {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(kind) = kind {
            message
                .attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        }
        RouteNetlinkMessage::NewLink(message)
    }

    #[test]
    fn only_wireguard_kinds_are_listed() {
        let datagram = dump_datagram(vec![
            link("lo", None),
            link("wg0", Some(InfoKind::Wireguard)),
            link("veth0", Some(InfoKind::Veth)),
            link("tun0", Some(InfoKind::Tun)),
            link("wg-b", Some(InfoKind::Wireguard)),
        ]);
        let batch = parse_replies::<RouteNetlinkMessage>(&datagram, "dump links").unwrap();
        assert!(batch.complete);
        assert_eq!(wireguard_link_names(&batch.messages), ["wg0", "wg-b"]);
    }

    /// The real dump works in this namespace (loopback is never WireGuard).
    #[test]
    fn the_real_link_dump_decodes() {
        let mut channel = Channel::open(NETLINK_ROUTE).unwrap();
        let names = list(&mut channel).unwrap();
        assert!(!names.iter().any(|n| n == "lo"));
    }
}
