//! Part 4, drain cost: with 1k, 10k and 100k endpoints in the maps (created by
//! running the real classifier on packets from that many endpoints), the time of one
//! drain cycle (change ring, map reads, snapshot, deltas) when none, 1%, 10% or all of
//! the endpoints moved since the last drain (the same ones each round: a fleet's
//! active peers stay active). The packets that move them are sent between drains and
//! not timed. "All moved" reads the whole map in batches: it is the cost of the
//! batched lookup itself.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use agent_common::programs;
use aya::programs::{TestRun, TestRunOptions};
use wgpulse::datapath::{Datapath, LoadOptions};
use wgpulse::drain::Drain;
use wgpulse::testing::{self, FrameOptions};

use crate::report::{median, Part, Plot, Row, Series};

const PORT: u16 = 51820;

/// Shares of the endpoints that move between two drains, in percent.
const MOVED_PERCENT: [usize; 4] = [0, 1, 10, 100];

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let rounds = if quick { 5 } else { 11 };
    let mut part = Part::new(
        "drain",
        "Drain cost",
        &format!("one drain cycle (change ring, map reads, snapshot, deltas) with N endpoints in the per-CPU map of which a share moved since the last drain, median of {rounds}"),
    );
    let mut series: Vec<Series> = MOVED_PERCENT
        .iter()
        .map(|p| Series {
            name: format!("{p}% moved"),
            points: Vec::new(),
        })
        .collect();
    for &n in sizes {
        let mut datapath = Datapath::load(&LoadOptions {
            max_peers: 131_072,
            attach_drop_counter: false,
            kernel_attribution: false,
        })
        .expect("loading the datapath (run as root)");
        datapath
            .set_ports(&HashMap::from([(PORT, 0)]))
            .expect("port map");
        let local: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let payload = testing::data(1, 0, 128);
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let ip = Ipv4Addr::from(0x0a00_0000u32 + (i as u32 >> 8));
                let from = SocketAddr::new(IpAddr::V4(ip), 1024 + (i % 256) as u16);
                testing::udp_frame(from, local, &payload, &FrameOptions::default())
            })
            .collect();
        let send = |datapath: &mut Datapath, count: usize| {
            let classifier = datapath.classifier(programs::INGRESS).expect("program");
            for frame in &frames[..count] {
                classifier
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        repeat: 1,
                        ..Default::default()
                    })
                    .expect("BPF_PROG_TEST_RUN");
            }
        };
        send(&mut datapath, n);
        let mut drain = Drain::new(&mut datapath, 131_072).expect("opening the maps");
        let first = drain.drain().expect("drain");
        assert_eq!(first.endpoints.len(), n, "every endpoint is in the map");
        for (percent, series) in MOVED_PERCENT.iter().zip(&mut series) {
            let moved = n * percent / 100;
            // One untimed round first: the drain after a change re-reads what the one
            // before read, so the steady state starts at the second.
            send(&mut datapath, moved);
            drain.drain().expect("drain");
            let samples: Vec<f64> = (0..rounds)
                .map(|_| {
                    send(&mut datapath, moved);
                    let started = Instant::now();
                    let snapshot = drain.drain().expect("drain");
                    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                    assert_eq!(snapshot.endpoints.len(), moved, "the endpoints that moved");
                    assert_eq!(snapshot.map_entries, n);
                    elapsed
                })
                .collect();
            let ms = median(samples);
            series.points.push((n as f64, ms));
            let mut row = Row::new(&format!("{n} endpoints, {percent}% moved"), ms, "ms/drain");
            if *percent == 10 && n == 10_000 {
                row = row.target("<= 2 ms", ms <= 2.0);
            }
            if *percent == 10 && n == 100_000 {
                row = row.target("<= 30 ms", ms <= 30.0);
            }
            part.rows.push(row);
        }
    }
    part.plots.push(Plot {
        name: "drain".into(),
        title: "Drain cycle time vs endpoints".into(),
        x: "endpoints in the map".into(),
        y: "ms per drain".into(),
        log_x: true,
        series,
    });
    part
}
