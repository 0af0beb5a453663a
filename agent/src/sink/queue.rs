//! One target's queue: its lanes of stored events (an event's lane is chosen by its
//! identifier, so one peer's events go one at a time, in order), whether it is paused,
//! its statistics, and the batches a lane takes from its head.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::Notify;

use super::config::{BatchConfig, Format, RetryConfig};
use super::filter::Filter;
use super::stats::{self, WebhookStats};
use super::transport::Transport;
use crate::outbox::Stored;

/// A delivery target with its queue.
pub struct Target {
    /// How its batches are sent.
    pub transport: Arc<dyn Transport>,
    /// Its event filters, parsed.
    pub filters: Vec<Filter>,
    /// Its event filters as configured.
    pub events: Vec<String>,
    /// Configured `enabled`.
    pub enabled: bool,
    /// Retry settings.
    pub retry: RetryConfig,
    /// Batch limits (batch format).
    pub batch: BatchConfig,
    /// Lanes, pause and statistics.
    pub state: Mutex<TargetState>,
    /// One wake-up per lane.
    pub wake: Vec<Notify>,
}

/// What changes while a target runs.
#[derive(Default)]
pub struct TargetState {
    /// Queued events per lane, oldest first.
    pub lanes: Vec<VecDeque<Stored>>,
    /// Why delivery is paused (e.g. 410 Gone), if it is.
    pub paused: Option<String>,
    /// Counters and recent deliveries.
    pub stats: WebhookStats,
    /// Dead letters now stored.
    pub dead_letters: usize,
    /// The failure last logged (one warning per distinct failure, not per attempt
    /// and lane); cleared, with a line, when delivery works again.
    pub logged_failure: Option<String>,
}

impl Target {
    /// The target's name.
    pub fn name(&self) -> &str {
        self.transport.name()
    }
}

/// The lane of an identifier: FNV-1a (64 bit) of its bytes modulo the lanes. A
/// fixed, documented hash, so that an event reloaded from the outbox after a restart
/// or an upgrade of Rust goes to the same lane as the events of its peer still
/// arriving.
pub fn lane_of(identifier: &str, lanes: usize) -> usize {
    let hash = identifier
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    (hash % lanes as u64) as usize
}

/// Events queued over all lanes.
pub fn queued(state: &TargetState) -> usize {
    state.lanes.iter().map(VecDeque::len).sum()
}

/// Takes the oldest queued event of a target (across its lanes) out of its queue,
/// counted as dropped; `None` when the queue is empty by now.
pub fn pop_oldest(state: &mut TargetState) -> Option<Stored> {
    let lane = state
        .lanes
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.front().map(|s| (s.seq, i)))
        .min()
        .map(|(_, i)| i)?;
    let stored = state.lanes[lane].pop_front()?;
    state.stats.counters.dropped += 1;
    Some(stored)
}

/// The target with the most events queued, if any has one.
pub fn fullest(targets: &[Target]) -> Option<&Target> {
    targets
        .iter()
        .map(|t| (queued(&t.state.lock().expect("not poisoned")), t))
        .filter(|(queued, _)| *queued > 0)
        .max_by_key(|(queued, _)| *queued)
        .map(|(_, t)| t)
}

/// Takes the head of a lane: one event (single) or up to the batch limits.
pub fn take(lane: &VecDeque<Stored>, format: Format, batch: &BatchConfig) -> Vec<Stored> {
    match format {
        Format::Single => lane.front().cloned().into_iter().collect(),
        Format::Batch => {
            let mut bytes = 2;
            let mut out = Vec::new();
            for stored in lane {
                if !out.is_empty()
                    && (out.len() >= batch.max_events || bytes + stored.size + 1 > batch.max_bytes)
                {
                    break;
                }
                bytes += stored.size + 1;
                out.push(stored.clone());
            }
            out
        }
    }
}

/// The public state of one target (API, CLI).
#[derive(Clone, Debug, Serialize)]
pub struct WebhookStatus {
    /// Name.
    pub name: String,
    /// `webhook` or `nats`.
    pub kind: &'static str,
    /// Where it delivers (URL without credentials or query; a NATS target's
    /// servers and stream).
    pub url: String,
    /// Why it cannot deliver now, when the transport knows (not connected, stream
    /// missing).
    pub problem: Option<String>,
    /// Configured `enabled`.
    pub enabled: bool,
    /// Why delivery is paused (e.g. 410 Gone), if it is.
    pub paused: Option<String>,
    /// Body format.
    pub format: Format,
    /// Event filters.
    pub events: Vec<String>,
    /// Events waiting.
    pub queued: usize,
    /// Age of the oldest waiting event.
    pub oldest_queued_age_seconds: f64,
    /// Dead letters now stored.
    pub dead_letters: usize,
    /// Counters since the agent started.
    #[serde(flatten)]
    pub counters: stats::Counters,
    /// Average request latency.
    pub average_latency_ms: Option<f64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A target's public state now.
pub fn status(target: &Target) -> WebhookStatus {
    let state = target.state.lock().expect("not poisoned");
    let oldest = state
        .lanes
        .iter()
        .filter_map(|l| l.front().map(|s| s.created_ms))
        .min();
    WebhookStatus {
        name: target.name().to_owned(),
        kind: target.transport.kind(),
        url: target.transport.location(),
        problem: target.transport.problem(),
        enabled: target.enabled,
        paused: state.paused.clone(),
        format: target.transport.format(),
        events: target.events.clone(),
        queued: queued(&state),
        oldest_queued_age_seconds: oldest
            .map(|ms| now_ms().saturating_sub(ms) as f64 / 1000.0)
            .unwrap_or(0.0),
        dead_letters: state.dead_letters,
        counters: state.stats.counters.clone(),
        average_latency_ms: state.stats.average_latency_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn stored(seq: u64) -> Stored {
        Stored {
            seq,
            identifier: "x".into(),
            created_ms: 0,
            size: 100,
        }
    }

    #[test]
    fn lanes_are_stable_per_identifier() {
        // Values from an independent FNV-1a implementation (Python).
        assert_eq!(lane_of("peer-a", 4), 3);
        assert_eq!(lane_of("peer-a", 7), 4);
        assert_eq!(
            lane_of("LXYw72SS8k55FzfXTwoCDiHaVLr4hwAtu3KqfWqKi3M=", 4),
            1
        );
        assert_eq!(
            lane_of("LXYw72SS8k55FzfXTwoCDiHaVLr4hwAtu3KqfWqKi3M=", 7),
            3
        );
        let lanes: HashSet<usize> = (0..100).map(|i| lane_of(&format!("p{i}"), 4)).collect();
        assert_eq!(lanes.len(), 4, "identifiers spread over the lanes");
    }

    #[test]
    fn a_lane_emptied_between_the_choice_and_the_pop_is_no_panic() {
        let mut state = TargetState {
            lanes: vec![
                VecDeque::from([stored(5)]),
                VecDeque::from([stored(2), stored(7)]),
            ],
            ..Default::default()
        };
        // The policy chose this target (it had events)...
        assert_eq!(queued(&state), 3);
        assert_eq!(
            pop_oldest(&mut state).map(|s| s.seq),
            Some(2),
            "the oldest across lanes"
        );
        // ...and its lanes delivered everything before the pop: nothing to take.
        state.lanes.iter_mut().for_each(VecDeque::clear);
        assert_eq!(pop_oldest(&mut state), None);
        assert_eq!(state.stats.counters.dropped, 1);
    }

    #[test]
    fn batches_respect_both_limits() {
        let lane: VecDeque<Stored> = (0..10).map(stored).collect();
        let mut batch = BatchConfig {
            max_events: 4,
            ..Default::default()
        };
        assert_eq!(take(&lane, Format::Batch, &batch).len(), 4);
        batch.max_events = 100;
        batch.max_bytes = 350;
        assert_eq!(take(&lane, Format::Batch, &batch).len(), 3);
        batch.max_bytes = 10;
        assert_eq!(
            take(&lane, Format::Batch, &batch).len(),
            1,
            "one oversized event goes alone"
        );
        assert_eq!(take(&lane, Format::Single, &batch).len(), 1);
    }
}
