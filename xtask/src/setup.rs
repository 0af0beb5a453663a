//! `cargo xtask setup`: installs every prerequisite on a fresh Debian 12 machine as
//! root, printing what it does and skipping what is already there.

use anyhow::{bail, Context as _};

use crate::cmd;

/// Debian packages: the eBPF linker's LLVM, real WireGuard, the test oracles and the
/// real servers the tests deliver to (Prometheus, NATS).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "wireguard-go",
    "wireguard-tools",
    "iproute2",
    "iputils-ping",
    "iperf3",
    "tshark",
    "tcpdump",
    "bpftool",
    "python3-pip",
    "systemd",
    "prometheus",
    "nats-server",
    "nftables",
    "curl",
];

/// The nightly used for the BPF target when the installed `nightly` has another LLVM.
pub const PINNED_NIGHTLY: &str = "nightly-2026-06-20";
/// bpf-linker's LLVM major; the eBPF nightly's must match.
const LLVM_MAJOR: &str = "22";

pub fn run() -> anyhow::Result<()> {
    if unsafe_geteuid() != 0 {
        bail!("cargo xtask setup installs packages and must run as root");
    }
    apt()?;
    kubectl()?;
    rust_src()?;
    bpf_linker()?;
    python_tools()?;
    println!("setup: done");
    Ok(())
}

fn unsafe_geteuid() -> u32 {
    // Read from /proc to avoid a libc dependency in xtask.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .and_then(|uid| uid.parse().ok())
        .unwrap_or(u32::MAX)
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            cmd::output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages already installed");
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    cmd::run("apt-get", &["update", "-q"])?;
    apt_install(&missing)
}

/// `apt-get install`s `packages` without questions (tshark's debconf one would
/// block), then empties apt's download cache: the .deb files are hundreds of MB that
/// nothing reads again, on machines whose disk has run out during a build.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages);
    cmd::run("apt-get", &args)?;
    cmd::run("apt-get", &["clean"])
}

/// `kubectl kustomize` renders the Kubernetes manifests in the deploy test. These
/// machines ship a kubectl; where none is, Debian's kubernetes-client brings one
/// (its kustomize has secretGenerator, which is all the test needs).
fn kubectl() -> anyhow::Result<()> {
    if cmd::output("kubectl", &["version", "--client"]).is_some() {
        println!("setup: kubectl already installed");
        return Ok(());
    }
    apt_install(&["kubernetes-client"])
}

fn rust_src() -> anyhow::Result<()> {
    let _ = cmd::output("rustup", &["set", "auto-self-update", "disable"]);
    let nightly_llvm =
        cmd::output("rustup", &["run", "nightly", "rustc", "-vV"]).and_then(|v| llvm_major(&v));
    let toolchain = if nightly_llvm.as_deref() == Some(LLVM_MAJOR) {
        "nightly"
    } else {
        println!(
            "setup: installed nightly has LLVM {:?}, bpf-linker needs {LLVM_MAJOR}: installing {PINNED_NIGHTLY}",
            nightly_llvm
        );
        cmd::run(
            "rustup",
            &[
                "toolchain",
                "install",
                PINNED_NIGHTLY,
                "--profile",
                "minimal",
            ],
        )?;
        PINNED_NIGHTLY
    };
    let installed = cmd::output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", toolchain],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src already installed for {toolchain}");
        Ok(())
    } else {
        cmd::run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", toolchain],
        )
    }
}

fn llvm_major(version: &str) -> Option<String> {
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = cmd::output("bpf-linker", &["--version"]) {
        println!("setup: {} already installed", version.trim());
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM {LLVM_MAJOR} (about 90 s)");
    std::env::set_var("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"));
    let feature = format!("llvm-{LLVM_MAJOR}");
    cmd::run(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
            "--no-default-features",
            "--features",
            &feature,
        ],
    )
    .context("installing bpf-linker")
}

fn python_tools() -> anyhow::Result<()> {
    let requirements = cmd::workspace_root().join("deploy/requirements.txt");
    if !requirements.exists() {
        return Ok(());
    }
    let path = requirements.to_string_lossy().into_owned();
    let mut missing = false;
    for line in std::fs::read_to_string(&requirements)?.lines() {
        let name = line
            .split(['=', '<', '>', ' ', '#'])
            .next()
            .unwrap_or("")
            .trim();
        if !name.is_empty() && cmd::output("python3", &["-m", "pip", "show", "-q", name]).is_none()
        {
            missing = true;
        }
    }
    if !missing {
        println!("setup: python tools already installed");
        return Ok(());
    }
    cmd::run(
        "python3",
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-r",
            &path,
        ],
    )
}
