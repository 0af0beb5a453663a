//! The state save, kept off the pipeline's path: the pipeline copies the peer table
//! in slices of [`SLICE`] peers between its messages (a session notice waits for one
//! slice, never for a copy of the whole table) and hands each slice to the writer
//! thread, which appends it to the temporary file at once (no copy of the whole
//! table is held anywhere: see [`StateStream`]). After the last slice the writer
//! waits until the events of every change in the state are stored durably and only
//! then puts the file in force (fsync, rename).
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

use super::{Pipeline, STORE_TIMEOUT};
use crate::events::StoredWaiter;
use crate::peers::persist::{PersistError, SavedState, StateFile};
use crate::peers::state_stream::StateStream;
use crate::peers::{DeviceState, PeerKey, PeerState, PeerTable};

/// Peers copied per slice: about 2 ms of the pipeline's time in a release build.
pub(super) const SLICE: usize = 2048;

/// How long stopping waits for the writer beyond [`STORE_TIMEOUT`] (a disk that
/// hangs must not hang the agent's exit for ever).
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What one save came to.
#[derive(Debug)]
pub(super) enum SaveOutcome {
    /// The file holds the state.
    Saved,
    /// The events of the state were not stored durably within [`STORE_TIMEOUT`]: not
    /// written, tried again later.
    NotStored,
    /// Writing failed (the old file stays).
    Failed(PersistError),
}

/// What the pipeline sends the writer. A save is `Begin`, any number of `Peers`,
/// then `End`; `Whole` (at stop) abandons a save still being streamed.
enum Job {
    /// A new state file stamped with this time.
    Begin(SystemTime),
    /// The next slice of its peers.
    Peers(Vec<PeerState>),
    /// Its devices: the state is complete.
    End(Vec<DeviceState>),
    /// A whole state, written at once.
    Whole(SavedState),
}

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

/// The writer thread's side: the stream being written and the error that ended it
/// early, if one did (reported at its `End`).
struct Writer {
    file: StateFile,
    stored: StoredWaiter,
    stream: Option<Result<StateStream, PersistError>>,
}

impl Writer {
    /// Handles one job; returns the outcome of a completed state.
    fn on(&mut self, job: Job) -> Option<SaveOutcome> {
        match job {
            Job::Begin(saved_at) => {
                self.stream = Some(StateStream::begin(&self.file, saved_at));
                None
            }
            Job::Peers(peers) => {
                if let Some(Ok(stream)) = &mut self.stream {
                    if let Err(err) = stream.write_peers(&peers) {
                        self.stream = Some(Err(err));
                    }
                }
                // Freed here, not on the pipeline thread.
                drop(peers);
                None
            }
            Job::End(devices) => {
                // (Never without a Begin; reported rather than left unanswered.)
                let Some(stream) = self.stream.take() else {
                    return Some(SaveOutcome::NotStored);
                };
                Some(
                    match stream.and_then(|mut s| s.finish(&devices).map(|()| s)) {
                        Err(err) => SaveOutcome::Failed(err),
                        Ok(stream) if self.events_stored() => match stream.commit() {
                            Ok(()) => SaveOutcome::Saved,
                            Err(err) => SaveOutcome::Failed(err),
                        },
                        // Dropped: the temporary goes, the old file stays.
                        Ok(_) => SaveOutcome::NotStored,
                    },
                )
            }
            Job::Whole(state) => {
                self.stream = None;
                Some(if !self.events_stored() {
                    SaveOutcome::NotStored
                } else {
                    match self.file.save(&state) {
                        Ok(()) => SaveOutcome::Saved,
                        Err(err) => SaveOutcome::Failed(err),
                    }
                })
            }
        }
    }

    /// Waits until every event sent so far is stored durably (at most
    /// [`STORE_TIMEOUT`]).
    fn events_stored(&self) -> bool {
        self.stored.wait_stored(STORE_TIMEOUT) && self.stored.all_durable()
    }
}

impl StateSaver {
    /// Starts the writer thread "wgpulse-state", which writes `file` once `stored`
    /// says the events of each state are stored.
    pub(super) fn start(file: StateFile, stored: StoredWaiter) -> std::io::Result<Self> {
        // Unbounded: a slice is never held up on the pipeline thread. A writer slower
        // than the copy holds at most the slices of one state (the pipeline begins no
        // other until this one's outcome is in).
        let (jobs, incoming) = crossbeam_channel::unbounded::<Job>();
        let (outcomes, results) = crossbeam_channel::bounded(1);
        let mut writer = Writer {
            file,
            stored,
            stream: None,
        };
        let writer = std::thread::Builder::new()
            .name("wgpulse-state".into())
            .spawn(move || {
                crate::background::lower_this_thread("the state writer");
                for job in incoming {
                    if let Some(outcome) = writer.on(job) {
                        if outcomes.send(outcome).is_err() {
                            break;
                        }
                    }
                }
            })?;
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
