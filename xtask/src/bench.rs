//! `cargo xtask bench [datapath] [--quick]`: runs the benchmark binary in release mode
//! (it loads eBPF, so as root) and prints its report.

use crate::cmd;

pub fn run(part: Option<&str>, quick: bool) -> anyhow::Result<()> {
    let part = part.unwrap_or("datapath");
    if part != "datapath" {
        anyhow::bail!("unknown benchmark {part:?}: available: datapath");
    }
    let mut args = vec![
        "run",
        "--release",
        "-q",
        "-p",
        "wgpulse-tests",
        "--bin",
        "wgpulse-bench",
        "--",
        part,
    ];
    if quick {
        args.push("--quick");
    }
    cmd::cargo(&args)
}
