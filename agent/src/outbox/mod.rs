//! The durable event outbox: every accepted event is written to an embedded,
//! crash-safe store on local disk before it counts as accepted, with one pending entry
//! per webhook that wants it, and is removed once every such webhook has delivered it
//! (or buried it as a dead letter that was then dropped).
//!
//! The store is [redb](https://docs.rs/redb): a pure-Rust embedded key-value store
//! with ACID transactions, copy-on-write B-trees and a checksummed commit protocol,
//! so a crash (even SIGKILL mid-commit) leaves the last committed state. Every write
//! transaction is committed with `Durability::Immediate` (fsync) before `append`
//! returns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;

/// `[outbox]` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Size limit of the stored events, in bytes (default 256 MiB). When an event
    /// does not fit, the oldest undelivered events of the webhook with the most
    /// queued are dropped (counted in `wgpulse_outbox_dropped_events_total` and
    /// logged) to make room: never unbounded growth, never a crash.
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
        if self.max_bytes < 64 * 1024 {
            problems.push(("max_bytes".into(), "must be at least 64 KiB".into()));
        }
        problems
    }
}

/// Event bodies by sequence number.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (webhook, sequence) -> 0: the webhook has still to deliver the event.
const PENDING: TableDefinition<(&str, u64), u64> = TableDefinition::new("pending");
/// (webhook, sequence) -> reason: the webhook gave up on the event.
const DEAD: TableDefinition<(&str, u64), &str> = TableDefinition::new("dead");
/// Sequence -> how many pending or dead entries still reference the event.
const REFS: TableDefinition<u64, u32> = TableDefinition::new("refs");

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The store failed (I/O, full disk, corruption).
    #[error("outbox {path}: {op}: {message}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The store's error.
        message: String,
    },
}

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

/// The outbox database.
pub struct Outbox {
    /// The open database; `None` after a failed write until it is reopened (redb
    /// refuses further use of a handle that saw an I/O error).
    db: std::sync::RwLock<Option<Database>>,
    path: PathBuf,
    next_seq: Mutex<u64>,
    bytes: AtomicU64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Head {
    identifier: String,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: time::OffsetDateTime,
}

/// Creation time and identifier of a stored event.
fn head(body: &[u8]) -> (String, u64) {
    match serde_json::from_slice::<Head>(body) {
        Ok(head) => (
            head.identifier,
            (head.timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
        ),
        Err(_) => (String::new(), 0),
    }
}

impl Outbox {
    /// Opens (or creates) `dir/outbox.redb`.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        let path = dir.join("outbox.redb");
        let err = |op: &'static str| {
            let path = path.clone();
            move |e: &dyn std::fmt::Display| OutboxError::Store {
                path: path.clone(),
                op,
                message: e.to_string(),
            }
        };
        std::fs::create_dir_all(dir).map_err(|e| err("creating its directory")(&e))?;
        let db = Database::create(&path).map_err(|e| err("opening")(&e))?;
        let txn = db.begin_write().map_err(|e| err("opening")(&e))?;
        {
            txn.open_table(EVENTS).map_err(|e| err("opening")(&e))?;
            txn.open_table(PENDING).map_err(|e| err("opening")(&e))?;
            txn.open_table(DEAD).map_err(|e| err("opening")(&e))?;
            txn.open_table(REFS).map_err(|e| err("opening")(&e))?;
        }
        txn.commit().map_err(|e| err("opening")(&e))?;
        let outbox = Self {
            db: std::sync::RwLock::new(Some(db)),
            path,
            next_seq: Mutex::new(0),
            bytes: AtomicU64::new(0),
        };
        let (last, bytes) = outbox.scan()?;
        *outbox.next_seq.lock().expect("not poisoned") = last + 1;
        outbox.bytes.store(bytes, Ordering::Relaxed);
        Ok(outbox)
    }

    /// The open database, reopening it first if a failed write closed it.
    fn database(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<Database>>, OutboxError> {
        {
            let guard = self.db.read().expect("not poisoned");
            if guard.is_some() {
                return Ok(guard);
            }
        }
        {
            let mut guard = self.db.write().expect("not poisoned");
            if guard.is_none() {
                let db = Database::create(&self.path).map_err(|e| self.error("reopening", e))?;
                *guard = Some(db);
                tracing::info!(path = %self.path.display(), "outbox reopened");
            }
        }
        Ok(self.db.read().expect("not poisoned"))
    }

    /// Closes the database after a failed write; the next use reopens it.
    fn failed<T>(&self, result: Result<T, OutboxError>) -> Result<T, OutboxError> {
        if result.is_err() {
            *self.db.write().expect("not poisoned") = None;
        }
        result
    }

    fn error(&self, op: &'static str, e: impl std::fmt::Display) -> OutboxError {
        OutboxError::Store {
            path: self.path.clone(),
            op,
            message: e.to_string(),
        }
    }

    fn scan(&self) -> Result<(u64, u64), OutboxError> {
        let read = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_read()
            .map_err(|e| self.error("reading", e))?;
        let events = read
            .open_table(EVENTS)
            .map_err(|e| self.error("reading", e))?;
        let mut bytes = 0;
        let mut last = 0;
        for item in events.iter().map_err(|e| self.error("reading", e))? {
            let (seq, body) = item.map_err(|e| self.error("reading", e))?;
            bytes += body.value().len() as u64;
            last = seq.value();
        }
        Ok((last, bytes))
    }

    /// Bytes of stored events.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Durably appends events; returns their sequence numbers. Events no webhook
    /// wants are not stored (sequence 0).
    pub fn append(&self, incoming: &[Incoming<'_>]) -> Result<Vec<u64>, OutboxError> {
        self.failed(self.try_append(incoming))
    }

    fn try_append(&self, incoming: &[Incoming<'_>]) -> Result<Vec<u64>, OutboxError> {
        let mut next = self.next_seq.lock().expect("not poisoned");
        let mut txn = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_write()
            .map_err(|e| self.error("appending", e))?;
        txn.set_durability(Durability::Immediate);
        let mut seqs = Vec::with_capacity(incoming.len());
        let mut added = 0u64;
        let mut seq = *next;
        {
            let mut events = txn
                .open_table(EVENTS)
                .map_err(|e| self.error("appending", e))?;
            let mut pending = txn
                .open_table(PENDING)
                .map_err(|e| self.error("appending", e))?;
            let mut refs = txn
                .open_table(REFS)
                .map_err(|e| self.error("appending", e))?;
            for item in incoming {
                if item.webhooks.is_empty() {
                    seqs.push(0);
                    continue;
                }
                events
                    .insert(seq, item.body)
                    .map_err(|e| self.error("appending", e))?;
                for webhook in &item.webhooks {
                    pending
                        .insert((*webhook, seq), 0)
                        .map_err(|e| self.error("appending", e))?;
                }
                refs.insert(seq, item.webhooks.len() as u32)
                    .map_err(|e| self.error("appending", e))?;
                added += item.body.len() as u64;
                seqs.push(seq);
                seq += 1;
            }
        }
        txn.commit().map_err(|e| self.error("committing", e))?;
        *next = seq;
        self.bytes.fetch_add(added, Ordering::Relaxed);
        Ok(seqs)
    }

    /// A webhook's pending events, in order.
    pub fn pending(&self, webhook: &str) -> Result<Vec<Stored>, OutboxError> {
        self.listed(webhook, false)
            .map(|items| items.into_iter().map(|(stored, _)| stored).collect())
    }

    /// A webhook's dead letters, in order, with the reason each was given up.
    pub fn dead(&self, webhook: &str) -> Result<Vec<(Stored, String)>, OutboxError> {
        self.listed(webhook, true)
    }

    fn listed(&self, webhook: &str, dead: bool) -> Result<Vec<(Stored, String)>, OutboxError> {
        let read = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_read()
            .map_err(|e| self.error("reading", e))?;
        let events = read
            .open_table(EVENTS)
            .map_err(|e| self.error("reading", e))?;
        let mut out = Vec::new();
        let mut push = |seq: u64, reason: String| -> Result<(), OutboxError> {
            if let Some(body) = events.get(seq).map_err(|e| self.error("reading", e))? {
                let body = body.value();
                let (identifier, created_ms) = head(body);
                out.push((
                    Stored {
                        seq,
                        identifier,
                        created_ms,
                        size: body.len(),
                    },
                    reason,
                ));
            }
            Ok(())
        };
        let range = (webhook, 0)..=(webhook, u64::MAX);
        if dead {
            let table = read
                .open_table(DEAD)
                .map_err(|e| self.error("reading", e))?;
            for item in table.range(range).map_err(|e| self.error("reading", e))? {
                let (key, reason) = item.map_err(|e| self.error("reading", e))?;
                push(key.value().1, reason.value().to_owned())?;
            }
        } else {
            let table = read
                .open_table(PENDING)
                .map_err(|e| self.error("reading", e))?;
            for item in table.range(range).map_err(|e| self.error("reading", e))? {
                let (key, _) = item.map_err(|e| self.error("reading", e))?;
                push(key.value().1, String::new())?;
            }
        }
        Ok(out)
    }

    /// The bodies of events, in the order asked (missing ones are skipped).
    pub fn load(&self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let read = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_read()
            .map_err(|e| self.error("reading", e))?;
        let events = read
            .open_table(EVENTS)
            .map_err(|e| self.error("reading", e))?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(body) = events.get(*seq).map_err(|e| self.error("reading", e))? {
                out.push((*seq, body.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// The webhook delivered (or dropped) these events: forget them for it, and
    /// delete the events nobody references any more.
    pub fn ack(&self, webhook: &str, seqs: &[u64]) -> Result<(), OutboxError> {
        self.release(webhook, seqs, PENDING)
    }

    /// Forgets dead letters (replayed elsewhere, or dropped).
    pub fn forget_dead(&self, webhook: &str, seqs: &[u64]) -> Result<(), OutboxError> {
        self.release(webhook, seqs, DEAD)
    }

    fn release<V: redb::Value + 'static>(
        &self,
        webhook: &str,
        seqs: &[u64],
        table: TableDefinition<(&str, u64), V>,
    ) -> Result<(), OutboxError> {
        self.failed(self.try_release(webhook, seqs, table))
    }

    fn try_release<V: redb::Value + 'static>(
        &self,
        webhook: &str,
        seqs: &[u64],
        table: TableDefinition<(&str, u64), V>,
    ) -> Result<(), OutboxError> {
        let mut txn = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_write()
            .map_err(|e| self.error("acknowledging", e))?;
        // Acknowledgements need no fsync of their own: the next append's fsync (or
        // closing the database) makes them durable. A crash before that delivers
        // those events again, with the same ids, which receivers already expect.
        txn.set_durability(Durability::Eventual);
        let mut freed = 0u64;
        {
            let mut entries = txn
                .open_table(table)
                .map_err(|e| self.error("acknowledging", e))?;
            let mut refs = txn
                .open_table(REFS)
                .map_err(|e| self.error("acknowledging", e))?;
            let mut events = txn
                .open_table(EVENTS)
                .map_err(|e| self.error("acknowledging", e))?;
            for seq in seqs {
                if entries
                    .remove((webhook, *seq))
                    .map_err(|e| self.error("acknowledging", e))?
                    .is_none()
                {
                    continue;
                }
                let left = refs
                    .get(*seq)
                    .map_err(|e| self.error("acknowledging", e))?
                    .map(|v| v.value())
                    .unwrap_or(1)
                    .saturating_sub(1);
                if left == 0 {
                    refs.remove(*seq)
                        .map_err(|e| self.error("acknowledging", e))?;
                    if let Some(body) = events
                        .remove(*seq)
                        .map_err(|e| self.error("acknowledging", e))?
                    {
                        freed += body.value().len() as u64;
                    }
                } else {
                    refs.insert(*seq, left)
                        .map_err(|e| self.error("acknowledging", e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.error("committing", e))?;
        self.bytes
            .fetch_sub(freed.min(self.bytes()), Ordering::Relaxed);
        Ok(())
    }

    /// Moves pending events of a webhook to its dead letters with a reason.
    pub fn bury(&self, webhook: &str, seqs: &[u64], reason: &str) -> Result<(), OutboxError> {
        self.failed(self.try_bury(webhook, seqs, reason))
    }

    fn try_bury(&self, webhook: &str, seqs: &[u64], reason: &str) -> Result<(), OutboxError> {
        let mut txn = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_write()
            .map_err(|e| self.error("burying", e))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut pending = txn
                .open_table(PENDING)
                .map_err(|e| self.error("burying", e))?;
            let mut dead = txn.open_table(DEAD).map_err(|e| self.error("burying", e))?;
            for seq in seqs {
                if pending
                    .remove((webhook, *seq))
                    .map_err(|e| self.error("burying", e))?
                    .is_some()
                {
                    dead.insert((webhook, *seq), reason)
                        .map_err(|e| self.error("burying", e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.error("committing", e))
    }

    /// Moves every dead letter of a webhook back to its pending events; returns them.
    pub fn replay(&self, webhook: &str) -> Result<Vec<Stored>, OutboxError> {
        self.failed(self.try_replay(webhook))
    }

    fn try_replay(&self, webhook: &str) -> Result<Vec<Stored>, OutboxError> {
        let dead: Vec<Stored> = self.dead(webhook)?.into_iter().map(|(s, _)| s).collect();
        let mut txn = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_write()
            .map_err(|e| self.error("replaying", e))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut pending = txn
                .open_table(PENDING)
                .map_err(|e| self.error("replaying", e))?;
            let mut table = txn
                .open_table(DEAD)
                .map_err(|e| self.error("replaying", e))?;
            for stored in &dead {
                table
                    .remove((webhook, stored.seq))
                    .map_err(|e| self.error("replaying", e))?;
                pending
                    .insert((webhook, stored.seq), 0)
                    .map_err(|e| self.error("replaying", e))?;
            }
        }
        txn.commit().map_err(|e| self.error("committing", e))?;
        Ok(dead)
    }

    /// Number of stored events (for tests and metrics).
    pub fn len(&self) -> Result<u64, OutboxError> {
        let read = self
            .database()?
            .as_ref()
            .expect("checked")
            .begin_read()
            .map_err(|e| self.error("reading", e))?;
        let events = read
            .open_table(EVENTS)
            .map_err(|e| self.error("reading", e))?;
        events.len().map_err(|e| self.error("reading", e))
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(identifier: &str, n: u32) -> Vec<u8> {
        format!(r#"{{"id":"{n}","timestamp":"2026-01-01T00:00:00Z","identifier":"{identifier}","event":"x"}}"#)
            .into_bytes()
    }

    #[test]
    fn append_ack_bury_replay_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let bodies: Vec<Vec<u8>> = (0..3).map(|n| body("peer-a", n)).collect();
        let incoming: Vec<Incoming> = bodies
            .iter()
            .map(|b| Incoming {
                body: b,
                identifier: "peer-a",
                created_ms: 0,
                webhooks: vec!["one", "two"],
            })
            .collect();
        let seqs = outbox.append(&incoming).unwrap();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(outbox.pending("one").unwrap().len(), 3);
        assert_eq!(outbox.pending("one").unwrap()[0].identifier, "peer-a");
        outbox.ack("one", &[1, 2]).unwrap();
        assert_eq!(outbox.len().unwrap(), 3, "two still needs them");
        outbox.ack("two", &[1]).unwrap();
        assert_eq!(outbox.len().unwrap(), 2);
        outbox.bury("two", &[2], "400 Bad Request").unwrap();
        assert_eq!(outbox.dead("two").unwrap()[0].1, "400 Bad Request");
        drop(outbox);

        let outbox = Outbox::open(dir.path()).unwrap();
        let next = outbox
            .append(&[Incoming {
                body: &body("peer-b", 9),
                identifier: "peer-b",
                created_ms: 0,
                webhooks: vec!["one"],
            }])
            .unwrap();
        assert_eq!(next, [4], "sequence numbers continue after a reopen");
        let replayed = outbox.replay("two").unwrap();
        assert_eq!(replayed.iter().map(|s| s.seq).collect::<Vec<_>>(), [2]);
        assert!(outbox.dead("two").unwrap().is_empty());
        assert_eq!(
            outbox
                .pending("two")
                .unwrap()
                .iter()
                .map(|s| s.seq)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        let bytes_before = outbox.bytes();
        outbox.ack("one", &[3, 4]).unwrap();
        outbox.ack("two", &[2, 3]).unwrap();
        assert!(outbox.is_empty().unwrap());
        assert!(outbox.bytes() < bytes_before);
        assert_eq!(outbox.bytes(), 0);
    }
}
