//! Reads the datapath: drains the per-CPU endpoint map with batched lookups into a
//! typed [`Snapshot`] (totals and deltas per endpoint) every `drain_interval`, and
//! reads the session ring buffer as soon as it has records, on one dedicated thread.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent_common::{
    EndpointKey, EndpointStats, GlobalStats, SessionEvent, EVENT_ENDPOINT_CHANGED,
    EVENT_HANDSHAKE_COMPLETE, MAP_ENDPOINTS, MAP_EVENTS, MAP_GLOBALS, MAP_WG_PEERS, ROLE_INITIATOR,
    ROLE_RESPONDER,
};
use aya::maps::{IterableMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};

use crate::kernel_mode::KernelPeers;
use crate::loader::{Datapath, LoaderError};
use crate::snapshot::{
    merge_stats, stats_delta, BootClock, DatapathMessage, Endpoint, EndpointSample, Role,
    SessionNotice, Snapshot,
};

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
    endpoints: PerCpuHashMap<MapData, EndpointKey, EndpointStats>,
    globals: PerCpuArray<MapData, GlobalStats>,
    ring: RingBuf<MapData>,
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
            globals,
            ring,
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

    /// Reads every endpoint (summed over CPUs) with batched lookups, falling back to
    /// key-by-key iteration on kernels without batch operations.
    pub fn read_endpoints(&mut self) -> Result<Vec<(EndpointKey, EndpointStats)>, DrainError> {
        if self.batch_supported {
            match self.read_endpoints_batched() {
                Ok(entries) => return Ok(entries),
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!("batched map lookups unsupported, reading key by key");
                    self.batch_supported = false;
                }
                Err(source) => {
                    return Err(DrainError::Read {
                        map: MAP_ENDPOINTS,
                        source,
                    })
                }
            }
        }
        let mut entries = Vec::new();
        for item in self.endpoints.iter() {
            let (key, values) = item.map_err(|e| DrainError::Read {
                map: MAP_ENDPOINTS,
                source: std::io::Error::other(e),
            })?;
            entries.push((key, sum_cpus(&values)));
        }
        Ok(entries)
    }

    fn read_endpoints_batched(&mut self) -> std::io::Result<Vec<(EndpointKey, EndpointStats)>> {
        let fd = self.endpoints.map().fd().as_fd().as_raw_fd();
        let value_stride = std::mem::size_of::<EndpointStats>().next_multiple_of(8);
        let keys = &mut self.batch_keys;
        keys.resize(BATCH_ENTRIES as usize, EndpointKey::default());
        let values = &mut self.batch_values;
        values.resize(BATCH_ENTRIES as usize * self.cpus * value_stride, 0);
        let mut out = Vec::with_capacity(self.last_raw.len());
        let mut in_batch = 0u64;
        let mut out_batch = 0u64;
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &in_batch as *const u64 as u64
                },
                out_batch: &mut out_batch as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH_ENTRIES,
                map_fd: fd as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: `attr` points at buffers sized for `count` keys and per-CPU values,
            // which outlive the call; the kernel writes at most `count` entries.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(std::io::Error::last_os_error);
            let done = matches!(&err, Some(e) if e.raw_os_error() == Some(libc::ENOENT));
            if let Some(err) = err.filter(|_| !done) {
                return Err(err);
            }
            for (i, key) in keys.iter().take(attr.count as usize).enumerate() {
                let mut total = EndpointStats::default();
                for cpu in 0..self.cpus {
                    let at = (i * self.cpus + cpu) * value_stride;
                    // SAFETY: the kernel wrote a value of this Pod type at this offset.
                    let value: EndpointStats = unsafe {
                        std::ptr::read_unaligned(values[at..].as_ptr() as *const EndpointStats)
                    };
                    merge_stats(&mut total, &value);
                }
                out.push((*key, total));
            }
            if done {
                return Ok(out);
            }
            in_batch = out_batch;
            first = false;
        }
    }

    /// One drain cycle: reads the maps and computes totals and deltas.
    pub fn drain(&mut self) -> Result<Snapshot, DrainError> {
        let started = Instant::now();
        let clock = BootClock::now();
        // Kernel readings first: whatever WireGuard counted by then went through the
        // classifiers before, so the wire view read next already holds it.
        let kernel_peers = match &mut self.kernel {
            Some(kernel) => Some(kernel.read().map_err(|e| DrainError::Read {
                map: MAP_WG_PEERS,
                source: std::io::Error::other(e),
            })?),
            None => None,
        };
        let raw = self.read_endpoints()?;
        let map_entries = raw.len();
        let mut samples = Vec::with_capacity(raw.len());
        let seen = self.sequence + 1;
        for (key, now) in &raw {
            let Some(endpoint) = Endpoint::from_key(key) else {
                continue;
            };
            let slot = self
                .last_raw
                .entry(*key)
                .or_insert((EndpointStats::default(), 0));
            let before = slot.0;
            *slot = (*now, seen);
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
        // Keys gone from the map since the last drain keep their totals in
        // `carried` (in case they come back) and appear once more, in this snapshot
        // only: a snapshot is not a growing list of every endpoint ever seen.
        let mut gone = Vec::new();
        self.last_raw.retain(|key, (last, at)| {
            if *at == seen {
                return true;
            }
            gone.push((*key, *last));
            false
        });
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
        self.evict_idle(&raw, &clock);
        self.sequence += 1;
        Ok(Snapshot {
            sequence: self.sequence,
            taken_at: Some(SystemTime::now()),
            duration: started.elapsed(),
            endpoints: samples,
            map_entries,
            map_capacity: self.capacity,
            globals: self.read_globals()?,
            kernel_peers,
        })
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
        }
        Ok(total)
    }

    /// Every record waiting in the ring buffer, decoded, duplicates dropped.
    pub fn read_notices(&mut self) -> Vec<SessionNotice> {
        let clock = BootClock::now();
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<SessionEvent>() {
                // SAFETY: the datapath writes whole `SessionEvent` records.
                let record: SessionEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SessionEvent) };
                records.push(record);
            }
        }
        let now = Instant::now();
        self.completed
            .retain(|_, seen| now.duration_since(*seen) < NOTICE_DEDUP_WINDOW);
        records
            .into_iter()
            .filter_map(|record| {
                if record.kind == EVENT_HANDSHAKE_COMPLETE
                    && self
                        .completed
                        .insert((record.endpoint.device, record.local_index), now)
                        .is_some()
                {
                    return None;
                }
                decode_notice(&record, &clock)
            })
            .collect()
    }

    /// The thread body: drains every `interval`, forwards ring-buffer notices as soon
    /// as they arrive, and stops when `stop` is set. `send` blocks when the consumer
    /// is behind (the channel is bounded); the time spent blocked is logged.
    pub fn run(
        mut self,
        interval: Duration,
        send: crossbeam_channel::Sender<DatapathMessage>,
        stop: Arc<AtomicBool>,
    ) {
        let mut next_drain = Instant::now();
        // Drains that found no traffic at all in a row: past IDLE_DRAINS the interval
        // stretches (IDLE_STRETCH times) until traffic or a session notice returns.
        // Notices never wait for a drain, so connects stay immediate; only idle
        // counters (which do not move) are read less often.
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_drain {
                match self.drain() {
                    Ok(snapshot) => {
                        let moved = snapshot
                            .endpoints
                            .iter()
                            .any(|s| crate::snapshot::has_traffic(&s.delta));
                        idle = if moved { 0 } else { idle.saturating_add(1) };
                        if !forward(&send, DatapathMessage::Snapshot(snapshot)) {
                            return;
                        }
                    }
                    Err(err) => tracing::error!("drain failed: {err}"),
                }
                next_drain = now
                    + if idle >= IDLE_DRAINS {
                        interval * IDLE_STRETCH
                    } else {
                        interval
                    };
            }
            let notices = self.read_notices();
            if !notices.is_empty() && idle >= IDLE_DRAINS {
                // Traffic is back: drain at the normal pace from now on.
                idle = 0;
                next_drain = next_drain.min(Instant::now() + interval);
            }
            for notice in notices {
                if !forward(&send, DatapathMessage::Session(notice)) {
                    return;
                }
            }
            // Wake for the ring buffer, the eBPF log, the next drain, or at least
            // every 100 ms to notice `stop`.
            let timeout = next_drain
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            self.wait(timeout);
        }
    }

    fn wait(&mut self, timeout: Duration) {
        let mut fds = vec![libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(logger) = &self.logger {
            fds.push(libc::pollfd {
                fd: logger.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis() as i32,
            )
        };
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// Sends downstream; false when the receiver is gone (shutting down).
fn forward(send: &crossbeam_channel::Sender<DatapathMessage>, message: DatapathMessage) -> bool {
    let started = Instant::now();
    if send.send(message).is_err() {
        return false;
    }
    let blocked = started.elapsed();
    if blocked > Duration::from_millis(100) {
        tracing::warn!(?blocked, "datapath consumer is behind: the drain waited");
    }
    true
}

fn decode_notice(record: &SessionEvent, clock: &BootClock) -> Option<SessionNotice> {
    let endpoint = Endpoint::from_key(&record.endpoint)?;
    let at = clock.wall(record.timestamp_ns)?;
    match record.kind {
        EVENT_HANDSHAKE_COMPLETE => Some(SessionNotice::HandshakeComplete {
            endpoint,
            role: match record.role {
                ROLE_INITIATOR => Role::Initiator,
                ROLE_RESPONDER => Role::Responder,
                _ => return None,
            },
            at,
            local_index: record.local_index,
            remote_index: record.remote_index,
        }),
        EVENT_ENDPOINT_CHANGED => Some(SessionNotice::EndpointChanged {
            previous: Endpoint::from_key(&record.previous)?,
            endpoint,
            at,
            local_index: record.local_index,
        }),
        _ => None,
    }
}

fn sum_cpus(values: &[EndpointStats]) -> EndpointStats {
    let mut total = EndpointStats::default();
    for v in values {
        merge_stats(&mut total, v);
    }
    total
}

/// Whether any counter decreased (the map entry was deleted and re-created).
fn went_backwards(now: &EndpointStats, before: &EndpointStats) -> bool {
    now.rx.packets + now.rx.invalid_packets < before.rx.packets + before.rx.invalid_packets
        || now.tx.packets + now.tx.invalid_packets < before.tx.packets + before.tx.invalid_packets
        || now.socket_drops < before.socket_drops
}

/// `BPF_MAP_LOOKUP_BATCH` command number (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Totals of endpoints that left the map (evicted idle, or deleted and re-created),
/// so that a key coming back continues its totals. Bounded by the map's capacity:
/// beyond it the entries idle longest are forgotten (the peers' counters, built from
/// deltas, stay exact; only such an endpoint's own running total would restart).
struct Carried {
    limit: usize,
    totals: FastMap<EndpointKey, EndpointStats>,
}

impl Carried {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            totals: FastMap::default(),
        }
    }

    /// Adds a departed incarnation's counters to the key's carried totals.
    fn bank(&mut self, key: &EndpointKey, stats: &EndpointStats) {
        merge_stats(self.totals.entry(*key).or_default(), stats);
        if self.totals.len() > self.limit + self.limit / 8 {
            // Amortised: prune to the limit once it is exceeded by an eighth.
            let mut by_age: Vec<(u64, EndpointKey)> = self
                .totals
                .iter()
                .map(|(k, s)| (s.rx.last_packet_ns.max(s.tx.last_packet_ns), *k))
                .collect();
            by_age.sort_unstable_by_key(|(last, _)| *last);
            let excess = self.totals.len() - self.limit;
            for (_, key) in by_age.into_iter().take(excess) {
                self.totals.remove(&key);
            }
        }
    }

    /// The carried totals of a key (zero if none).
    fn get(&self, key: &EndpointKey) -> EndpointStats {
        if self.totals.is_empty() {
            return EndpointStats::default();
        }
        self.totals.get(key).copied().unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.totals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> EndpointKey {
        Endpoint {
            device: 1,
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
        }
        .to_key()
    }

    #[test]
    fn carried_totals_are_bounded_and_keep_the_recent_ones() {
        let mut carried = Carried::new(100);
        for port in 0..1000u16 {
            let mut stats = EndpointStats::default();
            stats.rx.packets = 1;
            stats.rx.last_packet_ns = u64::from(port);
            carried.bank(&key(port), &stats);
            assert!(carried.len() <= 100 + 100 / 8 + 1, "{}", carried.len());
        }
        assert_eq!(carried.get(&key(999)).rx.packets, 1, "recent kept");
        assert_eq!(carried.get(&key(0)).rx.packets, 0, "oldest forgotten");
        let mut again = EndpointStats::default();
        again.rx.packets = 4;
        again.rx.last_packet_ns = 5000;
        carried.bank(&key(999), &again);
        assert_eq!(carried.get(&key(999)).rx.packets, 5, "totals add up");
    }

    #[test]
    fn a_recreated_entry_is_detected() {
        let mut before = EndpointStats::default();
        before.rx.packets = 10;
        let mut now = EndpointStats::default();
        now.rx.packets = 2;
        assert!(went_backwards(&now, &before));
        now.rx.packets = 12;
        assert!(!went_backwards(&now, &before));
    }

    #[test]
    fn notices_decode_roles_and_reject_garbage() {
        let clock = BootClock::now();
        let mut record = SessionEvent {
            kind: EVENT_HANDSHAKE_COMPLETE,
            role: ROLE_RESPONDER,
            timestamp_ns: clock.boot_ns(),
            local_index: 7,
            remote_index: 9,
            endpoint: Endpoint {
                device: 1,
                addr: "10.0.0.1:51820".parse().unwrap(),
            }
            .to_key(),
            previous: EndpointKey::default(),
        };
        match decode_notice(&record, &clock) {
            Some(SessionNotice::HandshakeComplete {
                role, local_index, ..
            }) => {
                assert_eq!(role, Role::Responder);
                assert_eq!(local_index, 7);
            }
            other => panic!("unexpected {other:?}"),
        }
        record.role = 77;
        assert_eq!(decode_notice(&record, &clock), None);
        record.kind = EVENT_ENDPOINT_CHANGED;
        // previous is the zero key (family 0): not decodable.
        assert_eq!(decode_notice(&record, &clock), None);
    }
}
