//! Part 7, footprint: the agent's resident memory and CPU with 10k peers, while every
//! peer's endpoint sends traffic and while all is idle.

use std::time::{Duration, Instant};

use crate::bigdevice::{cpu_seconds, rss_mib, rss_parts, BigDevice};
use crate::report::{Part, Row};

/// CPU percent of one core over `window` while `during` runs (or idles).
fn cpu_percent(pid: u32, window: Duration, during: impl FnOnce()) -> f64 {
    let before = cpu_seconds(pid);
    let started = Instant::now();
    during();
    let rest = window.saturating_sub(started.elapsed());
    std::thread::sleep(rest);
    (cpu_seconds(pid) - before) / started.elapsed().as_secs_f64() * 100.0
}

/// Runs the part.
pub fn run(quick: bool) -> Part {
    let peers = if quick { 1_000 } else { 10_000 };
    let window = Duration::from_secs(if quick { 3 } else { 15 });
    let device = BigDevice::start(peers);
    let pid = device.pid();
    let busy = cpu_percent(pid, window, || device.traffic(if quick { 2 } else { 3 }));
    let busy_rss = rss_mib(pid);
    // Idle: nothing on the wire; the agent still drains every second and reads the
    // devices every 10 s.
    std::thread::sleep(Duration::from_secs(2));
    let idle = cpu_percent(pid, window, || {});
    let idle_rss = rss_mib(pid);
    let parts = rss_parts(pid);
    let mut part = Part::new(
        "footprint",
        "Footprint",
        &format!("the agent process with {peers} peers on a wireguard-go device: while every peer's endpoint sends, and idle, over {} s windows", window.as_secs()),
    );
    part.rows
        .push(Row::new("RSS under traffic", busy_rss, "MiB").target("<= 32 MiB", busy_rss <= 32.0));
    part.rows
        .push(Row::new("CPU under traffic", busy, "% of a core"));
    part.rows.push(Row::new("RSS idle", idle_rss, "MiB"));
    for (field, mib) in parts {
        part.rows
            .push(Row::new(&format!("RSS idle: {field}"), mib, "MiB"));
    }
    part.rows
        .push(Row::new("CPU idle", idle, "% of a core").target("<= 0.5%", idle <= 0.5));
    device.agent.kill();
    part
}
