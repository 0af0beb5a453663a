//! Tests of the end-to-end harness itself: real WireGuard through a `WgPair` over
//! IPv4 and IPv6 underlays, seen by a tshark capture and by `wg show`, and guards
//! that clean up after a panic. Run as root with `--test-threads=1`.

use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use wgpulse_tests::capture::{self, Capture, Direction, Flow};
use wgpulse_tests::netns::{self, NetNs, Veth};
use wgpulse_tests::require_root_and_tools;
use wgpulse_tests::traffic::{iperf3_client, ping, Amount, Iperf3Server};
use wgpulse_tests::wireguard::{Underlay, WgPair, UAPI_DIR};

/// Pings through the tunnel (both families inside) and checks the capture on B's veth
/// and both sides' `wg show dump`.
fn ping_through(underlay: Underlay) {
    require_root_and_tools();
    let pair = WgPair::new(underlay);
    let capture = Capture::with_filter(&pair.b, &pair.link.b.name, "udp");
    ping(&pair.a, pair.tunnel_addr_b(false), 5);
    ping(&pair.a, pair.tunnel_addr_b(true), 5);
    let packets = capture.stop();

    let (a_end, b_end) = (pair.endpoint_a(), pair.endpoint_b());
    let wg: Vec<_> = packets
        .iter()
        .filter(|p| (p.src, p.dst) == (a_end, b_end) || (p.src, p.dst) == (b_end, a_end))
        .collect();
    assert!(
        wg.iter()
            .any(|p| p.src == a_end && p.payload == 148 && p.first_byte == Some(1)),
        "no handshake initiation from {a_end} in {packets:?}"
    );
    assert!(
        wg.iter()
            .any(|p| p.src == b_end && p.payload == 92 && p.first_byte == Some(2)),
        "no handshake response from {b_end} in {packets:?}"
    );
    for (from, to) in [(a_end, b_end), (b_end, a_end)] {
        let data = wg
            .iter()
            .filter(|p| p.src == from && p.first_byte == Some(4) && p.payload >= 32)
            .count();
        // 10 echo requests one way, 10 replies the other.
        assert!(
            data >= 10,
            "{data} data packets {from} -> {to}: {packets:?}"
        );
    }

    // The per-flow sums from B's side agree with the raw records.
    let local: Vec<IpAddr> = vec![pair.link.b.v4.into(), pair.link.b.v6.into()];
    let flows = capture::per_flow(&packets, &local);
    let rx = flows[&Flow {
        local_port: pair.wg_b.port,
        remote: a_end,
        direction: Direction::Rx,
    }];
    let expected: u64 = wg
        .iter()
        .filter(|p| p.src == a_end)
        .map(|p| p.payload)
        .sum();
    assert_eq!(rx.bytes, expected);
    assert_eq!(
        capture::per_endpoint(&packets, pair.wg_b.port)[&a_end].0,
        rx
    );

    for (device, peer) in [(&pair.wg_a, &pair.wg_b), (&pair.wg_b, &pair.wg_a)] {
        let dump = device.dump();
        assert_eq!(dump.public_key, device.keys.public);
        assert_eq!(dump.listen_port, device.port);
        let p = dump
            .peer(&peer.keys.public)
            .unwrap_or_else(|| panic!("{} does not list its peer: {dump:?}", device.name));
        assert!(
            p.latest_handshake > 0,
            "{}: no handshake: {p:?}",
            device.name
        );
        assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{}: {p:?}", device.name);
        assert_eq!(p.allowed_ips.len(), 2, "{p:?}");
    }
    assert_eq!(pair.wg_a.peer(&pair.wg_b.keys.public).endpoint, Some(b_end));
    assert_eq!(pair.wg_b.peer(&pair.wg_a.keys.public).endpoint, Some(a_end));
}

#[test]
fn wg_pair_ipv4_underlay() {
    ping_through(Underlay::V4);
}

#[test]
fn wg_pair_ipv6_underlay() {
    ping_through(Underlay::V6);
}

#[test]
fn iperf3_both_ways_through_the_tunnel() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let server = Iperf3Server::start(&pair.b, pair.tunnel_addr_b(false), 5201);
    let timeout = Duration::from_secs(60);
    // iperf3 returns once it wrote everything, and the server may reset what was
    // still queued: compare with what the receiving side says it got.
    let mut received = [0u64; 2];
    for (i, reverse) in [false, true].into_iter().enumerate() {
        let out = iperf3_client(
            &pair.a,
            &server,
            Amount::Seconds(1),
            reverse,
            Some("50M"),
            timeout,
        );
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("iperf3 -J output: {e}"));
        received[i] = json["end"]["sum_received"]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no end.sum_received.bytes in {json}"));
        assert!(
            received[i] > 1 << 20,
            "iperf3 moved only {} bytes",
            received[i]
        );
    }
    let p = pair.wg_a.peer(&pair.wg_b.keys.public);
    assert!(
        p.tx_bytes >= received[0],
        "wg tx {} < iperf3 received {}",
        p.tx_bytes,
        received[0]
    );
    assert!(
        p.rx_bytes >= received[1],
        "wg rx {} < iperf3 received {}",
        p.rx_bytes,
        received[1]
    );
}

#[test]
fn entering_a_namespace_switches_only_the_thread() {
    require_root_and_tools();
    let ns = NetNs::new("hen");
    let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", std::process::id())).unwrap();
    {
        let _inside = ns.enter();
        let now = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(now, ours);
        // Only lo exists in a fresh namespace.
        assert!(nix::net::if_::if_nametoindex("lo").is_ok());
    }
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        ours
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/ns/net", std::process::id())).unwrap(),
        theirs
    );
}

#[test]
fn guards_clean_up_even_after_a_panic() {
    require_root_and_tools();
    let mut created = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let pair = WgPair::new(Underlay::V6);
        let loose = NetNs::new("hlo");
        let other = NetNs::new("hlp");
        let _link = Veth::connect(&loose, &other, 3, 3);
        let _sleeper = loose.spawn(&["sleep", "600"]);
        created = vec![
            pair.a.name().to_owned(),
            pair.b.name().to_owned(),
            loose.name().to_owned(),
            other.name().to_owned(),
            pair.wg_a.name.clone(),
            pair.wg_b.name.clone(),
        ];
        for name in &created[..4] {
            assert!(netns::list().contains(name), "{name} was not created");
        }
        panic!("deliberate panic with everything alive");
    }));
    assert!(result.is_err(), "the closure should have panicked");
    let after = netns::list();
    for name in &created[..4] {
        assert!(
            !after.contains(name),
            "netns {name} survived the panic: {after:?}"
        );
    }
    for name in &created[4..] {
        let socket = Path::new(UAPI_DIR).join(format!("{name}.sock"));
        assert!(!socket.exists(), "{} survived the panic", socket.display());
    }
}
