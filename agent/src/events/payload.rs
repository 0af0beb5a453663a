//! Event payloads with wg-portal's field names (its Peer, Interface and PeerStatus
//! models), filled with what the agent knows. Fields wg-portal has that the agent
//! cannot know (user, DNS, MTU, hooks) are left out, as wg-portal itself omits empty
//! fields. `PrivateKey` and `PresharedKey` are never present: the agent never holds
//! them. Fields we add have names wg-portal does not use.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::peers::{DeviceState, DisconnectReason, PeerState, WireCounters};
use crate::snapshot::Role;
use crate::wg::{DeviceKind, PublicKey};

/// Who wg-portal's `CreatedBy`/`UpdatedBy` name: the agent observed it.
pub const CREATED_BY: &str = "wgpulse";

/// RFC 3339 with nanoseconds, UTC; `null` for never.
pub fn time(at: Option<SystemTime>) -> Value {
    match at {
        Some(at) => Value::String(
            time::OffsetDateTime::from(at)
                .format(&time::format_description::well_known::Rfc3339)
                .expect("a SystemTime formats as RFC 3339"),
        ),
        None => Value::Null,
    }
}

/// wg-portal's default display name: `Peer ` and the key's first 8 characters.
pub fn display_name(public_key: &PublicKey) -> String {
    let key = public_key.to_base64();
    format!("{DISPLAY_NAME_PREFIX}{}", &key[..DISPLAY_NAME_KEY_CHARS])
}

/// The default display name's prefix, before the first characters of the key.
pub const DISPLAY_NAME_PREFIX: &str = "Peer ";
/// How many characters of the base64 key the default display name has.
pub const DISPLAY_NAME_KEY_CHARS: usize = 8;

fn driver(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Kernel => "kernel",
        DeviceKind::Userspace => "userspace",
    }
}

/// A `peer` payload (wg-portal's Peer model).
pub fn peer(peer: &PeerState, device_public_key: Option<PublicKey>, changed: &[&str]) -> Value {
    let mut value = json!({
        "CreatedBy": CREATED_BY,
        "UpdatedBy": CREATED_BY,
        "CreatedAt": time(Some(peer.created_at)),
        "UpdatedAt": time(Some(peer.updated_at)),
        "Endpoint": peer.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        "EndpointPublicKey": device_public_key.map(|k| k.to_base64()).unwrap_or_default(),
        "AllowedIPsStr": peer.allowed_ips.join(","),
        "ExtraAllowedIPsStr": "",
        "PersistentKeepalive": peer.persistent_keepalive,
        "DisplayName": peer
            .name
            .as_ref()
            .and_then(|n| n.name().map(str::to_owned))
            .unwrap_or_else(|| display_name(&peer.key.public_key)),
        "UserIdentifier": peer.name.as_ref().and_then(|n| n.user()).unwrap_or_default(),
        "Identifier": peer.key.public_key.to_base64(),
        "InterfaceIdentifier": peer.key.device,
        "AutomaticallyCreated": false,
        "PublicKey": peer.key.public_key.to_base64(),
        "HasPresharedKey": peer.has_preshared_key,
    });
    if let Some(name) = &peer.name {
        if let Some(email) = name.email() {
            value["UserEmail"] = json!(email);
        }
        let tags: Vec<&str> = name.tags().collect();
        if !tags.is_empty() {
            value["Tags"] = json!(tags);
        }
    }
    if !changed.is_empty() {
        value["ChangedFields"] = json!(changed);
    }
    value
}

/// A `peer` payload for a create, update or delete: the Peer model, and on an update
/// `ChangedFields` and `Previous` (each changed field's value before the change).
pub fn peer_change(
    state: &PeerState,
    device_public_key: Option<PublicKey>,
    changed: &[&str],
    previous: Option<&crate::peers::PeerPrevious>,
) -> Value {
    let mut value = peer(state, device_public_key, changed);
    if let Some(previous) = previous.filter(|_| !changed.is_empty()) {
        let mut old = serde_json::Map::new();
        for field in changed {
            let before = match *field {
                "Endpoint" => json!(previous.endpoint.map(|e| e.to_string()).unwrap_or_default()),
                "AllowedIPsStr" => json!(previous.allowed_ips.join(",")),
                "PersistentKeepalive" => json!(previous.persistent_keepalive),
                "HasPresharedKey" => json!(previous.has_preshared_key),
                _ => continue,
            };
            old.insert((*field).to_owned(), before);
        }
        value["Previous"] = Value::Object(old);
    }
    value
}

/// What a completed handshake brings besides the peer: how, where, when, and what
/// moved since the previous one.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeFacts<'a> {
    /// Our role.
    pub role: Role,
    /// The endpoint it completed from.
    pub endpoint: SocketAddr,
    /// When it completed.
    pub at: SystemTime,
    /// Wire counters since the previous completed handshake.
    pub since: &'a WireCounters,
    /// Its round trip, timed by the datapath.
    pub rtt: Option<std::time::Duration>,
    /// Path figures since the previous completed handshake.
    pub path_since: &'a crate::peers::path::PathTotals,
}

/// A `peer_metric.handshake` payload (the handshake feed, like Pro Custodibus's
/// endpoint stats): where and how it completed, the wire counters since the previous
/// handshake and in total, and the attempts it took.
pub fn handshake(
    state: &PeerState,
    device_public_key: Option<PublicKey>,
    completed: &HandshakeFacts<'_>,
) -> Value {
    let HandshakeFacts {
        role,
        endpoint,
        at,
        since,
        rtt,
        path_since,
    } = *completed;
    let path_total = state.path.totals();
    let attempts = match role {
        Role::Initiator => since.handshakes.tx_initiations,
        Role::Responder => since.handshakes.rx_initiations,
    };
    json!({
        "Handshake": {
            "At": time(Some(at)),
            "Endpoint": endpoint.to_string(),
            "Role": role,
            "Attempts": attempts,
            "RxBytesDelta": since.rx_bytes,
            "TxBytesDelta": since.tx_bytes,
            "RxPacketsDelta": since.rx_packets,
            "TxPacketsDelta": since.tx_packets,
            "SocketDropsDelta": since.socket_drops,
            "RxBytesTotal": state.wire.rx_bytes,
            "TxBytesTotal": state.wire.tx_bytes,
            "RxPacketsTotal": state.wire.rx_packets,
            "TxPacketsTotal": state.wire.tx_packets,
            "SocketDropsTotal": state.wire.socket_drops,
            "RoundTripSeconds": rtt.map(|rtt| rtt.as_secs_f64()),
            "RxLostDelta": path_since.receive.lost,
            "RxReorderedDelta": path_since.receive.late,
            "RxDuplicatesDelta": path_since.receive.duplicates,
            "TxUnsentDelta": path_since.transmit.lost,
            "RxLostTotal": path_total.receive.lost,
            "RxReorderedTotal": path_total.receive.late,
            "TxUnsentTotal": path_total.transmit.lost,
        },
        "Peer": peer(state, device_public_key, &[]),
    })
}

/// An `interface` payload (wg-portal's Interface model).
pub fn interface(device: &DeviceState, changed: &[&str]) -> Value {
    let mut value = json!({
        "CreatedBy": CREATED_BY,
        "UpdatedBy": CREATED_BY,
        "CreatedAt": time(Some(device.created_at)),
        "UpdatedAt": time(Some(device.updated_at)),
        "Identifier": device.name,
        "DisplayName": device.name,
        "PublicKey": device.public_key.map(|k| k.to_base64()).unwrap_or_default(),
        "ListenPort": device.listen_port,
        "FirewallMark": device.fwmark,
        "DriverType": driver(device.kind),
    });
    if !changed.is_empty() {
        value["ChangedFields"] = json!(changed);
    }
    value
}

/// A `peer_metric` payload: `{"Status": PeerStatus, "Peer": Peer}`. `BytesReceived`
/// and `BytesTransmitted` are WireGuard's own counters (as wg-portal reports them,
/// as of the last device read); the wire view is beside them.
pub fn peer_metric(
    state: &PeerState,
    device_public_key: Option<PublicKey>,
    reason: Option<DisconnectReason>,
) -> Value {
    let updated_at = if state.connected {
        state.connected_since
    } else {
        state.disconnected_at
    };
    let mut status = json!({
        "UpdatedAt": time(updated_at.or(Some(SystemTime::now()))),
        "IsConnected": state.connected,
        "IsPingable": false,
        "LastPing": Value::Null,
        "BytesReceived": state.wg.rx_bytes,
        "BytesTransmitted": state.wg.tx_bytes,
        "Endpoint": state.endpoint.map(|e| e.to_string()).unwrap_or_default(),
        "LastHandshake": time(state.last_handshake),
        "LastSessionStart": time(state.session_start),
        "HandshakesCompleted": state.handshakes_completed(),
        "HandshakesInitiated": state.handshakes_initiated,
        "HandshakesResponded": state.handshakes_responded,
        "WireBytesReceived": state.wire.rx_bytes,
        "WireBytesTransmitted": state.wire.tx_bytes,
        "WirePacketsReceived": state.wire.rx_packets,
        "WirePacketsTransmitted": state.wire.tx_packets,
        "InvalidPackets": state.wire.rx_invalid_packets,
        "SocketDrops": state.wire.socket_drops,
    });
    if let Some(kernel) = &state.kernel {
        // Kernel-mode attribution: WireGuard's counters as of the last drain, and the
        // received wire bytes it did not accept (null until the peer's first quiet
        // drain).
        status["KernelBytesReceived"] = json!(kernel.rx_bytes);
        status["KernelBytesTransmitted"] = json!(kernel.tx_bytes);
        status["RejectedBytesReceived"] = json!(kernel.rejected_rx_bytes);
    }
    if let Some(reason) = reason {
        status["DisconnectReason"] = json!(reason);
    }
    json!({
        "Status": status,
        "Peer": peer(state, device_public_key, &[]),
    })
}
