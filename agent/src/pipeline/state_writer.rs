//! The state writer thread ("wgpulse-state"): it appends each slice the pipeline
//! copies to the temporary state file as it comes, and after the last one waits until
//! the events of every change in the state are stored durably before it puts the file
//! in force (fsync, rename). The copying side is [`super::save`].

use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender};

use super::STORE_TIMEOUT;
use crate::events::StoredWaiter;
use crate::peers::persist::{PersistError, SavedState, StateFile};
use crate::peers::state_stream::StateStream;
use crate::peers::{DeviceState, PeerState};

/// What one save came to.
#[derive(Debug)]
pub(in crate::pipeline) enum SaveOutcome {
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
pub(super) enum Job {
    /// A new state file stamped with this time.
    Begin(SystemTime),
    /// The next slice of its peers.
    Peers(Vec<PeerState>),
    /// Its devices: the state is complete.
    End(Vec<DeviceState>),
    /// A whole state, written at once.
    Whole(SavedState),
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

/// Starts the writer thread, which writes `file` once `stored` says the events of each
/// state are stored: where to send it jobs, where it reports each state, its handle.
pub(super) fn spawn(
    file: StateFile,
    stored: StoredWaiter,
) -> std::io::Result<(Sender<Job>, Receiver<SaveOutcome>, JoinHandle<()>)> {
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
    let handle = std::thread::Builder::new()
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
    Ok((jobs, results, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventQueue;

    fn writer(file: &StateFile) -> (Writer, EventQueue) {
        let (queue, _consumer) = EventQueue::bounded(16);
        let writer = Writer {
            file: file.clone(),
            stored: queue.stored_waiter(),
            stream: None,
        };
        (writer, queue)
    }

    #[test]
    fn a_streamed_state_is_in_force_only_after_its_end() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = StateFile::new(dir.path());
        let (mut writer, _queue) = writer(&file);
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert!(writer.on(Job::Begin(at)).is_none());
        assert!(writer.on(Job::Peers(Vec::new())).is_none());
        assert!(
            file.load().expect("readable").is_none(),
            "nothing in force before the end"
        );
        let outcome = writer.on(Job::End(Vec::new()));
        assert!(matches!(outcome, Some(SaveOutcome::Saved)), "{outcome:?}");
        let saved = file.load().expect("readable").expect("in force");
        assert_eq!(saved.saved_at, at);
        assert!(saved.peers.is_empty() && saved.devices.is_empty());
    }

    #[test]
    fn an_end_without_a_begin_is_answered_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = StateFile::new(dir.path());
        let (mut writer, _queue) = writer(&file);
        let outcome = writer.on(Job::End(Vec::new()));
        assert!(
            matches!(outcome, Some(SaveOutcome::NotStored)),
            "{outcome:?}"
        );
        assert!(file.load().expect("readable").is_none());
    }
}
