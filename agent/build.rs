//! Builds the eBPF object (`agent-ebpf`) with aya-build and a nightly toolchain whose
//! LLVM matches bpf-linker's, so that `cargo build` of the agent always embeds a
//! matching datapath.

/// bpf-linker is built against this LLVM major (`cargo xtask setup`).
const LLVM_MAJOR: &str = "22";
/// Used when the installed `nightly` has another LLVM (setup installs it then).
const PINNED_NIGHTLY: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=WGPULSE_EBPF_TOOLCHAIN");
    let toolchain = match std::env::var("WGPULSE_EBPF_TOOLCHAIN") {
        Ok(toolchain) => toolchain,
        Err(_) => {
            let nightly_llvm = std::process::Command::new("rustup")
                .args(["run", "nightly", "rustc", "-vV"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .and_then(|v| {
                    v.lines()
                        .find_map(|l| l.strip_prefix("LLVM version: "))
                        .and_then(|v| v.split('.').next())
                        .map(str::to_owned)
                });
            if nightly_llvm.as_deref() == Some(LLVM_MAJOR) {
                "nightly".to_owned()
            } else {
                PINNED_NIGHTLY.to_owned()
            }
        }
    };
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .join("../agent-ebpf")
        .canonicalize()?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
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
