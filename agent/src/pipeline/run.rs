//! The pipeline thread's loop: waits for a drain, a session notice, a scrape's read
//! request, a completed device read or the next timer (device refresh, handshake
//! expiry, state save), and does what is due (a save is copied a slice per turn). Device reads run on the reader thread
//! (`device_reader`): drains and notices are handled while one is in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::Pipeline;
use crate::snapshot::DatapathMessage;

impl Pipeline {
    pub(super) fn run(
        &mut self,
        receive: crossbeam_channel::Receiver<DatapathMessage>,
        read_requests: crossbeam_channel::Receiver<()>,
        stop: Arc<AtomicBool>,
    ) {
        self.refresh();
        let mut next_refresh = Instant::now() + self.config.refresh_interval;
        // The connection rule runs after a handshake time may have moved (a session
        // notice, a device read) and when the earliest handshake expires; a drain or a
        // wake-up with nothing new (every 100 ms, to see `stop`) does not scan the
        // peers.
        let mut table_changed = true;
        let mut next_expiry: Option<SystemTime> = None;
        while !stop.load(Ordering::Relaxed) {
            let mut timeout = Duration::from_millis(100);
            if !self.reader.in_flight() {
                timeout = timeout.min(next_refresh.saturating_duration_since(Instant::now()));
            }
            if let Some(expiry) = next_expiry {
                let until = expiry
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                timeout = timeout.min(until);
            }
            // A save being copied goes on between messages; one being written
            // reports on its channel; otherwise the next save's time is a timer.
            if self.saver.copying() {
                timeout = Duration::ZERO;
            } else if let (false, Some(due)) = (self.saver.busy(), self.saves.due()) {
                timeout = timeout.min(due.saturating_duration_since(Instant::now()));
            }
            let mut refresh_now = false;
            let mut scrape_asked = false;
            let results = self.reader.results().clone();
            let saved = self.saver.results();
            crossbeam_channel::select! {
                recv(receive) -> message => match message {
                    // Counters only: a drain moves no handshake time, so the
                    // connection rule has nothing new to decide (its expiries are
                    // timed below).
                    Ok(DatapathMessage::Snapshot(snapshot)) => self.on_snapshot(snapshot),
                    Ok(DatapathMessage::Session(notice)) => {
                        refresh_now = self.on_notice(notice);
                        table_changed = true;
                    }
                    Err(_) => break,
                },
                recv(read_requests) -> _ => scrape_asked = true,
                recv(saved) -> outcome => match outcome {
                    Ok(outcome) => self.on_saved(outcome),
                    Err(_) => self.writer_gone(),
                },
                recv(results) -> read => {
                    if read.is_err() {
                        tracing::error!("the device reader thread is gone: devices are no longer read");
                        self.reader.thread_gone();
                        self.shared.status.write().expect("not poisoned").discovery_error =
                            Some("the device reader thread is gone: devices are no longer read".into());
                    }
                    if let Ok(read) = read {
                        let cpu = read.cpu;
                        // Applied first: a request it makes joins the one
                        // remembered while this read was in flight.
                        self.apply_read(read);
                        self.reader.completed();
                        next_refresh = Instant::now()
                            + super::read_budget::periodic_gap(self.config.refresh_interval, cpu);
                        table_changed = true;
                    }
                }
                default(timeout) => {}
            }
            // A notice that waits for a read needs one that starts after it; a
            // scrape is served by the read in flight (it is at most one read
            // duration old, within the read-through rule); the timer by any.
            if refresh_now {
                self.shared
                    .status
                    .write()
                    .expect("not poisoned")
                    .immediate_refreshes += 1;
                self.reader.request(true);
            } else if scrape_asked || Instant::now() >= next_refresh {
                self.reader.request(false);
            }
            let now = SystemTime::now();
            if table_changed || next_expiry.is_some_and(|expiry| now >= expiry) {
                let (changes, expiry) = {
                    let mut table = self.table_mut();
                    let changes = table.tick(now);
                    (changes, table.next_expiry())
                };
                next_expiry = expiry;
                table_changed = false;
                self.emit(changes);
            }
            self.save_step();
            if self.reload_names.swap(false, Ordering::Relaxed) {
                if let Some(names) = &mut self.names {
                    names.forget_seen();
                }
                self.reload_names();
            }
        }
        self.final_save();
        self.datapath.detach_all();
    }
}
