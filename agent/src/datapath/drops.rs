//! The socket-drop counter: a `tp_btf` program on `udp_fail_queue_rcv_skb`, with the
//! kernel's struct offsets from its BTF, attached where the kernel allows.

use aya::programs::BtfTracePoint;

use super::*;

impl Datapath {
    pub(super) fn attach_drop_counter(&mut self) -> Result<String, String> {
        let offsets = crate::datapath::btf::Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))
            .and_then(|btf| crate::datapath::btf::kernel_offsets(&btf))
            .map_err(|e| e.to_string())?;
        let mut map: Array<&mut MapData, KernelOffsets> = Array::try_from(
            self.ebpf
                .map_mut(MAP_OFFSETS)
                .ok_or_else(|| format!("map {MAP_OFFSETS} missing"))?,
        )
        .map_err(|e| e.to_string())?;
        map.set(0, offsets, 0).map_err(|e| e.to_string())?;
        let btf = Btf::from_sys_fs().map_err(|e| e.to_string())?;
        let program: &mut BtfTracePoint = self
            .ebpf
            .program_mut(programs::UDP_DROPS)
            .ok_or("drop program missing")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        program
            .load(programs::UDP_DROPS_TRACEPOINT, &btf)
            .map_err(|e| format!("loading tp_btf/{}: {e}", programs::UDP_DROPS_TRACEPOINT))?;
        program
            .attach()
            .map_err(|e| format!("attaching tp_btf/{}: {e}", programs::UDP_DROPS_TRACEPOINT))?;
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
