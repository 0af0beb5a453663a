//! What a kind of delivery target implements: how one batch of stored events is sent
//! and what the answer means. Everything else — the outbox, the per-peer lanes,
//! batching limits, retries with back-off, dead letters, pausing, statistics, the API
//! and the CLI — is the delivery core's and shared by every kind: a webhook
//! ([`super::webhook`]) and NATS JetStream ([`super::nats`]); Kafka would be one more
//! implementation.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;

use super::config::Format;
use super::retry::Outcome;
use super::TestOutcome;

/// A boxed future, as the trait's async methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The fields of a stored event the core and the transports read without parsing
/// the whole body.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct EventHead {
    /// The event id (UUIDv7), stable across retries.
    #[serde(default)]
    pub id: String,
    /// `peer`, `peer_metric`, `interface`, `alert`, `test`.
    #[serde(default)]
    pub entity: String,
    /// `create`, `connect`, ...
    #[serde(default)]
    pub event: String,
    /// The peer's public key or the device's name.
    #[serde(default)]
    pub identifier: String,
}

impl EventHead {
    /// Reads the head of an event's JSON (empty fields if it is not one).
    pub fn of(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// One event loaded from the outbox for a send.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Its head.
    pub head: EventHead,
    /// Its JSON as stored.
    pub body: Bytes,
}

/// What one send attempt came to.
#[derive(Clone, Debug)]
pub struct Attempted {
    /// The id of the request (the event id, or a batch id stable across retries).
    pub id: String,
    /// What it means for the events.
    pub outcome: Outcome,
    /// The receiver's status code, if it answered one.
    pub status: Option<u16>,
    /// What failed, if anything.
    pub error: Option<String>,
    /// Indices of events of the batch that were delivered although `outcome` is
    /// not [`Outcome::Delivered`] (a bus acknowledges each message): they leave
    /// the outbox, and `outcome` applies to the rest.
    pub acked: Vec<usize>,
    /// Indices of events given up with the reason (no retry can deliver them):
    /// they become dead letters, and `outcome` applies to the rest.
    pub given_up: Vec<(usize, String)>,
}

/// A kind of delivery target.
pub trait Transport: Send + Sync + 'static {
    /// The target's name (unique across all targets).
    fn name(&self) -> &str;

    /// The kind of target: `webhook`, `nats`.
    fn kind(&self) -> &'static str {
        "webhook"
    }

    /// Why the target cannot deliver now, when it knows before trying (not
    /// connected, its stream is missing).
    fn problem(&self) -> Option<String> {
        None
    }

    /// Where it delivers, without credentials (for the API and logs).
    fn location(&self) -> String;

    /// One event per send, or batches.
    fn format(&self) -> Format;

    /// Sends one batch (one event for [`Format::Single`]) at `now`.
    fn send<'a>(&'a self, batch: &'a [Loaded], now: SystemTime) -> BoxFuture<'a, Attempted>;

    /// Sends a test event outside the outbox and reports the answer.
    fn test<'a>(&'a self, event: &'a Loaded) -> BoxFuture<'a, Result<TestOutcome, String>>;
}
