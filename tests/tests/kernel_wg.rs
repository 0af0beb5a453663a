//! In-kernel WireGuard, run inside Debian's 6.1 and 6.12 kernels by `cargo xtask
//! vmtest` (the host kernel has no WireGuard module, so these are ignored on the
//! host): netlink discovery against `wg show`, including a 300-peer dump split over
//! several messages; the datapath's wire counts against the kernel's own interface
//! counters (the veth carries nothing but WireGuard: no IPv6, static neighbours) and
//! against `wg show`; and what the loader leaves behind on detach.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use wgpulse::agent::{self, Observation};
use wgpulse::config::Config;
use wgpulse::events::EventQueue;
use wgpulse::wg::{DiscoveryOptions, PublicKey};
use wgpulse_tests::kernel_wg::KernelPair;
use wgpulse_tests::netns::NetNs;
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
        agent::start(config, queue, Some(observer)).expect("starting the agent")
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
