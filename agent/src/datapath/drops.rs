//! The socket-drop counter: a `tp_btf` program on `udp_fail_queue_rcv_skb`, with the
//! kernel's struct offsets from its BTF, attached where the kernel allows.

use aya::programs::BtfTracePoint;

use super::*;

/// Why the socket-drop counter is not attached.
#[derive(Debug, thiserror::Error)]
pub enum DropCounterError {
    /// The kernel's struct offsets could not be read from its BTF.
    #[error("{0}")]
    Offsets(#[from] crate::datapath::btf::OffsetsError),
    /// The kernel's BTF could not be loaded for the tracepoint.
    #[error("{0}")]
    Btf(#[from] aya::BtfError),
    /// The offsets map is missing from the object.
    #[error("map {MAP_OFFSETS} missing")]
    MissingMap,
    /// The program is missing from the object.
    #[error("drop program missing")]
    MissingProgram,
    /// Writing the offsets map failed.
    #[error("{0}")]
    Map(#[from] aya::maps::MapError),
    /// The program did not load or attach.
    #[error("{op} tp_btf/{}: {source}", programs::UDP_DROPS_TRACEPOINT)]
    Program {
        /// `loading` or `attaching`.
        op: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
}

impl Datapath {
    pub(super) fn attach_drop_counter(&mut self) -> Result<String, DropCounterError> {
        let offsets = crate::datapath::btf::Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))
            .and_then(|btf| crate::datapath::btf::kernel_offsets(&btf))?;
        let mut map: Array<&mut MapData, KernelOffsets> = Array::try_from(
            self.ebpf
                .map_mut(MAP_OFFSETS)
                .ok_or(DropCounterError::MissingMap)?,
        )?;
        map.set(0, offsets, 0)?;
        let btf = Btf::from_sys_fs()?;
        let program: &mut BtfTracePoint = self
            .ebpf
            .program_mut(programs::UDP_DROPS)
            .ok_or(DropCounterError::MissingProgram)?
            .try_into()
            .map_err(|source| DropCounterError::Program {
                op: "loading",
                source,
            })?;
        program
            .load(programs::UDP_DROPS_TRACEPOINT, &btf)
            .map_err(|source| DropCounterError::Program {
                op: "loading",
                source,
            })?;
        program
            .attach()
            .map_err(|source| DropCounterError::Program {
                op: "attaching",
                source,
            })?;
        Ok(if offsets.valid == crate::datapath::btf::OFFSETS_WITH_SKB {
            "per endpoint".into()
        } else {
            "per device (kernel tracepoint has no skb)".into()
        })
    }

    /// How socket drops are counted, or `None` when the tracepoint is not attached.
    pub fn drop_counter_mode(&self) -> Option<&str> {
        self.drop_counter.as_deref()
    }
}
