//! Builds the eBPF object (`agent-ebpf`) with aya-build and the pinned nightly toolchain,
//! so that `cargo build` of the agent always embeds a matching datapath.

/// The nightly toolchain used for the BPF target. Its LLVM major must equal
/// bpf-linker's (22 here); `cargo xtask setup` checks that and installs one if needed.
const DEFAULT_EBPF_TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=WGPULSE_EBPF_TOOLCHAIN");
    let toolchain =
        std::env::var("WGPULSE_EBPF_TOOLCHAIN").unwrap_or_else(|_| DEFAULT_EBPF_TOOLCHAIN.into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../agent-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize()?;
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-changed={manifest_dir}/../agent-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
