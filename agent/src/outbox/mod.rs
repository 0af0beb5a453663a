//! Durable event queue on local disk (to be implemented: delivery issue).

use serde::Deserialize;

/// `[outbox]` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Size limit of the outbox on disk, in bytes (default 256 MiB).
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl OutboxConfig {
    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.max_bytes < 1024 * 1024 {
            problems.push(("max_bytes".into(), "must be at least 1 MiB".into()));
        }
        problems
    }
}
