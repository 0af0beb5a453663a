//! The bounded channel events leave the peers stage on. When it is full the producer
//! blocks (events are never dropped here) and the time it spent blocked is counted,
//! so a slow consumer shows up in the metrics instead of as lost events.
//!
//! A queue made with [`EventQueue::durable`] also lets the producer wait until the
//! consumer has stored everything sent so far ([`EventQueue::wait_stored`]): the
//! pipeline saves its peer state only after the events describing the change are in
//! the outbox, so a crash in between repeats an event rather than losing it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// How far the consumer has stored what was sent.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    stored: Mutex<u64>,
    advanced: Condvar,
}

/// The consumer's side of a durable queue: report events as stored.
#[derive(Clone, Debug)]
pub struct StoredHandle {
    progress: Arc<Progress>,
}

impl StoredHandle {
    /// `count` more events (in the order received) are stored.
    pub fn stored(&self, count: usize) {
        let mut stored = self.progress.stored.lock().expect("not poisoned");
        *stored += count as u64;
        self.progress.advanced.notify_all();
    }
}

/// How many stored events are held only in memory (a full disk), for
/// [`StoredWaiter::all_durable`].
pub type UnwrittenProbe = Arc<dyn Fn() -> usize + Send + Sync>;

/// Waits for a durable queue's consumer ([`EventQueue::stored_waiter`]): what the
/// state writer checks before it writes a state whose events must be stored first.
#[derive(Clone)]
pub struct StoredWaiter {
    progress: Option<Arc<Progress>>,
    unwritten: Option<UnwrittenProbe>,
}

impl std::fmt::Debug for StoredWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredWaiter")
            .field("durable", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

impl StoredWaiter {
    /// Whether nothing the consumer stored is held only in memory (always true
    /// without a probe).
    pub fn all_durable(&self) -> bool {
        self.unwritten.as_ref().is_none_or(|probe| probe() == 0)
    }

    /// Waits until the consumer has stored every event sent before this call (at
    /// most `timeout`; false if it did not). Returns at once for a plain queue.
    pub fn wait_stored(&self, timeout: Duration) -> bool {
        let Some(progress) = &self.progress else {
            return true;
        };
        let sent = progress.sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut stored = progress.stored.lock().expect("not poisoned");
        while *stored < sent {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stored = progress
                .advanced
                .wait_timeout(stored, left)
                .expect("not poisoned")
                .0;
        }
        true
    }
}

/// The producer side.
#[derive(Clone)]
pub struct EventQueue {
    sender: Sender<Event>,
    stats: Arc<QueueStats>,
    progress: Option<Arc<Progress>>,
    unwritten: Option<UnwrittenProbe>,
}

impl std::fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventQueue")
            .field("durable", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

impl EventQueue {
    /// A queue holding at most `capacity` events.
    pub fn bounded(capacity: usize) -> (Self, Receiver<Event>) {
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        (
            Self {
                sender,
                stats: Arc::default(),
                progress: None,
                unwritten: None,
            },
            receiver,
        )
    }

    /// A queue whose consumer reports what it has stored (see the module docs).
    pub fn durable(capacity: usize) -> (Self, Receiver<Event>, StoredHandle) {
        let (mut queue, receiver) = Self::bounded(capacity);
        let progress = Arc::new(Progress::default());
        queue.progress = Some(progress.clone());
        (queue, receiver, StoredHandle { progress })
    }

    /// Tells the queue how to ask its consumer for events it stored only in memory.
    pub fn with_unwritten(mut self, probe: UnwrittenProbe) -> Self {
        self.unwritten = Some(probe);
        self
    }

    /// Waits until the consumer has stored every event sent so far (at most
    /// `timeout`; false if it did not). Returns at once for a plain queue.
    pub fn wait_stored(&self, timeout: Duration) -> bool {
        self.stored_waiter().wait_stored(timeout)
    }

    /// A handle that waits for the consumer on another thread (the state writer)
    /// without holding the queue open.
    pub fn stored_waiter(&self) -> StoredWaiter {
        StoredWaiter {
            progress: self.progress.clone(),
            unwritten: self.unwritten.clone(),
        }
    }

    /// Sends one event, blocking while the queue is full.
    pub fn send(&self, event: Event) -> Result<(), QueueClosed> {
        let kind = event.kind();
        if let Some(progress) = &self.progress {
            progress.sent.fetch_add(1, Ordering::SeqCst);
        }
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
    fn the_producer_can_wait_until_the_consumer_stored_everything() {
        let (queue, receiver, stored) = EventQueue::durable(10);
        assert!(
            queue.wait_stored(Duration::from_millis(1)),
            "nothing sent yet"
        );
        queue.send(event(0)).unwrap();
        queue.send(event(1)).unwrap();
        assert!(
            !queue.wait_stored(Duration::from_millis(20)),
            "not stored yet"
        );
        let consumer = std::thread::spawn(move || {
            let batch: Vec<Event> = receiver.iter().take(2).collect();
            stored.stored(batch.len());
        });
        assert!(queue.wait_stored(Duration::from_secs(10)));
        consumer.join().unwrap();
    }

    #[test]
    fn a_gone_consumer_is_an_error() {
        let (queue, receiver) = EventQueue::bounded(1);
        drop(receiver);
        assert!(queue.send(event(0)).is_err());
    }
}
