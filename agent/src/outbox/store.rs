//! The durable tier: the redb tables and one function per transaction. Every write
//! that adds events commits with `Durability::Immediate` (fsync); acknowledgements
//! commit eventually (the next fsync persists them; a crash only repeats deliveries).

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;

use super::Stored;

/// Memory redb may use to cache the file's pages. Its default is 1 GiB, which the
/// read cache fills with every page it reads: an outbox that held 100k events (50 MB)
/// kept them all in memory after they were delivered. The outbox's hot pages are
/// the newest events and the webhooks' pending lists: a few MiB.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Opens (or creates) the outbox database at `path` with the bounded cache.
pub fn open_database(path: &std::path::Path) -> std::result::Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// Event bodies by sequence number.
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (webhook, sequence) -> 0: the webhook has still to deliver the event.
pub(super) const PENDING: TableDefinition<(&str, u64), u64> = TableDefinition::new("pending");
/// (webhook, sequence) -> reason: the webhook gave up on the event.
pub(super) const DEAD: TableDefinition<(&str, u64), &str> = TableDefinition::new("dead");
/// Sequence -> how many pending or dead entries still reference the event.
pub(super) const REFS: TableDefinition<u64, u32> = TableDefinition::new("refs");

/// A redb error with what was being done.
#[derive(Debug)]
pub(super) struct StoreFailure {
    pub op: &'static str,
    pub message: String,
}

type Result<T> = std::result::Result<T, StoreFailure>;

fn fail(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreFailure {
    move |e| StoreFailure {
        op,
        message: e.to_string(),
    }
}

/// One event to write with who still wants it and who gave up on it.
pub(super) struct Row<'a> {
    pub seq: u64,
    pub body: &'a [u8],
    pub pending: Vec<&'a str>,
    pub dead: Vec<(&'a str, &'a str)>,
}

/// Creates the tables if they are missing.
pub(super) fn init(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(|e| fail("opening")(&e))?;
    {
        txn.open_table(EVENTS).map_err(|e| fail("opening")(&e))?;
        txn.open_table(PENDING).map_err(|e| fail("opening")(&e))?;
        txn.open_table(DEAD).map_err(|e| fail("opening")(&e))?;
        txn.open_table(REFS).map_err(|e| fail("opening")(&e))?;
    }
    txn.commit().map_err(|e| fail("opening")(&e))
}

/// The highest sequence number stored and the bytes of all stored events; `None`
/// for a new file without tables.
pub(super) fn scan(db: &Database) -> Result<Option<(u64, u64)>> {
    let read = db.begin_read().map_err(|e| fail("reading")(&e))?;
    let events = match read.open_table(EVENTS) {
        Ok(events) => events,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(fail("reading")(&e)),
    };
    let mut bytes = 0;
    let mut last = 0;
    for item in events.iter().map_err(|e| fail("reading")(&e))? {
        let (seq, body) = item.map_err(|e| fail("reading")(&e))?;
        bytes += body.value().len() as u64;
        last = seq.value();
    }
    Ok(Some((last, bytes)))
}

/// Writes rows in one fsynced transaction; returns the bytes added.
pub(super) fn write(db: &Database, rows: &[Row<'_>]) -> Result<u64> {
    let op = "appending";
    let mut txn = db.begin_write().map_err(|e| fail(op)(&e))?;
    txn.set_durability(Durability::Immediate);
    let mut added = 0u64;
    {
        let mut events = txn.open_table(EVENTS).map_err(|e| fail(op)(&e))?;
        let mut pending = txn.open_table(PENDING).map_err(|e| fail(op)(&e))?;
        let mut dead = txn.open_table(DEAD).map_err(|e| fail(op)(&e))?;
        let mut refs = txn.open_table(REFS).map_err(|e| fail(op)(&e))?;
        for row in rows {
            let references = row.pending.len() + row.dead.len();
            if references == 0 {
                continue;
            }
            events.insert(row.seq, row.body).map_err(|e| fail(op)(&e))?;
            for webhook in &row.pending {
                pending
                    .insert((*webhook, row.seq), 0)
                    .map_err(|e| fail(op)(&e))?;
            }
            for (webhook, reason) in &row.dead {
                dead.insert((*webhook, row.seq), *reason)
                    .map_err(|e| fail(op)(&e))?;
            }
            refs.insert(row.seq, references as u32)
                .map_err(|e| fail(op)(&e))?;
            added += row.body.len() as u64;
        }
    }
    txn.commit().map_err(|e| fail("committing")(&e))?;
    Ok(added)
}

#[derive(Deserialize)]
struct Head {
    identifier: String,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: time::OffsetDateTime,
}

/// Creation time and identifier of a stored event.
pub(super) fn head(body: &[u8]) -> (String, u64) {
    match serde_json::from_slice::<Head>(body) {
        Ok(head) => (
            head.identifier,
            (head.timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
        ),
        Err(_) => (String::new(), 0),
    }
}

/// A webhook's pending events (or dead letters, with their reasons), in order.
pub(super) fn listed(db: &Database, webhook: &str, dead: bool) -> Result<Vec<(Stored, String)>> {
    let op = "reading";
    let read = db.begin_read().map_err(|e| fail(op)(&e))?;
    let events = read.open_table(EVENTS).map_err(|e| fail(op)(&e))?;
    let mut out = Vec::new();
    let mut push = |seq: u64, reason: String| -> Result<()> {
        if let Some(body) = events.get(seq).map_err(|e| fail(op)(&e))? {
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
        let table = read.open_table(DEAD).map_err(|e| fail(op)(&e))?;
        for item in table.range(range).map_err(|e| fail(op)(&e))? {
            let (key, reason) = item.map_err(|e| fail(op)(&e))?;
            push(key.value().1, reason.value().to_owned())?;
        }
    } else {
        let table = read.open_table(PENDING).map_err(|e| fail(op)(&e))?;
        for item in table.range(range).map_err(|e| fail(op)(&e))? {
            let (key, _) = item.map_err(|e| fail(op)(&e))?;
            push(key.value().1, String::new())?;
        }
    }
    Ok(out)
}

/// The bodies of events, in the order asked (missing ones are skipped).
pub(super) fn load(db: &Database, seqs: &[u64], out: &mut Vec<(u64, Vec<u8>)>) -> Result<()> {
    let read = db.begin_read().map_err(|e| fail("reading")(&e))?;
    let events = read.open_table(EVENTS).map_err(|e| fail("reading")(&e))?;
    for seq in seqs {
        if let Some(body) = events.get(*seq).map_err(|e| fail("reading")(&e))? {
            out.push((*seq, body.value().to_vec()));
        }
    }
    Ok(())
}

/// Removes (webhook, seq) entries from `table` and deletes events nobody references
/// any more; returns the bytes freed.
pub(super) fn release<V: redb::Value + 'static>(
    db: &Database,
    webhook: &str,
    seqs: &[u64],
    table: TableDefinition<(&str, u64), V>,
) -> Result<u64> {
    let op = "acknowledging";
    let mut txn = db.begin_write().map_err(|e| fail(op)(&e))?;
    // Acknowledgements need no fsync of their own: the next append's fsync (or
    // closing the database) makes them durable. A crash before that delivers those
    // events again, with the same ids, which receivers already expect.
    txn.set_durability(Durability::Eventual);
    let mut freed = 0u64;
    {
        let mut entries = txn.open_table(table).map_err(|e| fail(op)(&e))?;
        let mut refs = txn.open_table(REFS).map_err(|e| fail(op)(&e))?;
        let mut events = txn.open_table(EVENTS).map_err(|e| fail(op)(&e))?;
        for seq in seqs {
            if entries
                .remove((webhook, *seq))
                .map_err(|e| fail(op)(&e))?
                .is_none()
            {
                continue;
            }
            let left = refs
                .get(*seq)
                .map_err(|e| fail(op)(&e))?
                .map(|v| v.value())
                .unwrap_or(1)
                .saturating_sub(1);
            if left == 0 {
                refs.remove(*seq).map_err(|e| fail(op)(&e))?;
                if let Some(body) = events.remove(*seq).map_err(|e| fail(op)(&e))? {
                    freed += body.value().len() as u64;
                }
            } else {
                refs.insert(*seq, left).map_err(|e| fail(op)(&e))?;
            }
        }
    }
    txn.commit().map_err(|e| fail("committing")(&e))?;
    Ok(freed)
}

/// Moves pending entries of a webhook to its dead letters with a reason.
pub(super) fn bury(db: &Database, webhook: &str, seqs: &[u64], reason: &str) -> Result<()> {
    let op = "burying";
    let mut txn = db.begin_write().map_err(|e| fail(op)(&e))?;
    txn.set_durability(Durability::Immediate);
    {
        let mut pending = txn.open_table(PENDING).map_err(|e| fail(op)(&e))?;
        let mut dead = txn.open_table(DEAD).map_err(|e| fail(op)(&e))?;
        for seq in seqs {
            if pending
                .remove((webhook, *seq))
                .map_err(|e| fail(op)(&e))?
                .is_some()
            {
                dead.insert((webhook, *seq), reason)
                    .map_err(|e| fail(op)(&e))?;
            }
        }
    }
    txn.commit().map_err(|e| fail("committing")(&e))
}

/// Moves every dead letter of a webhook back to its pending entries; returns them.
pub(super) fn replay(db: &Database, webhook: &str) -> Result<Vec<Stored>> {
    let op = "replaying";
    let dead: Vec<Stored> = listed(db, webhook, true)?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let mut txn = db.begin_write().map_err(|e| fail(op)(&e))?;
    txn.set_durability(Durability::Immediate);
    {
        let mut pending = txn.open_table(PENDING).map_err(|e| fail(op)(&e))?;
        let mut table = txn.open_table(DEAD).map_err(|e| fail(op)(&e))?;
        for stored in &dead {
            table
                .remove((webhook, stored.seq))
                .map_err(|e| fail(op)(&e))?;
            pending
                .insert((webhook, stored.seq), 0)
                .map_err(|e| fail(op)(&e))?;
        }
    }
    txn.commit().map_err(|e| fail("committing")(&e))?;
    Ok(dead)
}

/// Number of stored events.
pub(super) fn len(db: &Database) -> Result<u64> {
    let read = db.begin_read().map_err(|e| fail("reading")(&e))?;
    let events = read.open_table(EVENTS).map_err(|e| fail("reading")(&e))?;
    events.len().map_err(|e| fail("reading")(&e))
}

/// An event read back whole, with who still wants it and who gave up on it (the
/// salvage of a damaged file).
pub(super) struct Dumped {
    pub seq: u64,
    pub body: Vec<u8>,
    pub pending: Vec<String>,
    pub dead: Vec<(String, String)>,
}

/// Every event that some webhook still references, in order.
pub(super) fn dump(db: &Database) -> Result<Vec<Dumped>> {
    let op = "reading";
    let read = db.begin_read().map_err(|e| fail(op)(&e))?;
    let events = read.open_table(EVENTS).map_err(|e| fail(op)(&e))?;
    let mut by_seq: std::collections::BTreeMap<u64, Dumped> = Default::default();
    let pending = read.open_table(PENDING).map_err(|e| fail(op)(&e))?;
    for item in pending.iter().map_err(|e| fail(op)(&e))? {
        let (key, _) = item.map_err(|e| fail(op)(&e))?;
        let (webhook, seq) = key.value();
        by_seq
            .entry(seq)
            .or_insert_with(|| Dumped {
                seq,
                body: Vec::new(),
                pending: Vec::new(),
                dead: Vec::new(),
            })
            .pending
            .push(webhook.to_owned());
    }
    let dead = read.open_table(DEAD).map_err(|e| fail(op)(&e))?;
    for item in dead.iter().map_err(|e| fail(op)(&e))? {
        let (key, reason) = item.map_err(|e| fail(op)(&e))?;
        let (webhook, seq) = key.value();
        by_seq
            .entry(seq)
            .or_insert_with(|| Dumped {
                seq,
                body: Vec::new(),
                pending: Vec::new(),
                dead: Vec::new(),
            })
            .dead
            .push((webhook.to_owned(), reason.value().to_owned()));
    }
    let mut out = Vec::with_capacity(by_seq.len());
    for (seq, mut dumped) in by_seq {
        if let Some(body) = events.get(seq).map_err(|e| fail(op)(&e))? {
            dumped.body = body.value().to_vec();
            out.push(dumped);
        }
    }
    Ok(out)
}
