//! `wgpulse-bench <part>... [--quick]`: the benchmark parts of `cargo xtask bench`
//! (they load eBPF and create namespaces, so they run as root), each printed as a
//! table and saved under `target/bench/`; `report` assembles the saved parts.

mod bigdevice;
mod connect;
mod datapath;
mod delivery;
mod drain;
mod footprint;
mod path;
mod report;
mod scale;
mod scrape;
mod tunnel;

/// Every part, in report order.
const PARTS: &[&str] = &[
    "datapath",
    "tunnel",
    "connect",
    "drain",
    "scrape",
    "delivery",
    "footprint",
    "scale",
    "path",
];

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if wanted.is_empty() || wanted == ["all"] {
        wanted = PARTS.to_vec();
    }
    let mut failed = Vec::new();
    for name in &wanted {
        if *name == "report" {
            continue;
        }
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(|| match *name {
            "datapath" => datapath::run(quick),
            "tunnel" => tunnel::run(quick),
            "connect" => connect::run(quick),
            "drain" => drain::run(quick),
            "scrape" => scrape::run(quick),
            "delivery" => delivery::run(quick),
            "footprint" => footprint::run(quick),
            "scale" => scale::run(quick),
            "path" => path::run(quick),
            other => panic!("unknown part {other:?}: {}", PARTS.join(", ")),
        });
        match result {
            Ok(mut part) => {
                part.quick = quick;
                if quick {
                    // Reduced runs check that the bench works; they judge no target.
                    for row in &mut part.rows {
                        row.met = None;
                    }
                }
                part.print();
                report::save(&part);
                println!("({name}: {:.0} s)", started.elapsed().as_secs_f64());
            }
            Err(_) => failed.push(*name),
        }
    }
    if wanted.len() > 1 || args.iter().any(|a| a == "report") {
        report::assemble(&machine());
    }
    if !failed.is_empty() {
        eprintln!("bench parts failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
