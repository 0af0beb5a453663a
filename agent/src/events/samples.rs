//! One real example of every kind of event, made by the real code (a short timeline
//! through [`crate::peers::PeerTable`] and the payload builders, with the time passed
//! in): what a body template is checked against at start, so that a template that
//! cannot render an event it will receive is a configuration error, not a failure
//! at delivery.

use std::time::{Duration, SystemTime};

use super::{from_change, Event, ENTITY_ALERT};
use crate::alerts::{Alert, AlertType, Severity};
use crate::peers::{PeerTable, WireSample};
use crate::snapshot::{Endpoint, EndpointStats, Role, SessionNotice};
use crate::wg::{Device, DeviceKind, Peer, PublicKey};

fn device(peers: Vec<Peer>, listen_port: u16) -> Device {
    Device {
        name: "wg0".into(),
        kind: DeviceKind::Kernel,
        public_key: Some(PublicKey([9; 32])),
        listen_port,
        fwmark: 0,
        peers,
    }
}

/// connect, handshake, disconnect, peer create, update and delete, interface
/// create, update and delete, an alert and the test event, as `node` would send them.
pub fn samples(node: &str) -> Vec<Event> {
    let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
    let mut table = PeerTable::new(Duration::from_secs(180));
    let mut changes = Vec::new();
    table.apply_devices(&[], t(0), t(0));
    changes.extend(table.apply_devices(&[device(Vec::new(), 51820)], t(1), t(1)));
    let mut peer = Peer::new(PublicKey([7; 32]));
    peer.endpoint = Some("192.0.2.7:51820".parse().expect("an address"));
    peer.allowed_ips = vec!["10.0.0.7/32".into()];
    peer.rx_bytes = 1860;
    peer.tx_bytes = 10824;
    changes.extend(table.apply_devices(&[device(vec![peer.clone()], 51820)], t(2), t(2)));
    let endpoint = Endpoint {
        device: 1,
        addr: "192.0.2.7:51820".parse().expect("an address"),
    };
    let notice = SessionNotice::HandshakeComplete {
        endpoint,
        role: Role::Responder,
        at: t(3),
        local_index: 1,
        remote_index: 2,
        rtt: Some(Duration::from_micros(1830)),
    };
    changes.extend(table.apply_notice("wg0", &notice, t(3)).changes);
    let mut delta = EndpointStats::default();
    delta.rx.packets = 5;
    delta.rx.bytes = 916;
    delta.tx.packets = 5;
    delta.tx.bytes = 860;
    let sample = WireSample {
        device: "wg0".into(),
        endpoint: endpoint.addr,
        delta,
        last_rx: Some(t(4)),
        last_tx: Some(t(4)),
    };
    changes.extend(table.apply_samples(&[sample], t(4)));
    peer.endpoint = Some("198.51.100.7:40000".parse().expect("an address"));
    changes.extend(table.apply_devices(&[device(vec![peer.clone()], 51820)], t(5), t(5)));
    changes.extend(table.tick(t(400)));
    changes.extend(table.apply_devices(&[device(Vec::new(), 51821)], t(401), t(401)));
    changes.extend(table.apply_devices(&[], t(402), t(402)));
    let mut events: Vec<Event> = changes.iter().map(|c| from_change(c, node)).collect();
    let alert = Alert {
        kind: AlertType::InvalidFlood,
        severity: Severity::Warning,
        device: "wg0".into(),
        subject: "wg0/203.0.113.9".into(),
        evidence: serde_json::json!({"Source": "203.0.113.9", "InvalidPackets": 300, "PerSecond": 30.0, "WindowSeconds": 10.0}),
        suppress_until: t(3600),
    };
    events.push(Event::new(
        node,
        ENTITY_ALERT,
        alert.kind.as_str(),
        &alert.subject,
        alert.payload(),
    ));
    events.push(Event::new(
        node,
        "test",
        "test",
        "sample",
        serde_json::json!({"Message": "wgpulse webhook test"}),
    ));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_event_is_among_the_samples() {
        let kinds: Vec<String> = samples("n").iter().map(Event::kind).collect();
        for kind in [
            "interface.create",
            "peer.create",
            "peer_metric.connect",
            "peer_metric.handshake",
            "peer.update",
            "peer_metric.disconnect",
            "peer.delete",
            "interface.update",
            "interface.delete",
            "alert.invalid_flood",
            "test.test",
        ] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "{kind} missing from {kinds:?}"
            );
        }
    }
}
