//! The event writer thread: takes events off the durable event queue in batches, has
//! delivery's intake store them (`Delivery::accept`: one outbox transaction, one
//! fsync, per batch) and reports them stored, which lets the pipeline save the peer
//! state.
//!
//! A panic while storing is never silent: it is logged, counted, `/readyz` reports
//! the writer unhealthy, and the same batch is tried once more (the events are still
//! in hand). A batch that panics twice would block every later one, so the process
//! exits non-zero instead and the supervisor restarts it: the peer state was not
//! saved past those events, so the restart derives them again.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::events::{Event, StoredHandle};

/// Most events stored in one outbox transaction.
pub const BATCH: usize = 4096;

/// Exit status when a batch cannot be stored at all (EX_SOFTWARE).
pub const EXIT_WRITER_FAILED: i32 = 70;

/// The writer's health, for `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct WriterHealth {
    panics: AtomicU64,
    /// The last panic, until a batch is stored again.
    failing: Mutex<Option<String>>,
}

impl WriterHealth {
    /// Panics caught so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Why the writer is unhealthy, if it is.
    pub fn problem(&self) -> Option<String> {
        self.failing.lock().expect("not poisoned").clone()
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Stores one batch; `Err(message)` if storing it panicked.
fn store(accept: &impl Fn(&[Event]), batch: &[Event]) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| accept(batch)))
        .map_err(|payload| panic_text(payload.as_ref()))
}

/// Starts the writer thread storing each batch with `accept` (delivery's intake; tests
/// inject faults here); it ends when the queue's senders are gone.
pub fn spawn(
    accept: impl Fn(&[Event]) + Send + 'static,
    received: Receiver<Event>,
    stored: StoredHandle,
    health: Arc<WriterHealth>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("wgpulse-events".into())
        .spawn(move || {
            while let Ok(first) = received.recv() {
                // Everything that queued up meanwhile goes into one transaction.
                let mut batch = vec![first];
                batch.extend(received.try_iter().take(BATCH - 1));
                let mut outcome = store(&accept, &batch);
                if let Err(message) = &outcome {
                    health.panics.fetch_add(1, Ordering::Relaxed);
                    *health.failing.lock().expect("not poisoned") =
                        Some(format!("the event writer panicked: {message}"));
                    tracing::error!(
                        events = batch.len(),
                        "the event writer panicked storing a batch ({message}); trying it once more"
                    );
                    outcome = store(&accept, &batch);
                }
                match outcome {
                    Ok(()) => {
                        *health.failing.lock().expect("not poisoned") = None;
                        stored.stored(batch.len());
                    }
                    Err(message) => {
                        health.panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            events = batch.len(),
                            "the event writer panicked again on the same batch ({message}): exiting so that the supervisor restarts the agent (the peer state was not saved past these events)"
                        );
                        std::process::exit(EXIT_WRITER_FAILED);
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventQueue;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn a_panic_storing_a_batch_is_reported_and_the_batch_tried_again() {
        let (queue, received, stored) = EventQueue::durable(16);
        let health = Arc::new(WriterHealth::default());
        let panicked = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let (panicked, seen, watched) = (panicked.clone(), seen.clone(), health.clone());
            spawn(
                move |batch: &[Event]| {
                    if !panicked.swap(true, Ordering::SeqCst) {
                        panic!("injected: the store failed");
                    }
                    // While the batch is retried the writer reports itself unhealthy.
                    assert!(watched.problem().unwrap().contains("injected"));
                    seen.lock()
                        .unwrap()
                        .extend(batch.iter().map(|e| e.identifier.clone()));
                },
                received,
                stored,
                health.clone(),
            )
            .unwrap()
        };
        queue
            .send(Event::new(
                "n",
                "peer",
                "update",
                "p1",
                serde_json::Value::Null,
            ))
            .unwrap();
        assert!(
            queue.wait_stored(Duration::from_secs(10)),
            "stored after the retry"
        );
        assert_eq!(*seen.lock().unwrap(), ["p1"]);
        assert_eq!(health.panics(), 1);
        assert_eq!(
            health.problem(),
            None,
            "healthy again once a batch is stored"
        );
        drop(queue);
        writer.join().unwrap();
    }
}
