//! What goes in and out of the outbox: an event to append, what became of the
//! append, a stored event as a webhook's queue sees it, and a change in whether the
//! disk takes writes.

use super::OutboxError;

/// One stored event as a webhook's queue sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Sequence number (order of acceptance).
    pub seq: u64,
    /// The event's identifier (per-identifier order is kept).
    pub identifier: String,
    /// Creation time of the event, Unix milliseconds.
    pub created_ms: u64,
    /// Size of the stored JSON.
    pub size: usize,
}

/// An event to append and the webhooks that want it.
#[derive(Clone, Debug)]
pub struct Incoming<'a> {
    /// The event's JSON.
    pub body: &'a [u8],
    /// The event's identifier.
    pub identifier: &'a str,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Names of the webhooks whose filters select it.
    pub webhooks: Vec<&'a str>,
}

/// What became of an append.
#[derive(Debug, Default)]
pub struct Appended {
    /// The events' sequence numbers (0: no webhook wants it, not kept).
    pub seqs: Vec<u64>,
    /// Why the disk did not take them, if it did not: they are held in memory (and
    /// delivered from there) until it does.
    pub unwritten: Option<OutboxError>,
    /// Events lost from a full memory tier, per webhook that still wanted them.
    pub dropped: Vec<(String, u64)>,
}

/// A change in whether the disk takes writes, to log once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskChange {
    /// Writes started failing.
    Failing(String),
    /// Writes work again; this many held events were written.
    Recovered(usize),
}
