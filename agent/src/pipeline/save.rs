//! The state save, kept off the pipeline's path: the pipeline copies the peer table
//! in slices of [`SLICE`] peers between its messages (a session notice waits for one
//! slice, never for a copy of the whole table) and hands each slice to the writer
//! thread ([`super::state_writer`]), which appends it to the temporary file at once
//! (no copy of the whole table is held anywhere: see
//! [`StateStream`](crate::peers::state_stream::StateStream)). After the last slice
//! the writer waits until the events of every change in the state are stored durably
//! and only then puts the file in force (fsync, rename).
//!
//! The crash guarantee: each slice is taken on the pipeline thread after the events
//! of every change applied so far were sent, and the writer waits, after the last
//! slice, for all events sent before it, so a saved peer is never newer than the
//! stored events. A peer that changes after its slice was taken is saved as it was
//! (its change is due again: see
//! [`SaveSchedule::begin`](crate::peers::save_schedule::SaveSchedule::begin)), which
//! at worst repeats an event after a crash, never loses one.

use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::state_writer::{self, Job, SaveOutcome};
use super::{Pipeline, STORE_TIMEOUT};
use crate::events::StoredWaiter;
use crate::peers::persist::{SavedState, StateFile};
use crate::peers::{PeerKey, PeerTable};

/// Peers copied per slice: about 2 ms of the pipeline's time in a release build.
pub(super) const SLICE: usize = 2048;

/// How long stopping waits for the writer beyond [`STORE_TIMEOUT`] (a disk that
/// hangs must not hang the agent's exit for ever).
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A copy in progress: the last peer copied (`None`: none yet).
struct Copy {
    after: Option<PeerKey>,
}

/// The copy in slices and the writer thread.
pub(super) struct StateSaver {
    copy: Option<Copy>,
    /// A state is complete with the writer (its outcome is awaited).
    writing: bool,
    jobs: Option<Sender<Job>>,
    results: Receiver<SaveOutcome>,
    writer: Option<JoinHandle<()>>,
}

impl StateSaver {
    /// Starts the writer thread "wgpulse-state", which writes `file` once `stored`
    /// says the events of each state are stored.
    pub(super) fn start(file: StateFile, stored: StoredWaiter) -> std::io::Result<Self> {
        let (jobs, results, writer) = state_writer::spawn(file, stored)?;
        Ok(Self {
            copy: None,
            writing: false,
            jobs: Some(jobs),
            results,
            writer: Some(writer),
        })
    }

    /// Whether a save is being copied or written (another does not begin).
    pub(super) fn busy(&self) -> bool {
        self.copy.is_some() || self.writing
    }

    /// Whether slices remain to be copied.
    pub(super) fn copying(&self) -> bool {
        self.copy.is_some()
    }

    /// Where the writer reports each save.
    pub(super) fn results(&self) -> Receiver<SaveOutcome> {
        self.results.clone()
    }

    /// Begins a save stamped `saved_at`: [`StateSaver::copy_slice`] copies it. Returns
    /// false when the writer is gone (nothing is saved any more).
    pub(super) fn begin(&mut self, saved_at: SystemTime) -> bool {
        if self.busy() {
            return true;
        }
        if !self.send(Job::Begin(saved_at)) {
            return false;
        }
        self.copy = Some(Copy { after: None });
        true
    }

    /// Copies the next slice of `table` and hands it to the writer; after the last
    /// one, the devices complete the state. Returns false when the writer is gone
    /// (nothing is saved any more).
    pub(super) fn copy_slice(&mut self, table: &PeerTable) -> bool {
        let Some(copy) = &mut self.copy else {
            return true;
        };
        let mut peers = Vec::with_capacity(SLICE.min(table.peer_count()));
        let next = table.copy_peers(copy.after.as_ref(), SLICE, &mut peers);
        if !self.send(Job::Peers(peers)) {
            return false;
        }
        match (next, &mut self.copy) {
            (Some(next), Some(copy)) => {
                copy.after = Some(next);
                true
            }
            _ => {
                self.copy = None;
                let sent = self.send(Job::End(table.device_states()));
                self.writing = sent;
                sent
            }
        }
    }

    fn send(&mut self, job: Job) -> bool {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            self.copy = None;
            self.writing = false;
        }
        sent
    }

    /// The writer's thread ended: nothing more is sent to it or awaited from it.
    pub(super) fn gone(&mut self) {
        self.jobs = None;
        self.results = crossbeam_channel::never();
        self.writing = false;
        self.copy = None;
    }

    /// The writer reported (from [`StateSaver::results`]).
    pub(super) fn finished(&mut self) {
        self.writing = false;
    }

    /// At stop: waits for the save being written, then writes `state` (abandoning a
    /// save still being copied) and waits for it (each at most [`STORE_TIMEOUT`] and
    /// a grace); returns the outcomes in order. A writer that does not answer is left
    /// behind, not joined.
    pub(super) fn finish(&mut self, state: SavedState) -> Vec<SaveOutcome> {
        let mut outcomes = Vec::new();
        self.copy = None;
        let writer_free = !self.writing || self.await_outcome(&mut outcomes);
        if writer_free && self.send(Job::Whole(state)) {
            self.writing = true;
            self.await_outcome(&mut outcomes);
        }
        self.jobs = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        outcomes
    }

    /// Waits (at stop) for the writer's report of the save being written, onto
    /// `outcomes`; false, leaving the writer behind, when it does not answer.
    fn await_outcome(&mut self, outcomes: &mut Vec<SaveOutcome>) -> bool {
        match self.results.recv_timeout(STORE_TIMEOUT + STOP_GRACE) {
            Ok(outcome) => {
                outcomes.push(outcome);
                self.writing = false;
                true
            }
            Err(_) => {
                tracing::error!("the state writer did not finish: the state is not saved at stop");
                self.jobs = None;
                self.writer = None;
                false
            }
        }
    }
}

impl Pipeline {
    /// Begins a save when one is due and none runs, and copies the next slice of one
    /// that is copying.
    pub(super) fn save_step(&mut self) {
        if !self.saver.busy() && self.saves.is_due(Instant::now()) {
            self.saves.begin(Instant::now());
            if !self.saver.begin(SystemTime::now()) {
                self.writer_gone();
                return;
            }
        }
        if self.saver.copying() {
            let table = self.shared.table.read().expect("not poisoned");
            if !self.saver.copy_slice(&table) {
                drop(table);
                self.writer_gone();
            }
        }
    }

    /// The state writer's thread ended: the state is no longer saved.
    pub(super) fn writer_gone(&mut self) {
        let why = "the state writer thread is gone: the peer state is no longer saved";
        tracing::error!("{why}");
        self.saver.gone();
        self.saves.saved(Instant::now(), false);
        self.shared
            .status
            .write()
            .expect("not poisoned")
            .persist_error = Some(why.into());
    }

    /// The writer reported a save.
    pub(super) fn on_saved(&mut self, outcome: SaveOutcome) {
        self.saver.finished();
        let now = Instant::now();
        let result = match outcome {
            SaveOutcome::NotStored => {
                if let Some(suppressed) = self.save_throttle.allow(now) {
                    tracing::warn!(
                        suppressed,
                        "the peer state waits to be saved: its events are not on disk yet"
                    );
                }
                self.saves.saved(now, false);
                return;
            }
            SaveOutcome::Saved => Ok(()),
            SaveOutcome::Failed(err) => Err(err),
        };
        self.saves.saved(now, result.is_ok());
        let mut status = self.shared.status.write().expect("not poisoned");
        match result {
            Ok(()) => {
                status.persist_saves += 1;
                if status.persist_error.take().is_some() {
                    tracing::info!("peer state saved again");
                }
            }
            Err(err) => {
                status.persist_failures += 1;
                if status.persist_error.is_none() {
                    tracing::error!(
                        "saving peer state (kept in memory, retried with back-off): {err}"
                    );
                }
                status.persist_error = Some(err.to_string());
            }
        }
    }

    /// At stop: the whole state, saved once its events are stored.
    pub(super) fn final_save(&mut self) {
        self.saves.begin(Instant::now());
        let state = self.table().save(SystemTime::now());
        for outcome in self.saver.finish(state) {
            self.on_saved(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventQueue;
    use crate::peers::PeerTable;
    use crate::wg::{Device, DeviceKind, Peer, PublicKey};

    fn device(peers: usize) -> Device {
        Device {
            name: "wgsave0".into(),
            kind: DeviceKind::Userspace,
            public_key: Some(PublicKey([200; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: (0..peers)
                .map(|i| {
                    let mut key = [0u8; 32];
                    key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    Peer::new(PublicKey(key))
                })
                .collect(),
        }
    }

    #[test]
    fn a_state_copied_in_slices_is_the_whole_table() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = StateFile::new(dir.path());
        let (queue, _consumer) = EventQueue::bounded(16);
        let mut saver = StateSaver::start(file.clone(), queue.stored_waiter()).expect("writer");
        let mut table = PeerTable::new(Duration::from_secs(180));
        let now = SystemTime::now();
        table.apply_devices(&[device(SLICE * 2 + 5)], now, now);

        saver.begin(now);
        let mut slices = 0;
        while saver.copying() {
            assert!(saver.copy_slice(&table), "the writer is there");
            slices += 1;
        }
        assert_eq!(slices, 3, "2 full slices and the rest");
        assert!(saver.busy(), "the copy is with the writer");
        let outcome = saver.results().recv().expect("an outcome");
        assert!(matches!(outcome, SaveOutcome::Saved), "{outcome:?}");
        saver.finished();
        assert_eq!(
            file.load().expect("readable").expect("saved"),
            table.save(now),
            "the slices make up the table"
        );
    }
}
