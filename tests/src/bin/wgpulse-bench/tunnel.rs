//! Part 2, tunnel overhead: iperf3 through a wireguard-go tunnel between two
//! namespaces, alternating runs without and with the agent attached (A B A B ...), the
//! throughput ratio with/without, and the classifiers' own run time per packet under
//! that load from the kernel's `bpf_stats`. Each pair gives a ratio; pairs are run
//! until the ratios' spread (half their range) is smaller than the median ratio's
//! distance to the target, or 15 pairs: only then does the verdict mean something,
//! and the report says which it was.

use std::time::Duration;

use wgpulse_tests::agent::InProcessAgent;
use wgpulse_tests::traffic::{iperf3_client, Amount, Iperf3Server};
use wgpulse_tests::wireguard::{Underlay, WgPair};

use crate::report::{median, Part, Row};

/// Throughput of one iperf3 run, bits per second.
fn throughput(pair: &WgPair, server: &Iperf3Server, seconds: u32) -> f64 {
    let out = iperf3_client(
        &pair.a,
        server,
        Amount::Seconds(seconds),
        false,
        None,
        Duration::from_secs(u64::from(seconds) + 30),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
}

/// Total run time and run count of the agent's attached classifiers.
fn bpf_stats() -> (u64, u64) {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let programs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut time = 0;
    let mut count = 0;
    for program in programs.as_array().cloned().unwrap_or_default() {
        let name = program["name"].as_str().unwrap_or_default();
        if name.starts_with("wgpulse_ingress") || name.starts_with("wgpulse_egress") {
            time += program["run_time_ns"].as_u64().unwrap_or(0);
            count += program["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    (time, count)
}

/// The throughput ratio the issue sets.
const TARGET: f64 = 0.98;

/// The lowest and the highest of `ratios`.
fn range(ratios: &[f64]) -> (f64, f64) {
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(0.0, f64::max);
    (lowest, highest)
}

/// Half the range of `ratios`.
fn spread(ratios: &[f64]) -> f64 {
    let (lowest, highest) = range(ratios);
    (highest - lowest) / 2.0
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let (min_pairs, max_pairs, seconds) = if quick { (2, 2, 2) } else { (5, 15, 5) };
    let pair = WgPair::new(Underlay::V4);
    let server = Iperf3Server::start(&pair.b, pair.tunnel_addr_b(false), 5201);
    let state = tempfile::tempdir().unwrap();
    // The agent as deployed: default drain and refresh intervals.
    let config = || {
        let mut config = InProcessAgent::config(&pair, state.path());
        config.drain_interval = Duration::from_secs(1);
        config.refresh_interval = Duration::from_secs(10);
        config
    };
    // Warm up the tunnel (handshake, TCP slow start).
    throughput(&pair, &server, 1);
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut ratios = Vec::new();
    let decisive = loop {
        without.push(throughput(&pair, &server, seconds));
        let agent = InProcessAgent::start(&pair, config());
        with.push(throughput(&pair, &server, seconds));
        agent.stop();
        ratios.push(with[with.len() - 1] / without[without.len() - 1]);
        if ratios.len() >= min_pairs {
            let decisive = spread(&ratios) < (median(ratios.clone()) - TARGET).abs();
            if decisive || ratios.len() >= max_pairs {
                break decisive;
            }
        }
    };
    let pairs = ratios.len();
    // The classifiers' own cost under that load, in a separate run: bpf_stats
    // timestamps every program run, which would tax the runs above.
    let previous =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enabling bpf_stats");
    let agent = InProcessAgent::start(&pair, config());
    let (t0, c0) = bpf_stats();
    throughput(&pair, &server, seconds);
    let (t1, c1) = bpf_stats();
    agent.stop();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", previous.trim());
    let per_packet: Vec<f64> = if c1 > c0 {
        vec![(t1 - t0) as f64 / (c1 - c0) as f64]
    } else {
        Vec::new()
    };
    let (off, on) = (median(without), median(with));
    let half_range = spread(&ratios);
    let (lowest, highest) = range(&ratios);
    let ratio = median(ratios);
    let mut part = Part::new(
        "tunnel",
        "Tunnel overhead",
        &format!("iperf3 TCP through wireguard-go between two namespaces, {pairs} alternating pairs of {seconds} s runs without/with the agent attached (default intervals), run until the pair ratios' spread was below the median's distance to the target or 15 pairs; bpf_stats in a separate run under the same load"),
    );
    part.rows.push(Row::new(
        "throughput without the agent",
        off / 1e6,
        "Mbit/s",
    ));
    part.rows
        .push(Row::new("throughput with the agent", on / 1e6, "Mbit/s"));
    // A ratio whose pairs spread wider than its distance to the target says nothing
    // either way: the row then carries no verdict.
    let median_row = Row::new("with / without, median pair ratio", ratio, "x without");
    part.rows.push(if decisive {
        median_row.target(
            "ratio >= 0.98 (spread below the distance: decisive)",
            ratio >= TARGET,
        )
    } else {
        median_row.undecided(&format!(
            "ratio >= 0.98 (spread {:.3} not below the distance {:.3} after {pairs} pairs: not decisive)",
            half_range,
            (ratio - TARGET).abs()
        ))
    });
    part.rows
        .push(Row::new("pair ratio, lowest", lowest, "x without"));
    part.rows
        .push(Row::new("pair ratio, highest", highest, "x without"));
    part.rows.push(Row::new(
        "pair ratio spread (half the range)",
        half_range,
        "x without",
    ));
    if !per_packet.is_empty() {
        part.rows.push(Row::new(
            "classifier run time under load (bpf_stats)",
            median(per_packet),
            "ns/packet",
        ));
    }
    part
}
