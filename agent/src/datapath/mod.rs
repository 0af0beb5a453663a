//! Puts the datapath into the kernel: loads the embedded eBPF object with aya, sizes
//! the endpoint map, attaches the classifiers to underlay interfaces (TCX on kernels
//! 6.6 and later, clsact through netlink before), attaches the socket-drop tracepoint
//! and, where kernel WireGuard runs, the kernel-mode peer probe
//! ([`crate::datapath::kprobes`]); keeps the port map in step with the WireGuard devices, and
//! detaches everything on drop.
//!
//! The files: this module (loading, the port map), `attach` (classifiers on
//! interfaces), `drops` (the socket-drop tracepoint), [`btf`] (kernel struct offsets from
//! BTF), [`kprobes`] (kernel-mode attribution: availability and attach), [`links`]
//! (which interfaces to attach to).

mod attach;
use attach::Attachment;
pub mod btf;
mod drops;
pub mod kprobes;
pub mod links;

use std::collections::HashMap;
use std::path::Path;

use agent_common::{programs, KernelOffsets, MAP_OFFSETS, MAP_PORTS, MAX_DEVICES};
use aya::maps::{Array, Map, MapData};
use aya::programs::SchedClassifier;
use aya::{Btf, Ebpf, EbpfLoader};

/// The eBPF object built by `build.rs` from `agent-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wgpulse"));

/// Errors loading or attaching the datapath.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The object could not be loaded (verifier, kernel too old).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// The kernel refused for want of a privilege.
    #[error("loading the eBPF datapath: the kernel refused ({refused}): {explanation}")]
    Denied {
        /// What the kernel answered.
        refused: String,
        /// Which capability is missing and what to do.
        explanation: String,
    },
    /// A program is missing from the object or failed to load or attach.
    #[error("{op} program {program}: {source}")]
    Program {
        /// What was being done.
        op: &'static str,
        /// The program name.
        program: &'static str,
        /// The aya error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Attaching to an interface failed.
    #[error("attaching {direction} classifier to {interface}: {source}")]
    Attach {
        /// The interface.
        interface: String,
        /// ingress or egress.
        direction: &'static str,
        /// The aya error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map is missing from the object.
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("{op} on map {map}: {source}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// The map.
        map: &'static str,
        /// The aya error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// More WireGuard devices than the datapath's per-device arrays hold.
    #[error("too many WireGuard devices (the datapath holds {MAX_DEVICES})")]
    TooManyDevices,
}

/// Options of [`Datapath::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Bound of the endpoint map.
    pub max_peers: u32,
    /// Whether to attach the socket-drop tracepoint (tests of the classifier alone
    /// load a private copy without it).
    pub attach_drop_counter: bool,
    /// Whether to try kernel-mode attribution (kprobes on kernel WireGuard).
    pub kernel_attribution: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_peers: agent_common::DEFAULT_MAX_PEERS,
            attach_drop_counter: true,
            kernel_attribution: true,
        }
    }
}

/// The loaded datapath. Dropping it detaches every program.
pub struct Datapath {
    ebpf: Ebpf,
    ports: Array<MapData, u32>,
    port_devices: HashMap<u16, u32>,
    attachments: Vec<Attachment>,
    drop_counter: Option<String>,
    kernel_mode: Result<String, kprobes::KernelModeOff>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

const CLASSIFIERS: [&str; 6] = [
    programs::INGRESS,
    programs::EGRESS,
    programs::INGRESS_L3,
    programs::EGRESS_L3,
    programs::NOOP,
    programs::INGRESS_NO_PATHS,
];

impl Datapath {
    /// Loads the embedded object and every classifier (unattached); with
    /// `attach_drop_counter`, also attaches the socket-drop tracepoint where the
    /// kernel allows (a failure there is logged and the rest keeps working).
    pub fn load(options: &LoadOptions) -> Result<Self, LoaderError> {
        raise_memlock_limit();
        let kernel_mode_possible = if options.kernel_attribution {
            crate::datapath::kprobes::available()
        } else {
            Err(kprobes::KernelModeOff::TurnedOff)
        };
        // The per-CPU peer map holds one entry per kernel WireGuard peer; where kernel
        // mode cannot run it is created with one entry only.
        let wg_peers_capacity = if kernel_mode_possible.is_ok() {
            options.max_peers
        } else {
            1
        };
        let path_slots = path_slots(options.max_peers);
        let path_slot_mask = path_slots - 1;
        let mut ebpf = EbpfLoader::new()
            .override_global(agent_common::GLOBAL_PATH_SLOT_MASK, &path_slot_mask, true)
            .map_max_entries(agent_common::MAP_ENDPOINTS, options.max_peers)
            .map_max_entries(agent_common::MAP_WG_PEERS, wg_peers_capacity)
            .map_max_entries(agent_common::MAP_PATHS, path_slots)
            .map_max_entries(agent_common::MAP_PATH_DIRTY, path_slots / 64)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                if crate::privileges::is_denied(&e) {
                    LoaderError::Denied {
                        refused: "Operation not permitted".into(),
                        explanation: crate::privileges::explain(),
                    }
                } else {
                    LoaderError::Load(Box::new(e))
                }
            })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::debug!("eBPF logger not initialised: {err}");
                None
            }
        };
        for name in CLASSIFIERS {
            let program: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            program.load().map_err(|e| LoaderError::Program {
                op: "loading",
                program: name,
                source: Box::new(e),
            })?;
        }
        let kernel_mode =
            kernel_mode_possible.and_then(|()| crate::datapath::kprobes::attach(&mut ebpf));
        let ports =
            Array::try_from(take_map(&mut ebpf, MAP_PORTS)?).map_err(|e| LoaderError::Map {
                op: "opening",
                map: MAP_PORTS,
                source: Box::new(e),
            })?;
        let mut datapath = Self {
            ebpf,
            ports,
            port_devices: HashMap::new(),
            attachments: Vec::new(),
            drop_counter: None,
            kernel_mode,
            logger,
        };
        if options.attach_drop_counter {
            match datapath.attach_drop_counter() {
                Ok(mode) => datapath.drop_counter = Some(mode),
                Err(err) => tracing::warn!(
                    "socket drops will not be counted (the rest of the datapath works): {err}"
                ),
            }
        }
        Ok(datapath)
    }

    /// Kernel-mode attribution: `Ok` with what is attached, `Err` with why the
    /// datapath counts with the TC classifiers only.
    pub fn kernel_mode(&self) -> Result<&str, &kprobes::KernelModeOff> {
        self.kernel_mode.as_deref()
    }

    /// Makes the port map equal `ports` (local UDP port -> device id): the datapath
    /// counts exactly the WireGuard listen ports of the devices it knows.
    pub fn set_ports(&mut self, ports: &HashMap<u16, u32>) -> Result<(), LoaderError> {
        let stale: Vec<u16> = self
            .port_devices
            .keys()
            .filter(|p| !ports.contains_key(p))
            .copied()
            .collect();
        for port in stale {
            self.write_port(port, 0)?;
            self.port_devices.remove(&port);
        }
        for (port, device) in ports {
            if self.port_devices.get(port) != Some(device) {
                self.write_port(*port, device + 1)?;
                self.port_devices.insert(*port, *device);
            }
        }
        Ok(())
    }

    fn write_port(&mut self, port: u16, value: u32) -> Result<(), LoaderError> {
        self.ports
            .set(port as u32, value, 0)
            .map_err(|e| LoaderError::Map {
                op: "writing",
                map: MAP_PORTS,
                source: Box::new(e),
            })
    }

    /// Takes a map out of the object (the drain owns the counter maps).
    pub fn take_map(&mut self, name: &'static str) -> Result<Map, LoaderError> {
        take_map(&mut self.ebpf, name)
    }

    /// A loaded classifier, e.g. to run it through `BPF_PROG_TEST_RUN` (tests, bench).
    pub fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, LoaderError> {
        program_mut(&mut self.ebpf, name)
    }

    /// The aya-log reader, for the drain thread to poll and flush.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        for interface in self.attached() {
            self.detach(&interface);
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoaderError> {
    let missing = || LoaderError::Program {
        op: "finding",
        program: name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    };
    ebpf.program_mut(name)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|e| LoaderError::Program {
            op: "finding",
            program: name,
            source: Box::new(e),
        })
}

/// Slots of the path array for `max_peers`: a power of two, two per peer (one session
/// each way; a rekey's old session idles out of its slot), at least 256.
pub fn path_slots(max_peers: u32) -> u32 {
    max_peers
        .saturating_mul(2)
        .max(256)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, LoaderError> {
    ebpf.take_map(name).ok_or(LoaderError::MissingMap(name))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; raise it (best effort).
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
