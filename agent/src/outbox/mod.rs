//! The durable event outbox: every accepted event is written to an embedded,
//! crash-safe store on local disk before it counts as accepted, with one pending entry
//! per webhook that wants it, and is removed once every such webhook has delivered it
//! (or buried it as a dead letter that was then forgotten).
//!
//! Two tiers under one sequence space: `store` is [redb](https://docs.rs/redb) (a
//! pure-Rust embedded key-value store with ACID transactions, copy-on-write B-trees
//! and a checksummed commit protocol, so a crash, even SIGKILL mid-commit, leaves the
//! last committed state; appends are fsynced), and `overlay` holds what the disk
//! could not take (full, failing) so that it is delivered from memory meanwhile and
//! written once the disk works; retries of the disk back off and are logged once per
//! change of state. A damaged file found at start is set aside and salvaged
//! ([`recover`]); dead letters leave by age and share of the size limit
//! ([`retention`]). `config` holds the `[outbox]` keys, `records` the types that go
//! in and come out.

mod config;
mod overlay;
mod records;
pub mod recover;
pub mod retention;
mod store;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::Database;

pub use config::OutboxConfig;
pub use records::{Appended, DiskChange, Incoming, Stored};
pub use recover::Damage;

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

/// Most events held in memory while the disk cannot be written; beyond it the oldest
/// are dropped and counted.
pub const MEMORY_LIMIT: usize = 100_000;

/// First and longest wait before the disk is tried again after a failure.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

#[derive(Debug, Default)]
struct Health {
    /// The first failure of the current failing spell.
    failing: Option<String>,
    next_try: Option<Instant>,
    backoff: Duration,
    /// A change not yet taken by [`Outbox::take_change`].
    change: Option<DiskChange>,
}

/// The outbox.
pub struct Outbox {
    /// The open database; `None` after a failed write until it is reopened (redb
    /// refuses further use of a handle that saw an I/O error).
    db: RwLock<Option<Database>>,
    path: PathBuf,
    next_seq: Mutex<u64>,
    disk_bytes: AtomicU64,
    overlay: Mutex<overlay::Overlay>,
    health: Mutex<Health>,
    /// Acknowledgements (webhook, sequences, of dead letters) the disk did not take.
    deferred: Mutex<Vec<(String, Vec<u64>, bool)>>,
    memory_limit: usize,
    damage: Option<Damage>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) `dir/outbox.redb`. A damaged file is set aside and what it
    /// still holds salvaged ([`Outbox::damage`] says what happened).
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        Self::open_with_limit(dir, MEMORY_LIMIT)
    }

    /// [`Outbox::open`] with another memory-tier limit (tests).
    pub fn open_with_limit(dir: &Path, memory_limit: usize) -> Result<Self, OutboxError> {
        let path = dir.join("outbox.redb");
        let error = |op, message: String| OutboxError::Store {
            path: path.clone(),
            op,
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| error("creating its directory", e.to_string()))?;
        let opened = recover::open(&path).map_err(|m| error("opening", m))?;
        Ok(Self {
            db: RwLock::new(Some(opened.db)),
            path,
            next_seq: Mutex::new(opened.last_seq + 1),
            disk_bytes: AtomicU64::new(opened.bytes),
            overlay: Mutex::default(),
            health: Mutex::default(),
            deferred: Mutex::default(),
            memory_limit,
            damage: opened.damage,
        })
    }

    /// The damage found when the file was opened, if any.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, op: &'static str, message: impl std::fmt::Display) -> OutboxError {
        OutboxError::Store {
            path: self.path.clone(),
            op,
            message: message.to_string(),
        }
    }

    fn store_error(&self, failure: store::StoreFailure) -> OutboxError {
        self.error(failure.op, failure.message)
    }

    /// Runs `f` on the open database, reopening it first if a failed write closed it.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, store::StoreFailure>,
    ) -> Result<T, OutboxError> {
        {
            let guard = self.db.read().expect("not poisoned");
            if let Some(db) = guard.as_ref() {
                return f(db).map_err(|e| self.store_error(e));
            }
        }
        let mut guard = self.db.write().expect("not poisoned");
        if guard.is_none() {
            let db = store::open_database(&self.path).map_err(|e| self.error("reopening", e))?;
            tracing::debug!(path = %self.path.display(), "outbox reopened");
            *guard = Some(db);
        }
        f(guard.as_ref().expect("opened")).map_err(|e| self.store_error(e))
    }

    /// Runs a write on the database; a failure closes it (redb refuses a handle that
    /// saw an I/O error) and starts or continues a failing spell.
    fn write_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, store::StoreFailure>,
    ) -> Result<T, OutboxError> {
        let result = self.with_db(f);
        match &result {
            Ok(_) => {}
            Err(err) => {
                *self.db.write().expect("not poisoned") = None;
                let mut health = self.health.lock().expect("not poisoned");
                health.backoff = (health.backoff * 2).clamp(RETRY_BACKOFF.0, RETRY_BACKOFF.1);
                health.next_try = Some(Instant::now() + health.backoff);
                if health.failing.is_none() {
                    health.failing = Some(err.to_string());
                    health.change = Some(DiskChange::Failing(err.to_string()));
                }
            }
        }
        result
    }

    /// Whether the disk may be tried now (not failing, or its back-off is over).
    fn may_try(&self) -> bool {
        let health = self.health.lock().expect("not poisoned");
        health.next_try.is_none_or(|at| Instant::now() >= at)
    }

    fn recovered(&self, written: usize) {
        let mut health = self.health.lock().expect("not poisoned");
        if health.failing.take().is_some() {
            health.change = Some(DiskChange::Recovered(written));
        }
        health.next_try = None;
        health.backoff = Duration::ZERO;
    }

    /// The last change of the disk's state, once (for one log line per change).
    pub fn take_change(&self) -> Option<DiskChange> {
        self.health.lock().expect("not poisoned").change.take()
    }

    /// Bytes of stored and held events.
    pub fn bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed) + self.overlay.lock().expect("not poisoned").bytes()
    }

    /// Events held in memory, not yet on disk.
    pub fn unwritten(&self) -> usize {
        self.overlay.lock().expect("not poisoned").len()
    }

    /// Appends events: durably (fsynced, together with anything held in memory
    /// before them) when the disk takes them, else held in memory. Events no webhook
    /// wants are not kept (sequence 0).
    pub fn append(&self, incoming: &[Incoming<'_>]) -> Appended {
        let mut next = self.next_seq.lock().expect("not poisoned");
        let mut appended = Appended {
            seqs: assign_seqs(incoming, &mut next),
            ..Default::default()
        };
        let mut overlay = self.overlay.lock().expect("not poisoned");
        if self.may_try() {
            // Whatever is held in memory goes first, in the same transaction.
            let held: Vec<(u64, overlay::Held)> =
                overlay.iter().map(|(s, h)| (s, h.clone())).collect();
            let mut rows: Vec<store::Row<'_>> = held.iter().map(|(seq, h)| h.row(*seq)).collect();
            rows.extend(
                incoming
                    .iter()
                    .zip(&appended.seqs)
                    .filter(|(_, seq)| **seq != 0)
                    .map(|(item, seq)| store::Row {
                        seq: *seq,
                        body: item.body,
                        pending: item.webhooks.clone(),
                        dead: Vec::new(),
                    }),
            );
            if rows.is_empty() {
                return appended;
            }
            match self.write_db(|db| store::write(db, &rows)) {
                Ok(added) => {
                    self.disk_bytes.fetch_add(added, Ordering::Relaxed);
                    overlay.clear();
                    drop(overlay);
                    self.recovered(held.len());
                    self.apply_deferred();
                    return appended;
                }
                Err(err) => appended.unwritten = Some(err),
            }
        } else {
            appended.unwritten = Some(self.still_failing());
        }
        appended.dropped = self.hold(&mut overlay, incoming, &appended.seqs);
        appended
    }

    /// The error of the current failing spell, for an append that did not try.
    fn still_failing(&self) -> OutboxError {
        let failing = self.health.lock().expect("not poisoned").failing.clone();
        self.error(
            "appending",
            failing.unwrap_or_else(|| "the disk is failing".into()),
        )
    }

    /// Holds events in memory; returns per webhook the events the full memory tier
    /// dropped.
    fn hold(
        &self,
        overlay: &mut overlay::Overlay,
        incoming: &[Incoming<'_>],
        seqs: &[u64],
    ) -> Vec<(String, u64)> {
        let mut dropped: Vec<(String, u64)> = Vec::new();
        for (item, seq) in incoming.iter().zip(seqs) {
            if *seq == 0 {
                continue;
            }
            let lost = overlay.hold(
                *seq,
                overlay::Held {
                    body: item.body.to_vec(),
                    identifier: item.identifier.to_owned(),
                    created_ms: item.created_ms,
                    pending: item.webhooks.iter().map(|w| (*w).to_owned()).collect(),
                    dead: Vec::new(),
                },
                self.memory_limit,
            );
            for (webhook, count) in lost {
                match dropped.iter_mut().find(|(w, _)| *w == webhook) {
                    Some((_, n)) => *n += count,
                    None => dropped.push((webhook, count)),
                }
            }
        }
        dropped
    }

    /// Tries to write what is held in memory (when the disk's back-off allows);
    /// returns how many events were written.
    pub fn flush(&self) -> Result<usize, OutboxError> {
        let nothing_held = self.overlay.lock().expect("not poisoned").is_empty()
            && self.deferred.lock().expect("not poisoned").is_empty();
        if nothing_held || !self.may_try() {
            return Ok(0);
        }
        let before = self.unwritten();
        let appended = self.append(&[]);
        match appended.unwritten {
            Some(err) => Err(err),
            None => Ok(before),
        }
    }

    /// Applies the acknowledgements the disk could not take when they were made.
    fn apply_deferred(&self) {
        let deferred = std::mem::take(&mut *self.deferred.lock().expect("not poisoned"));
        for (webhook, seqs, dead) in &deferred {
            if self.release_on_disk(webhook, seqs, *dead).is_err() {
                self.deferred.lock().expect("not poisoned").push((
                    webhook.clone(),
                    seqs.clone(),
                    *dead,
                ));
            }
        }
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
        let mut out = self.with_db(|db| store::listed(db, webhook, dead))?;
        out.extend(
            self.overlay
                .lock()
                .expect("not poisoned")
                .listed(webhook, dead),
        );
        out.sort_by_key(|(stored, _)| stored.seq);
        Ok(out)
    }

    /// The bodies of events, in the order asked (missing ones are skipped).
    pub fn load(&self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let mut out = Vec::with_capacity(seqs.len());
        let on_disk: Vec<u64> = {
            let overlay = self.overlay.lock().expect("not poisoned");
            overlay.load(seqs, &mut out);
            seqs.iter()
                .copied()
                .filter(|s| !overlay.contains(*s))
                .collect()
        };
        if !on_disk.is_empty() {
            self.with_db(|db| store::load(db, &on_disk, &mut out))?;
        }
        let position = |seq: u64| seqs.iter().position(|s| *s == seq).unwrap_or(usize::MAX);
        if out.len() > 1 {
            out.sort_by_key(|(seq, _)| position(*seq));
        }
        Ok(out)
    }

    /// The webhook delivered (or dropped) these events: forget them for it, and
    /// delete the events nobody references any more.
    pub fn ack(&self, webhook: &str, seqs: &[u64]) -> Result<(), OutboxError> {
        self.release(webhook, seqs, false)
    }

    /// Forgets dead letters (expired, or dropped).
    pub fn forget_dead(&self, webhook: &str, seqs: &[u64]) -> Result<(), OutboxError> {
        self.release(webhook, seqs, true)
    }

    fn release(&self, webhook: &str, seqs: &[u64], dead: bool) -> Result<(), OutboxError> {
        let on_disk = self
            .overlay
            .lock()
            .expect("not poisoned")
            .release(webhook, seqs, dead);
        if on_disk.is_empty() {
            return Ok(());
        }
        // While the disk fails the acknowledgement waits in memory (a crash meanwhile
        // only repeats those deliveries) instead of hammering the disk.
        if !self.may_try() || self.release_on_disk(webhook, &on_disk, dead).is_err() {
            self.deferred
                .lock()
                .expect("not poisoned")
                .push((webhook.to_owned(), on_disk, dead));
        }
        Ok(())
    }

    fn release_on_disk(&self, webhook: &str, seqs: &[u64], dead: bool) -> Result<(), OutboxError> {
        let freed = if dead {
            self.write_db(|db| store::release(db, webhook, seqs, store::DEAD))?
        } else {
            self.write_db(|db| store::release(db, webhook, seqs, store::PENDING))?
        };
        let _ = self
            .disk_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(freed))
            });
        Ok(())
    }

    /// Moves pending events of a webhook to its dead letters with a reason.
    pub fn bury(&self, webhook: &str, seqs: &[u64], reason: &str) -> Result<(), OutboxError> {
        let on_disk = self
            .overlay
            .lock()
            .expect("not poisoned")
            .bury(webhook, seqs, reason);
        if on_disk.is_empty() {
            return Ok(());
        }
        self.write_db(|db| store::bury(db, webhook, &on_disk, reason))
    }

    /// Moves every dead letter of a webhook back to its pending events; returns them.
    pub fn replay(&self, webhook: &str) -> Result<Vec<Stored>, OutboxError> {
        let mut out = self.write_db(|db| store::replay(db, webhook))?;
        out.extend(self.overlay.lock().expect("not poisoned").replay(webhook));
        out.sort_by_key(|s| s.seq);
        Ok(out)
    }

    /// Number of stored and held events.
    pub fn len(&self) -> Result<u64, OutboxError> {
        Ok(self.with_db(store::len)? + self.unwritten() as u64)
    }

    /// Whether no event is stored or held.
    pub fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len()? == 0)
    }
}

/// Sequence numbers for events, in order (0 for an event no webhook wants).
fn assign_seqs(incoming: &[Incoming<'_>], next: &mut u64) -> Vec<u64> {
    incoming
        .iter()
        .map(|item| {
            if item.webhooks.is_empty() {
                0
            } else {
                *next += 1;
                *next - 1
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
