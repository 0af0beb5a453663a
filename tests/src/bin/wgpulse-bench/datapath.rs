//! Part 1, datapath cost: the classifier's cost per packet measured with
//! `BPF_PROG_TEST_RUN` on a private copy of the datapath, as medians over repeated
//! rounds, each case also as a ratio to the no-op program measured in the same run.

use std::collections::HashMap;
use std::net::SocketAddr;

use agent_common::programs;
use aya::programs::{TestRun, TestRunOptions};
use wgpulse::datapath::{Datapath, LoadOptions};
use wgpulse::testing::{self, FrameOptions};

const ROUNDS: usize = 15;
const REPEAT: u32 = 100_000;
const NEW_PEER_SAMPLES: u16 = 3_000;
const PORT: u16 = 51820;

use crate::report::{median, Part, Row};

/// Median ns per packet of `frame` through `program` (averaged over REPEAT per round).
fn per_packet(
    datapath: &mut Datapath,
    program: &'static str,
    frame: &[u8],
    repeat: u32,
    rounds: usize,
) -> f64 {
    let classifier = datapath.classifier(program).expect("program");
    let samples = (0..rounds)
        .map(|_| {
            let result = classifier
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat,
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            result.duration.as_nanos() as f64
        })
        .collect();
    median(samples)
}

fn datapath() -> Datapath {
    let mut datapath = Datapath::load(&LoadOptions {
        max_peers: 65_536,
        attach_drop_counter: false,
        kernel_attribution: false,
    })
    .expect("loading the datapath (run as root)");
    datapath
        .set_ports(&HashMap::from([(PORT, 0)]))
        .expect("port map");
    datapath
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let (rounds, repeat) = if quick { (5, 20_000) } else { (ROUNDS, REPEAT) };
    let local4: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let remote4: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let local6: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
    let remote6: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let plain = FrameOptions::default();
    let data4 = testing::udp_frame(remote4, local4, &testing::data(1, 0, 1400), &plain);
    let data6 = testing::udp_frame(remote6, local6, &testing::data(1, 0, 1400), &plain);
    let initiation = testing::udp_frame(remote4, local4, &testing::initiation(7), &plain);
    let other = testing::udp_frame(
        remote4,
        "192.0.2.1:53".parse().unwrap(),
        &testing::data(1, 0, 1400),
        &plain,
    );

    let mut dp = datapath();
    let noop = per_packet(&mut dp, programs::NOOP, &data4, repeat, rounds);
    // Known peer: the first run creates the endpoint entry, the measured runs find it.
    per_packet(&mut dp, programs::INGRESS, &data4, 1, 1);
    per_packet(&mut dp, programs::INGRESS, &data6, 1, 1);
    let known4 = per_packet(&mut dp, programs::INGRESS, &data4, repeat, rounds);
    // The same packet through the same program built without path tracking (the
    // transport cost before it), interleaved round by round with the full program
    // so that both see the same machine.
    per_packet(&mut dp, programs::INGRESS_NO_PATHS, &data4, 1, 1);
    let (mut with_paths, mut without_paths) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with_paths.push(per_packet(&mut dp, programs::INGRESS, &data4, repeat, 1));
        without_paths.push(per_packet(
            &mut dp,
            programs::INGRESS_NO_PATHS,
            &data4,
            repeat,
            1,
        ));
    }
    let (with_paths, without_paths) = (median(with_paths), median(without_paths));
    let known6 = per_packet(&mut dp, programs::INGRESS, &data6, repeat, rounds);
    let handshake = per_packet(&mut dp, programs::INGRESS, &initiation, repeat, rounds);
    let other_udp = per_packet(&mut dp, programs::INGRESS, &other, repeat, rounds);
    // New peer: every sample is a first packet from a new endpoint (map insert).
    let mut fresh = datapath();
    let samples = (0..if quick { 500 } else { NEW_PEER_SAMPLES })
        .map(|i| {
            let from = SocketAddr::new(remote4.ip(), 10_000 + i);
            let frame = testing::udp_frame(from, local4, &testing::data(1, 0, 1400), &plain);
            per_packet(&mut fresh, programs::INGRESS, &frame, 1, 1)
        })
        .collect();
    let new_peer = median(samples);

    let mut part = Part::new(
        "datapath",
        "Datapath cost per packet",
        &format!("BPF_PROG_TEST_RUN on a private copy of the programs, median of {rounds} rounds x {repeat} runs; ratio to the no-op program in the same run"),
    );
    for (case, ns) in [
        ("no-op program", noop),
        ("transport, known peer, IPv4", known4),
        ("transport, known peer, IPv6", known6),
        ("handshake initiation", handshake),
        ("new peer's first packet", new_peer),
        ("UDP to another port", other_udp),
    ] {
        part.rows
            .push(Row::new(case, ns, "ns/packet").ratio(ns / noop, "x no-op"));
    }
    part.rows.push(
        Row::new(
            "transport, known peer, IPv4, without path tracking",
            without_paths,
            "ns/packet",
        )
        .ratio(without_paths / noop, "x no-op"),
    );
    let added = with_paths - without_paths;
    part.rows.push(
        Row::new("path tracking added (known peer, IPv4)", added, "ns/packet")
            .target("<= 15 ns", added <= 15.0),
    );
    let worst_known = known4.max(known6);
    part.rows.push(
        Row::new(
            "known-peer transport (worst family)",
            worst_known,
            "ns/packet",
        )
        .target("<= 120 ns", worst_known <= 120.0),
    );
    let worst_ratio = worst_known / noop;
    part.rows.push(
        Row::new(
            "known-peer transport (worst family) vs the no-op program",
            worst_ratio,
            "x no-op",
        )
        .target("<= 3x", worst_ratio <= 3.0),
    );
    part
}
