//! Part 4, drain cost: with 1k, 10k and 100k endpoints in the maps (created by
//! running the real classifier on packets from that many endpoints), the time of one
//! drain cycle: batched lookup, snapshot and deltas.

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
        &format!("one drain cycle (batched map lookup, snapshot, deltas) with N endpoints in the per-CPU map, median of {rounds}"),
    );
    let mut points = Vec::new();
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
        {
            let classifier = datapath.classifier(programs::INGRESS).expect("program");
            for i in 0..n {
                let ip = Ipv4Addr::from(0x0a00_0000u32 + (i as u32 >> 8));
                let from = SocketAddr::new(IpAddr::V4(ip), 1024 + (i % 256) as u16);
                let frame = testing::udp_frame(from, local, &payload, &FrameOptions::default());
                classifier
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        repeat: 1,
                        ..Default::default()
                    })
                    .expect("BPF_PROG_TEST_RUN");
            }
        }
        let mut drain = Drain::new(&mut datapath, 131_072).expect("opening the maps");
        let first = drain.drain().expect("drain");
        assert_eq!(first.endpoints.len(), n, "every endpoint is in the map");
        let samples: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                let snapshot = drain.drain().expect("drain");
                let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(snapshot.endpoints.len(), n);
                elapsed
            })
            .collect();
        let ms = median(samples);
        points.push((n as f64, ms));
        let mut row = Row::new(&format!("{n} endpoints"), ms, "ms/drain");
        if n == 100_000 {
            row = row.target("< 50 ms", ms < 50.0);
        }
        part.rows.push(row);
    }
    part.plots.push(Plot {
        name: "drain".into(),
        title: "Drain cycle time vs endpoints".into(),
        x: "endpoints in the map".into(),
        y: "ms per drain".into(),
        log_x: true,
        series: vec![Series {
            name: "wgpulse drain".into(),
            points,
        }],
    });
    part
}
