//! wg-portal's webhooks. v2 (`wg-portal-webhooks-v2.md`): the shell
//! `{event, entity, identifier, payload}` exactly, one event per POST, connects and
//! disconnects on entity `peer_metric` with `{Status, Peer}`. v1
//! (`wg-portal-webhooks-v1.txt`): connects and disconnects on entity `peer` with the
//! flat status payload `{PeerId, IsConnected, IsPingable, LastPing, BytesReceived,
//! BytesTransmitted, LastHandshake, Endpoint, LastSessionStart}`; everything else as
//! in v2. `Authorization` is sent as configured (wg-portal's shared secret).

use serde_json::{json, Value};

use super::{with_extra, Encoded};

/// The v2 shell.
pub fn encode_v2(event: &Value, extra: &serde_json::Map<String, Value>) -> Encoded {
    let shell = json!({
        "event": event["event"],
        "entity": event["entity"],
        "identifier": event["identifier"],
        "payload": event["payload"],
    });
    Encoded::json(&with_extra(shell, extra), Vec::new())
}

/// The v1 shape.
pub fn encode_v1(event: &Value, extra: &serde_json::Map<String, Value>) -> Encoded {
    let is_metric = event["entity"] == "peer_metric";
    let connection = matches!(event["event"].as_str(), Some("connect" | "disconnect"));
    if !(is_metric && connection) {
        return encode_v2(event, extra);
    }
    let status = &event["payload"]["Status"];
    let payload = json!({
        "PeerId": event["identifier"],
        "IsConnected": status["IsConnected"],
        "IsPingable": status["IsPingable"],
        "LastPing": status["LastPing"],
        "BytesReceived": status["BytesReceived"],
        "BytesTransmitted": status["BytesTransmitted"],
        "LastHandshake": status["LastHandshake"],
        "Endpoint": status["Endpoint"],
        "LastSessionStart": status["LastSessionStart"],
    });
    let shell = json!({
        "event": event["event"],
        "entity": "peer",
        "identifier": event["identifier"],
        "payload": payload,
    });
    Encoded::json(&with_extra(shell, extra), Vec::new())
}
