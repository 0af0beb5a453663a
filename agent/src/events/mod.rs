//! The event model: what the agent tells webhooks. Every event has wg-portal's shell
//! (`event`, `entity`, `identifier`, `payload`) plus `id`, `timestamp` and `node`,
//! which wg-portal receivers ignore.

pub mod payload;
pub mod queue;
pub mod samples;

use serde::{Deserialize, Serialize};

pub use queue::{EventQueue, QueueClosed, QueueStats, StoredHandle, StoredWaiter, UnwrittenProbe};

use crate::peers::{Change, ChangeKind};

/// One event as it is stored in the outbox and sent to receivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id, stable across retries (a UUIDv7: sortable by creation time).
    pub id: String,
    /// Creation time, RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: time::OffsetDateTime,
    /// Host name or configured node id of the agent that saw it.
    pub node: String,
    /// What happened: `connect`, `disconnect`, `create`, `update`, `delete`, `handshake`, `test`...
    pub event: String,
    /// What it happened to: `peer_metric`, `peer`, `interface`, `alert`, `test`.
    pub entity: String,
    /// The peer's public key or the device's name.
    pub identifier: String,
    /// Entity-specific body (wg-portal field names).
    pub payload: serde_json::Value,
}

impl Event {
    /// Builds an event with a fresh id and the current time.
    pub fn new(
        node: &str,
        entity: &str,
        event: &str,
        identifier: &str,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            timestamp: time::OffsetDateTime::now_utc(),
            node: node.to_owned(),
            event: event.to_owned(),
            entity: entity.to_owned(),
            identifier: identifier.to_owned(),
            payload,
        }
    }

    /// `<entity>.<event>`, the name filters and the `X-Wgpulse-Event` header use.
    pub fn kind(&self) -> String {
        format!("{}.{}", self.entity, self.event)
    }
}

/// Entity of connect/disconnect events (wg-portal's name).
pub const ENTITY_PEER_METRIC: &str = "peer_metric";
/// Event of the handshake feed (on `peer_metric`): off unless a webhook names it.
pub const EVENT_HANDSHAKE: &str = "handshake";
/// Entity of alerts.
pub const ENTITY_ALERT: &str = "alert";
/// Entity of peer create/update/delete events.
pub const ENTITY_PEER: &str = "peer";
/// Entity of device create/update/delete events.
pub const ENTITY_INTERFACE: &str = "interface";

impl ChangeKind {
    /// The wg-portal event name.
    pub fn event_name(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// The event a change becomes: wg-portal's shell and payload models, our fields
/// beside them, never a private or preshared key.
pub fn from_change(change: &Change, node: &str) -> Event {
    match change {
        Change::Interface {
            kind,
            device,
            fields,
        } => Event::new(
            node,
            ENTITY_INTERFACE,
            kind.event_name(),
            &device.name,
            payload::interface(device, fields),
        ),
        Change::Peer {
            kind,
            peer,
            device_public_key,
            fields,
            previous,
            ..
        } => Event::new(
            node,
            ENTITY_PEER,
            kind.event_name(),
            &peer.key.public_key.to_base64(),
            payload::peer_change(peer, *device_public_key, fields, previous.as_ref()),
        ),
        Change::Handshake {
            peer,
            device_public_key,
            role,
            endpoint,
            at,
            since_previous,
            rtt,
            path_since_previous,
        } => Event::new(
            node,
            ENTITY_PEER_METRIC,
            EVENT_HANDSHAKE,
            &peer.key.public_key.to_base64(),
            payload::handshake(
                peer,
                *device_public_key,
                &payload::HandshakeFacts {
                    role: *role,
                    endpoint: *endpoint,
                    at: *at,
                    since: since_previous,
                    rtt: *rtt,
                    path_since: path_since_previous,
                },
            ),
        ),
        Change::Connected {
            peer,
            device_public_key,
        } => Event::new(
            node,
            ENTITY_PEER_METRIC,
            "connect",
            &peer.key.public_key.to_base64(),
            payload::peer_metric(peer, *device_public_key, None),
        ),
        Change::Disconnected {
            peer,
            device_public_key,
            reason,
        } => Event::new(
            node,
            ENTITY_PEER_METRIC,
            "disconnect",
            &peer.key.public_key.to_base64(),
            payload::peer_metric(peer, *device_public_key, Some(*reason)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::peers::PeerTable;
    use crate::snapshot::{Endpoint, Role, SessionNotice};
    use crate::wg::{Device, DeviceKind, Peer, PublicKey};

    #[test]
    fn a_connect_event_has_wg_portals_shell_and_models_and_no_keys() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut wg_peer = Peer::new(PublicKey([7; 32]));
        wg_peer.endpoint = Some("192.0.2.1:51820".parse().unwrap());
        wg_peer.allowed_ips = vec!["10.0.0.7/32".into(), "fd00::7/128".into()];
        wg_peer.persistent_keepalive = 25;
        wg_peer.has_preshared_key = true;
        wg_peer.rx_bytes = 212;
        wg_peer.tx_bytes = 2884;
        let mut table = PeerTable::new(Duration::from_secs(180));
        assert!(table
            .apply_devices(&[kernel_device(wg_peer)], t0, t0)
            .is_empty());
        let notice = SessionNotice::HandshakeComplete {
            endpoint: Endpoint {
                device: 1,
                addr: "192.0.2.1:51820".parse().unwrap(),
            },
            role: Role::Initiator,
            at: t0,
            local_index: 1,
            remote_index: 2,
            rtt: None,
        };
        let changes = table.apply_notice("wg0", &notice, t0).changes;
        let event = from_change(&changes[0], "node-a");
        let value = serde_json::to_value(&event).unwrap();
        let key = PublicKey([7; 32]).to_base64();
        assert_eq!(value["event"], "connect");
        assert_eq!(value["entity"], "peer_metric");
        assert_eq!(value["identifier"], key.as_str());
        assert_eq!(value["node"], "node-a");
        assert!(value["id"].as_str().is_some_and(|id| id.len() == 36));
        let status = &value["payload"]["Status"];
        assert_eq!(status["IsConnected"], true);
        assert_eq!(status["IsPingable"], false);
        assert!(status["LastPing"].is_null());
        assert_eq!(status["BytesReceived"], 212);
        assert_eq!(status["BytesTransmitted"], 2884);
        assert_eq!(status["Endpoint"], "192.0.2.1:51820");
        assert_eq!(status["LastHandshake"], "2027-01-15T08:00:00Z");
        assert_eq!(status["LastSessionStart"], "2027-01-15T08:00:00Z");
        assert_eq!(status["HandshakesCompleted"], 1);
        assert!(
            status.get("KernelBytesReceived").is_none(),
            "no kernel-mode fields without kernel mode: {status}"
        );
        let peer = &value["payload"]["Peer"];
        assert_eq!(peer["PublicKey"], key.as_str());
        assert_eq!(peer["Identifier"], key.as_str());
        assert_eq!(peer["InterfaceIdentifier"], "wg0");
        assert_eq!(peer["AllowedIPsStr"], "10.0.0.7/32,fd00::7/128");
        assert_eq!(peer["PersistentKeepalive"], 25);
        assert_eq!(
            peer["EndpointPublicKey"],
            PublicKey([9; 32]).to_base64().as_str()
        );
        assert_eq!(peer["HasPresharedKey"], true);
        let text = event_json(&event);
        for secret in ["PrivateKey", "PresharedKey", "private_key", "preshared_key"] {
            assert!(
                !text.contains(&format!("\"{secret}\"")),
                "{secret} in {text}"
            );
        }
    }

    #[test]
    fn a_peer_with_a_kernel_mode_view_carries_wireguards_counters_and_the_rejected_bytes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut wg_peer = Peer::new(PublicKey([7; 32]));
        wg_peer.endpoint = Some("192.0.2.1:51820".parse().unwrap());
        let mut table = PeerTable::new(Duration::from_secs(180));
        table.apply_devices(&[kernel_device(wg_peer)], t0, t0);
        let reading = crate::snapshot::KernelPeerReading {
            internal_id: 4,
            public_key: PublicKey([7; 32]),
            ifindex: 3,
            device: Some("wg0".into()),
            netns: 0,
            rx_bytes: 500,
            tx_bytes: 700,
            last_handshake: Some(t0),
            endpoint: None,
        };
        table.apply_kernel(std::slice::from_ref(&reading));
        let payload = |table: &PeerTable| {
            let peer = table.peer("wg0", &PublicKey([7; 32])).unwrap();
            payload::peer_metric(peer, None, None)["Status"].clone()
        };
        let first = payload(&table);
        assert_eq!(first["KernelBytesReceived"], 500);
        assert_eq!(first["KernelBytesTransmitted"], 700);
        assert!(first["RejectedBytesReceived"].is_null(), "{first}");
        // A second drain with nothing new: the quiet baseline.
        table.apply_kernel(std::slice::from_ref(&reading));
        assert_eq!(payload(&table)["RejectedBytesReceived"], 0);
    }

    /// Kernel device `wg0` with one peer.
    fn kernel_device(peer: Peer) -> Device {
        Device {
            name: "wg0".into(),
            kind: DeviceKind::Kernel,
            public_key: Some(PublicKey([9; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![peer],
        }
    }

    fn event_json(event: &Event) -> String {
        serde_json::to_string(event).unwrap()
    }
}
