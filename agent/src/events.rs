//! The event model: what the agent tells webhooks. Every event has wg-portal's shell
//! (`event`, `entity`, `identifier`, `payload`) plus `id`, `timestamp` and `node`,
//! which wg-portal receivers ignore.

use serde::{Deserialize, Serialize};

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
