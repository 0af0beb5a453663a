//! In-kernel WireGuard, run inside Debian's 6.1 and 6.12 kernels by `cargo xtask
//! vmtest` (the host kernel has no WireGuard module, so these are ignored on the
//! host): netlink discovery against `wg show`, including a 300-peer dump split over
//! several messages; the datapath's wire counts against the kernel's own interface
//! counters (the veth carries nothing but WireGuard: no IPv6, static neighbours) and
//! against `wg show`; what the loader leaves behind on detach; kernel-mode
//! attribution's per-peer counters against `wg show` and the difference to the wire
//! view against datagrams the test injects; and the connect, roam, disconnect and
//! remove events.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use wgpulse::config::Config;
use wgpulse::events::{Event, EventQueue};
use wgpulse::peers::KernelView;
use wgpulse::pipeline::{self, Observation};
use wgpulse::wg::{DiscoveryOptions, PublicKey};
use wgpulse_tests::agent::{kinds, InProcessAgent};
use wgpulse_tests::kernel_wg::{KernelDevice, KernelPair};
use wgpulse_tests::netns::{NetNs, Veth};
use wgpulse_tests::process::wait_for;

fn require_kernel_wireguard() {
    assert!(
        Path::new("/sys/module/wireguard").exists(),
        "the wireguard module is not loaded: these tests run inside `cargo xtask vmtest`"
    );
}

fn counter(ns: &NetNs, iface: &str, name: &str) -> u64 {
    let out = ns.run(&["cat", &format!("/sys/class/net/{iface}/statistics/{name}")]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Only WireGuard on the veth: no IPv6 (no ND, no MLD) and permanent neighbours (no
/// ARP), so the kernel's interface counters count exactly the WireGuard datagrams.
fn quiet_link(pair: &KernelPair) {
    let mac = |ns: &NetNs, iface: &str| {
        let out = ns.run(&["cat", &format!("/sys/class/net/{iface}/address")]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mac_a = mac(&pair.a, &pair.link.a.name);
    let mac_b = mac(&pair.b, &pair.link.b.name);
    for (ns, end, other, other_mac) in [
        (&pair.a, &pair.link.a, &pair.link.b, &mac_b),
        (&pair.b, &pair.link.b, &pair.link.a, &mac_a),
    ] {
        ns.run(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", end.name),
        ]);
        ns.run(&[
            "ip",
            "neigh",
            "replace",
            &other.v4.to_string(),
            "lladdr",
            other_mac,
            "dev",
            &end.name,
            "nud",
            "permanent",
        ]);
    }
}

/// A random public key (any 32 bytes): cheaper than `wg genkey` for hundreds of peers.
fn random_key() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[test]
#[ignore = "needs kernel WireGuard: runs inside `cargo xtask vmtest`"]
fn netlink_discovery_equals_wg_show_with_300_peers() {
    require_kernel_wireguard();
    let pair = KernelPair::new();
    let mut conf = String::new();
    for i in 0..300 {
        let key = random_key();
        conf.push_str(&format!(
            "[Peer]\nPublicKey = {key}\nAllowedIPs = 10.77.{}.{}/32\nEndpoint = 192.0.2.{}:{}\n\n",
            i / 256,
            i % 256,
            1 + i % 200,
            10_000 + i
        ));
    }
    let file = std::env::temp_dir().join(wgpulse_tests::unique_name("kwconf"));
    std::fs::write(&file, conf).unwrap();
    pair.wg_b
        .wg(&["addconf", &pair.wg_b.name, file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);

    let devices = {
        let _inside = pair.b.enter();
        wgpulse::wg::discover(&DiscoveryOptions::default()).expect("netlink discovery")
    };
    let dump = pair.wg_b.dump();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let device = &devices[0];
    assert_eq!(device.name, pair.wg_b.name);
    assert_eq!(device.kind, wgpulse::wg::DeviceKind::Kernel);
    assert_eq!(device.listen_port, dump.listen_port);
    assert_eq!(
        device.public_key.map(|k| k.to_base64()),
        Some(dump.public_key.clone())
    );
    assert_eq!(device.peers.len(), 301);
    let ours: BTreeSet<(String, Option<std::net::SocketAddr>, Vec<String>)> = device
        .peers
        .iter()
        .map(|p| (p.public_key.to_base64(), p.endpoint, p.allowed_ips.clone()))
        .collect();
    let theirs: BTreeSet<(String, Option<std::net::SocketAddr>, Vec<String>)> = dump
        .peers
        .iter()
        .map(|p| (p.public_key.clone(), p.endpoint, p.allowed_ips.clone()))
        .collect();
    assert_eq!(
        ours, theirs,
        "every peer, endpoint and allowed IP as wg show lists them"
    );
}

#[test]
#[ignore = "needs kernel WireGuard: runs inside `cargo xtask vmtest`"]
fn wire_counts_match_the_interface_counters_and_wg_show() {
    require_kernel_wireguard();
    let pair = KernelPair::new();
    quiet_link(&pair);
    let state = tempfile::tempdir().unwrap();
    let config = Config {
        state_dir: state.path().to_owned(),
        interfaces: vec![pair.link.b.name.clone()],
        devices: vec![pair.wg_b.name.clone()],
        drain_interval: Duration::from_millis(200),
        refresh_interval: Duration::from_secs(1),
        ..Config::default()
    };
    let (queue, events) = EventQueue::bounded(1024);
    let (observer, observations) = crossbeam_channel::bounded(100_000);
    let running = {
        let _inside = pair.b.enter();
        pipeline::start(
            wgpulse::app::pipeline_settings(&config),
            queue,
            Some(observer),
        )
        .expect("starting the agent")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match observations.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Observation::Devices(_)) => break,
            Ok(_) => {}
            Err(e) => panic!("no device read: {e}"),
        }
    }
    let rx0 = counter(&pair.b, &pair.link.b.name, "rx_packets");
    let tx0 = counter(&pair.b, &pair.link.b.name, "tx_packets");
    pair.a.run(&[
        "ping",
        "-q",
        "-c",
        "10",
        "-i",
        "0.2",
        &pair.tunnel_b.to_string(),
    ]);

    let shared = running.shared();
    let peer: PublicKey = pair.wg_a.keys.public.parse().unwrap();
    let mut seen = (0, 0);
    wait_for(
        "the wire counts to equal the interface counters",
        Duration::from_secs(60),
        || {
            let rx = counter(&pair.b, &pair.link.b.name, "rx_packets") - rx0;
            let tx = counter(&pair.b, &pair.link.b.name, "tx_packets") - tx0;
            let table = shared.table.read().unwrap();
            let Some(state) = table.peer(&pair.wg_b.name, &peer) else {
                return false;
            };
            seen = (state.wire.rx_packets, state.wire.tx_packets);
            seen == (rx, tx) && rx > 0
        },
    );
    // WireGuard's own view: egress bytes equal, ingress bytes minus socket drops equal.
    wait_for(
        "the wire bytes to equal wg show",
        Duration::from_secs(60),
        || {
            let dump = pair.wg_b.dump();
            let theirs = dump
                .peers
                .iter()
                .find(|p| p.public_key == pair.wg_a.keys.public)
                .unwrap();
            let table = shared.table.read().unwrap();
            let ours = table.peer(&pair.wg_b.name, &peer).unwrap();
            ours.wire.tx_bytes == theirs.tx_bytes
                && ours.wire.rx_bytes - ours.wire.socket_drop_bytes == theirs.rx_bytes
                && ours.connected
        },
    );
    let connected = events.try_iter().any(|e| e.kind() == "peer_metric.connect");
    assert!(connected, "a connect event");
    running.stop();

    // What the loader leaves behind: no filter (programs) on the interface; on
    // kernels before 6.6 the clsact qdisc stays (aya 0.14 cannot delete it).
    let filters = pair
        .b
        .run(&["tc", "filter", "show", "dev", &pair.link.b.name, "ingress"]);
    let filters = String::from_utf8_lossy(&filters.stdout).into_owned();
    assert!(
        !filters.contains("wgpulse"),
        "a classifier stayed attached: {filters}"
    );
    let qdisc = pair
        .b
        .run(&["tc", "qdisc", "show", "dev", &pair.link.b.name]);
    println!(
        "VMTEST_NOTE after detach, qdiscs on the interface: {}",
        String::from_utf8_lossy(&qdisc.stdout)
            .trim()
            .replace('\n', " | ")
    );
}

/// A third namespace C with its own kernel WireGuard device, peered with B over a
/// second veth: B then has two peers. C's tunnel address is `10.<t>.0.3`.
struct ThirdPeer {
    wg: KernelDevice,
    _link: Veth,
    ns: NetNs,
}

impl ThirdPeer {
    fn join(pair: &KernelPair) -> Self {
        let ns = NetNs::new("kwc");
        let t = pair.tunnel_b.octets()[1];
        let link = Veth::connect(&ns, &pair.b, t, 2);
        let tunnel = std::net::Ipv4Addr::new(10, t, 0, 3);
        let wg = KernelDevice::create(&ns, "kwgc", 51822, &format!("{tunnel}/24"));
        wg.set_peer(
            &pair.wg_b.keys.public,
            Some(SocketAddr::new(link.b.v4.into(), pair.wg_b.port)),
            &format!("{}/32", pair.tunnel_b),
        );
        pair.wg_b.set_peer(
            &wg.keys.public,
            Some(SocketAddr::new(link.a.v4.into(), wg.port)),
            &format!("{tunnel}/32"),
        );
        Self {
            wg,
            _link: link,
            ns,
        }
    }
}

/// An in-process agent in B watching B's device on every veth of B.
fn agent_in_b(pair: &KernelPair, state: &Path, disconnect_after: Duration) -> InProcessAgent {
    let config = Config {
        state_dir: state.to_owned(),
        node: Some("vm-node".into()),
        devices: vec![pair.wg_b.name.clone()],
        drain_interval: Duration::from_millis(200),
        refresh_interval: Duration::from_secs(1),
        disconnect_after,
        ..Config::default()
    };
    InProcessAgent::start_in(&pair.b, config)
}

/// The kernel-mode view of a peer of B, if the agent has one.
fn kernel_view(agent: &InProcessAgent, device: &str, key: &str) -> Option<KernelView> {
    let shared = agent.shared();
    let table = shared.table.read().unwrap();
    let key: PublicKey = key.parse().unwrap();
    table
        .peer(device, &key)
        .and_then(|p| p.kernel.as_deref().copied())
}

/// Calls `condition` until it holds (true) or `timeout` passed (false); `condition`
/// itself waits for what it checks.
fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
    }
    false
}

/// Sends `count` datagrams of `len` bytes (first byte `first`, the rest random) from
/// `from` to `to` inside `ns`.
fn send_datagrams(
    ns: &NetNs,
    from: SocketAddr,
    to: SocketAddr,
    first: u8,
    len: usize,
    count: usize,
) {
    use rand::RngCore as _;
    let socket = {
        let _inside = ns.enter();
        std::net::UdpSocket::bind(from).expect("binding the sender")
    };
    let mut datagram = vec![0u8; len];
    for _ in 0..count {
        rand::thread_rng().fill_bytes(&mut datagram);
        datagram[0] = first;
        if len >= 4 {
            datagram[1..4].fill(0);
        }
        socket.send_to(&datagram, to).expect("sending");
    }
}

#[test]
#[ignore = "needs kernel WireGuard: runs inside `cargo xtask vmtest`"]
fn kernel_mode_counts_equal_wg_show_per_peer_and_the_difference_is_what_wireguard_rejected() {
    require_kernel_wireguard();
    let pair = KernelPair::new();
    let third = ThirdPeer::join(&pair);
    let state = tempfile::tempdir().unwrap();
    let agent = agent_in_b(&pair, state.path(), Duration::from_secs(180));
    {
        let shared = agent.shared();
        let status = shared.status.read().unwrap();
        assert!(
            status.kernel_mode,
            "kernel-mode attribution is off: {}",
            status.kernel_mode_detail
        );
        println!("VMTEST_NOTE kernel mode: {}", status.kernel_mode_detail);
    }
    let device = pair.wg_b.name.clone();
    let peer_a = pair.wg_a.keys.public.clone();
    let peer_c = third.wg.keys.public.clone();

    let ping = |ns: &NetNs, size: &str| {
        ns.run(&[
            "ping",
            "-q",
            "-c",
            "5",
            "-i",
            "0.2",
            "-s",
            size,
            &pair.tunnel_b.to_string(),
        ]);
    };
    ping(&pair.a, "1000");
    ping(&third.ns, "200");

    // Each peer's kernel-mode counters equal wg show, read back to back until both
    // agree (a keepalive between the two reads moves one of them).
    let equal_to_wg_show = |what: &str| {
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let dump = pair.wg_b.dump();
            let mut all = true;
            last.clear();
            for key in [&peer_a, &peer_c] {
                let theirs = dump.peer(key).expect("peer in wg show");
                let ours = kernel_view(&agent, &device, key);
                last.push_str(&format!(
                    "{}: wg show rx {} tx {}, kernel mode {:?}; ",
                    &key[..8],
                    theirs.rx_bytes,
                    theirs.tx_bytes,
                    ours.map(|k| (k.rx_bytes, k.tx_bytes))
                ));
                all &= ours.is_some_and(|k| {
                    (k.rx_bytes, k.tx_bytes) == (theirs.rx_bytes, theirs.tx_bytes)
                        && theirs.rx_bytes > 0
                });
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {last}");
            agent.await_drain();
        }
    };
    equal_to_wg_show("kernel-mode counters equal to wg show");
    // Both peers' differences have a baseline (a drain with nothing in flight) before
    // anything WireGuard rejects is sent; until then they are unknown, never guessed.
    let mut views = (None, None);
    let baselined = wait_until(Duration::from_secs(30), || {
        agent.await_drain();
        views = (
            kernel_view(&agent, &device, &peer_a),
            kernel_view(&agent, &device, &peer_c),
        );
        [views.0, views.1].iter().all(|v| {
            v.is_some_and(|k| (k.rejected_rx_bytes, k.unaccounted_tx_bytes) == (Some(0), Some(0)))
        })
    });
    assert!(
        baselined,
        "no quiet baseline of 0 for both peers: {views:?}"
    );

    // What only the two views together show: A's endpoint sends 50 data-shaped
    // datagrams WireGuard cannot decrypt (no such session) and 30 that are no
    // WireGuard message at all. A's device is down meanwhile so its port is free.
    pair.a.run(&["ip", "link", "set", &pair.wg_a.name, "down"]);
    let a_endpoint = pair.endpoint_a();
    let b_endpoint = SocketAddr::new(pair.link.b.v4.into(), pair.wg_b.port);
    send_datagrams(&pair.a, a_endpoint, b_endpoint, 4, 64, 50);
    send_datagrams(&pair.a, a_endpoint, b_endpoint, 9, 3, 30);
    pair.a.run(&["ip", "link", "set", &pair.wg_a.name, "up"]);
    let injected = 50 * 64 + 30 * 3;
    ping(&pair.a, "500");
    equal_to_wg_show("kernel-mode counters equal to wg show after the garbage");
    // The difference settles at the first drain after the traffic stops.
    let mut last = None;
    let settled = wait_until(Duration::from_secs(30), || {
        agent.await_drain();
        last = kernel_view(&agent, &device, &peer_a);
        last.is_some_and(|k| k.rejected_rx_bytes == Some(injected))
    });
    assert!(
        settled,
        "A's rejected bytes never equalled the {injected} injected: last view {last:?}"
    );
    let a = last.unwrap();
    let c = kernel_view(&agent, &device, &peer_c).unwrap();
    assert_eq!(a.unaccounted_tx_bytes, Some(0), "{a:?}");
    assert_eq!(
        (c.rejected_rx_bytes, c.unaccounted_tx_bytes),
        (Some(0), Some(0)),
        "{c:?}"
    );
    assert_ne!(a.internal_id, c.internal_id);
    println!(
        "VMTEST_NOTE kernel mode: A rx {} tx {} rejected {}, C rx {} tx {}",
        a.rx_bytes, a.tx_bytes, injected, c.rx_bytes, c.tx_bytes
    );
    agent.stop();
}

#[test]
#[ignore = "needs kernel WireGuard: runs inside `cargo xtask vmtest`"]
fn connect_roam_disconnect_and_remove_events_with_kernel_wireguard() {
    require_kernel_wireguard();
    let pair = KernelPair::new();
    let state = tempfile::tempdir().unwrap();
    let disconnect_after = Duration::from_secs(6);
    let mut agent = agent_in_b(&pair, state.path(), disconnect_after);
    let state_event = |e: &Event| e.entity != "alert" && e.event != "handshake";
    assert!(
        agent.pending().iter().all(|e| !state_event(e)),
        "the baseline read emits nothing: {:?}",
        kinds(&agent.seen)
    );
    let peer_a = pair.wg_a.keys.public.clone();
    let tunnel_b = pair.tunnel_b.to_string();

    // Connect, from the datapath's handshake notice.
    pair.a.run(&["ping", "-q", "-c", "1", &tunnel_b]);
    let connect = agent.next_matching("peer_metric.connect", Duration::from_secs(20), state_event);
    assert_eq!(connect.kind(), "peer_metric.connect");
    assert_eq!(connect.identifier, peer_a);
    assert_eq!(connect.payload["Status"]["IsConnected"], true);
    assert_eq!(connect.payload["Status"]["HandshakesCompleted"], 1);
    assert_eq!(
        connect.payload["Status"]["Endpoint"],
        pair.endpoint_a().to_string()
    );

    // Roam: A's device moves to another port, B sees its data from there.
    pair.wg_a
        .wg(&["set", &pair.wg_a.name, "listen-port", "51831"]);
    pair.a.run(&["ping", "-q", "-c", "1", &tunnel_b]);
    let roam = agent.next_matching("peer.update (roam)", Duration::from_secs(20), state_event);
    assert_eq!(roam.kind(), "peer.update");
    assert_eq!(
        roam.payload["ChangedFields"],
        serde_json::json!(["Endpoint"])
    );
    let new_endpoint = SocketAddr::new(pair.link.a.v4.into(), 51831).to_string();
    assert_eq!(roam.payload["Endpoint"], new_endpoint.as_str());

    // Silence: disconnected at the threshold.
    let disconnect = agent.next_matching(
        "peer_metric.disconnect",
        disconnect_after + Duration::from_secs(20),
        state_event,
    );
    assert_eq!(disconnect.kind(), "peer_metric.disconnect");
    assert_eq!(
        disconnect.payload["Status"]["DisconnectReason"],
        "handshake_expired"
    );

    // Removed from B: deleted.
    pair.wg_b
        .wg(&["set", &pair.wg_b.name, "peer", &peer_a, "remove"]);
    let delete = agent.next_matching("peer.delete", Duration::from_secs(20), state_event);
    assert_eq!(delete.kind(), "peer.delete");
    assert_eq!(delete.identifier, peer_a);

    let all = agent.stop();
    assert_eq!(
        all.iter()
            .filter(|e| e.identifier == peer_a && state_event(e))
            .map(Event::kind)
            .collect::<Vec<_>>(),
        [
            "peer_metric.connect",
            "peer.update",
            "peer_metric.disconnect",
            "peer.delete"
        ],
        "per-peer order"
    );
    let text = serde_json::to_string(&all).unwrap();
    for secret in [pair.wg_a.keys.private_key(), pair.wg_b.keys.private_key()] {
        assert!(!text.contains(secret), "a private key in an event");
    }
}

#[test]
#[ignore = "needs kernel WireGuard: runs inside `cargo xtask vmtest`"]
fn a_scrape_right_after_traffic_equals_wg_show_with_kernel_wireguard() {
    require_kernel_wireguard();
    let pair = KernelPair::new();
    let state = tempfile::tempdir().unwrap();
    // Periodic device reads a minute apart: only a read-through can be fresh.
    let config = Config {
        state_dir: state.path().to_owned(),
        node: Some("vm-node".into()),
        devices: vec![pair.wg_b.name.clone()],
        drain_interval: Duration::from_millis(200),
        refresh_interval: Duration::from_secs(60),
        ..Config::default()
    };
    let agent = InProcessAgent::start_in(&pair.b, config);
    let shared = agent.shared();
    let peer = pair.wg_a.keys.public.clone();
    let tunnel_b = pair.tunnel_b.to_string();
    for round in 0..3 {
        pair.a
            .run(&["ping", "-q", "-c", "3", "-i", "0.2", &tunnel_b]);
        let dump = pair.wg_b.dump();
        let theirs = dump.peer(&peer).expect("peer in wg show");
        // The rule lets a read count as fresh for max(100 ms, 20 x its duration),
        // which under emulation is long: scrape once that window has passed.
        while shared
            .read_through
            .fresh_until()
            .is_some_and(|until| std::time::Instant::now() <= until)
        {
            std::thread::yield_now();
        }
        // What a scrape does: read through, then encode the peer series.
        shared
            .read_through
            .refresh_for_scrape(std::time::Instant::now());
        let exposition = wgpulse::metrics::peer_exposition(&shared);
        let value = |name: &str| {
            exposition
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&peer))
                .and_then(|l| l.rsplit_once(' '))
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .map(|v| v as u64)
        };
        assert_eq!(
            (
                value("wireguard_peer_receive_bytes_total"),
                value("wireguard_peer_transmit_bytes_total")
            ),
            (Some(theirs.rx_bytes), Some(theirs.tx_bytes)),
            "round {round}: the scrape equals wg show"
        );
    }
    agent.stop();
}
