//! Path health against real WireGuard (wireguard-go in namespaces), each figure against
//! an independent oracle: loss against the counter of an nftables rule that drops
//! every Nth transport message on the sender's output path (the receiver's `lost` and
//! the sender's own `unsent` both equal it exactly), reordering against a UDP relay
//! that swaps chosen data messages and counts the swaps, the late/lost figures
//! against what a tshark capture's receiver indices and counters give, and handshake
//! round trips against the relay's delay plus the peer's processing time seen by
//! tshark.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use wgpulse::peers::path::PathHealth;
use wgpulse::wg::PublicKey;
use wgpulse_tests::agent::InProcessAgent;
use wgpulse_tests::capture::{Capture, Packets};
use wgpulse_tests::netns::NetNs;
use wgpulse_tests::relay::{RelayOptions, Relayed};
use wgpulse_tests::require_root_and_tools;
use wgpulse_tests::wireguard::{Underlay, WgPair};

/// Every Nth transport message A sends is dropped (the (N/2)th of each N, so that
/// the messages confirming a handshake pass).
const DROP_EVERY: u32 = 10;

fn agent(ns: &NetNs, interface: &str, device: &str) -> InProcessAgent {
    InProcessAgent::watching(ns, interface, device)
}

/// One peer's path figures from an agent's table.
fn path_of(agent: &InProcessAgent, device: &str, key: &str) -> PathHealth {
    agent.path_of(device, key)
}

/// nftables in `ns`: on the output path, count every transport message to `port`,
/// then drop every [`DROP_EVERY`]th of them and count those.
struct Dropper<'a> {
    ns: &'a NetNs,
}

impl<'a> Dropper<'a> {
    fn install(ns: &'a NetNs, port: u16) -> Self {
        let port = port.to_string();
        let every = DROP_EVERY.to_string();
        let which = (DROP_EVERY / 2).to_string();
        for rule in [
            vec!["add", "table", "inet", "wgpt"],
            vec![
                "add",
                "chain",
                "inet",
                "wgpt",
                "out",
                "{ type filter hook output priority 0; policy accept; }",
            ],
            vec![
                "add",
                "rule",
                "inet",
                "wgpt",
                "out",
                "udp",
                "dport",
                &port,
                "@th,64,8",
                "4",
                "counter",
                "comment",
                "\"numbered\"",
            ],
            vec![
                "add", "rule", "inet", "wgpt", "out", "udp", "dport", &port, "@th,64,8", "4",
                "numgen", "inc", "mod", &every, &which, "counter", "drop",
            ],
        ] {
            let mut command = vec!["nft"];
            command.extend(rule);
            ns.run(&command);
        }
        Self { ns }
    }

    /// (transport messages seen, dropped) by the rules' own counters.
    fn counts(&self) -> (u64, u64) {
        let out = self
            .ns
            .run(&["nft", "list", "chain", "inet", "wgpt", "out"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let packets = |line: &str| -> u64 {
            let after = line.split("counter packets ").nth(1).expect("a counter");
            after.split_whitespace().next().unwrap().parse().unwrap()
        };
        let numbered = text
            .lines()
            .find(|l| l.contains("numbered"))
            .map(packets)
            .expect("the counting rule");
        let dropped = text
            .lines()
            .find(|l| l.contains("drop"))
            .map(packets)
            .expect("the dropping rule");
        (numbered, dropped)
    }
}

/// Pings `to` from `ns` `count` times, 10 ms apart (some replies are lost on purpose).
fn ping(ns: &NetNs, to: IpAddr, count: u32) {
    let count = count.to_string();
    let to = to.to_string();
    ns.try_run_timeout(
        &[
            "ping", "-q", "-n", "-c", &count, "-i", "0.01", "-W", "1", "-w", "60", &to,
        ],
        Duration::from_secs(70),
    );
}

/// Polls `read` until `done` holds for it (or 20 s pass) and returns the last value.
fn settle<T>(mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = read();
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a capture of the receiver's side says of the data messages to `port`, with
/// the same rules the agent documents: per receiver index, counters are numbered from
/// 0 (a session seen from its start), lost = numbered - distinct received, late =
/// arrivals below the highest counter seen so far, duplicates = counters seen twice.
#[derive(Debug, Default, PartialEq, Eq)]
struct WireOracle {
    received: u64,
    lost: u64,
    late: u64,
    duplicates: u64,
}

fn oracle(packets: &Packets, port: u16) -> WireOracle {
    let mut sessions: BTreeMap<u32, (BTreeSet<u64>, u64, u64, u64)> = BTreeMap::new();
    for datagram in packets.iter().filter(|d| d.dst.port() == port) {
        let Some((index, counter)) = datagram.data_counter() else {
            continue;
        };
        let (seen, highest, late, duplicates) = sessions.entry(index).or_default();
        if !seen.is_empty() && counter < *highest {
            if seen.contains(&counter) {
                *duplicates += 1;
            } else {
                *late += 1;
            }
        } else if seen.contains(&counter) {
            *duplicates += 1;
        }
        seen.insert(counter);
        *highest = (*highest).max(counter);
    }
    let mut out = WireOracle::default();
    for (seen, highest, late, duplicates) in sessions.values() {
        let numbered = highest + 1;
        out.received += seen.len() as u64;
        out.lost += numbered - seen.len() as u64;
        out.late += late;
        out.duplicates += duplicates;
    }
    out
}

/// The time between the first datagram `first` matches and the first after it
/// `then` matches, in a capture.
fn gap(
    packets: &Packets,
    first: impl Fn(&wgpulse_tests::capture::Datagram) -> bool,
    then: impl Fn(&wgpulse_tests::capture::Datagram) -> bool,
) -> Duration {
    let start = packets.iter().position(first).expect("the first datagram");
    let end = packets[start..]
        .iter()
        .find(|d| then(d))
        .expect("the datagram after it");
    Duration::from_secs_f64(end.time - packets[start].time)
}

#[test]
fn loss_equals_the_nftables_drops_on_both_ends_and_a_direct_path_times_under_5_ms() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let agent_a = agent(&pair.a, &pair.link.a.name, &pair.wg_a.name);
    let mut agent_b = agent(&pair.b, &pair.link.b.name, &pair.wg_b.name);
    let dropper = Dropper::install(&pair.a, pair.wg_b.port);

    ping(&pair.a, pair.tunnel_addr_b(false), 300);
    // The rule's counters and the agents read together until they agree (a keepalive
    // A sends meanwhile moves both).
    let (numbered, dropped, received, unsent) = settle(
        || {
            let (numbered, dropped) = dropper.counts();
            (
                numbered,
                dropped,
                path_of(&agent_b, &pair.wg_b.name, &pair.wg_a.keys.public),
                path_of(&agent_a, &pair.wg_a.name, &pair.wg_b.keys.public),
            )
        },
        |(_, dropped, b, a)| b.receive.lost == *dropped && a.transmit.lost == *dropped,
    );
    assert!(dropped >= 20, "the rule dropped {dropped} of {numbered}");
    assert_eq!(received.receive.lost, dropped, "B's lost: {received:?}");
    assert_eq!(unsent.transmit.lost, dropped, "A's unsent: {unsent:?}");
    assert_eq!(received.receive.packets, numbered - dropped);
    assert_eq!(unsent.transmit.packets, numbered - dropped);
    assert_eq!((received.receive.late, received.receive.duplicates), (0, 0));
    // B answered every ping it got: nothing lost the other way.
    assert_eq!(unsent.receive.lost, 0);
    assert_eq!(received.transmit.lost, 0);

    // Round trips on a direct veth, both roles (A initiated): well below 5 ms.
    let initiator = unsent.last_rtt().expect("A's round trip as initiator");
    let responder = received.last_rtt().expect("B's round trip as responder");
    for rtt in [initiator, responder] {
        assert!(
            rtt.nanos > 0 && rtt.nanos < 5_000_000,
            "{} ms",
            rtt.seconds() * 1e3
        );
    }
    let metrics = wgpulse::metrics::peer_exposition(&agent_b.shared());
    assert!(
        metrics.contains(&format!(
            "wgpulse_peer_receive_lost_packets_total{{device=\"{}\",public_key=\"{}\"}} {dropped}",
            pair.wg_b.name, pair.wg_a.keys.public
        )),
        "the metric carries the figure"
    );
    // 10% lost over the alert window, well past the 2% default and the minimum count.
    let alert = agent_b.next_matching("alert.path_loss", Duration::from_secs(5), |e| {
        e.kind() == "alert.path_loss"
    });
    assert_eq!(alert.payload["Subject"], pair.wg_a.keys.public.as_str());
    let lost = alert.payload["Evidence"]["Lost"].as_u64().unwrap();
    assert!(lost > 0 && lost <= dropped, "{}", alert.payload);
    drop(agent_a);
    drop(agent_b);
}

#[test]
fn through_a_delaying_reordering_relay_every_figure_meets_its_oracle() {
    require_root_and_tools();
    let delay = Duration::from_millis(20);
    let net = Relayed::new(RelayOptions {
        delay,
        swap_every: Some(7),
        drop_every: None,
    });
    let agent_a = agent(&net.a, &net.link_ar.a.name, &net.wg_a.name);
    let mut agent_b = agent(&net.b, &net.link_rb.b.name, &net.wg_b.name);
    let capture_b = Capture::start(
        &net.b,
        &net.link_rb.b.name,
        net.wg_b.port,
        &net.r,
        net.link_rb.b.v4.into(),
    );
    let capture_a = Capture::start(
        &net.a,
        &net.link_ar.a.name,
        net.wg_a.port,
        &net.r,
        net.link_ar.a.v4.into(),
    );
    let dropper = Dropper::install(&net.a, net.relay.first_side.port());

    ping(&net.a, net.tunnel_b, 300);
    // The oracles and the agents read together until they agree (a keepalive A sends
    // meanwhile moves both), then every figure is compared with its oracle.
    let (numbered, dropped, swapped, at_b, at_a) = settle(
        || {
            let (numbered, dropped) = dropper.counts();
            (
                numbered,
                dropped,
                net.relay.swapped(),
                path_of(&agent_b, &net.wg_b.name, &net.wg_a.keys.public),
                path_of(&agent_a, &net.wg_a.name, &net.wg_b.keys.public),
            )
        },
        |(_, dropped, swapped, b, a)| {
            b.receive.lost == *dropped && b.receive.late == *swapped && a.transmit.lost == *dropped
        },
    );
    assert!(
        dropped >= 20 && swapped >= 20,
        "{dropped} dropped of {numbered}, {swapped} swapped"
    );
    let wire_b = capture_b.stop();
    let wire_a = capture_a.stop();

    assert_eq!(at_b.receive.lost, dropped, "B's lost: {at_b:?}");
    assert_eq!(at_a.transmit.lost, dropped, "A's unsent: {at_a:?}");
    assert_eq!(at_b.receive.late, swapped, "B's reordered: {at_b:?}");
    assert_eq!(at_b.receive.duplicates, 0);
    let on_the_wire = oracle(&wire_b, net.wg_b.port);
    assert_eq!(
        on_the_wire,
        WireOracle {
            received: at_b.receive.packets,
            lost: at_b.receive.lost,
            late: at_b.receive.late,
            duplicates: 0,
        },
        "the capture of B's veth"
    );

    // Round trips: A initiated. A's sample spans initiation out -> response in: two
    // passages through the relay and B's processing (initiation in -> response out on
    // B's veth). B's spans response out -> first data in: two passages and A's
    // processing (response in -> first data out on A's veth).
    let passages = net.relay.passages();
    let held = |kind: u8, forward: bool| {
        passages
            .iter()
            .find(|p| p.kind == kind && p.forward == forward)
            .map(|p| p.held)
            .expect("a passage")
    };
    let b_processing = gap(
        &wire_b,
        |d| d.first_byte == Some(1) && d.dst.port() == net.wg_b.port,
        |d| d.first_byte == Some(2) && d.src.port() == net.wg_b.port,
    );
    let a_processing = gap(
        &wire_a,
        |d| d.first_byte == Some(2) && d.dst.port() == net.wg_a.port,
        |d| d.first_byte == Some(4) && d.src.port() == net.wg_a.port,
    );
    let slack = Duration::from_millis(2);
    let initiator = Duration::from_nanos(at_a.rtt_samples[0].nanos);
    let responder = Duration::from_nanos(at_b.rtt_samples[0].nanos);
    let initiator_bound = held(1, true) + b_processing + held(2, false) + slack;
    let responder_bound = held(2, false) + a_processing + held(4, true) + slack;
    assert!(
        initiator >= 2 * delay && initiator <= initiator_bound,
        "initiator {initiator:?} not in [{:?}, {initiator_bound:?}]",
        2 * delay
    );
    assert!(
        responder >= 2 * delay && responder <= responder_bound,
        "responder {responder:?} not in [{:?}, {responder_bound:?}]",
        2 * delay
    );
    // The handshake feed carries the same round trip.
    let feed = agent_b.next_matching("peer_metric.handshake", Duration::from_secs(5), |e| {
        e.kind() == "peer_metric.handshake"
    });
    let reported = feed.payload["Handshake"]["RoundTripSeconds"]
        .as_f64()
        .unwrap();
    assert!(
        (reported - responder.as_secs_f64()).abs() < 1e-9,
        "{reported} vs {responder:?}"
    );
    drop(agent_a);
    drop(agent_b);
}

#[test]
fn a_rekey_mid_stream_loses_no_count_and_adds_no_gap() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let agent_b = agent(&pair.b, &pair.link.b.name, &pair.wg_b.name);
    let dropper = Dropper::install(&pair.a, pair.wg_b.port);
    ping(&pair.a, pair.tunnel_addr_b(false), 120);
    // A forgets B and learns it again: its next packet needs a new handshake, so B
    // sees a new receiver index from counter 0, while its peer A stays the same.
    pair.wg_a.remove_peer(&pair.wg_b.keys.public);
    let allowed = [
        format!("{}/32", pair.tunnel_b.0),
        format!("{}/128", pair.tunnel_b.1),
    ];
    pair.wg_a.add_peer(
        &pair.wg_b.keys.public,
        Some(pair.endpoint_b()),
        &[&allowed[0], &allowed[1]],
        None,
    );
    ping(&pair.a, pair.tunnel_addr_b(false), 120);
    let (numbered, dropped, at_b, handshakes) = settle(
        || {
            let (numbered, dropped) = dropper.counts();
            let shared = agent_b.shared();
            let handshakes = {
                let table = shared.table.read().unwrap();
                let key: PublicKey = pair.wg_a.keys.public.parse().unwrap();
                table
                    .peer(&pair.wg_b.name, &key)
                    .map(|p| p.handshakes_completed())
                    .unwrap_or(0)
            };
            (
                numbered,
                dropped,
                path_of(&agent_b, &pair.wg_b.name, &pair.wg_a.keys.public),
                handshakes,
            )
        },
        |(numbered, dropped, b, handshakes)| {
            *handshakes >= 2
                && b.receive.lost == *dropped
                && b.receive.packets == numbered - dropped
        },
    );
    assert!(handshakes >= 2, "two sessions: {handshakes} handshakes");
    assert!(dropped >= 20, "{dropped} of {numbered} dropped");
    assert_eq!(at_b.receive.lost, dropped, "{at_b:?}");
    assert_eq!(at_b.receive.packets, numbered - dropped);
    assert_eq!((at_b.receive.late, at_b.receive.duplicates), (0, 0));
}

#[test]
fn a_roam_mid_stream_keeps_the_peers_figures() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let agent_b = agent(&pair.b, &pair.link.b.name, &pair.wg_b.name);
    let dropper = Dropper::install(&pair.a, pair.wg_b.port);
    ping(&pair.a, pair.tunnel_addr_b(false), 120);
    // A reaches B over IPv6 from now on: the same session, from a new endpoint.
    let v6_b = std::net::SocketAddr::new(IpAddr::V6(pair.link.b.v6), pair.wg_b.port);
    pair.wg_a.set_peer_endpoint(&pair.wg_b.keys.public, v6_b);
    ping(&pair.a, pair.tunnel_addr_b(false), 120);
    let key: PublicKey = pair.wg_a.keys.public.parse().unwrap();
    let (numbered, dropped, at_b, endpoint) = settle(
        || {
            let (numbered, dropped) = dropper.counts();
            let endpoint = {
                let shared = agent_b.shared();
                let table = shared.table.read().unwrap();
                table.peer(&pair.wg_b.name, &key).and_then(|p| p.endpoint)
            };
            (
                numbered,
                dropped,
                path_of(&agent_b, &pair.wg_b.name, &pair.wg_a.keys.public),
                endpoint,
            )
        },
        |(numbered, dropped, b, endpoint)| {
            endpoint.is_some_and(|e| e.is_ipv6())
                && b.receive.lost == *dropped
                && b.receive.packets == numbered - dropped
        },
    );
    assert!(
        endpoint.is_some_and(|e| e.is_ipv6()),
        "roamed: {endpoint:?}"
    );
    assert!(dropped >= 20, "{dropped} of {numbered} dropped");
    assert_eq!(at_b.receive.lost, dropped, "{at_b:?}");
    assert_eq!(at_b.receive.packets, numbered - dropped);
}
