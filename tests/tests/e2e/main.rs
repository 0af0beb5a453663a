//! The end-to-end suites against real WireGuard (wireguard-go in network namespaces),
//! real eBPF, real receivers and real servers, as one test binary: one link instead
//! of one per suite, and one executable on disk instead of seventeen (each carries the
//! whole agent). `cargo test -p wgpulse-tests --test e2e -- paths::` runs one suite.
//!
//! Two suites stay binaries of their own: `kernel_wg`, which `cargo xtask vmtest`
//! boots inside Debian's kernels, and `names_memory`, whose counting global allocator
//! must see no other test's threads.

mod agent_process;
mod alerts;
mod app;
mod classifier;
mod datapath;
mod delivery;
mod delivery_crash;
mod deploy;
mod dialects;
mod drain_changes;
mod faults;
mod harness;
mod listener;
mod metrics_api;
mod nats;
mod paths;
mod peers;
mod secrets;
mod slow_read;
mod slow_save;
