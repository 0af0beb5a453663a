//! `cargo xtask test`: setup, then every test suite. The kernel-touching suites run
//! as root; names are unique per process, so suites may run side by side.

use crate::{cmd, setup};

pub fn run(with_setup: bool) -> anyhow::Result<()> {
    if with_setup {
        setup::run()?;
    }
    // Unit tests, including the classifier tests in the real kernel (BPF_PROG_TEST_RUN).
    cmd::cargo(&["test", "-p", "agent-common", "-p", "wgpulse", "-p", "xtask"])?;
    // The agent binary the process-level tests start.
    cmd::cargo(&["build", "-p", "wgpulse", "--bin", "wgpulse"])?;
    // End-to-end tests with wireguard-go in network namespaces, one at a time: they
    // create real interfaces and measure real traffic on a 2-core machine.
    cmd::cargo(&["test", "-p", "wgpulse-tests", "--", "--test-threads=1"])?;
    Ok(())
}
