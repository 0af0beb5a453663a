//! Reading the path array: each session's counter window turned into running figures
//! (received, lost, late, duplicates) and the deltas since the last drain. The array
//! is mapped read-only (no copy through system calls); a slot is taken only when its
//! sequence numbers say no update was under way.
//!
//! Loss is `expected - received`: `highest - first + 1` counters numbered, `packets -
//! duplicates - early` of them seen. A counter still missing inside the window of a
//! session that moved within [`SETTLE`] may be merely late, so it is not counted yet;
//! once the session is quiet (or the gap left the window) it is. A running figure is
//! never lowered: a message counted lost that still arrives (later than [`SETTLE`] or
//! more than 64 messages late) stays counted as lost and is counted as late too.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use agent_common::{PathKey, PathState, MAP_PATHS, PATH_RX, PATH_WINDOW};
use aya::maps::MapData;

use super::batch::lookup_batch;
use super::{DrainError, FastMap};
use crate::snapshot::{Endpoint, PathCounts, PathDirection, PathSample};

/// How long after a session's last message a gap in its window still counts as
/// "maybe late": reordering on real paths is a matter of milliseconds.
pub(super) const SETTLE: Duration = Duration::from_secs(1);
/// Every slot is read this often while traffic moves (between, only the slots the
/// dirty bits name): it catches a dirty bit lost to two CPUs setting bits of one word
/// at once, and tells which sessions left their slots.
pub(super) const FULL_SCAN: Duration = Duration::from_secs(30);
/// Reads of a slot caught mid-update before it is left for the next scan.
const READ_TRIES: usize = 64;

/// The figures of one session already reported.
#[derive(Clone, Copy, Default)]
struct Reported {
    counts: PathCounts,
    /// The raw `packets` of the slot (a lower one: the slot was given to a new
    /// session with the same owner).
    raw_packets: u64,
}

/// The path array and what was reported of each session.
pub(super) struct Paths {
    map: MapData,
    slots: u32,
    /// The array mapped read-only (`None`: read with batched lookups instead).
    mapped: Option<Mapped>,
    /// The dirty bits mapped read-write (`None`: every scan reads every slot).
    dirty: Option<DirtyBits>,
    /// Slots to read again at the next scan: gaps still settling, or caught
    /// mid-update.
    unsettled: Vec<u32>,
    /// Monotonic ns of the last scan of every slot (`None`: none yet).
    last_full_ns: Option<u64>,
    keys: Vec<u32>,
    values: Vec<u8>,
    reported: FastMap<PathKey, Reported>,
    /// Monotonic ns of the last drain that saw traffic: the slots are scanned only
    /// while something can still move in them (traffic, or gaps still settling).
    last_traffic_ns: Option<u64>,
}

/// A shared mapping of a `BPF_F_MMAPABLE` array, unmapped on drop.
struct SharedMapping {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is owned by this value; its users read it with volatile or
// atomic accesses only.
unsafe impl Send for SharedMapping {}

impl SharedMapping {
    /// Maps `bytes` of the array behind `fd` (rounded up to pages), shared, read-only
    /// or read-write.
    fn new(fd: std::os::fd::RawFd, bytes: usize, writable: bool) -> std::io::Result<Self> {
        let len = bytes.next_multiple_of(4096);
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a BPF_F_MMAPABLE array shared; the kernel checks the length
        // against the map (and refuses a writable mapping of a frozen one).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { base, len })
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` come from a successful mmap of this length.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The path array, mapped read-only.
struct Mapped {
    base: *const PathState,
    _mapping: SharedMapping,
}

// SAFETY: as for `SharedMapping`: the memory is owned here and only read.
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(fd: std::os::fd::RawFd, slots: u32) -> std::io::Result<Self> {
        let mapping =
            SharedMapping::new(fd, slots as usize * std::mem::size_of::<PathState>(), false)?;
        Ok(Self {
            base: mapping.base as *const PathState,
            _mapping: mapping,
        })
    }

    /// A consistent copy of slot `i`, or `None` while an update is under way (or
    /// for a free slot).
    fn read(&self, i: usize) -> Option<PathState> {
        use std::sync::atomic::{fence, Ordering};
        // SAFETY: `i` is below the slot count the mapping covers; the memory is only
        // read, with volatile reads, as the datapath may write it at any time.
        unsafe {
            let slot = self.base.add(i);
            let end = std::ptr::read_volatile(std::ptr::addr_of!((*slot).seq_end));
            if end == 0 {
                return None;
            }
            fence(Ordering::Acquire);
            let copy = std::ptr::read_volatile(slot);
            fence(Ordering::Acquire);
            let begin = std::ptr::read_volatile(std::ptr::addr_of!((*slot).seq_begin));
            (begin == end).then_some(copy)
        }
    }
}

/// The dirty bits: one per slot, set by the datapath, taken (swapped to zero) here.
struct DirtyBits {
    base: *mut u64,
    words: usize,
    _mapping: SharedMapping,
}

// SAFETY: as for `SharedMapping`: the words are touched only through atomics.
unsafe impl Send for DirtyBits {}

impl DirtyBits {
    fn new(fd: std::os::fd::RawFd, words: usize) -> std::io::Result<Self> {
        let mapping = SharedMapping::new(fd, words * 8, true)?;
        Ok(Self {
            base: mapping.base as *mut u64,
            words,
            _mapping: mapping,
        })
    }

    /// Takes every set bit (clearing it): the slots written since the last take.
    fn take(&self, out: &mut Vec<u32>) {
        use std::sync::atomic::{AtomicU64, Ordering};
        for w in 0..self.words {
            // SAFETY: `w` is within the mapping; the word is only accessed atomically
            // here (the datapath's plain read-modify-write may re-set a bit, which
            // only causes one more read).
            let word = unsafe { AtomicU64::from_ptr(self.base.add(w)) };
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let bit = bits.trailing_zeros();
                out.push((w * 64) as u32 + bit);
                bits &= bits - 1;
            }
        }
    }

    /// Clears every bit (before a scan of every slot).
    fn clear(&self) {
        let mut ignored = Vec::new();
        self.take(&mut ignored);
    }
}

/// What reading one slot gave.
enum SlotRead {
    /// Never used.
    Free,
    /// Written while it was read (even after retries).
    Busy,
    /// A consistent copy.
    State(PathState),
}

/// A session's running figures now, from its slot at monotonic time `now_ns`.
pub(super) fn figures(state: &PathState, now_ns: u64) -> PathCounts {
    let expected = state.highest.saturating_sub(state.first) + 1;
    let received = state
        .packets
        .saturating_sub(state.duplicates)
        .saturating_sub(state.early);
    let settling = now_ns.saturating_sub(state.updated_ns) < SETTLE.as_nanos() as u64;
    let maybe_late = if settling {
        let width = expected.min(PATH_WINDOW);
        let mask = if width >= 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        width - u64::from((state.window & mask).count_ones())
    } else {
        0
    };
    PathCounts {
        packets: received,
        lost: expected.saturating_sub(received).saturating_sub(maybe_late),
        late: state.late,
        duplicates: state.duplicates,
    }
}

impl Paths {
    pub(super) fn new(
        map: aya::maps::Map,
        dirty: aya::maps::Map,
        slots: u32,
    ) -> Result<Self, aya::maps::MapError> {
        let aya::maps::Map::Array(map) = map else {
            return Err(aya::maps::MapError::InvalidName {
                name: MAP_PATHS.into(),
            });
        };
        let mapped = match Mapped::new(map.fd().as_fd().as_raw_fd(), slots) {
            Ok(mapped) => Some(mapped),
            Err(err) => {
                tracing::info!("the path array cannot be mapped ({err}): reading it with lookups");
                None
            }
        };
        let dirty = match dirty {
            aya::maps::Map::Array(dirty) => {
                match DirtyBits::new(dirty.fd().as_fd().as_raw_fd(), (slots / 64) as usize) {
                    Ok(bits) => Some(bits),
                    Err(err) => {
                        tracing::info!("the path dirty bits cannot be mapped ({err}): every scan reads every slot");
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(Self {
            map,
            slots,
            mapped,
            dirty,
            unsettled: Vec::new(),
            last_full_ns: None,
            keys: Vec::new(),
            values: Vec::new(),
            reported: FastMap::default(),
            last_traffic_ns: None,
        })
    }

    /// Every session whose figures moved since the last drain, at monotonic `now_ns`;
    /// `traffic` says whether this drain saw any datagram at all.
    pub(super) fn read(
        &mut self,
        now_ns: u64,
        traffic: bool,
    ) -> Result<Vec<PathSample>, DrainError> {
        if traffic {
            self.last_traffic_ns = Some(now_ns);
        }
        // Nothing was written since the scan that found everything settled.
        let Some(last) = self.last_traffic_ns else {
            return Ok(Vec::new());
        };
        // Every message came before the drain that last saw traffic (a later one
        // would show as traffic now): a scan SETTLE after it finds every gap settled,
        // and is the last until traffic returns, whatever the drain interval.
        if !traffic && now_ns.saturating_sub(last) >= SETTLE.as_nanos() as u64 {
            self.last_traffic_ns = None;
        }
        let (entries, complete) = self.entries(now_ns).map_err(|source| DrainError::Read {
            map: MAP_PATHS,
            source,
        })?;
        let mut samples = Vec::new();
        let mut present = FastMap::default();
        for (slot, state) in &entries {
            if now_ns.saturating_sub(state.updated_ns) < SETTLE.as_nanos() as u64 {
                // Its gaps may still be late: read it again until they settle.
                self.unsettled.push(*slot);
            }
            let key = state.owner;
            present.insert(key, ());
            let now = figures(state, now_ns);
            let reported = self.reported.entry(key).or_default();
            if state.packets < reported.raw_packets {
                *reported = Reported::default();
            }
            reported.raw_packets = state.packets;
            let merged = PathCounts {
                packets: now.packets.max(reported.counts.packets),
                lost: now.lost.max(reported.counts.lost),
                late: now.late.max(reported.counts.late),
                duplicates: now.duplicates.max(reported.counts.duplicates),
            };
            let delta = merged.since(&reported.counts);
            reported.counts = merged;
            if let (false, Some(endpoint)) = (delta.is_empty(), Endpoint::from_key(&state.endpoint))
            {
                samples.push(PathSample {
                    endpoint,
                    direction: if key.direction == PATH_RX {
                        PathDirection::Receive
                    } else {
                        PathDirection::Transmit
                    },
                    index: key.index,
                    delta,
                });
            }
        }
        // Sessions whose slot went to another: their last figures were reported. Only
        // a scan of every slot that read each whole can tell (the session of an
        // unread slot would be counted again from zero).
        if complete {
            self.reported.retain(|key, _| present.contains_key(key));
        }
        Ok(samples)
    }

    /// The slots to read now with what they hold, and whether this was a scan of
    /// every slot that read each whole. Between full scans (every [`FULL_SCAN`],
    /// and always without the dirty bits) only the slots written since the last
    /// read and those still settling are read.
    fn entries(&mut self, now_ns: u64) -> std::io::Result<(Vec<(u32, PathState)>, bool)> {
        let Some(mapped) = &self.mapped else {
            return self.entries_batched();
        };
        let full = self.dirty.is_none()
            || self
                .last_full_ns
                .is_none_or(|at| now_ns.saturating_sub(at) >= FULL_SCAN.as_nanos() as u64);
        let mut wanted = std::mem::take(&mut self.unsettled);
        if full {
            if let Some(dirty) = &self.dirty {
                dirty.clear();
            }
            self.last_full_ns = Some(now_ns);
            wanted = (0..self.slots).collect();
        } else if let Some(dirty) = &self.dirty {
            dirty.take(&mut wanted);
            wanted.sort_unstable();
            wanted.dedup();
        }
        let mut out = Vec::with_capacity(wanted.len().min(self.slots as usize));
        let mut complete = full;
        for slot in wanted {
            match read_slot(mapped, slot as usize) {
                SlotRead::Free => {}
                SlotRead::Busy => {
                    complete = false;
                    self.unsettled.push(slot);
                }
                SlotRead::State(state) => {
                    if state.packets > 0 || state.jumps > 0 {
                        out.push((slot, state));
                    }
                }
            }
        }
        Ok((out, complete))
    }

    /// Every slot through batched lookups (no mapping: kernels before 5.5).
    fn entries_batched(&mut self) -> std::io::Result<(Vec<(u32, PathState)>, bool)> {
        let mut out = Vec::with_capacity(self.reported.len());
        let mut complete = true;
        let fd = self.map.fd().as_fd().as_raw_fd();
        let size = std::mem::size_of::<PathState>();
        lookup_batch(fd, size, &mut self.keys, &mut self.values, |slot, value| {
            // SAFETY: the kernel wrote a value of this Pod type here.
            let state: PathState =
                unsafe { std::ptr::read_unaligned(value.as_ptr() as *const PathState) };
            if state.seq_end == 0 {
                return;
            }
            if state.seq_begin != state.seq_end {
                complete = false;
            } else if state.packets > 0 || state.jumps > 0 {
                out.push((*slot, state));
            }
        })?;
        Ok((out, complete))
    }
}

/// Reads one slot, retrying while an update is under way.
fn read_slot(mapped: &Mapped, slot: usize) -> SlotRead {
    for _ in 0..READ_TRIES {
        if let Some(state) = mapped.read(slot) {
            return SlotRead::State(state);
        }
        // SAFETY: as in `Mapped::read`.
        let end = unsafe {
            std::ptr::read_volatile(std::ptr::addr_of!((*mapped.base.add(slot)).seq_end))
        };
        if end == 0 {
            return SlotRead::Free;
        }
        std::hint::spin_loop();
    }
    SlotRead::Busy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(first: u64, highest: u64, window: u64, packets: u64) -> PathState {
        PathState {
            first,
            highest,
            window,
            packets,
            updated_ns: 1_000,
            ..Default::default()
        }
    }

    const QUIET: u64 = 10_000_000_000;

    #[test]
    fn a_gap_is_lost_once_the_session_is_quiet() {
        // Counters 0..=9 numbered, 7 missing: bit 2 (9 - 7) clear.
        let s = state(0, 9, 0b11_1111_1011, 9);
        assert_eq!(figures(&s, 1_000).lost, 0, "maybe late while settling");
        assert_eq!(figures(&s, QUIET).lost, 1);
        assert_eq!(figures(&s, QUIET).packets, 9);
    }

    #[test]
    fn gaps_that_left_the_window_are_lost_at_once() {
        // 200 numbered, 190 received, the window full: 10 left the window unseen.
        let s = state(0, 199, u64::MAX, 190);
        assert_eq!(figures(&s, 1_000).lost, 10);
    }

    #[test]
    fn duplicates_and_early_messages_are_not_received_twice() {
        let mut s = state(100, 109, 0b11_1111_1111, 13);
        s.duplicates = 2;
        s.early = 1;
        let f = figures(&s, QUIET);
        assert_eq!((f.packets, f.lost, f.duplicates), (10, 0, 2));
    }
}
