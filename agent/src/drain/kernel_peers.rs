//! The kernel-mode probe's per-CPU map, read at every drain: each kernel WireGuard
//! peer's own counters, last handshake and endpoint, folded over the CPUs, newest
//! incarnation of each (device, key) only, in the agent's own network namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, SystemTime};

use agent_common::{WgPeerReading, FAMILY_IPV4, FAMILY_IPV6};
use aya::maps::{MapData, PerCpuHashMap};

pub use crate::snapshot::KernelPeerReading;
use crate::wg::PublicKey;

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
