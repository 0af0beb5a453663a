//! Pro Custodibus's webhooks (`procustodibus-webhooks.txt`): every request is a JSON
//! list of JSON:API-style resources `{"id", "type", "attributes", "relationships"}`,
//! at most `batch.max_events` per request (its "Max Events Per Request").
//!
//! | wgpulse event | resource `type` | attributes |
//! | --- | --- | --- |
//! | `peer_metric.handshake` | `endpoint_stats` | `created`, `handshake`, `ip`, `port`, `rx_delta`, `rx_total`, `tx_delta`, `tx_total` (the wire view's bytes) |
//! | `alert.<type>` | `alerts` | `created`, `danger` (info 2, warning 5, critical 9), `params` (the evidence), `suppress_until`, `type`, `updated` |
//! | `peer.*`, `interface.*` | `log_changes` | one resource per changed field: `created`, `field`, `id`, `old_value`, `new_value`, `type` (`endpoints` or `interfaces`); an added peer is `field: "endpoint"` from null to its key, a removed one back to null |
//! | `peer_metric.connect` / `disconnect` | `log_changes` | `field: "connected"`, `old_value`/`new_value` `false`/`true` (Pro Custodibus derives connectivity from handshakes; wgpulse says when it changed) |
//! | `test.test` | `log_changes` | `field: "test"` |
//!
//! A peer's resources relate to it as `relationships.endpoint.data[0] = {"id": <public
//! key>, "type": "endpoints"}`.

use serde_json::{json, Value};

use super::{with_extra, Encoded};

/// Pro Custodibus's danger level of a severity.
pub fn danger(severity: &str) -> u8 {
    match severity {
        "critical" => 9,
        "warning" => 5,
        _ => 2,
    }
}

fn endpoint_relation(key: &Value) -> Value {
    json!({"endpoint": {"data": [{"id": key, "type": "endpoints"}]}})
}

fn host_port(endpoint: &str) -> (String, Value) {
    match endpoint.parse::<std::net::SocketAddr>() {
        Ok(addr) => (addr.ip().to_string(), json!(addr.port())),
        Err(_) => (endpoint.to_owned(), Value::Null),
    }
}

/// The field names Pro Custodibus uses for wg-portal's model fields.
fn field_name(field: &str) -> &str {
    match field {
        "AllowedIPsStr" => "allowed_ips",
        "PersistentKeepalive" => "persistent_keepalive",
        "HasPresharedKey" => "preshared_key",
        "ListenPort" => "listen_port",
        "PublicKey" => "public_key",
        "FirewallMark" => "fwmark",
        other => other,
    }
}

fn change(event: &Value, n: usize, kind: &str, field: &str, old: Value, new: Value) -> Value {
    let mut resource = json!({
        "id": format!("{}-{n}", event["id"].as_str().unwrap_or_default()),
        "type": "log_changes",
        "attributes": {
            "created": event["timestamp"],
            "field": field,
            "id": event["identifier"],
            "new_value": new,
            "old_value": old,
            "type": kind,
        },
    });
    if kind == "endpoints" {
        resource["relationships"] = endpoint_relation(&event["identifier"]);
    }
    resource
}

/// The changes an endpoint (peer) update makes, one per field; a roam says whether
/// the IP or the port moved.
fn peer_updates(event: &Value) -> Vec<Value> {
    let payload = &event["payload"];
    let previous = &payload["Previous"];
    let mut out = Vec::new();
    for field in payload["ChangedFields"].as_array().into_iter().flatten() {
        let Some(field) = field.as_str() else {
            continue;
        };
        if field == "Endpoint" {
            let (old_ip, old_port) = host_port(previous["Endpoint"].as_str().unwrap_or_default());
            let (new_ip, new_port) = host_port(payload["Endpoint"].as_str().unwrap_or_default());
            if old_ip != new_ip {
                out.push(change(
                    event,
                    out.len(),
                    "endpoints",
                    "ip",
                    json!(old_ip),
                    json!(new_ip),
                ));
            }
            if old_port != new_port {
                out.push(change(
                    event,
                    out.len(),
                    "endpoints",
                    "port",
                    old_port,
                    new_port,
                ));
            }
            continue;
        }
        out.push(change(
            event,
            out.len(),
            "endpoints",
            field_name(field),
            previous.get(field).cloned().unwrap_or(Value::Null),
            payload[field].clone(),
        ));
    }
    out
}

/// The resources of one canonical event.
pub fn resources(event: &Value) -> Vec<Value> {
    let payload = &event["payload"];
    let key = &event["identifier"];
    match (event["entity"].as_str(), event["event"].as_str()) {
        (Some("peer_metric"), Some("handshake")) => {
            let handshake = &payload["Handshake"];
            let (ip, port) = host_port(handshake["Endpoint"].as_str().unwrap_or_default());
            vec![json!({
                "id": event["id"],
                "type": "endpoint_stats",
                "attributes": {
                    "created": event["timestamp"],
                    "handshake": handshake["At"],
                    "ip": ip,
                    "port": port,
                    "rx_delta": handshake["RxBytesDelta"],
                    "rx_total": handshake["RxBytesTotal"],
                    "tx_delta": handshake["TxBytesDelta"],
                    "tx_total": handshake["TxBytesTotal"],
                },
                "relationships": endpoint_relation(key),
            })]
        }
        (Some("peer_metric"), Some(what)) => {
            let connected = what == "connect";
            vec![change(
                event,
                0,
                "endpoints",
                "connected",
                json!(!connected),
                json!(connected),
            )]
        }
        (Some("alert"), _) => vec![json!({
            "id": event["id"],
            "type": "alerts",
            "attributes": {
                "created": event["timestamp"],
                "danger": danger(payload["Severity"].as_str().unwrap_or_default()),
                "params": payload["Evidence"],
                "suppress_until": payload["SuppressUntil"],
                "type": payload["Type"],
                "updated": event["timestamp"],
            },
        })],
        (Some("peer"), Some("create")) => {
            vec![change(
                event,
                0,
                "endpoints",
                "endpoint",
                Value::Null,
                key.clone(),
            )]
        }
        (Some("peer"), Some("delete")) => {
            vec![change(
                event,
                0,
                "endpoints",
                "endpoint",
                key.clone(),
                Value::Null,
            )]
        }
        (Some("peer"), _) => peer_updates(event),
        (Some("interface"), Some("create")) => {
            vec![change(
                event,
                0,
                "interfaces",
                "interface",
                Value::Null,
                key.clone(),
            )]
        }
        (Some("interface"), Some("delete")) => {
            vec![change(
                event,
                0,
                "interfaces",
                "interface",
                key.clone(),
                Value::Null,
            )]
        }
        (Some("interface"), _) => payload["ChangedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .enumerate()
            .map(|(n, field)| {
                change(
                    event,
                    n,
                    "interfaces",
                    field_name(field),
                    Value::Null,
                    payload[field].clone(),
                )
            })
            .collect(),
        _ => vec![change(
            event,
            0,
            "endpoints",
            "test",
            Value::Null,
            payload.clone(),
        )],
    }
}

/// The request for a batch of canonical events.
pub fn encode(events: &[Value], extra: &serde_json::Map<String, Value>) -> Encoded {
    let list: Vec<Value> = events
        .iter()
        .flat_map(resources)
        .map(|resource| with_extra(resource, extra))
        .collect();
    Encoded::json(&Value::Array(list), Vec::new())
}
