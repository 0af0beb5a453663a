//! Events coming in: each is stored in the outbox with one pending entry per target
//! whose filters select it, then queued on that target's lane for its identifier.
//! The full-outbox policy lives here because it chooses among the targets' queues:
//! when `outbox.max_bytes` would be exceeded, the oldest undelivered events of the
//! target with the most queued are dropped (counted and logged), and with nothing
//! queued the oldest dead letters make room.

use super::filter;
use super::queue::{fullest, lane_of, pop_oldest};
use super::Inner;
use crate::events::Event;
use crate::outbox::{Incoming, Stored};

impl Inner {
    /// Stores and queues events (blocking: call it from a thread, not a task).
    pub(super) fn accept(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .map(|e| serde_json::to_vec(e).expect("events serialize"))
            .collect();
        let incoming: Vec<Incoming> = events
            .iter()
            .zip(&bodies)
            .map(|(event, body)| Incoming {
                body,
                identifier: &event.identifier,
                created_ms: (event.timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
                webhooks: self
                    .targets
                    .iter()
                    .filter(|t| filter::any_matches(&t.filters, event))
                    .map(|t| t.name())
                    .collect(),
            })
            .collect();
        let needed: u64 = incoming
            .iter()
            .filter(|i| !i.webhooks.is_empty())
            .map(|i| i.body.len() as u64)
            .sum();
        self.make_room(needed);
        let appended = self.outbox.append(&incoming);
        self.after_write(&appended.dropped);
        self.enqueue(&incoming, &appended.seqs);
    }

    /// Into each target's lanes under one lock per target, then one wake per lane.
    fn enqueue(&self, incoming: &[Incoming<'_>], seqs: &[u64]) {
        for target in &self.targets {
            let lanes = target.wake.len();
            let mut woken = vec![false; lanes];
            let mut state = target.state.lock().expect("not poisoned");
            for (item, seq) in incoming.iter().zip(seqs) {
                if !item.webhooks.contains(&target.name()) {
                    continue;
                }
                let lane = lane_of(item.identifier, lanes);
                state.lanes[lane].push_back(Stored {
                    seq: *seq,
                    identifier: item.identifier.to_owned(),
                    created_ms: item.created_ms,
                    size: item.body.len(),
                });
                woken[lane] = true;
            }
            drop(state);
            for (lane, woken) in woken.into_iter().enumerate() {
                if woken {
                    target.wake[lane].notify_one();
                }
            }
        }
    }

    /// Gauges, counters and the one log line per change of the disk's state, after
    /// a write or a flush.
    pub(super) fn after_write(&self, dropped: &[(String, u64)]) {
        for (webhook, count) in dropped {
            tracing::error!(
                webhook = %webhook,
                dropped = count,
                "events dropped: the disk cannot be written and the memory buffer is full"
            );
            self.metrics
                .dropped
                .with_label_values(&[webhook])
                .inc_by(*count);
            if let Some(target) = self.target(webhook) {
                target
                    .state
                    .lock()
                    .expect("not poisoned")
                    .stats
                    .counters
                    .dropped += count;
            }
        }
        match self.outbox.take_change() {
            Some(crate::outbox::DiskChange::Failing(err)) => tracing::error!(
                "{err}; holding events in memory (delivered from there meanwhile) and retrying the disk with back-off"
            ),
            Some(crate::outbox::DiskChange::Recovered(written)) => tracing::info!(
                written,
                "the outbox is writable again; events held in memory are stored"
            ),
            None => {}
        }
        self.metrics.spilled.set(self.outbox.unwritten() as i64);
        self.metrics.outbox_bytes.set(self.outbox.bytes() as i64);
    }

    /// The full-outbox policy (see the module documentation).
    fn make_room(&self, needed: u64) {
        let mut dropped = 0usize;
        while self.outbox.bytes() + needed > self.max_bytes {
            // The choice and the pop are one critical section per target: a lane may
            // empty its queue between the choice and the pop, and then another
            // target is chosen (nothing assumes the chosen one is still full).
            let Some(target) = fullest(&self.targets) else {
                if !self.drop_oldest_dead() {
                    tracing::warn!(
                        bytes = self.outbox.bytes(),
                        max_bytes = self.max_bytes,
                        "outbox over its limit with nothing left to drop: storing anyway"
                    );
                    break;
                }
                continue;
            };
            let Some(oldest) = pop_oldest(&mut target.state.lock().expect("not poisoned")) else {
                continue;
            };
            if let Err(err) = self.outbox.ack(target.name(), &[oldest.seq]) {
                tracing::error!(webhook = %target.name(), "dropping an event: {err}");
                break;
            }
            self.metrics
                .dropped
                .with_label_values(&[target.name()])
                .inc();
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_bytes = self.max_bytes,
                "outbox full: dropped the oldest undelivered events of the slowest webhook"
            );
        }
    }

    /// Forgets the oldest dead letter of any target; false when there is none.
    fn drop_oldest_dead(&self) -> bool {
        let oldest = self
            .targets
            .iter()
            .filter_map(|t| {
                let dead = self.outbox.dead(t.name()).ok()?;
                dead.first().map(|(s, _)| (s.seq, t))
            })
            .min_by_key(|(seq, _)| *seq);
        let Some((seq, target)) = oldest else {
            return false;
        };
        if self.outbox.forget_dead(target.name(), &[seq]).is_err() {
            return false;
        }
        {
            let mut state = target.state.lock().expect("not poisoned");
            state.dead_letters = state.dead_letters.saturating_sub(1);
        }
        self.metrics
            .dead_expired
            .with_label_values(&[target.name(), "outbox_full"])
            .inc();
        true
    }
}
