//! A wireguard-go device with thousands of synthetic peers (random keys, each with
//! its own endpoint on the client's address), the agent watching it as a process,
//! and a generator that sends WireGuard-shaped datagrams from every peer's endpoint
//! so the maps are full. Shared by the scrape and footprint parts.

use std::time::Duration;

use base64::Engine as _;
use rand::RngCore as _;
use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::process::wait_for;
use wgpulse_tests::wireguard::{Underlay, WgPair};

/// First source port of the synthetic peers' endpoints.
pub const FIRST_PORT: u16 = 20_000;

/// The agent's listener in the server namespace.
pub const AGENT: &str = "127.0.0.1:9586";

/// The setup.
pub struct BigDevice {
    /// The namespaces and devices.
    pub pair: WgPair,
    /// Synthetic peers.
    pub peers: usize,
    /// The agent.
    pub agent: AgentProcess,
    _state: tempfile::TempDir,
}

impl BigDevice {
    /// `peers` synthetic peers on B's device and the agent watching it.
    pub fn start(peers: usize) -> Self {
        let pair = WgPair::new(Underlay::V4);
        let state = tempfile::tempdir().unwrap();
        let mut conf = String::new();
        let mut rng = rand::thread_rng();
        for i in 0..peers {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            conf.push_str(&format!(
                "[Peer]\nPublicKey = {key}\nAllowedIPs = 10.{}.{}.{}/32\nEndpoint = {}:{}\n\n",
                100 + i / 65_536,
                (i / 256) % 256,
                i % 256,
                pair.link.a.v4,
                FIRST_PORT as usize + i
            ));
        }
        let conf_path = state.path().join("peers.conf");
        std::fs::write(&conf_path, conf).unwrap();
        pair.wg_b
            .wg(&["addconf", &pair.wg_b.name, conf_path.to_str().unwrap()]);
        let config = state.path().join("config.toml");
        // The default max_peers where it holds the peers, as a user would run it
        // (it sizes the endpoint map and the path array, which count in the RSS).
        let max_peers = if peers < agent_common::DEFAULT_MAX_PEERS as usize {
            String::new()
        } else {
            format!("max_peers = {}\n", (peers + 1).next_power_of_two())
        };
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\ninterfaces = [{:?}]\ndevices = [{:?}]\n{max_peers}",
                state.path().join("state").display().to_string(),
                pair.link.b.name,
                pair.wg_b.name
            ),
        )
        .unwrap();
        let agent = AgentProcess::start(&pair.b, &config);
        wait_for("the agent to be ready", Duration::from_secs(120), || {
            agent.count("serving /metrics") > 0
                && http(&pair.b, "GET", &format!("http://{AGENT}/readyz"), None).0 == 200
        });
        Self {
            pair,
            peers,
            agent,
            _state: state,
        }
    }

    /// Sends one WireGuard-shaped datagram (a data message header and 32 bytes) from
    /// every synthetic peer's endpoint, `rounds` times.
    pub fn traffic(&self, rounds: usize) {
        let script = format!(
            "import os, socket\n\
             for r in range({rounds}):\n\
             \x20   for i in range({n}):\n\
             \x20       s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20       s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             \x20       s.bind(('{src}', {first} + i))\n\
             \x20       s.sendto(b'\\x04\\x00\\x00\\x00' + os.urandom(44), ('{dst}', {port}))\n\
             \x20       s.close()\n",
            n = self.peers,
            src = self.pair.link.a.v4,
            first = FIRST_PORT,
            dst = self.pair.link.b.v4,
            port = self.pair.wg_b.port
        );
        self.pair
            .a
            .run_timeout(&["python3", "-c", &script], Duration::from_secs(600));
    }

    /// Process id of the agent.
    pub fn pid(&self) -> u32 {
        self.agent.child.id()
    }
}

/// User plus system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process runs");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

/// What the resident set of `pid` is, in MiB: the heap and stacks (`RssAnon`), the
/// binary, libraries and mapped BPF maps (`RssFile`), shared memory (`RssShmem`).
pub fn rss_parts(pid: u32) -> [(&'static str, f64); 3] {
    ["RssAnon", "RssFile", "RssShmem"].map(|field| (field, status_mib(pid, field)))
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`,
/// `RssShmem`) in MiB.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}
