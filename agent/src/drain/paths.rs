//! Reading the path map: each session's counter window turned into running figures
//! (received, lost, late, duplicates) and the deltas since the last drain; sessions
//! idle past a keypair's life are read one last time and deleted.
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
use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData};

use super::batch::lookup_batch;
use super::{DrainError, FastMap};
use crate::snapshot::{Endpoint, PathCounts, PathDirection, PathSample};

/// How long after a session's last message a gap in its window still counts as
/// "maybe late": reordering on real paths is a matter of milliseconds.
pub(super) const SETTLE: Duration = Duration::from_secs(1);
/// A session idle this long is read once more and deleted from the map: WireGuard
/// rejects a keypair after 180 s, so no message on its index can follow.
pub(super) const RETIRE: Duration = Duration::from_secs(300);

/// The figures of one session already reported.
#[derive(Clone, Copy, Default)]
struct Reported {
    counts: PathCounts,
    /// The raw `packets` of the map entry (a lower one: the entry was re-created).
    raw_packets: u64,
}

/// The path map and what was reported of each session.
pub(super) struct Paths {
    map: BpfHashMap<MapData, PathKey, PathState>,
    batch_supported: bool,
    keys: Vec<PathKey>,
    values: Vec<u8>,
    reported: FastMap<PathKey, Reported>,
}

/// A session's running figures now, from its map entry at monotonic time `now_ns`.
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
    pub(super) fn new(map: aya::maps::Map) -> Result<Self, aya::maps::MapError> {
        Ok(Self {
            map: BpfHashMap::try_from(map)?,
            batch_supported: true,
            keys: Vec::new(),
            values: Vec::new(),
            reported: FastMap::default(),
        })
    }

    /// Every session whose figures moved since the last drain, at monotonic `now_ns`.
    pub(super) fn read(&mut self, now_ns: u64) -> Result<Vec<PathSample>, DrainError> {
        let entries = self.entries().map_err(|source| DrainError::Read {
            map: MAP_PATHS,
            source,
        })?;
        let mut samples = Vec::new();
        let mut retired = Vec::new();
        let mut present = FastMap::default();
        for (key, state) in &entries {
            present.insert(*key, ());
            let now = figures(state, now_ns);
            let reported = self.reported.entry(*key).or_default();
            if state.packets < reported.raw_packets {
                // Evicted and re-created under the same index: a new incarnation.
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
            if now_ns.saturating_sub(state.updated_ns) > RETIRE.as_nanos() as u64 {
                retired.push(*key);
            }
        }
        for key in retired {
            // Read above with its gaps settled: nothing of it is left to report.
            let _ = self.map.remove(&key);
            self.reported.remove(&key);
        }
        // Sessions the LRU evicted: their last figures were reported already.
        self.reported.retain(|key, _| present.contains_key(key));
        Ok(samples)
    }

    fn entries(&mut self) -> std::io::Result<Vec<(PathKey, PathState)>> {
        if self.batch_supported {
            let fd = self.map.map().fd().as_fd().as_raw_fd();
            let size = std::mem::size_of::<PathState>().next_multiple_of(8);
            let mut out = Vec::with_capacity(self.reported.len());
            match lookup_batch(fd, size, &mut self.keys, &mut self.values, |key, value| {
                // SAFETY: the kernel wrote a value of this Pod type here.
                let state: PathState =
                    unsafe { std::ptr::read_unaligned(value.as_ptr() as *const PathState) };
                out.push((*key, state));
            }) {
                Ok(()) => return Ok(out),
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    self.batch_supported = false;
                }
                Err(err) => return Err(err),
            }
        }
        self.map
            .iter()
            .map(|item| item.map_err(std::io::Error::other))
            .collect()
    }
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
