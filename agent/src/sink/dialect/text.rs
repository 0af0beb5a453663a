//! One readable sentence per event, for chat messages and templates:
//! "peer alice-laptop (LXYw72SS…) connected from 10.1.2.3:51820 on wg0". Names come
//! from `peers_file` (the payload's `DisplayName`); an unnamed peer shows its key.

use serde_json::Value;

/// The first 8 characters of a public key and an ellipsis.
pub fn short_key(key: &str) -> String {
    format!("{}…", key.chars().take(8).collect::<String>())
}

/// "alice-laptop (LXYw72SS…)", or "LXYw72SS…" for a peer without a name.
pub fn peer_label(model: &Value, key: &str) -> String {
    let short = short_key(key);
    match model["DisplayName"].as_str() {
        Some(name)
            if !name.is_empty()
                && name != format!("Peer {}", &short[..short.len() - '…'.len_utf8()]) =>
        {
            format!("{name} ({short})")
        }
        _ => short,
    }
}

/// The sentence for a canonical event.
pub fn sentence(event: &Value) -> String {
    let payload = &event["payload"];
    let key = event["identifier"].as_str().unwrap_or_default();
    let entity = event["entity"].as_str().unwrap_or_default();
    let what = event["event"].as_str().unwrap_or_default();
    match (entity, what) {
        ("peer_metric", _) | ("peer", _) => {
            let model = if entity == "peer" {
                payload
            } else {
                &payload["Peer"]
            };
            let peer = peer_label(model, key);
            let device = model["InterfaceIdentifier"].as_str().unwrap_or("?");
            let status = &payload["Status"];
            match (entity, what) {
                ("peer_metric", "connect") => format!(
                    "peer {peer} connected from {} on {device}",
                    status["Endpoint"].as_str().unwrap_or("?")
                ),
                ("peer_metric", "disconnect") => format!(
                    "peer {peer} disconnected on {device} ({})",
                    status["DisconnectReason"]
                        .as_str()
                        .unwrap_or("handshake expired")
                        .replace('_', " ")
                ),
                ("peer_metric", "handshake") => format!(
                    "peer {peer} completed a handshake from {} on {device}",
                    payload["Handshake"]["Endpoint"].as_str().unwrap_or("?")
                ),
                ("peer", "create") => format!("peer {peer} was added to {device}"),
                ("peer", "delete") => format!("peer {peer} was removed from {device}"),
                ("peer", "update") => {
                    let changes: Vec<String> = payload["ChangedFields"]
                        .as_array()
                        .map(|fields| {
                            fields
                                .iter()
                                .filter_map(Value::as_str)
                                .map(|field| {
                                    let now = show(&payload[field]);
                                    match payload["Previous"].get(field) {
                                        Some(before) => format!("{field} {} → {now}", show(before)),
                                        None => format!("{field} {now}"),
                                    }
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("peer {peer} changed on {device}: {}", changes.join(", "))
                }
                _ => format!("peer {peer}: {what} on {device}"),
            }
        }
        ("interface", "create") => format!(
            "interface {key} appeared (listening on port {})",
            show(&payload["ListenPort"])
        ),
        ("interface", "delete") => format!("interface {key} disappeared"),
        ("interface", _) => format!(
            "interface {key} changed: {}",
            payload["ChangedFields"]
                .as_array()
                .map(|f| f
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        ("alert", kind) => format!(
            "[{}] {kind} on {}: {}",
            payload["Severity"].as_str().unwrap_or("alert"),
            payload["Device"].as_str().unwrap_or("?"),
            payload["Subject"].as_str().unwrap_or_default()
        ),
        ("test", _) => "wgpulse webhook test".into(),
        _ => format!("{entity} {what} {key}"),
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "(none)".into(),
        Value::String(s) => s.clone(),
        Value::Null => "(none)".into(),
        other => other.to_string(),
    }
}
