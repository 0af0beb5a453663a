//! A slow device read does not hold up a connect. Beside B's real wireguard-go device
//! the agent watches a second userspace device whose UAPI socket (the fault: a
//! daemon that takes its time, as one of 100k peers does) holds each reply until the
//! test releases it. A handshake of the real peer during such a read must reach the
//! events while the read is still in flight. And a read that is slow only because it
//! waits (for the daemon, or for a core on a loaded host) costs the agent no CPU:
//! the device is still read every `refresh_interval`, not as seldom as a costly
//! large device.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wgpulse_tests::agent::InProcessAgent;
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic, unique_name};

/// Longest the fake device holds a reply (under the agent's 2 s UAPI limit, so the
/// read succeeds either way).
const HOLD: Duration = Duration::from_millis(1_800);

/// A UAPI socket answering `get=1` with an empty device, each reply held until
/// [`SlowDevice::release`] or for `hold`. `started` receives one message per request.
struct SlowDevice {
    started: crossbeam_channel::Receiver<Instant>,
    release: crossbeam_channel::Sender<()>,
}

impl SlowDevice {
    fn start(socket: PathBuf, hold: Duration) -> Self {
        let listener = UnixListener::bind(&socket).expect("binding the fake UAPI socket");
        let (started_tx, started) = crossbeam_channel::unbounded();
        let (release, released) = crossbeam_channel::unbounded::<()>();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                // The request ends with an empty line.
                while reader.read_line(&mut request).is_ok_and(|n| n > 1) {}
                if started_tx.send(Instant::now()).is_err() {
                    return;
                }
                let _ = released.recv_timeout(hold);
                let _ = stream.write_all(b"listen_port=0\nerrno=0\n\n");
            }
        });
        Self { started, release }
    }

    /// Lets the reply being held go.
    fn release(&self) {
        let _ = self.release.send(());
    }
}

#[test]
fn a_handshake_during_a_slow_device_read_is_reported_before_the_read_ends() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    // The slow device: an interface of its name in B's namespace (the agent reads
    // only devices that exist where it runs) and its socket beside the real one's.
    let slow = unique_name("wgslow");
    pair.b
        .run(&["ip", "tuntap", "add", "dev", &slow, "mode", "tun"]);
    let sockets = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        format!("/var/run/wireguard/{}.sock", pair.wg_b.name),
        sockets.path().join(format!("{}.sock", pair.wg_b.name)),
    )
    .unwrap();
    let device = SlowDevice::start(sockets.path().join(format!("{slow}.sock")), HOLD);

    let state = tempfile::tempdir().unwrap();
    let mut config = InProcessAgent::config(&pair, state.path());
    config.devices.push(slow.clone());
    config.wireguard_socket_dir = sockets.path().to_owned();
    // The first read is answered at once: the baseline.
    device.release();
    let mut agent = InProcessAgent::start(&pair, config);
    while device.started.try_recv().is_ok() {}

    // The next read is held; the real peer shakes hands meanwhile.
    let held_since = device
        .started
        .recv_timeout(Duration::from_secs(10))
        .expect("the agent reads the devices every second");
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let connect = agent.next_matching("the connect", HOLD / 2, |e| e.event == "connect");
    let reported = held_since.elapsed();
    device.release();
    assert_eq!(connect.identifier, pair.wg_a.keys.public);
    assert!(
        reported < HOLD,
        "connect reported {reported:?} into a read held for {HOLD:?}"
    );
    drop(agent);
}

#[test]
fn a_device_slow_only_to_answer_is_still_read_every_refresh_interval() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let slow = unique_name("wgwait");
    pair.b
        .run(&["ip", "tuntap", "add", "dev", &slow, "mode", "tun"]);
    let sockets = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        format!("/var/run/wireguard/{}.sock", pair.wg_b.name),
        sockets.path().join(format!("{}.sock", pair.wg_b.name)),
    )
    .unwrap();
    // Every reply waits 200 ms: a read's wall-clock time, not the agent's CPU. Charged
    // as if it were CPU, the budget (400 reads' cost) would put the next periodic
    // read 80 s away.
    let wait = Duration::from_millis(200);
    let device = SlowDevice::start(sockets.path().join(format!("{slow}.sock")), wait);

    let state = tempfile::tempdir().unwrap();
    let mut config = InProcessAgent::config(&pair, state.path());
    config.devices.push(slow.clone());
    config.wireguard_socket_dir = sockets.path().to_owned();
    let refresh = config.refresh_interval;
    let agent = InProcessAgent::start(&pair, config);
    device
        .started
        .recv_timeout(Duration::from_secs(10))
        .expect("the first read");
    // Three periodic reads more, each within refresh_interval of the one before
    // (plus the wait and a scheduling margin).
    for n in 1..=3 {
        device
            .started
            .recv_timeout(refresh + wait + Duration::from_secs(3))
            .unwrap_or_else(|_| {
                panic!("periodic read {n} did not come within {refresh:?} of the last")
            });
    }
    drop(agent);
}
