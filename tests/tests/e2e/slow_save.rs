//! A state write that hangs does not hold up a connect. The fault: the state file's
//! temporary name is a FIFO with no reader, so the agent's write of `peers.json`
//! blocks in `open` (as on a disk that stops answering, or a 100k-peer state being
//! serialised). A handshake meanwhile must still reach the events; once the FIFO is
//! read, that write fails (a FIFO cannot be fsynced), its temporary is removed, and
//! the retry saves the state with the connected peer.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use wgpulse_tests::agent::InProcessAgent;
use wgpulse_tests::process::wait_for;
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic};

/// Whether a thread of this process (the agent's writer: the test's own reader is not
/// started yet) sleeps in the kernel's wait for a FIFO's other end.
fn a_thread_waits_for_fifo_partner() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("wchan"))
            .is_ok_and(|wchan| wchan.contains("wait_for_partner"))
    })
}

/// Opens the FIFO for reading on another thread and returns what the writer wrote.
fn drain_fifo(fifo: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    let fifo = fifo.to_owned();
    std::thread::spawn(move || {
        let mut written = Vec::new();
        std::fs::File::open(&fifo)
            .expect("opening the FIFO for reading")
            .read_to_end(&mut written)
            .expect("reading the FIFO");
        written
    })
}

/// On drop (a failed assertion), reads the FIFO so that a write blocked in it goes
/// on and the agent can stop.
struct UnblockOnDrop<'a>(&'a Path);

impl Drop for UnblockOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && self.0.exists() {
            drop(drain_fifo(self.0));
        }
    }
}

#[test]
fn a_hung_state_write_does_not_hold_up_a_connect_and_is_retried() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let state = tempfile::tempdir().unwrap();
    let fifo = state.path().join("peers.json.tmp");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("making the FIFO");
    let mut agent = InProcessAgent::start(&pair, InProcessAgent::config(&pair, state.path()));
    let _unblock = UnblockOnDrop(&fifo);
    // The first read is the baseline (no events); a peer added to B is a create,
    // whose save is due 2 s later and blocks in the FIFO.
    let other = wgpulse_tests::wireguard::WgKeys::generate();
    pair.wg_b.set_peer(&other.public, None, "10.99.0.9/32");
    agent.next_matching("the added peer's create", Duration::from_secs(10), |e| {
        e.event == "create" && e.identifier == other.public
    });
    wait_for(
        "the state writer to block on the FIFO",
        Duration::from_secs(15),
        a_thread_waits_for_fifo_partner,
    );

    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let connect = agent.next_matching("the connect", Duration::from_secs(5), |e| {
        e.event == "connect"
    });
    assert_eq!(connect.identifier, pair.wg_a.keys.public);
    assert!(
        a_thread_waits_for_fifo_partner(),
        "the write was still hung when the connect was reported"
    );

    // The FIFO is read: that write fails at its fsync; the retry saves the state.
    let written = drain_fifo(&fifo).join().expect("the FIFO reader");
    assert!(
        String::from_utf8_lossy(&written).contains(&pair.wg_a.keys.public),
        "the hung write held the peer"
    );
    let saved = state.path().join("peers.json");
    wait_for("the state to be saved", Duration::from_secs(15), || {
        std::fs::read(&saved)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|state| {
                state["peers"].as_array().is_some_and(|peers| {
                    peers.iter().any(|p| {
                        p["connected"] == true && p.to_string().contains(&pair.wg_a.keys.public)
                    })
                })
            })
    });
    assert!(!fifo.exists(), "the failed write's temporary was removed");
    let status = agent.shared().status.read().unwrap().clone();
    assert!(
        status.persist_failures >= 1,
        "the FIFO write failed: {status:?}"
    );
    assert!(status.persist_saves >= 1, "the retry saved: {status:?}");
    agent.stop();
}
