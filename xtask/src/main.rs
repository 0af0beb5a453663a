//! wgpulse's developer tasks. `xtask` only orchestrates: the eBPF object is built by
//! `agent/build.rs`; this crate installs prerequisites, runs the tests, the demo and
//! the benchmarks.

mod bench;
mod cmd;
mod demo;
mod fleet;
mod setup;
mod test;
mod vmtest;

use clap::{Parser, Subcommand};

/// Developer tasks for the wgpulse workspace.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite on Debian 12 as root, idempotently (apt packages,
    /// rust-src, bpf-linker against LLVM 22, wireguard-go, tshark, iperf3...).
    Setup,
    /// Build the eBPF object and the agent (release).
    Build,
    /// The demo: wireguard-go peers in namespaces, the agent and a webhook receiver
    /// watching them, traffic, a roam, garbage, disconnects and a peer removal;
    /// everything torn down afterwards.
    Demo {
        /// The fleet demo instead: three gateways with their own agents publishing
        /// into one NATS JetStream stream, and a consumer printing their connects
        /// and disconnects.
        #[arg(long)]
        fleet: bool,
    },
    /// Benchmarks (medians of repeated runs, ratios measured side by side): prints a
    /// table per part and writes target/bench/report.{json,md} with SVG plots.
    Bench {
        /// Parts: datapath, tunnel, connect, drain, scrape, delivery, footprint, path
        /// (default: all, then the report).
        parts: Vec<String>,
        /// A reduced version for CI (checks that the bench still works).
        #[arg(long)]
        quick: bool,
    },
    /// The kernel-WireGuard tests inside Debian's 6.1 and 6.12 kernels (QEMU, TCG).
    Vmtest {
        /// Which kernel: 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// Run setup, then every test: unit, kernel (BPF_PROG_TEST_RUN) and end-to-end.
    Test {
        /// Skip the setup step (prerequisites already installed).
        #[arg(long)]
        no_setup: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Demo { fleet: false } => demo::run(),
        Task::Demo { fleet: true } => fleet::run(),
        Task::Bench { parts, quick } => bench::run(&parts, quick),
        Task::Build => cmd::cargo(&["build", "--release", "-p", "wgpulse"]),
        Task::Test { no_setup } => test::run(!no_setup),
        Task::Vmtest { kernel } => vmtest::run(&kernel),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
