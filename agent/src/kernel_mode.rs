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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use agent_common::{
    programs, WgPeerOffsets, WgPeerReading, FAMILY_IPV4, FAMILY_IPV6, MAP_WG_OFFSETS,
};
use aya::maps::{Array, MapData, PerCpuHashMap};
use aya::programs::KProbe;
use aya::Ebpf;
use serde::Serialize;

use crate::offsets;
use crate::wg::PublicKey;

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

/// Whether this kernel can run kernel mode at all (the module and its BTF are there);
/// `Err` says why not. Checked before the object is loaded, so that the peer map takes
/// no kernel memory where it would stay empty.
pub fn available() -> Result<(), String> {
    if !Path::new("/sys/module/wireguard").exists() {
        return Err("the wireguard kernel module is not loaded".into());
    }
    if !Path::new(offsets::WIREGUARD_BTF).exists() {
        return Err(format!(
            "the kernel exposes no BTF for the wireguard module ({} is missing)",
            offsets::WIREGUARD_BTF
        ));
    }
    Ok(())
}

/// Attaches the peer probe (once [`available`] said yes); `Err` says why kernel mode
/// cannot run after all (offsets not in the BTF, kprobes refused).
pub fn attach(ebpf: &mut Ebpf) -> Result<String, String> {
    let offsets = offsets::Btf::from_split_files(
        Path::new(offsets::WIREGUARD_BTF),
        Path::new(offsets::VMLINUX_BTF),
    )
    .and_then(|btf| offsets::wg_peer_offsets(&btf))
    .map_err(|e| format!("reading struct wg_peer from BTF: {e}"))?;
    write_offsets(ebpf, offsets)?;
    let program: &mut KProbe = ebpf
        .program_mut(programs::WG_PEER_PROBE)
        .ok_or("the peer probe is missing from the object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    program
        .load()
        .map_err(|e| format!("loading the kprobe program: {e}"))?;
    for function in programs::WG_PEER_PROBE_FUNCTIONS {
        if let Err(err) = program.attach(function, 0) {
            // Partial coverage would under-count: all or nothing.
            let _ = program.unload();
            return Err(format!("attaching a kprobe to {function}: {err}"));
        }
    }
    Ok(format!(
        "kprobes on {}",
        programs::WG_PEER_PROBE_FUNCTIONS.join(", ")
    ))
}

fn write_offsets(ebpf: &mut Ebpf, offsets: WgPeerOffsets) -> Result<(), String> {
    let mut map: Array<&mut MapData, WgPeerOffsets> = Array::try_from(
        ebpf.map_mut(MAP_WG_OFFSETS)
            .ok_or_else(|| format!("map {MAP_WG_OFFSETS} missing"))?,
    )
    .map_err(|e| e.to_string())?;
    map.set(0, offsets, 0).map_err(|e| e.to_string())
}

/// One kernel WireGuard peer as the probe last read it, folded over the CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelPeerReading {
    /// WireGuard's internal id of the peer (new for every peer added).
    pub internal_id: u64,
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Interface index of its device.
    pub ifindex: u32,
    /// Name of its device (resolved in the agent's namespace when read).
    pub device: Option<String>,
    /// Inode number of the device's network namespace (0: unknown).
    pub netns: u32,
    /// Bytes WireGuard accepted from the peer (`wg show transfer` received).
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer (`wg show transfer` sent).
    pub tx_bytes: u64,
    /// WireGuard's last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// WireGuard's endpoint for the peer.
    pub endpoint: Option<SocketAddr>,
}

/// Folds the per-CPU readings of one peer: the counters and the handshake time only
/// grow, so the largest value is the latest; the endpoint comes from the latest read.
pub fn fold(internal_id: u64, values: &[WgPeerReading]) -> Option<KernelPeerReading> {
    let filled = values.iter().find(|v| v.filled != 0)?;
    let latest = values.iter().max_by_key(|v| v.read_ns)?;
    let handshake = values
        .iter()
        .map(|v| (v.handshake_sec, v.handshake_nsec))
        .max()
        .unwrap_or_default();
    Some(KernelPeerReading {
        internal_id,
        public_key: PublicKey(filled.public_key),
        ifindex: filled.ifindex,
        device: None,
        netns: filled.netns,
        rx_bytes: values.iter().map(|v| v.rx_bytes).max().unwrap_or(0),
        tx_bytes: values.iter().map(|v| v.tx_bytes).max().unwrap_or(0),
        last_handshake: (handshake.0 != 0).then(|| {
            SystemTime::UNIX_EPOCH + Duration::new(handshake.0, handshake.1.min(999_999_999) as u32)
        }),
        endpoint: endpoint(latest),
    })
}

fn endpoint(reading: &WgPeerReading) -> Option<SocketAddr> {
    let ip = match reading.family {
        FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::new(
            reading.addr[0],
            reading.addr[1],
            reading.addr[2],
            reading.addr[3],
        )),
        FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(reading.addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, reading.port))
}

/// Reads the probe's map at every drain.
pub struct KernelPeers {
    map: PerCpuHashMap<MapData, u64, WgPeerReading>,
    netns: u32,
}

impl KernelPeers {
    /// Wraps the probe's map (taken out of the loaded object).
    pub fn new(map: aya::maps::Map) -> Result<Self, aya::maps::MapError> {
        Ok(Self {
            map: PerCpuHashMap::try_from(map)?,
            netns: own_netns(),
        })
    }

    /// Every peer of a device in the agent's own namespace, newest incarnation of each
    /// (device, key) only; entries of removed peers are deleted once a newer one exists.
    pub fn read(&mut self) -> Result<Vec<KernelPeerReading>, aya::maps::MapError> {
        let mut newest: HashMap<(u32, PublicKey), KernelPeerReading> = HashMap::new();
        let mut stale = Vec::new();
        for item in self.map.iter() {
            let (id, values) = item?;
            let Some(reading) = fold(id, &values) else {
                continue;
            };
            if self.netns != 0 && reading.netns != 0 && reading.netns != self.netns {
                continue;
            }
            let slot = (reading.ifindex, reading.public_key);
            match newest.get(&slot) {
                Some(kept) if kept.internal_id > id => stale.push(id),
                Some(kept) => {
                    stale.push(kept.internal_id);
                    newest.insert(slot, reading);
                }
                None => {
                    newest.insert(slot, reading);
                }
            }
        }
        for id in stale {
            let _ = self.map.remove(&id);
        }
        let names = if newest.is_empty() {
            HashMap::new()
        } else {
            interface_names()
        };
        Ok(newest
            .into_values()
            .map(|mut reading| {
                reading.device = names.get(&reading.ifindex).cloned();
                reading
            })
            .collect())
    }
}

/// Inode number of the calling thread's network namespace (0 if it cannot be read).
/// `thread-self`, not `self`: a thread may have entered another namespace than the
/// process's first thread (as the agent does when started inside a namespace), and the
/// drain thread inherits the namespace of the thread that started it.
fn own_netns() -> u32 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

/// Names of the interfaces in the agent's namespace by index (for the readings).
pub fn interface_names() -> HashMap<u32, String> {
    nix::net::if_::if_nameindex()
        .map(|list| {
            list.iter()
                .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(cpu_rx: u64, cpu_tx: u64, read_ns: u64, port: u16) -> WgPeerReading {
        WgPeerReading {
            rx_bytes: cpu_rx,
            tx_bytes: cpu_tx,
            handshake_sec: 1_700_000_000 + read_ns,
            handshake_nsec: 5,
            read_ns,
            family: FAMILY_IPV4,
            port,
            addr: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ifindex: 7,
            netns: 42,
            filled: 1,
            public_key: [9; 32],
        }
    }

    #[test]
    fn fold_takes_the_largest_counter_and_the_latest_endpoint() {
        // CPU 0 read last but saw less rx than CPU 1 (which updated rx later on its
        // own CPU); CPU 2 never saw the peer.
        let values = [
            reading(100, 900, 30, 4000),
            reading(250, 800, 20, 5000),
            WgPeerReading::default(),
        ];
        let folded = fold(3, &values).unwrap();
        assert_eq!((folded.rx_bytes, folded.tx_bytes), (250, 900));
        assert_eq!(folded.endpoint, Some("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(
            folded.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_030, 5))
        );
        assert_eq!((folded.ifindex, folded.netns), (7, 42));
        assert_eq!(folded.public_key, PublicKey([9; 32]));
    }

    #[test]
    fn an_unfilled_entry_is_skipped() {
        assert_eq!(fold(1, &[WgPeerReading::default()]), None);
        let mut never = reading(1, 1, 1, 1);
        never.handshake_sec = 0;
        never.family = 0;
        let folded = fold(1, &[never]).unwrap();
        assert_eq!(folded.last_handshake, None);
        assert_eq!(folded.endpoint, None);
    }
}
