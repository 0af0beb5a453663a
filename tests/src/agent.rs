//! The agent in-process for end-to-end tests: started inside a pair's server
//! namespace (its threads inherit the namespace), with the receiving end of its event
//! queue and its observations, so tests can await events instead of sleeping.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wgpulse::config::Config;
use wgpulse::events::{Event, EventQueue};
use wgpulse::pipeline::{self, Observation, RunningAgent};
use wgpulse::status::Shared;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::Mutex;

use crate::netns::NetNs;
use crate::process::ChildGuard;
use crate::wireguard::WgPair;

/// A running agent watching B's device on B's side of the veth.
pub struct InProcessAgent {
    running: Option<RunningAgent>,
    events: crossbeam_channel::Receiver<Event>,
    observations: crossbeam_channel::Receiver<Observation>,
    /// Every event received so far, in order.
    pub seen: Vec<Event>,
}

impl InProcessAgent {
    /// The configuration the tests start from: B's device and underlay interface,
    /// fast drains and reads, state in `state_dir`.
    pub fn config(pair: &WgPair, state_dir: &Path) -> Config {
        Config {
            node: Some("test-node".into()),
            state_dir: state_dir.to_owned(),
            interfaces: vec![pair.link.b.name.clone()],
            devices: vec![pair.wg_b.name.clone()],
            drain_interval: Duration::from_millis(200),
            refresh_interval: Duration::from_secs(1),
            ..Config::default()
        }
    }

    /// Starts an agent in `ns` watching `device` on `interface` (fast drains and
    /// reads, a fresh state directory) and waits for its first device read.
    pub fn watching(ns: &crate::netns::NetNs, interface: &str, device: &str) -> Self {
        let config = Config {
            node: Some("test-node".into()),
            state_dir: std::env::temp_dir().join(crate::unique_name("wgpa")),
            interfaces: vec![interface.to_owned()],
            devices: vec![device.to_owned()],
            drain_interval: Duration::from_millis(200),
            refresh_interval: Duration::from_secs(1),
            ..Config::default()
        };
        Self::start_in(ns, config)
    }

    /// Starts the agent in B's namespace and waits for its first device read.
    pub fn start(pair: &WgPair, config: Config) -> Self {
        Self::start_in(&pair.b, config)
    }

    /// Starts the agent in `ns` and waits for its first device read.
    pub fn start_in(ns: &crate::netns::NetNs, config: Config) -> Self {
        let (queue, events) = EventQueue::bounded(1024);
        let (observer, observations) = crossbeam_channel::bounded(100_000);
        let running = {
            let _inside = ns.enter();
            pipeline::start(
                wgpulse::app::pipeline_settings(&config),
                queue,
                Some(observer),
            )
            .expect("starting the agent")
        };
        let agent = Self {
            running: Some(running),
            events,
            observations,
            seen: Vec::new(),
        };
        agent.await_device_read();
        agent
    }

    /// Waits for the next completed device read (events it caused are queued before
    /// its observation).
    pub fn await_device_read(&self) {
        self.await_observation("device read", |o| matches!(o, Observation::Devices(_)));
    }

    /// Waits for the next completed drain (the table holds its counters when this
    /// returns).
    pub fn await_drain(&self) {
        self.await_observation("drain", |o| matches!(o, Observation::Snapshot(_)));
    }

    /// Waits up to 15 s for the next observation `wanted` accepts, or panics naming
    /// `what`.
    fn await_observation(&self, what: &str, wanted: impl Fn(&Observation) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.observations.recv_timeout(left) {
                Ok(observation) if wanted(&observation) => return,
                Ok(_) => {}
                Err(e) => panic!("no {what} within 15 s: {e}"),
            }
        }
    }

    /// The next event `wanted` accepts (others are kept in [`Self::seen`]), or a panic
    /// naming `what`.
    pub fn next_matching(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.events.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no event within {timeout:?}: expected {what}; seen so far: {:?}",
                    kinds(&self.seen)
                )
            });
            self.seen.push(event.clone());
            if wanted(&event) {
                return event;
            }
        }
    }

    /// Events already queued.
    pub fn pending(&mut self) -> Vec<Event> {
        let events: Vec<Event> = self.events.try_iter().collect();
        self.seen.extend(events.iter().cloned());
        events
    }

    /// A peer's path figures from the agent's table (empty if the peer is unknown).
    pub fn path_of(&self, device: &str, public_key: &str) -> wgpulse::peers::path::PathHealth {
        let shared = self.shared();
        let table = shared.table.read().expect("not poisoned");
        let key: wgpulse::wg::PublicKey = public_key.parse().expect("a public key");
        table
            .peer(device, &key)
            .map(|p| p.path.clone())
            .unwrap_or_default()
    }

    /// The agent's peer table and stage health.
    pub fn shared(&self) -> Arc<Shared> {
        self.running.as_ref().expect("running").shared()
    }

    /// Stops the agent; returns every event it emitted.
    pub fn stop(mut self) -> Vec<Event> {
        self.running.take().expect("running").stop();
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.events.try_iter());
        seen
    }
}

/// `entity.event` and the identifier's first characters, for messages.
pub fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.kind(),
                e.identifier.chars().take(8).collect::<String>()
            )
        })
        .collect()
}

/// `wgpulse run` in a namespace, its log lines collected.
pub struct AgentProcess {
    /// The process.
    pub child: ChildGuard,
    /// Its stderr lines so far.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    /// Starts `target/debug/wgpulse run --config <config>` in `ns`.
    pub fn start(ns: &NetNs, config: &Path) -> Self {
        Self::start_with(ns, &[], config)
    }

    /// Starts `<prefix...> target/debug/wgpulse run --config <config>` in `ns`, e.g.
    /// with `prlimit --nofile=128 --` as the prefix.
    pub fn start_with(ns: &NetNs, prefix: &[&str], config: &Path) -> Self {
        let binary = binary();
        let mut command: Vec<&str> = prefix.to_vec();
        command.extend([binary.as_str(), "run", "--config", config.to_str().unwrap()]);
        let mut child = ns
            .command(&command)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting wgpulse run (build it first: cargo build -p wgpulse)");
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child: ChildGuard::new(child, "wgpulse run"),
            lines,
        }
    }

    /// Log lines containing `needle` so far.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Every log line so far, joined.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`; panics naming it after `timeout`.
    pub fn await_line(&self, needle: &str, timeout: Duration) {
        crate::process::wait_for(&format!("a log line with {needle:?}"), timeout, || {
            self.count(needle) > 0
        });
    }

    /// CPU time (user + system) the process used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the agent is running");
        // Fields after the command name (which is in parentheses): utime is the
        // 14th and stime the 15th field of the whole line.
        let rest = stat.rsplit_once(')').unwrap().1;
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Duration::from_secs_f64((fields[0] + fields[1]) as f64 / ticks)
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        self.child.signal(libc::SIGKILL);
        self.child.wait_timeout(Duration::from_secs(10));
    }
}

/// The agent binary the process tests and benches start: `$WGPULSE_BIN`, or the
/// debug build.
pub fn binary() -> String {
    std::env::var("WGPULSE_BIN")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned() + "/../target/debug/wgpulse")
}

/// An HTTP request made from inside `ns` (the agent's listener is on the namespace's
/// loopback) with Python's urllib; returns the status and the body (status 0 when
/// nothing accepts the connection).
pub fn http(ns: &NetNs, method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let script = r#"
import sys, urllib.request, urllib.error
method, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
if token:
    request.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except urllib.error.URLError as e:
    # Nobody listening (yet): status 0, so that a caller waiting for a server to
    # come up can poll instead of failing.
    status, body = 0, str(e.reason).encode()
sys.stdout.write(str(status) + "\n" + body.decode())
"#;
    let out = ns.run(&["python3", "-c", script, method, url, token.unwrap_or("")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (
        status.trim().parse().expect("a status line"),
        body.to_owned(),
    )
}

/// Starts delivery with `config`'s sections, as the agent does.
pub fn start_delivery(
    config: &Config,
    runtime: &tokio::runtime::Handle,
    registry: &prometheus::Registry,
) -> wgpulse::sink::Delivery {
    let node = config.node_id();
    wgpulse::sink::Delivery::start(
        wgpulse::sink::DeliverySettings {
            state_dir: &config.state_dir,
            node: &node,
            outbox: &config.outbox,
            webhooks: &config.webhooks,
            nats: &config.nats,
        },
        runtime,
        registry,
    )
    .expect("starting delivery")
}
