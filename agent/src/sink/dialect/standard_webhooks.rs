//! Standard Webhooks (standardwebhooks.com): the payload `{"type", "timestamp",
//! "data"}` with `type` = `<entity>.<event>`, and the scheme's three headers
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`), which the PyPI package
//! `standardwebhooks` verifies.

use serde_json::{json, Value};

use super::{kind, with_extra, Encoded};

/// The request for one canonical event.
pub fn encode(event: &Value, extra: &serde_json::Map<String, Value>) -> Encoded {
    let mut data = event["payload"].clone();
    if let Value::Object(map) = &mut data {
        map.insert("identifier".into(), event["identifier"].clone());
        map.insert("node".into(), event["node"].clone());
    }
    let body = json!({
        "type": kind(event),
        "timestamp": event["timestamp"],
        "data": data,
    });
    Encoded::json(&with_extra(body, extra), Vec::new())
}
