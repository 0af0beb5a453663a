//! `cargo xtask bench [datapath] [--quick]`: runs the benchmark binary (it loads
//! eBPF, so as root) and prints its report.

use crate::cmd;

pub fn run(part: Option<&str>, quick: bool) -> anyhow::Result<()> {
    let part = part.unwrap_or("datapath");
    if part != "datapath" {
        anyhow::bail!("unknown benchmark {part:?}: available: datapath");
    }
    // The kernel times the programs, so the quick check (CI) reuses the debug build;
    // the full report is built in release like everything it reports on.
    let mut args = vec!["run"];
    if !quick {
        args.push("--release");
    }
    args.extend([
        "-q",
        "-p",
        "wgpulse-tests",
        "--bin",
        "wgpulse-bench",
        "--",
        part,
    ]);
    if quick {
        args.push("--quick");
    }
    cmd::cargo(&args)
}
