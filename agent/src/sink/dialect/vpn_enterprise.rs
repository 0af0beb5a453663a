//! VPN Enterprise's webhooks (`vpn-enterprise-webhooks.txt`): `{"id", "type",
//! "created_at", "data"}`, receivers dispatching on `event["type"]` and verifying
//! `X-VPN-Signature: sha256=<hex HMAC-SHA256 of the raw body>` keyed with the secret
//! string's UTF-8 bytes (the doc's own Python and Node examples). The types:
//!
//! | wgpulse event | `type` |
//! | --- | --- |
//! | `peer_metric.connect` / `disconnect` | `vpn.connected` / `vpn.disconnected` |
//! | `peer_metric.handshake` | `vpn.handshake` |
//! | `interface.create` / `update` / `delete` | `vpn.server.created` / `vpn.server.updated` / `vpn.server.deleted` |
//! | `peer.create` / `update` / `delete` | `vpn.peer.created` / `vpn.peer.updated` / `vpn.peer.deleted` |
//! | `alert.<type>` | `vpn.alert.<type>` |
//! | `test.test` | `webhook.test` |

use serde_json::{json, Value};

use super::{with_extra, Encoded};

/// The `type` of a canonical event.
pub fn event_type(entity: &str, event: &str) -> String {
    let past = |e: &str| match e {
        "create" => "created".to_owned(),
        "update" => "updated".to_owned(),
        "delete" => "deleted".to_owned(),
        other => other.to_owned(),
    };
    match (entity, event) {
        ("peer_metric", "connect") => "vpn.connected".into(),
        ("peer_metric", "disconnect") => "vpn.disconnected".into(),
        ("peer_metric", other) => format!("vpn.{other}"),
        ("interface", e) => format!("vpn.server.{}", past(e)),
        ("peer", e) => format!("vpn.peer.{}", past(e)),
        ("alert", kind) => format!("vpn.alert.{kind}"),
        ("test", _) => "webhook.test".into(),
        (entity, e) => format!("vpn.{entity}.{}", past(e)),
    }
}

/// The request for one canonical event.
pub fn encode(event: &Value, extra: &serde_json::Map<String, Value>) -> Encoded {
    let mut data = event["payload"].clone();
    if let Value::Object(map) = &mut data {
        map.insert("identifier".into(), event["identifier"].clone());
        map.insert("node".into(), event["node"].clone());
    }
    let body = json!({
        "id": event["id"],
        "type": event_type(
            event["entity"].as_str().unwrap_or_default(),
            event["event"].as_str().unwrap_or_default()
        ),
        "created_at": event["timestamp"],
        "data": data,
    });
    Encoded::json(&with_extra(body, extra), Vec::new())
}
