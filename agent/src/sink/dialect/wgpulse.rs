//! wgpulse's own shape: wg-portal's shell plus `id`, `timestamp` and `node` (which
//! wg-portal receivers ignore), one object per request with `X-Wgpulse-Event`, or a
//! JSON array of them for the batch format. The stored bytes go out unchanged unless
//! `extra_fields` adds to them.

use serde_json::Value;

use super::{kind, with_extra, Encoded, Shape};

/// The body for `bodies` (stored events).
pub fn encode(bodies: &[&[u8]], shape: Shape, extra: &serde_json::Map<String, Value>) -> Encoded {
    let owned: Vec<Vec<u8>>;
    let bodies: Vec<&[u8]> = if extra.is_empty() {
        bodies.to_vec()
    } else {
        owned = bodies
            .iter()
            .map(|body| {
                let event: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                serde_json::to_vec(&with_extra(event, extra)).expect("JSON serializes")
            })
            .collect();
        owned.iter().map(Vec::as_slice).collect()
    };
    match shape {
        Shape::One => {
            let event: Value = serde_json::from_slice(bodies[0]).unwrap_or(Value::Null);
            Encoded {
                body: bodies[0].to_vec(),
                content_type: "application/json".into(),
                headers: vec![("X-Wgpulse-Event".into(), kind(&event))],
            }
        }
        Shape::List => {
            let mut body =
                Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            for (i, event) in bodies.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(event);
            }
            body.push(b']');
            Encoded {
                body,
                content_type: "application/json".into(),
                headers: Vec::new(),
            }
        }
    }
}
