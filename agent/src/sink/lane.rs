//! One lane of one target: takes the head of its queue (an event, or a batch), waits
//! for more only if the target asks for it (`batch.max_wait`), gives up events past
//! `retry.max_age`, loads the bodies, has the transport send them, records the
//! attempt, and settles the outcome — acknowledged, dead-lettered, paused, or retried
//! after a full-jitter back-off. One request at a time per lane, forever, in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::config::Format;
use super::queue::{now_ms, take, Target};
use super::retry::{self, Outcome};
use super::stats::DeliveryRecord;
use super::transport::{Attempted, EventHead, Loaded};
use super::Inner;
use crate::outbox::Stored;

/// What a lane does after an attempt.
enum Next {
    /// Take the next head at once.
    Continue,
    /// Wait this long, then try the same head again.
    RetryAfter(Duration),
}

/// Runs lane `lane` of target `t` until the delivery stops.
pub(super) async fn run(inner: Arc<Inner>, t: usize, lane: usize) {
    let target = &inner.targets[t];
    let mut stop = inner.stop.subscribe();
    let mut attempt: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = head(target, lane);
        if batch.is_empty() {
            tokio::select! {
                _ = target.wake[lane].notified() => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        if let Some(wait) = partial_batch_wait(target, &batch, attempt) {
            if !pause(&mut stop, wait).await {
                return;
            }
            continue;
        }
        let (expired, batch) = split_expired(target, batch);
        if !expired.is_empty() {
            bury(&inner, target, lane, &expired, "older than retry.max_age").await;
            continue;
        }
        let Some(loaded) = load(&inner, target, lane, &batch).await else {
            if !pause(&mut stop, Duration::from_secs(1)).await {
                return;
            }
            continue;
        };
        if loaded.len() < batch.len() {
            // Dropped meanwhile (full outbox): forget what is gone and start over.
            forget_missing(target, lane, &batch, &loaded);
            continue;
        }
        let loaded: Vec<Loaded> = loaded.into_iter().map(|(_, event)| event).collect();
        if attempt > 0 {
            count_retry(&inner, target);
        }
        let started = Instant::now();
        let attempted = target.transport.send(&loaded, SystemTime::now()).await;
        let (events, took) = (batch.len(), started.elapsed());
        let batch = settle_parts(&inner, target, lane, batch, &attempted).await;
        let next = if batch.is_empty() {
            attempt = 0;
            Next::Continue
        } else {
            let outcome = attempted.outcome.clone();
            settle(&inner, target, lane, &batch, outcome, &mut attempt).await
        };
        // Counted once settled: a status never shows an event both delivered and
        // still queued.
        record(&inner, target, &attempted, events, took);
        match next {
            Next::Continue => {}
            Next::RetryAfter(wait) => {
                if !pause(&mut stop, wait).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `wait` unless the delivery stops first (false then).
async fn pause(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.changed() => false,
    }
}

/// The head of the lane, or nothing while the target is disabled or paused.
fn head(target: &Target, lane: usize) -> Vec<Stored> {
    let state = target.state.lock().expect("not poisoned");
    if !target.enabled || state.paused.is_some() {
        Vec::new()
    } else {
        take(&state.lanes[lane], target.transport.format(), &target.batch)
    }
}

/// How long a partial first attempt of a batch waits for more events, if at all
/// (`batch.max_wait`, from the oldest event; 0 by default: sent at once).
fn partial_batch_wait(target: &Target, batch: &[Stored], attempt: u32) -> Option<Duration> {
    if target.transport.format() != Format::Batch
        || attempt > 0
        || batch.len() >= target.batch.max_events
        || target.batch.max_wait.is_zero()
    {
        return None;
    }
    let due = batch[0].created_ms + target.batch.max_wait.as_millis() as u64;
    let now = now_ms();
    (now < due).then(|| Duration::from_millis(due - now))
}

/// Splits off the events older than `retry.max_age`.
fn split_expired(target: &Target, batch: Vec<Stored>) -> (Vec<Stored>, Vec<Stored>) {
    let max_age_ms = target.retry.max_age.as_millis() as u64;
    let now = now_ms();
    batch
        .into_iter()
        .partition(|s| now.saturating_sub(s.created_ms) > max_age_ms)
}

/// The bodies of the batch (off the async workers: the outbox does blocking I/O);
/// `None` when the outbox could not be read.
async fn load(
    inner: &Arc<Inner>,
    target: &Target,
    lane: usize,
    batch: &[Stored],
) -> Option<Vec<(u64, Loaded)>> {
    let seqs: Vec<u64> = batch.iter().map(|s| s.seq).collect();
    let loaded = {
        let inner = inner.clone();
        tokio::task::spawn_blocking(move || inner.outbox.load(&seqs)).await
    };
    match loaded {
        Ok(Ok(bodies)) => Some(
            bodies
                .into_iter()
                .map(|(seq, body)| {
                    (
                        seq,
                        Loaded {
                            head: EventHead::of(&body),
                            body: body.into(),
                        },
                    )
                })
                .collect(),
        ),
        other => {
            tracing::error!(webhook = %target.name(), lane, "reading queued events: {other:?}");
            None
        }
    }
}

/// Removes from the lane the events of `batch` the outbox no longer has.
fn forget_missing(target: &Target, lane: usize, batch: &[Stored], loaded: &[(u64, Loaded)]) {
    let present: HashSet<u64> = loaded.iter().map(|(s, _)| *s).collect();
    let asked: HashSet<u64> = batch.iter().map(|s| s.seq).collect();
    let mut state = target.state.lock().expect("not poisoned");
    state.lanes[lane].retain(|s| !asked.contains(&s.seq) || present.contains(&s.seq));
}

fn count_retry(inner: &Inner, target: &Target) {
    inner
        .metrics
        .retries
        .with_label_values(&[target.name()])
        .inc();
    target
        .state
        .lock()
        .expect("not poisoned")
        .stats
        .counters
        .retries += 1;
}

/// Counts an attempt in the metrics and the target's recent deliveries.
fn record(inner: &Inner, target: &Target, attempted: &Attempted, events: usize, took: Duration) {
    let name = target.name();
    inner
        .metrics
        .requests
        .with_label_values(&[name, attempted.outcome.label()])
        .inc();
    inner
        .metrics
        .latency
        .with_label_values(&[name])
        .observe(took.as_secs_f64());
    let delivered = match attempted.outcome {
        Outcome::Delivered => events - attempted.given_up.len(),
        _ => attempted.acked.len(),
    };
    target.state.lock().expect("not poisoned").stats.record(
        DeliveryRecord {
            at: time::OffsetDateTime::now_utc(),
            id: attempted.id.clone(),
            events,
            outcome: attempted.outcome.label().to_owned(),
            status: attempted.status,
            latency_ms: took.as_secs_f64() * 1000.0,
            error: attempted.error.clone(),
        },
        delivered,
        took,
    );
}

/// Settles the events a transport delivered or gave up one by one (a bus's
/// per-message acknowledgements): they leave the lane; the rest of the batch is
/// returned for the outcome.
async fn settle_parts(
    inner: &Arc<Inner>,
    target: &Target,
    lane: usize,
    batch: Vec<Stored>,
    attempted: &Attempted,
) -> Vec<Stored> {
    if attempted.acked.is_empty() && attempted.given_up.is_empty() {
        return batch;
    }
    let acked: Vec<Stored> = attempted
        .acked
        .iter()
        .filter_map(|&i| batch.get(i).cloned())
        .collect();
    if !acked.is_empty() {
        acknowledge(inner, target, lane, &acked).await;
    }
    for (i, reason) in &attempted.given_up {
        if let Some(stored) = batch.get(*i) {
            tracing::warn!(webhook = %target.name(), "an event was given up (moved to the dead letters): {reason}");
            bury(inner, target, lane, std::slice::from_ref(stored), reason).await;
        }
    }
    let settled: HashSet<usize> = attempted
        .acked
        .iter()
        .copied()
        .chain(attempted.given_up.iter().map(|(i, _)| *i))
        .collect();
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !settled.contains(i))
        .map(|(_, stored)| stored)
        .collect()
}

/// Acts on an outcome: acknowledge, bury, pause, or schedule the retry.
async fn settle(
    inner: &Arc<Inner>,
    target: &Target,
    lane: usize,
    batch: &[Stored],
    outcome: Outcome,
    attempt: &mut u32,
) -> Next {
    let name = target.name();
    match outcome {
        Outcome::Delivered => {
            *attempt = 0;
            acknowledge(inner, target, lane, batch).await;
            if let Some(failure) = target
                .state
                .lock()
                .expect("not poisoned")
                .logged_failure
                .take()
            {
                tracing::info!(webhook = %name, "delivering again (it failed with: {failure})");
            }
            Next::Continue
        }
        Outcome::Rejected(reason) => {
            *attempt = 0;
            tracing::warn!(webhook = %name, reason = %reason, events = batch.len(), "receiver rejected the events: moved to the dead letters (not retried)");
            bury(inner, target, lane, batch, &reason).await;
            Next::Continue
        }
        Outcome::Gone => {
            tracing::error!(webhook = %name, "receiver answered 410 Gone: PAUSED; events keep queueing; `wgpulse webhook replay {name}` or a restart resumes it");
            target.state.lock().expect("not poisoned").paused =
                Some("receiver answered 410 Gone".into());
            Next::Continue
        }
        Outcome::Retry { after, reason, .. } => {
            *attempt += 1;
            let wait = retry::backoff(
                *attempt,
                target.retry.initial_backoff,
                target.retry.max_backoff,
                after,
            );
            let mut state = target.state.lock().expect("not poisoned");
            if state.logged_failure.as_deref() == Some(reason.as_str()) {
                // Said already: the counters and `target list` show the attempts.
                tracing::debug!(webhook = %name, attempt = *attempt, retry_in = ?wait, "delivery failed: {reason}");
            } else {
                tracing::warn!(webhook = %name, attempt = *attempt, retry_in = ?wait, "delivery failed: {reason} (retried with back-off; said once until it changes or works)");
                state.logged_failure = Some(reason);
            }
            drop(state);
            Next::RetryAfter(wait)
        }
    }
}

/// The events were delivered: forget them for this target and take them off the lane.
async fn acknowledge(inner: &Arc<Inner>, target: &Target, lane: usize, batch: &[Stored]) {
    let seqs: Vec<u64> = batch.iter().map(|s| s.seq).collect();
    let acked = {
        let (inner, name, seqs) = (inner.clone(), target.name().to_owned(), seqs.clone());
        tokio::task::spawn_blocking(move || inner.outbox.ack(&name, &seqs)).await
    };
    let failure = match acked {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(err) => Some(format!("acknowledging: {err}")),
    };
    if let Some(err) = failure {
        // Delivered but not forgotten: it may be delivered again (same id).
        if let Some(suppressed) = inner.ack_errors.allow(Instant::now()) {
            tracing::error!(webhook = %target.name(), suppressed, "{err}");
        }
    }
    remove(target, lane, &seqs);
    inner.metrics.outbox_bytes.set(inner.outbox.bytes() as i64);
}

/// Takes events off a lane.
pub(super) fn remove(target: &Target, lane: usize, seqs: &[u64]) {
    let gone: HashSet<u64> = seqs.iter().copied().collect();
    target.state.lock().expect("not poisoned").lanes[lane].retain(|s| !gone.contains(&s.seq));
}

/// Moves events to the target's dead letters with a reason.
pub(super) async fn bury(
    inner: &Arc<Inner>,
    target: &Target,
    lane: usize,
    batch: &[Stored],
    reason: &str,
) {
    let seqs: Vec<u64> = batch.iter().map(|s| s.seq).collect();
    let result = {
        let inner = inner.clone();
        let (name, seqs, reason) = (target.name().to_owned(), seqs.clone(), reason.to_owned());
        tokio::task::spawn_blocking(move || inner.outbox.bury(&name, &seqs, &reason)).await
    };
    if let Ok(Err(err)) = result {
        tracing::error!(webhook = %target.name(), "{err}");
    }
    remove(target, lane, &seqs);
    let mut state = target.state.lock().expect("not poisoned");
    state.dead_letters += seqs.len();
    state.stats.counters.dead += seqs.len() as u64;
    inner
        .metrics
        .dead
        .with_label_values(&[target.name()])
        .inc_by(seqs.len() as u64);
}
