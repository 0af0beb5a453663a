//! The bounded channel events leave the peers stage on. When it is full the producer
//! blocks (events are never dropped here) and the time it spent blocked is counted,
//! so a slow consumer shows up in the metrics instead of as lost events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Event;

/// The consumer is gone: nothing will take events any more.
#[derive(Debug, thiserror::Error)]
#[error("the event consumer has stopped")]
pub struct QueueClosed;

/// Counters of the queue, shared with the metrics.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Events sent, by `entity.event`.
    by_kind: Mutex<BTreeMap<String, u64>>,
    /// Sends that found the queue full.
    blocked_sends: AtomicU64,
    /// Nanoseconds producers spent blocked on a full queue.
    blocked_nanos: AtomicU64,
}

impl QueueStats {
    /// Events sent so far, by `entity.event`.
    pub fn by_kind(&self) -> BTreeMap<String, u64> {
        self.by_kind.lock().expect("not poisoned").clone()
    }

    /// Sends that found the queue full.
    pub fn blocked_sends(&self) -> u64 {
        self.blocked_sends.load(Ordering::Relaxed)
    }

    /// Seconds producers spent blocked on a full queue.
    pub fn blocked_seconds(&self) -> f64 {
        self.blocked_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// The producer side.
#[derive(Clone, Debug)]
pub struct EventQueue {
    sender: Sender<Event>,
    stats: Arc<QueueStats>,
}

impl EventQueue {
    /// A queue holding at most `capacity` events.
    pub fn bounded(capacity: usize) -> (Self, Receiver<Event>) {
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        (
            Self {
                sender,
                stats: Arc::default(),
            },
            receiver,
        )
    }

    /// Sends one event, blocking while the queue is full.
    pub fn send(&self, event: Event) -> Result<(), QueueClosed> {
        let kind = event.kind();
        match self.sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Disconnected(_)) => return Err(QueueClosed),
            Err(TrySendError::Full(event)) => {
                let started = Instant::now();
                self.stats.blocked_sends.fetch_add(1, Ordering::Relaxed);
                let result = self.sender.send(event);
                self.stats
                    .blocked_nanos
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                result.map_err(|_| QueueClosed)?;
            }
        }
        *self
            .stats
            .by_kind
            .lock()
            .expect("not poisoned")
            .entry(kind)
            .or_default() += 1;
        Ok(())
    }

    /// The queue's counters.
    pub fn stats(&self) -> Arc<QueueStats> {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event::new(
            "node",
            "peer",
            "update",
            &n.to_string(),
            serde_json::Value::Null,
        )
    }

    #[test]
    fn a_full_queue_blocks_the_producer_and_counts_it() {
        let (queue, receiver) = EventQueue::bounded(2);
        queue.send(event(0)).unwrap();
        queue.send(event(1)).unwrap();
        let producer = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.send(event(2)))
        };
        // The third send cannot complete until one event is taken.
        crate::testing::wait_until("the producer to block", || {
            queue.stats().blocked_sends() == 1
        });
        assert!(!producer.is_finished());
        let ids: Vec<String> = (0..3)
            .map(|_| receiver.recv().unwrap().identifier)
            .collect();
        producer.join().unwrap().unwrap();
        assert_eq!(ids, ["0", "1", "2"]);
        assert_eq!(queue.stats().by_kind()["peer.update"], 3);
        assert!(queue.stats().blocked_seconds() > 0.0);
    }

    #[test]
    fn a_gone_consumer_is_an_error() {
        let (queue, receiver) = EventQueue::bounded(1);
        drop(receiver);
        assert!(queue.send(event(0)).is_err());
    }
}
