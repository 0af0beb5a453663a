//! Reads the datapath: drains the endpoints that moved since the last drain from the
//! per-CPU endpoint map into a typed [`Snapshot`] (totals and deltas per endpoint)
//! every `drain_interval`, and reads the session ring buffer as soon as it has
//! records, on one dedicated thread.
//!
//! The files: `run` (the thread), this module (one drain cycle), `changes` (which
//! endpoints to read), `batch` (the map reads), `endpoints` (bookkeeping across
//! drains), `ring` (session notices), [`kernel_peers`] (kernel-mode readings of kernel
//! WireGuard's own counters).

mod batch;
mod changes;
mod endpoints;
pub mod kernel_peers;
mod paths;
mod ring;
mod run;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use agent_common::{
    EndpointEntry, EndpointKey, EndpointStats, GlobalStats, MAP_DRAIN_EPOCH, MAP_ENDPOINTS,
    MAP_ENDPOINT_CHANGES, MAP_EVENTS, MAP_GLOBALS, MAP_PATHS, MAP_WG_PEERS,
};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf};

use crate::datapath::{Datapath, LoaderError};
use crate::snapshot::{merge_stats, stats_delta, BootClock, Endpoint, EndpointSample, Snapshot};
use endpoints::{went_backwards, Carried};
use kernel_peers::KernelPeers;

/// Errors draining the maps.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Taking a map from the loaded object failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A map had an unexpected type.
    #[error("opening map {map}: {source}")]
    Open {
        /// The map.
        map: &'static str,
        /// The aya error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Reading a map failed.
    #[error("reading map {map}: {source}")]
    Read {
        /// The map.
        map: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Consecutive drains without any traffic before the drain interval stretches.
const IDLE_DRAINS: u32 = 5;
/// How much the interval stretches while idle.
const IDLE_STRETCH: u32 = 5;

/// Entries fetched per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH_ENTRIES: u32 = 4096;
/// Above this share of `max_peers` in use, idle endpoints are evicted from the map.
const EVICT_ABOVE_FILL: f64 = 0.5;
/// An endpoint idle (no datagram either way) this long may be evicted; its totals
/// stay in userspace, so nothing counted is lost.
const EVICT_IDLE: Duration = Duration::from_secs(15 * 60);
/// How long a completed-handshake index is remembered to drop duplicate notices.
const NOTICE_DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// A hash map with foldhash: the drain looks up every endpoint every cycle, and
/// SipHash's DoS resistance buys nothing for keys the kernel map already bounds.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Owns the counter maps and the ring buffer; produces snapshots and notices.
pub struct Drain {
    endpoints: PerCpuHashMap<MapData, EndpointKey, EndpointEntry>,
    /// The change ring and the drain epoch: which endpoints a drain reads.
    changes: changes::Changes,
    globals: PerCpuArray<MapData, GlobalStats>,
    ring: RingBuf<MapData>,
    /// Per-session transport counters.
    paths: paths::Paths,
    /// The kernel-mode peer readings, when kernel-mode attribution is on.
    kernel: Option<KernelPeers>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    capacity: u32,
    cpus: usize,
    batch_supported: bool,
    /// Buffers of the batched lookup (keys, per-CPU values), kept across drains: a
    /// fresh 4096-entry buffer per drain cost a page-faulting allocation each time.
    batch_keys: Vec<EndpointKey>,
    batch_values: Vec<u8>,
    sequence: u64,
    /// The raw per-endpoint values of the last drain and the drain that saw them.
    last_raw: FastMap<EndpointKey, (EndpointStats, u64)>,
    /// Totals of earlier incarnations of a key (evicted, re-created), bounded.
    carried: Carried,
    /// (device, local index) of recently completed handshakes, to drop duplicates.
    completed: HashMap<(u32, u32), Instant>,
}

impl Drain {
    /// Takes the counter maps and ring buffer out of a loaded datapath.
    pub fn new(datapath: &mut Datapath, capacity: u32) -> Result<Self, DrainError> {
        let open = |map: &'static str, e| DrainError::Open {
            map,
            source: Box::new(e),
        };
        let endpoints = PerCpuHashMap::try_from(datapath.take_map(MAP_ENDPOINTS)?)
            .map_err(|e| open(MAP_ENDPOINTS, e))?;
        let globals = PerCpuArray::try_from(datapath.take_map(MAP_GLOBALS)?)
            .map_err(|e| open(MAP_GLOBALS, e))?;
        let ring =
            RingBuf::try_from(datapath.take_map(MAP_EVENTS)?).map_err(|e| open(MAP_EVENTS, e))?;
        let changes = changes::Changes::new(
            RingBuf::try_from(datapath.take_map(MAP_ENDPOINT_CHANGES)?)
                .map_err(|e| open(MAP_ENDPOINT_CHANGES, e))?,
            Array::try_from(datapath.take_map(MAP_DRAIN_EPOCH)?)
                .map_err(|e| open(MAP_DRAIN_EPOCH, e))?,
        );
        let paths = paths::Paths::new(
            datapath.take_map(MAP_PATHS)?,
            datapath.take_map(agent_common::MAP_PATH_DIRTY)?,
            crate::datapath::path_slots(capacity),
        )
        .map_err(|e| open(MAP_PATHS, e))?;
        let kernel = match datapath.kernel_mode() {
            Ok(_) => Some(
                KernelPeers::new(datapath.take_map(MAP_WG_PEERS)?)
                    .map_err(|e| open(MAP_WG_PEERS, e))?,
            ),
            Err(_) => None,
        };
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, source)| DrainError::Read { map: what, source })?;
        Ok(Self {
            endpoints,
            changes,
            globals,
            ring,
            paths,
            kernel,
            logger: datapath.take_logger(),
            capacity,
            cpus,
            batch_supported: true,
            batch_keys: Vec::new(),
            batch_values: Vec::new(),
            sequence: 0,
            last_raw: FastMap::default(),
            carried: Carried::new(capacity as usize),
            completed: HashMap::new(),
        })
    }

    /// One drain cycle: reads the endpoints that moved (or, at times, the whole map;
    /// see `changes`) and computes their totals and deltas.
    pub fn drain(&mut self) -> Result<Snapshot, DrainError> {
        self.drain_with(|| {})
    }

    /// [`Drain::drain`] with `between` run after the new drain epoch is set and
    /// before the change ring is read: traffic there is announced in this drain's
    /// epoch, so a later write in the same epoch is announced no more (the case the
    /// re-read exists for).
    #[cfg(feature = "test-util")]
    pub fn drain_interleaved(&mut self, between: impl FnOnce()) -> Result<Snapshot, DrainError> {
        self.drain_with(between)
    }

    fn drain_with(&mut self, between: impl FnOnce()) -> Result<Snapshot, DrainError> {
        let started = Instant::now();
        let clock = BootClock::now();
        let seen = self.sequence + 1;
        // Kernel readings first: whatever WireGuard counted by then went through the
        // classifiers before, so the wire view read next already holds it.
        let kernel_peers = match &mut self.kernel {
            Some(kernel) => Some(kernel.read().map_err(|e| DrainError::Read {
                map: MAP_WG_PEERS,
                source: std::io::Error::other(e),
            })?),
            None => None,
        };
        let globals = self.read_globals()?;
        let plan = self
            .changes
            .plan(
                seen,
                globals.changes_lost,
                self.last_raw.len(),
                started,
                between,
            )
            .map_err(|e| DrainError::Read {
                map: MAP_ENDPOINT_CHANGES,
                source: std::io::Error::other(e),
            })?;
        let (samples, map_entries) = match plan {
            changes::Plan::Everything(reason) => {
                tracing::trace!(reason, "reading the whole endpoint map");
                let raw = self.read_endpoints()?;
                let mut samples = self.samples(&raw, seen, &clock);
                samples.extend(self.departed(seen, &clock));
                self.evict_idle(&raw, &clock);
                (samples, raw.len())
            }
            changes::Plan::Keys(keys) => {
                let raw = self.read_endpoint_keys(&keys)?;
                (self.samples(&raw, seen, &clock), self.last_raw.len())
            }
        };
        let traffic = samples
            .iter()
            .any(|s| crate::snapshot::has_traffic(&s.delta));
        let paths = self.paths.read(clock.boot_ns(), traffic)?;
        self.sequence += 1;
        Ok(Snapshot {
            sequence: self.sequence,
            taken_at: Some(SystemTime::now()),
            duration: started.elapsed(),
            endpoints: samples,
            map_entries,
            map_capacity: self.capacity,
            globals,
            kernel_peers,
            paths,
        })
    }

    /// The endpoints of `raw` whose counters moved since the last drain: their totals
    /// and deltas. Every endpoint of `raw` is marked as seen by drain `seen`.
    fn samples(
        &mut self,
        raw: &[(agent_common::EndpointKey, EndpointStats)],
        seen: u64,
        clock: &BootClock,
    ) -> Vec<EndpointSample> {
        let mut samples = Vec::new();
        for (key, now) in raw {
            let Some(endpoint) = Endpoint::from_key(key) else {
                continue;
            };
            let slot = self
                .last_raw
                .entry(*key)
                .or_insert((EndpointStats::default(), 0));
            let before = slot.0;
            *slot = (*now, seen);
            if *now == before {
                continue;
            }
            let delta = if went_backwards(now, &before) {
                // The entry was deleted and re-created: bank the old incarnation.
                self.carried.bank(key, &before);
                *now
            } else {
                stats_delta(now, &before)
            };
            let mut totals = self.carried.get(key);
            merge_stats(&mut totals, now);
            samples.push(EndpointSample {
                endpoint,
                totals,
                delta,
                last_rx: clock.wall(now.rx.last_packet_ns),
                last_tx: clock.wall(now.tx.last_packet_ns),
                last_handshake_message: clock
                    .wall(now.rx.last_handshake_ns.max(now.tx.last_handshake_ns)),
            });
        }
        samples
    }

    /// Keys gone from the map since the last drain keep their totals in `carried`
    /// (in case they come back) and appear once more, in this snapshot only: a
    /// snapshot is not a growing list of every endpoint ever seen.
    fn departed(&mut self, seen: u64, clock: &BootClock) -> Vec<EndpointSample> {
        let mut gone = Vec::new();
        self.last_raw.retain(|key, (last, at)| {
            if *at == seen {
                return true;
            }
            gone.push((*key, *last));
            false
        });
        let mut samples = Vec::new();
        for (key, last) in gone {
            self.carried.bank(&key, &last);
            if let Some(endpoint) = Endpoint::from_key(&key) {
                let totals = self.carried.get(&key);
                samples.push(EndpointSample {
                    endpoint,
                    totals,
                    delta: EndpointStats::default(),
                    last_rx: clock.wall(totals.rx.last_packet_ns),
                    last_tx: clock.wall(totals.tx.last_packet_ns),
                    last_handshake_message: clock
                        .wall(totals.rx.last_handshake_ns.max(totals.tx.last_handshake_ns)),
                });
            }
        }
        samples
    }

    /// Keeps the bounded map from filling with endpoints long gone (roaming clients,
    /// scanners): once it is more than half full, entries idle for 15 minutes are
    /// deleted after their final values were read into `carried` by this drain.
    fn evict_idle(&mut self, raw: &[(EndpointKey, EndpointStats)], clock: &BootClock) {
        if (raw.len() as f64) < self.capacity as f64 * EVICT_ABOVE_FILL {
            return;
        }
        let idle_before = clock.boot_ns().saturating_sub(EVICT_IDLE.as_nanos() as u64);
        let mut evicted = 0;
        for (key, stats) in raw {
            if stats.rx.last_packet_ns.max(stats.tx.last_packet_ns) < idle_before
                && self.endpoints.remove(key).is_ok()
            {
                if let Some((last, _)) = self.last_raw.remove(key) {
                    self.carried.bank(key, &last);
                }
                evicted += 1;
            }
        }
        if evicted > 0 {
            tracing::info!(evicted, "evicted idle endpoints from the datapath map");
        }
    }

    fn read_globals(&self) -> Result<GlobalStats, DrainError> {
        let values = self.globals.get(&0, 0).map_err(|e| DrainError::Read {
            map: MAP_GLOBALS,
            source: std::io::Error::other(e),
        })?;
        let mut total = GlobalStats::default();
        for v in values.iter() {
            total.overflow_packets += v.overflow_packets;
            total.overflow_bytes += v.overflow_bytes;
            total.rx_fragments += v.rx_fragments;
            total.tx_fragments += v.tx_fragments;
            total.malformed += v.malformed;
            total.events_lost += v.events_lost;
            total.unattributed_drops += v.unattributed_drops;
            total.session_errors += v.session_errors;
            total.path_collisions += v.path_collisions;
            total.changes_lost += v.changes_lost;
        }
        Ok(total)
    }
}
