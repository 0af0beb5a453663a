//! defguard's webhooks (`defguard-webhooks.txt`): the body is the entity object itself
//! (no shell), in defguard's snake_case style, and `X-Defguard-Event` names the
//! trigger so that receivers dispatch on it. defguard knows only user triggers
//! (`user_created`, `user_modified`, `user_deleted`, `user_keys`); wgpulse's follow
//! their style:
//!
//! | wgpulse event | `X-Defguard-Event` | body |
//! | --- | --- | --- |
//! | `peer.create` / `update` / `delete` | `peer_created` / `peer_modified` / `peer_deleted` | the peer |
//! | `peer_metric.connect` / `disconnect` | `peer_connected` / `peer_disconnected` | the peer and its status |
//! | `peer_metric.handshake` | `peer_handshake` | the peer and the handshake |
//! | `interface.create` / `update` / `delete` | `interface_created` / `interface_modified` / `interface_deleted` | the interface |
//! | `alert.<type>` | `alert_<type>` | the alert |
//! | `test.test` | `test` | `{"message": ...}` |

use serde_json::{json, Value};

use super::{with_extra, Encoded};

/// The trigger name of a canonical event.
pub fn trigger(entity: &str, event: &str) -> String {
    let past = |e: &str| match e {
        "create" => "created".to_owned(),
        "update" => "modified".to_owned(),
        "delete" => "deleted".to_owned(),
        "connect" => "connected".to_owned(),
        "disconnect" => "disconnected".to_owned(),
        other => other.to_owned(),
    };
    match entity {
        "peer" | "peer_metric" => format!("peer_{}", past(event)),
        "interface" => format!("interface_{}", past(event)),
        "alert" => format!("alert_{event}"),
        "test" => "test".into(),
        other => format!("{other}_{}", past(event)),
    }
}

/// A peer in defguard's style, from wg-portal's Peer model.
fn peer(model: &Value) -> Value {
    let allowed: Vec<&str> = model["AllowedIPsStr"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    let mut peer = json!({
        "public_key": model["PublicKey"],
        "device": model["InterfaceIdentifier"],
        "name": model["DisplayName"],
        "user": model["UserIdentifier"],
        "endpoint": model["Endpoint"],
        "allowed_ips": allowed,
        "persistent_keepalive": model["PersistentKeepalive"],
        "has_preshared_key": model["HasPresharedKey"],
        "created_at": model["CreatedAt"],
        "updated_at": model["UpdatedAt"],
    });
    if let Some(email) = model.get("UserEmail") {
        peer["email"] = email.clone();
    }
    if let Some(tags) = model.get("Tags") {
        peer["tags"] = tags.clone();
    }
    if let Some(changed) = model.get("ChangedFields") {
        peer["changed_fields"] = changed.clone();
    }
    if let Some(previous) = model.get("Previous") {
        peer["previous"] = previous.clone();
    }
    peer
}

/// The body of a canonical event.
fn body(event: &Value) -> Value {
    let payload = &event["payload"];
    match (event["entity"].as_str(), event["event"].as_str()) {
        (Some("peer"), _) => peer(payload),
        (Some("peer_metric"), Some("handshake")) => {
            let mut body = peer(&payload["Peer"]);
            let handshake = &payload["Handshake"];
            body["handshake"] = json!({
                "at": handshake["At"],
                "endpoint": handshake["Endpoint"],
                "role": handshake["Role"],
                "attempts": handshake["Attempts"],
                "rx_bytes_delta": handshake["RxBytesDelta"],
                "tx_bytes_delta": handshake["TxBytesDelta"],
                "rx_bytes_total": handshake["RxBytesTotal"],
                "tx_bytes_total": handshake["TxBytesTotal"],
            });
            body
        }
        (Some("peer_metric"), _) => {
            let mut body = peer(&payload["Peer"]);
            let status = &payload["Status"];
            body["connected"] = status["IsConnected"].clone();
            body["endpoint"] = status["Endpoint"].clone();
            body["rx_bytes"] = status["BytesReceived"].clone();
            body["tx_bytes"] = status["BytesTransmitted"].clone();
            body["wire_rx_bytes"] = status["WireBytesReceived"].clone();
            body["wire_tx_bytes"] = status["WireBytesTransmitted"].clone();
            body["last_handshake"] = status["LastHandshake"].clone();
            body["session_start"] = status["LastSessionStart"].clone();
            if let Some(reason) = status.get("DisconnectReason") {
                body["disconnect_reason"] = reason.clone();
            }
            body
        }
        (Some("interface"), _) => {
            let mut body = json!({
                "name": payload["Identifier"],
                "public_key": payload["PublicKey"],
                "listen_port": payload["ListenPort"],
                "fwmark": payload["FirewallMark"],
                "driver": payload["DriverType"],
            });
            if let Some(changed) = payload.get("ChangedFields") {
                body["changed_fields"] = changed.clone();
            }
            body
        }
        (Some("alert"), _) => json!({
            "type": payload["Type"],
            "severity": payload["Severity"],
            "device": payload["Device"],
            "subject": payload["Subject"],
            "evidence": payload["Evidence"],
            "suppress_until": payload["SuppressUntil"],
        }),
        (Some("test"), _) => json!({"message": payload["Message"]}),
        _ => payload.clone(),
    }
}

/// The request for one canonical event.
pub fn encode(event: &Value, extra: &serde_json::Map<String, Value>) -> Encoded {
    let name = trigger(
        event["entity"].as_str().unwrap_or_default(),
        event["event"].as_str().unwrap_or_default(),
    );
    Encoded::json(
        &with_extra(body(event), extra),
        vec![("X-Defguard-Event".into(), name)],
    )
}
