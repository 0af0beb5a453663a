//! What only the wire can tell, end to end with wireguard-go: unanswered handshakes
//! from a client with a wrong server key, a flood of random bytes, socket drops while
//! the WireGuard daemon is stopped (the per-peer count checked against the kernel's
//! own UDP counters), a roam to a new address, and the handshake feed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wgpulse::events::Event;
use wgpulse::wg::PublicKey;
use wgpulse_tests::agent::InProcessAgent;
use wgpulse_tests::netns::NetNs;
use wgpulse_tests::process::wait_for;
use wgpulse_tests::wireguard::{Underlay, WgKeys, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic, unique_name};

fn state_dir() -> PathBuf {
    std::env::temp_dir().join(unique_name("wgpa"))
}

/// An agent with short alert thresholds.
fn start(pair: &WgPair, state: &Path) -> InProcessAgent {
    let mut config = InProcessAgent::config(pair, state);
    config.alerts.handshake_unanswered_after = Duration::from_secs(6);
    config.alerts.window = Duration::from_secs(10);
    InProcessAgent::start(pair, config)
}

fn is_alert(kind: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.entity == "alert" && e.event == kind
}

/// A UDP counter of the namespace's kernel (`/proc/net/snmp`, e.g. `RcvbufErrors`).
fn udp_counter(ns: &NetNs, name: &str) -> u64 {
    let out = ns.run(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next().expect("Udp header").split_whitespace().collect();
    let values: Vec<&str> = udp.next().expect("Udp values").split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == name)
        .expect("counter exists");
    values[i].parse().unwrap()
}

#[test]
fn unanswered_handshakes_raise_one_alert_then_are_suppressed() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    // A talks to B's endpoint with a wrong key for B: B cannot answer.
    pair.wg_a.remove_peer(&pair.wg_b.keys.public);
    let wrong = WgKeys::generate();
    let allowed = format!("{}/32", pair.tunnel_b.0);
    pair.wg_a
        .add_peer(&wrong.public, Some(pair.endpoint_b()), &[&allowed], None);
    let state = state_dir();
    let mut agent = start(&pair, &state);
    let mut pinger = pair.a.spawn(&[
        "ping",
        "-q",
        "-i",
        "0.5",
        "-w",
        "40",
        &pair.tunnel_b.0.to_string(),
    ]);

    let alert = agent.next_matching(
        "alert.handshake_unanswered",
        Duration::from_secs(25),
        is_alert("handshake_unanswered"),
    );
    let evidence = &alert.payload["Evidence"];
    assert_eq!(evidence["Direction"], "inbound");
    assert_eq!(evidence["Endpoint"], pair.endpoint_a().to_string());
    assert_eq!(evidence["Peer"], pair.wg_a.keys.public.as_str());
    assert!(evidence["Initiations"].as_u64().unwrap() >= 2, "{evidence}");
    assert_eq!(alert.payload["Severity"], "warning");
    assert_eq!(
        alert.identifier,
        format!("{}/{}", pair.wg_b.name, pair.endpoint_a())
    );

    // Two more unanswered initiations later: still only the one alert.
    let peer: PublicKey = pair.wg_a.keys.public.parse().unwrap();
    let initiations = || {
        let shared = agent.shared();
        let table = shared.table.read().unwrap();
        let peer = table.peer(&pair.wg_b.name, &peer).unwrap();
        peer.wire.handshakes.rx_initiations
    };
    let at_alert = initiations();
    wait_for("two more initiations", Duration::from_secs(20), || {
        initiations() >= at_alert + 2
    });
    pinger.stop();
    let all = agent.stop();
    let alerts = all
        .iter()
        .filter(|e| is_alert("handshake_unanswered")(e))
        .count();
    assert_eq!(alerts, 1, "suppressed after the first");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_flood_of_random_bytes_raises_invalid_flood_for_its_source() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let state = state_dir();
    let mut agent = start(&pair, &state);
    let script = format!(
        "import os,socket\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range(400):\n    s.sendto(os.urandom(100),('{dst}',{port}))\n",
        dst = pair.link.b.v4,
        port = pair.wg_b.port
    );
    pair.a.run(&["python3", "-c", &script]);
    let alert = agent.next_matching(
        "alert.invalid_flood",
        Duration::from_secs(10),
        is_alert("invalid_flood"),
    );
    let evidence = &alert.payload["Evidence"];
    assert_eq!(evidence["Source"], pair.link.a.v4.to_string());
    let counted = evidence["InvalidPackets"].as_u64().unwrap();
    assert!((200..=400).contains(&counted), "{evidence}");
    assert_eq!(alert.payload["Device"], pair.wg_b.name.as_str());
    agent.stop();
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn socket_drops_while_wireguard_is_stopped_match_the_kernels_count() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let state = state_dir();
    let mut agent = start(&pair, &state);
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);

    let before = udp_counter(&pair.b, "RcvbufErrors");
    let in_errors_before = udp_counter(&pair.b, "InErrors");
    // With B's daemon stopped its socket's receive buffer fills and the rest drops.
    let pid = pair.wg_b.pid() as i32;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    pair.a.try_run(&[
        "ping",
        "-q",
        "-i",
        "0.002",
        "-c",
        "1500",
        "-s",
        "1200",
        "-w",
        "10",
        &pair.tunnel_b.0.to_string(),
    ]);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let dropped = udp_counter(&pair.b, "RcvbufErrors") - before;
    assert!(dropped > 100, "the kernel dropped only {dropped} datagrams");
    assert_eq!(
        udp_counter(&pair.b, "InErrors") - in_errors_before,
        dropped,
        "every error was a full buffer"
    );

    let alert = agent.next_matching(
        "alert.socket_drops",
        Duration::from_secs(10),
        is_alert("socket_drops"),
    );
    assert_eq!(alert.payload["Severity"], "critical");
    let by_peer = alert.payload["Evidence"]["DropsByPeer"][pair.wg_a.keys.public.as_str()]
        .as_u64()
        .unwrap_or(0);
    assert!(by_peer > 0 && by_peer <= dropped, "{}", alert.payload);

    let peer: PublicKey = pair.wg_a.keys.public.parse().unwrap();
    let shared = agent.shared();
    let mut counted = 0;
    wait_for(
        "the peer's drops to equal the kernel's",
        Duration::from_secs(10),
        || {
            let table = shared.table.read().unwrap();
            counted = table
                .peer(&pair.wg_b.name, &peer)
                .unwrap()
                .wire
                .socket_drops;
            counted == dropped
        },
    );
    agent.stop();
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_roam_to_a_new_address_alerts_and_the_handshake_feed_adds_up() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let state = state_dir();
    let mut agent = start(&pair, &state);
    let is_feed = |e: &Event| e.kind() == "peer_metric.handshake";

    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let mut feed = vec![agent.next_matching("handshake 1", Duration::from_secs(5), is_feed)];

    let v6_b = SocketAddr::new(IpAddr::V6(pair.link.b.v6), pair.wg_b.port);
    pair.wg_a.set_peer_endpoint(&pair.wg_b.keys.public, v6_b);
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let alert = agent.next_matching(
        "alert.endpoint_new_address",
        Duration::from_secs(5),
        is_alert("endpoint_new_address"),
    );
    assert_eq!(
        alert.payload["Evidence"]["Address"],
        pair.link.a.v6.to_string()
    );
    assert_eq!(alert.payload["Severity"], "info");

    // New sessions: A forgets B and learns it again, then talks.
    let allowed = [
        format!("{}/32", pair.tunnel_b.0),
        format!("{}/128", pair.tunnel_b.1),
    ];
    for round in 2..=3 {
        pair.wg_a.remove_peer(&pair.wg_b.keys.public);
        pair.wg_a.add_peer(
            &pair.wg_b.keys.public,
            Some(v6_b),
            &[&allowed[0], &allowed[1]],
            None,
        );
        traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
        feed.push(agent.next_matching(
            &format!("handshake {round}"),
            Duration::from_secs(5),
            is_feed,
        ));
    }
    let field = |e: &Event, name: &str| e.payload["Handshake"][name].as_u64().unwrap();
    for name in ["RxBytes", "TxBytes", "RxPackets", "TxPackets"] {
        let deltas: u64 = feed.iter().map(|e| field(e, &format!("{name}Delta"))).sum();
        let total = field(feed.last().unwrap(), &format!("{name}Total"));
        assert_eq!(deltas, total, "{name}: the deltas add up to the total");
    }
    for event in &feed {
        assert_eq!(event.payload["Handshake"]["Role"], "responder");
        assert!(field(event, "Attempts") >= 1, "{}", event.payload);
    }
    let last = feed.last().unwrap();
    assert_eq!(
        last.payload["Handshake"]["Endpoint"],
        SocketAddr::new(IpAddr::V6(pair.link.a.v6), pair.wg_a.port).to_string()
    );
    let peer: PublicKey = pair.wg_a.keys.public.parse().unwrap();
    let table_total = agent
        .shared()
        .table
        .read()
        .unwrap()
        .peer(&pair.wg_b.name, &peer)
        .unwrap()
        .wire
        .rx_bytes;
    assert!(table_total >= field(last, "RxBytesTotal"));
    agent.stop();
    let _ = std::fs::remove_dir_all(&state);
}
