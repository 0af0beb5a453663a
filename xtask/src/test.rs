//! `cargo xtask test`: setup, then every test suite. The kernel-touching suites run
//! as root; names are unique per process, so suites may run side by side.

use crate::{cmd, setup};

pub fn run(with_setup: bool) -> anyhow::Result<()> {
    if with_setup {
        setup::run()?;
    }
    // Every suite runs even when an earlier one fails (--no-fail-fast), so one
    // report shows every failure; the command fails at the end if any did.
    let mut failed = Vec::new();
    // Unit tests, including the classifier tests in the real kernel (BPF_PROG_TEST_RUN).
    if let Err(err) = cmd::cargo(&[
        "test",
        "--no-fail-fast",
        "-p",
        "agent-common",
        "-p",
        "wgpulse",
        "-p",
        "xtask",
    ]) {
        failed.push(format!("unit tests: {err}"));
    }
    // The agent binary the process-level tests start.
    cmd::cargo(&["build", "-p", "wgpulse", "--bin", "wgpulse"])?;
    // End-to-end tests with wireguard-go in network namespaces, one at a time: they
    // create real interfaces and measure real traffic on a 2-core machine.
    if let Err(err) = cmd::cargo(&[
        "test",
        "--no-fail-fast",
        "-p",
        "wgpulse-tests",
        "--",
        "--test-threads=1",
    ]) {
        failed.push(format!("end-to-end tests: {err}"));
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(())
}
