//! The datapath against real WireGuard: two namespaces joined by veth, wireguard-go
//! on both ends, the classifiers attached on one side. Each view is compared with its
//! own oracle: the wire counts with a tshark capture of the same veth (exactly), the
//! egress bytes with `wg show` tx (exactly), ingress bytes minus counted socket drops
//! with `wg show` rx (exactly), and completed handshakes with the handshakes
//! WireGuard made.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use wgpulse::datapath::links;
use wgpulse::datapath::{Datapath, LoadOptions};
use wgpulse::drain::Drain;
use wgpulse::snapshot::{EndpointStats, Role, SessionNotice};
use wgpulse_tests::capture::{self, Capture};
use wgpulse_tests::netns::{NetNs, Veth};
use wgpulse_tests::process::wait_for;
use wgpulse_tests::wireguard::WgDevice;
use wgpulse_tests::{require_root_and_tools, unique_octet};

/// Two namespaces, a veth between them, a wireguard-go device in each.
struct Pair {
    a: NetNs,
    b: NetNs,
    link: Veth,
    wg_a: WgDevice,
    wg_b: WgDevice,
    tunnel_a: String,
    tunnel_b: String,
}

fn unique_port(base: u16) -> u16 {
    base + (std::process::id() % 400) as u16 * 10 + unique_octet() as u16 % 10
}

impl Pair {
    fn new() -> Self {
        let a = NetNs::new("wpa");
        let b = NetNs::new("wpb");
        let block = unique_octet();
        let link = Veth::connect(&a, &b, block, 1);
        let tunnel_a = format!("10.{block}.200.1");
        let tunnel_b = format!("10.{block}.200.2");
        let wg_a = WgDevice::start(&a, "wga", unique_port(30000), &[format!("{tunnel_a}/24")]);
        let wg_b = WgDevice::start(&b, "wgb", unique_port(40000), &[format!("{tunnel_b}/24")]);
        wg_a.set_peer(
            &wg_b.keys.public,
            Some(SocketAddr::new(IpAddr::V4(link.b.v4), wg_b.port)),
            &format!("{tunnel_b}/32"),
        );
        wg_b.set_peer(
            &wg_a.keys.public,
            Some(SocketAddr::new(IpAddr::V4(link.a.v4), wg_a.port)),
            &format!("{tunnel_a}/32"),
        );
        Self {
            a,
            b,
            link,
            wg_a,
            wg_b,
            tunnel_a,
            tunnel_b,
        }
    }
}

/// A private datapath attached to namespace B's veth end, counting B's WireGuard port.
fn attach_in_b(pair: &Pair) -> (Datapath, Drain) {
    let _inside = pair.b.enter();
    let mut datapath = Datapath::load(&LoadOptions {
        max_peers: 1024,
        attach_drop_counter: true,
        kernel_attribution: false,
    })
    .expect("loading the datapath");
    datapath
        .set_ports(&HashMap::from([(pair.wg_b.port, 0)]))
        .expect("port map");
    let all = links::list().expect("listing interfaces");
    let veth = all.get(&pair.link.b.name).expect("veth end in B").clone();
    datapath.attach(&veth).expect("attaching");
    let drain = Drain::new(&mut datapath, 1024).expect("opening maps");
    (datapath, drain)
}

fn ping(from: &NetNs, to: &str) {
    from.run(&["ping", "-q", "-c", "5", "-i", "0.2", "-W", "2", to]);
}

/// iperf3 both ways between the tunnel addresses (client in A, server in B).
fn iperf_both_ways(pair: &Pair, port: u16) {
    let port = port.to_string();
    let _server = pair
        .b
        .spawn(&["iperf3", "-s", "-B", &pair.tunnel_b, "-p", &port]);
    wait_for("iperf3 server", Duration::from_secs(10), || {
        let out = pair
            .b
            .try_run(&["ss", "-Hltn", &format!("sport = :{port}")]);
        !out.stdout.is_empty()
    });
    for reverse in [false, true] {
        let mut args = vec![
            "timeout",
            "60",
            "iperf3",
            "-c",
            &pair.tunnel_b,
            "-p",
            &port,
            "-n",
            "8M",
            "-b",
            "200M",
        ];
        if reverse {
            args.push("-R");
        }
        pair.a.run(&args);
    }
}

fn sum(stats: &HashMap<SocketAddr, EndpointStats>) -> EndpointStats {
    let mut total = EndpointStats::default();
    for s in stats.values() {
        wgpulse::snapshot::merge_stats(&mut total, s);
    }
    total
}

#[test]
fn wire_counts_match_tshark_and_wireguard_over_ipv4_and_ipv6() {
    require_root_and_tools();
    let pair = Pair::new();
    let (datapath, mut drain) = attach_in_b(&pair);
    let capture = Capture::start(
        &pair.b,
        &pair.link.b.name,
        pair.wg_b.port,
        &pair.a,
        IpAddr::V4(pair.link.b.v4),
    );
    let mut notices = Vec::new();

    // Phase 1, IPv4 underlay: B initiates (B is the initiator).
    ping(&pair.b, &pair.tunnel_a);
    notices.extend(drain.read_notices());
    iperf_both_ways(&pair, unique_port(5000));
    notices.extend(drain.read_notices());

    // Phase 2: A forgets B and initiates afresh (B is the responder). B's own
    // counters are never reset.
    pair.wg_a.remove_peer(&pair.wg_b.keys.public);
    pair.wg_a.set_peer(
        &pair.wg_b.keys.public,
        Some(SocketAddr::new(IpAddr::V4(pair.link.b.v4), pair.wg_b.port)),
        &format!("{}/32", pair.tunnel_b),
    );
    ping(&pair.a, &pair.tunnel_b);
    notices.extend(drain.read_notices());

    // Phase 3, IPv6 underlay: A's packets now come from its IPv6 address (roaming).
    pair.wg_a.set_peer(
        &pair.wg_b.keys.public,
        Some(SocketAddr::new(IpAddr::V6(pair.link.b.v6), pair.wg_b.port)),
        &format!("{}/32", pair.tunnel_b),
    );
    ping(&pair.a, &pair.tunnel_b);
    iperf_both_ways(&pair, unique_port(6000));

    // Measure while quiet: WireGuard's view, the drain, then stop the capture; a drain
    // after the capture stopped must equal the first (nothing crossed meanwhile).
    let wg = pair.wg_b.peer(&pair.wg_a.keys.public);
    let totals: HashMap<SocketAddr, EndpointStats> = drain
        .drain()
        .unwrap()
        .endpoints
        .into_iter()
        .map(|s| (s.endpoint.addr, s.totals))
        .collect();
    notices.extend(drain.read_notices());
    let datagrams = capture.stop();
    // A drain carries only the endpoints that moved: none may have.
    let after: HashMap<SocketAddr, EndpointStats> = drain
        .drain()
        .unwrap()
        .endpoints
        .into_iter()
        .map(|s| (s.endpoint.addr, s.totals))
        .collect();
    assert!(
        after.is_empty(),
        "traffic crossed while measuring: {after:?}"
    );
    drop(datapath);

    // 1. The wire view equals tshark's capture, per endpoint and direction, exactly.
    let oracle = capture::per_endpoint(&datagrams, pair.wg_b.port);
    let a_v4 = SocketAddr::new(IpAddr::V4(pair.link.a.v4), pair.wg_a.port);
    let a_v6 = SocketAddr::new(IpAddr::V6(pair.link.a.v6), pair.wg_a.port);
    assert_eq!(
        oracle
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [a_v4, a_v6].into_iter().collect(),
        "tshark saw these endpoints"
    );
    for (endpoint, (rx, tx)) in &oracle {
        let ours = totals
            .get(endpoint)
            .unwrap_or_else(|| panic!("{endpoint} not counted"));
        // (rx packets, rx bytes, tx packets, tx bytes): valid and invalid together
        // are what crossed the wire.
        assert_eq!(
            (
                ours.rx.packets + ours.rx.invalid_packets,
                ours.rx.bytes + ours.rx.invalid_bytes,
                ours.tx.packets + ours.tx.invalid_packets,
                ours.tx.bytes + ours.tx.invalid_bytes,
            ),
            (rx.packets, rx.bytes, tx.packets, tx.bytes),
            "{endpoint}: (rx packets, rx bytes, tx packets, tx bytes) vs tshark"
        );
        assert_eq!(
            ours.rx.invalid_packets + ours.tx.invalid_packets,
            0,
            "{endpoint}: real WireGuard is never invalid"
        );
    }

    // 2. WireGuard's view: egress equals its tx; ingress minus socket drops equals its rx.
    let all = sum(&totals);
    assert_eq!(all.tx.bytes, wg.tx_bytes, "egress bytes vs wg show tx");
    assert_eq!(
        all.rx.bytes - all.socket_drop_bytes,
        wg.rx_bytes,
        "ingress - drops vs wg show rx (drops: {})",
        all.socket_drops
    );

    // 3. Handshakes: one as initiator (phase 1), one as responder (phase 2).
    let completed: Vec<(Role, SystemTime)> = notices
        .iter()
        .filter_map(|n| match n {
            SessionNotice::HandshakeComplete { role, at, .. } => Some((*role, *at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        completed.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        [Role::Initiator, Role::Responder],
        "{notices:?}"
    );
    let last = completed
        .last()
        .unwrap()
        .1
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    assert!(
        last.as_secs().abs_diff(wg.latest_handshake) <= 1,
        "last completed handshake at {}s, wg show latest-handshake {}s",
        last.as_secs(),
        wg.latest_handshake
    );
    let handshake_messages = all.rx.messages.responses + all.tx.messages.responses;
    assert_eq!(handshake_messages, 2, "two responses crossed the wire");

    // 4. Roaming: the session's data moved from A's IPv4 to its IPv6 endpoint.
    assert!(
        notices.iter().any(|n| matches!(n,
            SessionNotice::EndpointChanged { previous, endpoint, .. }
                if previous.addr == a_v4 && endpoint.addr == a_v6)),
        "no roam from {a_v4} to {a_v6} in {notices:?}"
    );
}

#[test]
fn garbage_on_the_port_is_invalid_and_never_a_handshake() {
    require_root_and_tools();
    let pair = Pair::new();
    let (datapath, mut drain) = attach_in_b(&pair);
    let capture = Capture::start(
        &pair.b,
        &pair.link.b.name,
        pair.wg_b.port,
        &pair.a,
        IpAddr::V4(pair.link.b.v4),
    );
    // Random bytes with right-looking sizes from a plain UDP socket in A.
    let script = format!(
        "import os,socket\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('{src}',0))\n\
         sizes=[148,92,64,32,48,1400]\n\
         for i in range(300):\n    s.sendto(os.urandom(sizes[i%6]),('{dst}',{port}))\n\
         print(s.getsockname()[1])\n",
        src = pair.link.a.v4,
        dst = pair.link.b.v4,
        port = pair.wg_b.port
    );
    let out = pair.a.run(&["python3", "-c", &script]);
    let source_port: u16 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sender = SocketAddr::new(IpAddr::V4(pair.link.a.v4), source_port);
    // Wait until all 300 datagrams were seen on the wire by the datapath.
    let mut totals = HashMap::new();
    wait_for("300 datagrams counted", Duration::from_secs(10), || {
        // A drain carries the endpoints that moved since the last: fold them in.
        totals.extend(
            drain
                .drain()
                .unwrap()
                .endpoints
                .into_iter()
                .map(|s| (s.endpoint.addr, s.totals)),
        );
        totals
            .get(&sender)
            .is_some_and(|s: &EndpointStats| s.rx.packets + s.rx.invalid_packets == 300)
    });
    let datagrams = capture.stop();
    drop(datapath);
    let oracle = capture::per_endpoint(&datagrams, pair.wg_b.port);
    let stats = totals[&sender];
    assert!(
        oracle.contains_key(&sender),
        "sender {sender} not in capture: {:?} / {} datagrams",
        oracle.keys(),
        datagrams.len()
    );
    assert_eq!(oracle[&sender].0.packets, 300);
    assert_eq!(stats.rx.invalid_packets, 300, "{stats:?}");
    assert_eq!(stats.rx.invalid_bytes, oracle[&sender].0.bytes);
    assert_eq!(stats.rx.packets, 0);
    assert!(
        !drain
            .read_notices()
            .iter()
            .any(|n| matches!(n, SessionNotice::HandshakeComplete { .. })),
        "garbage completed a handshake"
    );
    assert_eq!(pair.wg_b.peer(&pair.wg_a.keys.public).latest_handshake, 0);
}
