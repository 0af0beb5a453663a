//! Device reads off the pipeline thread. Reading a userspace device of 10k peers
//! takes about 50 ms (100k: about half a second), and a read that waits for a busy
//! daemon up to its 2 s timeout; while the pipeline thread did the read itself, a
//! handshake that completed meanwhile reached the receiver only after it. The reader
//! thread does the reads (netlink and UAPI, nothing else) and hands each result
//! back; the pipeline keeps handling drains and session notices while one is in
//! flight, and applies the result to the table when it arrives.
//!
//! At most one read is in flight. A request while one is in flight is remembered
//! (once) and sent when the result arrives, since the read in flight may have started
//! before what prompted the request (a handshake from a peer just added).

use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::wg::{self, DiscoveryOptions};

/// One completed read.
#[derive(Debug)]
pub struct DeviceRead {
    /// When it began (monotonic, for the read-through rule).
    pub started: Instant,
    /// When it began (wall clock: what came after it is newer than the read).
    pub started_wall: SystemTime,
    /// How long it took (wall clock: what the read-through rule and the
    /// last-read gauge show).
    pub took: Duration,
    /// The CPU time the reader thread spent on it: what the periodic-read budget
    /// charges. Waiting for the daemon's reply or for a core on a busy host costs
    /// none, so a small device on a loaded machine is still read every
    /// `refresh_interval`.
    pub cpu: Duration,
    /// The devices, or why none could be listed.
    pub result: Result<wg::Discovered, wg::DiscoveryError>,
}

/// The pipeline's handle on the reader thread.
pub struct DeviceReader {
    requests: Sender<()>,
    results: Receiver<DeviceRead>,
    /// What [`DeviceReader::results`] gives once the thread is gone: nothing, ever
    /// (a disconnected channel would wake the pipeline's `select!` at once, forever).
    never: Receiver<DeviceRead>,
    gone: bool,
    in_flight: bool,
    again: bool,
}

impl DeviceReader {
    /// Starts the reader thread. It ends when the handle is dropped (after the read
    /// it may be doing).
    pub fn start(options: DiscoveryOptions) -> std::io::Result<Self> {
        let (requests, requested) = crossbeam_channel::bounded::<()>(1);
        let (done, results) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("wgpulse-devices".into())
            .spawn(move || {
                crate::background::lower_this_thread("the device reader");
                for () in requested {
                    if done.send(read(&options)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            requests,
            results,
            never: crossbeam_channel::never(),
            gone: false,
            in_flight: false,
            again: false,
        })
    }

    /// Where completed reads arrive (for the pipeline's `select!`); pass each to
    /// [`DeviceReader::completed`], or, when the receive fails (the thread is gone),
    /// call [`DeviceReader::thread_gone`].
    pub fn results(&self) -> &Receiver<DeviceRead> {
        if self.gone {
            &self.never
        } else {
            &self.results
        }
    }

    /// The thread is gone (it cannot be, short of an abort: reads that panic are
    /// caught): no read will come again.
    pub fn thread_gone(&mut self) {
        self.gone = true;
        self.in_flight = false;
    }

    /// Whether a read is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Asks for a read. With one in flight, `after_current` asks for another once it
    /// completes (the one in flight may predate the reason); without, nothing more.
    pub fn request(&mut self, after_current: bool) {
        if self.gone {
            return;
        }
        if self.in_flight {
            self.again |= after_current;
            return;
        }
        // The thread takes each request before it reads, so the slot is free; a
        // disconnected thread (it panicked) leaves the devices as last read.
        if self.requests.send(()).is_ok() {
            self.in_flight = true;
        }
    }

    /// Records that `results` delivered a read; sends the remembered request, if any.
    pub fn completed(&mut self) {
        self.in_flight = false;
        if std::mem::take(&mut self.again) {
            self.request(false);
        }
    }

    /// Reads now and waits for the result (the first read, before the loop runs).
    pub fn read_now(&mut self) -> Option<DeviceRead> {
        self.request(false);
        let read = self.results.recv().ok();
        self.completed();
        read
    }
}

fn read(options: &DiscoveryOptions) -> DeviceRead {
    timed(|| wg::discover_all(options))
}

/// Runs one read, timed.
fn timed(read: impl FnOnce() -> Result<wg::Discovered, wg::DiscoveryError>) -> DeviceRead {
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let cpu_before = thread_cpu_time();
    // A panic in a read (a parser bug on a reply no one expected) is this read's
    // error, shown in /readyz; the thread and the next reads go on.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(wg::DiscoveryError::Panicked(message))
        });
    DeviceRead {
        started,
        started_wall,
        took: started.elapsed(),
        cpu: thread_cpu_time().saturating_sub(cpu_before),
        result,
    }
}

/// The CPU time (user and system) the calling thread has used so far; zero if the
/// clock cannot be read (it always can on Linux: the budget then falls back to
/// `refresh_interval`).
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_panics_is_an_error_of_that_read() {
        let read = timed(|| panic!("unexpected reply line"));
        match read.result {
            Err(wg::DiscoveryError::Panicked(message)) => {
                assert_eq!(message, "unexpected reply line")
            }
            other => panic!("{other:?}"),
        }
        let read = timed(|| Ok(wg::Discovered::default()));
        assert!(read.result.is_ok());
    }

    #[test]
    fn a_read_that_waits_costs_its_wall_time_but_no_cpu() {
        // Waiting for the daemon's reply (or for a core) is wall-clock time only.
        let read = timed(|| {
            std::thread::sleep(Duration::from_millis(50));
            Ok(wg::Discovered::default())
        });
        assert!(read.took >= Duration::from_millis(50), "{:?}", read.took);
        assert!(read.cpu < Duration::from_millis(10), "{:?}", read.cpu);
        // Work is charged.
        let read = timed(|| {
            let spin = Instant::now();
            let mut n = 0u64;
            while spin.elapsed() < Duration::from_millis(30) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
            Ok(wg::Discovered::default())
        });
        assert!(read.cpu >= Duration::from_millis(10), "{:?}", read.cpu);
        assert!(read.cpu <= read.took + Duration::from_millis(1));
    }

    #[test]
    fn once_the_thread_is_gone_results_wait_instead_of_failing_at_once() {
        // A reader whose thread ended: both of its channels are disconnected.
        let (requests, _) = crossbeam_channel::bounded(1);
        let (_, results) = crossbeam_channel::bounded(1);
        let mut reader = DeviceReader {
            requests,
            results,
            never: crossbeam_channel::never(),
            gone: false,
            in_flight: false,
            again: false,
        };
        // What woke the pipeline's select! at once, every turn (a busy loop).
        assert_eq!(
            reader
                .results()
                .recv_timeout(Duration::from_millis(20))
                .err(),
            Some(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        reader.thread_gone();
        assert!(reader.gone);
        assert_eq!(
            reader
                .results()
                .recv_timeout(Duration::from_millis(20))
                .err(),
            Some(crossbeam_channel::RecvTimeoutError::Timeout)
        );
        reader.request(true);
        assert!(!reader.in_flight());
    }

    fn reader_of_empty_dir() -> (DeviceReader, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let reader = DeviceReader::start(DiscoveryOptions {
            socket_dir: dir.path().to_owned(),
            // A name no kernel device has: the read lists nothing, quickly.
            only: vec!["wgpulse-none".into()],
        })
        .unwrap();
        (reader, dir)
    }

    #[test]
    fn a_request_during_a_read_is_sent_once_when_it_completes() {
        let (mut reader, _dir) = reader_of_empty_dir();
        reader.request(false);
        assert!(reader.in_flight());
        // Two asks while in flight: one more read, not two.
        reader.request(true);
        reader.request(true);
        let first = reader.results().recv().unwrap();
        reader.completed();
        assert!(reader.in_flight(), "the remembered request was sent");
        let second = reader.results().recv().unwrap();
        assert!(second.started >= first.started + first.took);
        reader.completed();
        assert!(!reader.in_flight());
        assert!(reader
            .results()
            .recv_timeout(Duration::from_millis(200))
            .is_err());
    }

    #[test]
    fn a_request_without_after_current_shares_the_read_in_flight() {
        let (mut reader, _dir) = reader_of_empty_dir();
        reader.request(false);
        reader.request(false);
        reader.results().recv().unwrap();
        reader.completed();
        assert!(!reader.in_flight());
        assert!(reader.read_now().is_some());
        assert!(!reader.in_flight());
    }
}
