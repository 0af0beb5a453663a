//! Kernel-mode attribution: where kernel WireGuard runs, a kprobe on WireGuard's own
//! functions reads each peer's counters, last handshake, endpoint and public key out of
//! `struct wg_peer` (offsets from the `wireguard` module's BTF), so the agent has
//! WireGuard's accepted bytes per peer at every drain, keyed by the peer itself, beside
//! the TC classifiers' wire view. The agent selects it by itself and falls back to the
//! TC-only mode, saying why, where the kernel lacks the module, its BTF or kprobes.
//!
//! Why kprobes and not fentry: aya 0.14 loads fentry/fexit programs against vmlinux's
//! BTF only (no `attach_btf_obj_fd` for a module's function), so fentry on `wg_*` is
//! refused by our loader; a kprobe at a function's entry reads the same fields. The
//! statistics updates themselves are inlined, so the probe sits on the functions
//! WireGuard calls *after* each update ([`agent_common::programs::WG_PEER_PROBE_FUNCTIONS`]).

use std::path::Path;

use agent_common::{programs, WgPeerOffsets, MAP_WG_OFFSETS};
use aya::maps::{Array, MapData};
use aya::programs::KProbe;
use aya::Ebpf;
use serde::Serialize;

/// Whether the agent may use kernel-mode attribution (`kernel_attribution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelAttribution {
    /// Use it where the kernel allows, TC-only elsewhere (the default).
    #[default]
    Auto,
    /// Never attach the kprobes.
    Off,
}

/// Why kernel-mode attribution is off (its message is what the log and `/readyz` say).
#[derive(Debug, thiserror::Error)]
pub enum KernelModeOff {
    /// `kernel_attribution = "off"`.
    #[error("turned off (kernel_attribution = \"off\")")]
    TurnedOff,
    /// No kernel WireGuard here.
    #[error("the wireguard kernel module is not loaded")]
    NoModule,
    /// The module exposes no BTF.
    #[error("the kernel exposes no BTF for the wireguard module ({0} is missing)")]
    NoModuleBtf(&'static str),
    /// `struct wg_peer` could not be read from the BTF.
    #[error("reading struct wg_peer from BTF: {0}")]
    Offsets(#[source] crate::datapath::btf::OffsetsError),
    /// The program or its offsets map is missing from the object.
    #[error("{0} is missing from the object")]
    Missing(&'static str),
    /// Writing the offsets map failed.
    #[error("writing the offsets map: {0}")]
    Map(#[source] aya::maps::MapError),
    /// The program is not a kprobe, or did not load.
    #[error("loading the kprobe program: {0}")]
    Load(#[source] aya::programs::ProgramError),
    /// The kernel refused a kprobe.
    #[error("attaching a kprobe to {function}: {source}")]
    Attach {
        /// The WireGuard function.
        function: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Whether this kernel can run kernel mode at all (the module and its BTF are there);
/// `Err` says why not. Checked before the object is loaded, so that the peer map takes
/// no kernel memory where it would stay empty.
pub fn available() -> Result<(), KernelModeOff> {
    if !Path::new("/sys/module/wireguard").exists() {
        return Err(KernelModeOff::NoModule);
    }
    if !Path::new(crate::datapath::btf::WIREGUARD_BTF).exists() {
        return Err(KernelModeOff::NoModuleBtf(
            crate::datapath::btf::WIREGUARD_BTF,
        ));
    }
    Ok(())
}

/// Attaches the peer probe (once [`available`] said yes); `Err` says why kernel mode
/// cannot run after all (offsets not in the BTF, kprobes refused).
pub fn attach(ebpf: &mut Ebpf) -> Result<String, KernelModeOff> {
    let offsets = crate::datapath::btf::Btf::from_split_files(
        Path::new(crate::datapath::btf::WIREGUARD_BTF),
        Path::new(crate::datapath::btf::VMLINUX_BTF),
    )
    .and_then(|btf| crate::datapath::btf::wg_peer_offsets(&btf))
    .map_err(KernelModeOff::Offsets)?;
    write_offsets(ebpf, offsets)?;
    let program: &mut KProbe = ebpf
        .program_mut(programs::WG_PEER_PROBE)
        .ok_or(KernelModeOff::Missing("the peer probe"))?
        .try_into()
        .map_err(KernelModeOff::Load)?;
    program.load().map_err(KernelModeOff::Load)?;
    for function in programs::WG_PEER_PROBE_FUNCTIONS {
        if let Err(source) = program.attach(function, 0) {
            // Partial coverage would under-count: all or nothing.
            let _ = program.unload();
            return Err(KernelModeOff::Attach { function, source });
        }
    }
    Ok(format!(
        "kprobes on {}",
        programs::WG_PEER_PROBE_FUNCTIONS.join(", ")
    ))
}

fn write_offsets(ebpf: &mut Ebpf, offsets: WgPeerOffsets) -> Result<(), KernelModeOff> {
    let mut map: Array<&mut MapData, WgPeerOffsets> = Array::try_from(
        ebpf.map_mut(MAP_WG_OFFSETS)
            .ok_or(KernelModeOff::Missing("the offsets map"))?,
    )
    .map_err(KernelModeOff::Map)?;
    map.set(0, offsets, 0).map_err(KernelModeOff::Map)
}
