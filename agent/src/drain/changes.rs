//! Which endpoints a drain reads: those the datapath announced in the change ring
//! since the last drain, the ones read last time once more, or, when that would not
//! be exact or not be cheaper, the whole map.
//!
//! The protocol with the datapath (`announce` in agent-ebpf): before reading, the
//! drain sets a new epoch; a CPU's copy of an endpoint that moves writes its key to
//! the ring the first time it moves in an epoch, after its counters. A write the
//! drain's read misses happened in an epoch whose announcement this drain (or the
//! next) consumed, so every key consumed is read by two drains in a row: the second
//! read sees what the first missed. The whole map is read at the first drain, when
//! the ring overflowed (the datapath counts the lost records), when so many keys
//! changed that the batched read is cheaper, and every [`FULL_READ_EVERY`] anyway
//! (which also finds the endpoints that left the map and those to evict).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use agent_common::EndpointKey;
use aya::maps::{Array, MapData, RingBuf};

/// The whole map is read at least this often.
pub(super) const FULL_READ_EVERY: Duration = Duration::from_secs(30);

/// A key lookup costs about as much as two entries of the batched read of the whole
/// map (measured by `cargo xtask bench drain`): above `known / KEYS_PER_FULL_READ`
/// keys, the whole map is read instead.
const KEYS_PER_FULL_READ: usize = 2;

/// What a drain reads.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// Every entry of the map, with the reason.
    Everything(&'static str),
    /// These keys only.
    Keys(Vec<EndpointKey>),
}

/// The change ring, the epoch and what the last drain consumed.
pub(super) struct Changes {
    ring: RingBuf<MapData>,
    epoch: Array<MapData, u64>,
    /// Keys consumed by the last drain: read once more by this one.
    reread: Vec<EndpointKey>,
    /// The datapath's lost-record count at the last drain.
    lost_seen: u64,
    last_full: Option<Instant>,
}

impl Changes {
    pub(super) fn new(ring: RingBuf<MapData>, epoch: Array<MapData, u64>) -> Self {
        Self {
            ring,
            epoch,
            reread: Vec::new(),
            lost_seen: 0,
            last_full: None,
        }
    }

    /// Starts epoch `epoch` (every later change is announced again), runs `between`
    /// (tests: traffic at the worst moment), then decides what this drain reads.
    /// `lost` is the datapath's count of records that did not fit in the ring;
    /// `known` the number of entries the map holds as far as the drain knows.
    pub(super) fn plan(
        &mut self,
        epoch: u64,
        lost: u64,
        known: usize,
        now: Instant,
        between: impl FnOnce(),
    ) -> Result<Plan, aya::maps::MapError> {
        self.epoch.set(0, epoch, 0)?;
        between();
        let mut keys: HashSet<EndpointKey, foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(self.reread.len(), Default::default());
        let mut consumed = Vec::new();
        while let Some(record) = self.ring.next() {
            if record.len() < std::mem::size_of::<EndpointKey>() {
                continue;
            }
            // SAFETY: the datapath writes whole `EndpointKey` records.
            let key = unsafe { std::ptr::read_unaligned(record.as_ptr() as *const EndpointKey) };
            if keys.insert(key) {
                consumed.push(key);
            }
        }
        keys.extend(self.reread.drain(..));
        self.reread = consumed;
        let overflowed = lost != self.lost_seen;
        self.lost_seen = lost;
        let reason = match self.last_full {
            None => Some("first drain"),
            Some(_) if overflowed => Some("change ring overflowed"),
            Some(at) if now.duration_since(at) >= FULL_READ_EVERY => Some("periodic"),
            Some(_) if keys.len() * KEYS_PER_FULL_READ > known => Some("most entries changed"),
            Some(_) => None,
        };
        Ok(match reason {
            Some(reason) => {
                self.last_full = Some(now);
                Plan::Everything(reason)
            }
            None => Plan::Keys(keys.into_iter().collect()),
        })
    }
}
