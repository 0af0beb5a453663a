//! `cargo xtask bench [part...] [--quick]`: builds and runs the benchmark binary (it
//! loads eBPF and creates namespaces, so as root) for the parts asked (default all),
//! which prints a table per part and writes `target/bench/report.{json,md}` with SVG
//! plots.

use crate::{cmd, setup};

pub fn run(parts: &[String], quick: bool) -> anyhow::Result<()> {
    setup::run()?;
    // The quick check (CI) reuses the debug build: it only proves the bench works.
    // The full report is built in release like everything it reports on.
    let mut args = vec!["run"];
    if !quick {
        args.push("--release");
        // The agent processes the bench starts are the release build too.
        cmd::cargo(&["build", "--release", "-p", "wgpulse", "--bin", "wgpulse"])?;
        std::env::set_var(
            "WGPULSE_BIN",
            cmd::workspace_root().join("target/release/wgpulse"),
        );
    } else {
        cmd::cargo(&["build", "-p", "wgpulse", "--bin", "wgpulse"])?;
    }
    args.extend(["-q", "-p", "wgpulse-tests", "--bin", "wgpulse-bench", "--"]);
    args.extend(parts.iter().map(String::as_str));
    if quick {
        args.push("--quick");
    }
    cmd::cargo(&args)
}
