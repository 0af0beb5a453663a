//! Part 5, scrape: one scrape of wgpulse's /metrics against
//! prometheus_wireguard_exporter 3.6.6 (installed from crates.io by the full bench)
//! scraping the same wireguard-go device with 1k and 10k peers, median wall time and
//! CPU per scrape of each, side by side in one run, as a ratio.

use std::path::PathBuf;
use std::time::Duration;

use wgpulse_tests::netns::NetNs;
use wgpulse_tests::process::{wait_for, ChildGuard};

use crate::bigdevice::{cpu_seconds, BigDevice, AGENT};
use crate::report::{median, Part, Row};

const EXPORTER_VERSION: &str = "3.6.6";
const EXPORTER: &str = "127.0.0.1:9587";

/// The exporter's binary, installed into `target/bench/tools` if missing.
fn exporter() -> PathBuf {
    let root = crate::report::dir().join("tools");
    let binary = root.join("bin/prometheus_wireguard_exporter");
    if !binary.exists() {
        println!("installing prometheus_wireguard_exporter {EXPORTER_VERSION} (once)");
        let status = std::process::Command::new("cargo")
            .args([
                "install",
                "--locked",
                "prometheus_wireguard_exporter",
                "--version",
                EXPORTER_VERSION,
                "--root",
            ])
            .arg(&root)
            .status()
            .expect("cargo install");
        assert!(
            status.success(),
            "installing prometheus_wireguard_exporter failed"
        );
    }
    binary
}

/// Median wall ms of `scrapes` GETs of `url` from inside `ns` (curl, a compiled
/// client, as Prometheus is: Python's urllib spent as much CPU reading a 16 MB body as
/// the agent spent writing it), and the serving process's CPU ms per scrape.
pub fn time_scrapes(ns: &NetNs, url: &str, pid: u32, scrapes: usize) -> (f64, f64) {
    let script = format!(
        "for i in $(seq {scrapes}); do curl -sf --max-time 120 -o /dev/null -w '%{{time_total}} %{{size_download}}\\n' '{url}' || exit 1; done"
    );
    let before = cpu_seconds(pid);
    let out = ns.run_timeout(&["sh", "-c", &script], Duration::from_secs(900));
    let cpu = (cpu_seconds(pid) - before) * 1000.0 / scrapes as f64;
    let text = String::from_utf8_lossy(&out.stdout);
    let times: Vec<f64> = text
        .lines()
        .map(|line| {
            let (seconds, size) = line.split_once(' ').expect("time and size");
            assert!(size.parse::<u64>().unwrap() > 0, "an empty body from {url}");
            seconds.parse::<f64>().unwrap() * 1000.0
        })
        .collect();
    assert_eq!(
        times.len(),
        scrapes,
        "every scrape of {url} answered: {text}"
    );
    (median(times), cpu)
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
    let scrapes = if quick { 5 } else { 15 };
    let exporter = (!quick).then(exporter);
    let mut part = Part::new(
        "scrape",
        "Scrape",
        &format!("median of {scrapes} scrapes of /metrics on a wireguard-go device with N synthetic peers, traffic from every peer's endpoint; wgpulse vs prometheus_wireguard_exporter {EXPORTER_VERSION} side by side{}", if quick { " (quick: wgpulse only)" } else { "" }),
    );
    for &n in sizes {
        let device = BigDevice::start(n);
        device.traffic(1);
        let body_check = wgpulse_tests::agent::http(
            &device.pair.b,
            "GET",
            &format!("http://{AGENT}/metrics"),
            None,
        )
        .1;
        assert!(
            body_check.matches("wireguard_peer_info{").count() >= n,
            "every peer is exported"
        );
        let (ours, ours_cpu) = time_scrapes(
            &device.pair.b,
            &format!("http://{AGENT}/metrics"),
            device.pid(),
            scrapes,
        );
        let mut row = Row::new(&format!("wgpulse, {n} peers"), ours, "ms/scrape");
        if n == 10_000 {
            row = row.target("<= 15 ms", ours <= 15.0);
        }
        part.rows.push(row);
        part.rows.push(Row::new(
            &format!("wgpulse CPU, {n} peers"),
            ours_cpu,
            "ms CPU/scrape",
        ));
        if let Some(exporter) = &exporter {
            let child = device
                .pair
                .b
                .command(&[exporter.to_str().unwrap(), "-l", "127.0.0.1", "-p", "9587"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("starting the exporter");
            let guard = ChildGuard::new(child, "prometheus_wireguard_exporter");
            wait_for("the exporter", Duration::from_secs(30), || {
                wgpulse_tests::agent::http(
                    &device.pair.b,
                    "GET",
                    &format!("http://{EXPORTER}/metrics"),
                    None,
                )
                .0 == 200
            });
            let (theirs, theirs_cpu) = time_scrapes(
                &device.pair.b,
                &format!("http://{EXPORTER}/metrics"),
                guard.id(),
                scrapes,
            );
            let ratio = theirs / ours;
            let mut row = Row::new(
                &format!("prometheus_wireguard_exporter, {n} peers"),
                theirs,
                "ms/scrape",
            )
            .ratio(ratio, "x slower than wgpulse");
            if n == 10_000 {
                row = row.target("wgpulse >= 20x faster at 10k", ratio >= 20.0);
            }
            part.rows.push(row);
            part.rows.push(Row::new(
                &format!("exporter CPU, {n} peers"),
                theirs_cpu,
                "ms CPU/scrape",
            ));
        }
        device.agent.kill();
    }
    part
}
