//! The drain thread: a drain every `drain_interval` (stretched while nothing moves),
//! ring-buffer notices forwarded the moment they arrive, the eBPF log flushed.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Drain, IDLE_DRAINS, IDLE_STRETCH};
use crate::snapshot::DatapathMessage;

impl Drain {
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
pub(super) fn forward(
    send: &crossbeam_channel::Sender<DatapathMessage>,
    message: DatapathMessage,
) -> bool {
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
