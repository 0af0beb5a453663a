//! Part 9, scale: 10k and then (in a fresh run) 100k peers on one host, added in one
//! UAPI set per device while the agent watches as a process, with a batch-format
//! webhook on loopback. wireguard-go refuses a device's 65537th peer ("too many
//! peers": its `MaxPeers` is 1 << 16), so 100k peers are two devices of 50k in one
//! namespace, watched by one agent. Reported per size, the 100k figures beside the
//! 10k ones: every `peer.create` delivered (none lost) and how long that took, the
//! agent's own device-read and drain durations, `/metrics` wall time, the agent's
//! resident memory, and the connect latency of a real peer among them (from the
//! handshake's completing packet, tshark on the underlay, to the event at the
//! receiver).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use rand::RngCore as _;
use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::capture::Capture;
use wgpulse_tests::process::wait_for;
use wgpulse_tests::receiver::Receiver;
use wgpulse_tests::traffic;
use wgpulse_tests::wireguard::{Underlay, WgDevice, WgKeys, WgPair};

use crate::bigdevice::{rss_mib, rss_parts, AGENT};
use crate::connect::{completions, connects, latencies_ms};
use crate::report::{median, percentile, Part, Row};

/// Source ports per synthetic endpoint address (ports 20000..50000: below the
/// WireGuard ports, 51820 and up, which A's wireguard-go holds on every address).
const PORTS_PER_ADDRESS: usize = 30_000;
/// First source port of the synthetic endpoints.
const FIRST_PORT: usize = 20_000;
/// Peers per wireguard-go device (it holds at most 65536).
const PEERS_PER_DEVICE: usize = 50_000;
/// Listen port of the first extra device (the real pair uses 51820/51821).
const FIRST_EXTRA_PORT: u16 = 51_830;
/// Host part of the first extra address on A's link that synthetic endpoints use
/// (A's own address, `.1`, carries only its real WireGuard traffic).
const FIRST_HOST: u8 = 11;

/// Figures of one size.
struct Figures {
    creates: usize,
    creates_ms: f64,
    device_read_ms: f64,
    device_read_cpu_ms: f64,
    drain_ms: f64,
    scrape_ms: f64,
    rss: f64,
    /// `RssAnon`, `RssFile` and `RssShmem` (MiB): the heap, and mapped files or maps.
    rss_parts: [(&'static str, f64); 3],
    connect_p50: f64,
    connect_p99: f64,
}

/// The synthetic endpoint of peer `i`: an extra address on A's link and a port.
fn endpoint(link_a: Ipv4Addr, i: usize) -> (Ipv4Addr, u16) {
    let [a, b, c, _] = link_a.octets();
    let host = FIRST_HOST + (i / PORTS_PER_ADDRESS) as u8;
    (
        Ipv4Addr::new(a, b, c, host),
        (FIRST_PORT + i % PORTS_PER_ADDRESS) as u16,
    )
}

/// The events in the requests, parsed once each.
#[derive(Default)]
struct Seen {
    requests: usize,
    creates: usize,
    connects: usize,
    last_create: Option<Instant>,
    /// The identifier (public key) of every peer created so far.
    created: HashSet<String>,
}

impl Seen {
    fn update(&mut self, receiver: &Receiver) {
        for request in receiver.requests_since(self.requests) {
            self.requests += 1;
            let events = match request.json() {
                serde_json::Value::Array(events) => events,
                event => vec![event],
            };
            for event in events {
                if event["event"] == "connect" {
                    self.connects += 1;
                }
                if event["event"] == "create" {
                    self.creates += 1;
                    self.last_create = Some(request.at);
                    if let Some(identifier) = event["identifier"].as_str() {
                        self.created.insert(identifier.to_owned());
                    }
                }
            }
        }
    }
}

/// A gauge's value in seconds from an exposition, in ms.
fn gauge_ms(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} is exported"))
        * 1000.0
}

fn measure(peers: usize, rounds: usize, scrapes: usize) -> Figures {
    let mut pair = WgPair::new(Underlay::V4);
    let state = tempfile::tempdir().unwrap();
    // B's device takes the first PEERS_PER_DEVICE peers, each extra device the next.
    let extra: Vec<WgDevice> = (1..peers.div_ceil(PEERS_PER_DEVICE))
        .map(|d| WgDevice::start(&pair.b, "wgs", FIRST_EXTRA_PORT + d as u16 - 1, &[]))
        .collect();
    let ports: Vec<u16> = std::iter::once(pair.wg_b.port)
        .chain(extra.iter().map(|d| d.port))
        .collect();
    let device_names: Vec<String> = std::iter::once(pair.wg_b.name.clone())
        .chain(extra.iter().map(|d| d.name.clone()))
        .collect();
    // The receiver's sockets are in B's namespace, with the agent.
    let receiver = {
        let _inside = pair.b.enter();
        Receiver::start()
    };
    let config = state.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\ninterfaces = [{:?}]\ndevices = {:?}\nmax_peers = 131072\n[[webhooks]]\nname = \"scale\"\nurl = \"{}\"\nformat = \"batch\"\n",
            state.path().join("state").display().to_string(),
            pair.link.b.name,
            device_names,
            receiver.url()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&pair.b, &config);
    // The first device read (A only) is the baseline: the peers added after it are
    // creates.
    agent.await_line("datapath attached", Duration::from_secs(60));
    wait_for("the agent to be ready", Duration::from_secs(60), || {
        http(&pair.b, "GET", &format!("http://{AGENT}/readyz"), None).0 == 200
    });

    // Every peer in one UAPI set (`wg addconf` sends the file as one).
    let hosts = peers.div_ceil(PORTS_PER_ADDRESS);
    for h in 0..hosts {
        let (address, _) = endpoint(pair.link.a.v4, h * PORTS_PER_ADDRESS);
        pair.a.run(&[
            "ip",
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            &pair.link.a.name,
        ]);
    }
    let mut rng = rand::thread_rng();
    let mut confs = Vec::new();
    for (d, first) in (0..peers).step_by(PEERS_PER_DEVICE).enumerate() {
        let mut conf = String::with_capacity(PEERS_PER_DEVICE * 120);
        for i in first..peers.min(first + PEERS_PER_DEVICE) {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            let (address, port) = endpoint(pair.link.a.v4, i);
            conf.push_str(&format!(
                "[Peer]\nPublicKey = {key}\nAllowedIPs = 10.{}.{}.{}/32\nEndpoint = {address}:{port}\n\n",
                100 + i / 65_536,
                (i / 256) % 256,
                i % 256,
            ));
        }
        let path = state.path().join(format!("peers-{d}.conf"));
        std::fs::write(&path, conf).unwrap();
        confs.push(path);
    }
    let added = Instant::now();
    for (d, path) in confs.iter().enumerate() {
        let device = if d == 0 { &pair.wg_b } else { &extra[d - 1] };
        device.wg(&["addconf", &device.name, path.to_str().unwrap()]);
    }
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.creates < peers {
        assert!(
            Instant::now() < deadline,
            "only {} of {peers} creates arrived",
            seen.creates
        );
        std::thread::sleep(Duration::from_millis(50));
        seen.update(&receiver);
    }
    let creates_ms = (seen.last_create.unwrap() - added).as_secs_f64() * 1000.0;

    // Traffic from every synthetic endpoint, so the maps hold them all.
    let script = format!(
        "import os, socket\n\
         for i in range({peers}):\n\
         \x20   a = '{prefix}.' + str({first_host} + i // {per})\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   s.bind((a, {first_port} + i % {per}))\n\
         \x20   s.sendto(b'\\x04\\x00\\x00\\x00' + os.urandom(44), ('{dst}', {ports:?}[i // {per_device}]))\n\
         \x20   s.close()\n",
        prefix = {
            let [a, b, c, _] = pair.link.a.v4.octets();
            format!("{a}.{b}.{c}")
        },
        first_host = FIRST_HOST,
        per = PORTS_PER_ADDRESS,
        first_port = FIRST_PORT,
        dst = pair.link.b.v4,
        per_device = PEERS_PER_DEVICE,
    );
    pair.a
        .run_timeout(&["python3", "-c", &script], Duration::from_secs(600));

    // /metrics: every peer exported; the agent's own timings beside the wall time.
    let url = format!("http://{AGENT}/metrics");
    let mut device_reads = Vec::new();
    let mut device_read_cpus = Vec::new();
    let mut drains = Vec::new();
    wait_for(
        "a drain that counted every endpoint",
        Duration::from_secs(60),
        || {
            let body = http(&pair.b, "GET", &url, None).1;
            body.lines()
                .find_map(|l| l.strip_prefix("wgpulse_map_entries "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .is_some_and(|entries| entries >= peers)
        },
    );
    for _ in 0..scrapes {
        let body = http(&pair.b, "GET", &url, None).1;
        assert!(
            body.matches("wireguard_peer_info{").count() > peers,
            "every peer is exported"
        );
        device_reads.push(gauge_ms(&body, "wgpulse_device_read_duration_seconds"));
        device_read_cpus.push(gauge_ms(&body, "wgpulse_device_read_cpu_seconds"));
        drains.push(gauge_ms(&body, "wgpulse_drain_duration_seconds"));
    }
    let (scrape_ms, _) = crate::scrape::time_scrapes(&pair.b, &url, agent.child.id(), scrapes);

    // Connects of the real peer: each round gives A a new key (a new peer to B,
    // known from a device read before its handshake), then a ping starts it.
    let (wall0, mono0) = (SystemTime::now(), Instant::now());
    let capture = Capture::with_filter(
        &pair.b,
        &pair.link.b.name,
        &format!(
            "udp port {} and host {} and udp port {}",
            pair.wg_b.port, pair.link.a.v4, pair.wg_a.port
        ),
    );
    let allowed_a = format!("{}/32", pair.tunnel_a.0);
    let allowed_b = format!("{}/32", pair.tunnel_b.0);
    for round in 0..rounds {
        let old = pair.wg_a.keys.public.clone();
        pair.wg_a.set_private_key(WgKeys::generate());
        let new = pair.wg_a.keys.public.clone();
        // A's peer B afresh: the passive keepalive A owes since the last round's
        // ping would otherwise start a handshake 10 s later, whenever that falls.
        let b_key = pair.wg_b.keys.public.clone();
        pair.wg_a.remove_peer(&b_key);
        pair.wg_a
            .set_peer(&b_key, Some(pair.endpoint_b()), &allowed_b);
        pair.wg_b.remove_peer(&old);
        pair.wg_b
            .set_peer(&new, Some(pair.endpoint_a()), &allowed_a);
        // Its own create, not a count: the ping starts only once the agent knows
        // the key, so the figure is the connect rule's and not a device read's.
        // The key comes over a known endpoint (no handshake-asked read) without
        // traffic: a large device's periodic read is up to 2 min away (the read
        // budget), so a scrape reads it through, as Prometheus's would. Each scrape
        // completes before the ping (its snapshot is not the connect's wait).
        let deadline = Instant::now() + Duration::from_secs(180);
        while !seen.created.contains(&new) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the new peer's create"
            );
            http(&pair.b, "GET", &url, None);
            // A scrape within the last read's freshness limit (20 reads' time)
            // does not read: wait a while for requests, then scrape again.
            let patience_ends = Instant::now() + Duration::from_secs(5);
            while !seen.created.contains(&new)
                && receiver.await_count(
                    seen.requests + 1,
                    patience_ends.saturating_duration_since(Instant::now()),
                )
            {
                seen.update(&receiver);
            }
        }
        traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
        // Read incrementally: copying every request so far (the 100k creates) at
        // each poll took a core from the agent being measured.
        wait_for(
            "the connect at the receiver",
            Duration::from_secs(30),
            || {
                seen.update(&receiver);
                seen.connects > round
            },
        );
    }
    let packets = capture.stop();
    let done = completions(&packets, pair.endpoint_b());
    let arrivals = connects(&receiver, wall0, mono0);
    assert_eq!(done.len(), rounds, "one completed handshake per round");
    assert_eq!(arrivals.len(), rounds, "one connect per round");
    let latencies = latencies_ms(&done, &arrivals);
    println!(
        "scale {peers}: connect latencies by round (ms): {}",
        latencies
            .iter()
            .map(|ms| format!("{ms:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let rss = rss_mib(agent.child.id());
    let rss_parts = rss_parts(agent.child.id());
    agent.kill();
    drop(extra);
    Figures {
        creates: seen.creates.min(peers),
        creates_ms,
        device_read_ms: median(device_reads),
        device_read_cpu_ms: median(device_read_cpus),
        drain_ms: median(drains),
        scrape_ms,
        rss,
        rss_parts,
        connect_p50: percentile(latencies.clone(), 50.0),
        connect_p99: percentile(latencies, 99.0),
    }
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let all: &[usize] = if quick { &[1_000] } else { &[10_000, 100_000] };
    // `WGPULSE_BENCH_SCALE_SIZES=100000` runs only the sizes listed (for profiling one
    // size; the full report runs both).
    let sizes: Vec<usize> = match std::env::var("WGPULSE_BENCH_SCALE_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("WGPULSE_BENCH_SCALE_SIZES: peer counts")
            })
            .collect(),
        Err(_) => all.to_vec(),
    };
    let rounds = if quick { 2 } else { 10 };
    let scrapes = if quick { 3 } else { 7 };
    let mut part = Part::new(
        "scale",
        "Scale: 10k and 100k peers on one host",
        &format!("wireguard-go devices (one for 10k; two of 50k for 100k: wireguard-go holds at most 65536 peers a device) given N peers in one UAPI set each while the agent (a batch-format webhook on loopback) watches it; traffic from every peer's endpoint; median of {scrapes} scrapes; {rounds} connects of a real peer among them (each with a new key on a known endpoint, learnt from a scrape's read-through read before the ping), from the completing packet (tshark) to the event at the receiver; ratios are to the 10k figure of the same run"),
    );
    let mut base: Option<Figures> = None;
    for &n in &sizes {
        let f = measure(n, rounds, scrapes);
        println!(
            "scale {n}: {} creates in {:.0} ms, device read {:.1} ms ({:.1} ms CPU), drain {:.2} ms, /metrics {:.1} ms, RSS {:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1}), connect p50 {:.1} / p99 {:.1} ms",
            f.creates, f.creates_ms, f.device_read_ms, f.device_read_cpu_ms, f.drain_ms, f.scrape_ms, f.rss, f.rss_parts[0].1, f.rss_parts[1].1, f.rss_parts[2].1, f.connect_p50, f.connect_p99
        );
        let big = n >= 100_000;
        let ratio = |row: Row, value: f64, of: Option<f64>| match of {
            Some(of) if big && of > 0.0 => row.ratio(value / of, "x the 10k figure"),
            _ => row,
        };
        let b = base.as_ref();
        let mut creates = Row::new(
            &format!("peer.create events delivered, {n} peers added"),
            f.creates as f64,
            "events",
        );
        if big {
            creates = creates.target("= peers added (no event lost)", f.creates == n);
        }
        part.rows.push(creates);
        part.rows.push(ratio(
            Row::new(
                &format!("UAPI set to the last create at the receiver, {n} peers"),
                f.creates_ms,
                "ms",
            ),
            f.creates_ms,
            b.map(|b| b.creates_ms),
        ));
        part.rows.push(ratio(
            Row::new(
                &format!("device read (the agent's own figure), {n} peers"),
                f.device_read_ms,
                "ms",
            ),
            f.device_read_ms,
            b.map(|b| b.device_read_ms),
        ));
        part.rows.push(ratio(
            Row::new(
                &format!("device read, the agent's CPU (its own figure), {n} peers"),
                f.device_read_cpu_ms,
                "ms",
            ),
            f.device_read_cpu_ms,
            b.map(|b| b.device_read_cpu_ms),
        ));
        part.rows.push(ratio(
            Row::new(
                &format!("drain (the agent's own figure), {n} peers"),
                f.drain_ms,
                "ms",
            ),
            f.drain_ms,
            b.map(|b| b.drain_ms),
        ));
        let mut scrape = ratio(
            Row::new(&format!("/metrics, {n} peers"), f.scrape_ms, "ms/scrape"),
            f.scrape_ms,
            b.map(|b| b.scrape_ms),
        );
        if big {
            scrape = scrape.target("<= 200 ms", f.scrape_ms <= 200.0);
        }
        part.rows.push(scrape);
        let mut rss = ratio(
            Row::new(&format!("agent RSS, {n} peers"), f.rss, "MiB"),
            f.rss,
            b.map(|b| b.rss),
        );
        if big {
            rss = rss.target("<= 200 MiB", f.rss <= 200.0);
        }
        part.rows.push(rss);
        // Where the RSS is: the heap (anon) and mapped files and maps (file: the
        // binary and the path array the datapath shares, 128 B a slot, two slots a
        // peer); the kernel holds the array's memory whether it is mapped or not.
        for (what, mib) in [
            ("anonymous (heap)", f.rss_parts[0].1),
            ("file-backed (binary, mapped BPF maps)", f.rss_parts[1].1),
        ] {
            part.rows.push(Row::new(
                &format!("agent RSS {what}, {n} peers"),
                mib,
                "MiB",
            ));
        }
        part.rows.push(Row::new(
            &format!("connect p50, {n} peers"),
            f.connect_p50,
            "ms",
        ));
        let mut connect = Row::new(&format!("connect p99, {n} peers"), f.connect_p99, "ms");
        if big {
            connect = connect.target("< 50 ms", f.connect_p99 < 50.0);
        }
        part.rows.push(connect);
        if base.is_none() {
            base = Some(f);
        }
    }
    part
}
