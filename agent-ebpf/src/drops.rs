//! The socket-drop tracepoint: datagrams the UDP socket dropped before WireGuard read
//! them, attributed to the remote endpoint.

use crate::account::*;
use crate::maps::*;
use crate::parse::*;
use agent_common::{EndpointKey, FAMILY_IPV4, FAMILY_IPV6};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};

/// Counts a UDP datagram the socket layer dropped (receive buffer full) on a
/// WireGuard port, per endpoint where the skb is available, always per device.
#[btf_tracepoint(function = "udp_fail_queue_rcv_skb")]
pub fn wgpulse_udp_drop(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: reads go through bpf_probe_read_kernel at offsets from the kernel's BTF.
    let _ = unsafe { count_drop(&ctx) };
    0
}

/// `valid` value meaning the tracepoint passes `(rc, sk)` only.
pub(crate) const OFFSETS_SOCK_ONLY: u32 = 2;

/// # Safety
/// `ctx` must be the `udp_fail_queue_rcv_skb` tracepoint's context: argument 1 a
/// `struct sock *`, argument 2 (when the offsets say so) a `struct sk_buff *`. Every
/// read goes through `bpf_probe_read_kernel`, which faults safely.
// SAFETY: a probe read at a BTF offset (faults are caught by the helper).
pub(crate) unsafe fn count_drop(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let offsets = match OFFSETS.get(0) {
        Some(o) if o.valid != 0 => *o,
        _ => return Ok(()),
    };
    let sk: *const u8 = ctx.arg(1);
    let local_port: u16 =
        // SAFETY: sk is the tracepoint's socket; the read is a probe read at an
        // offset from the kernel's BTF.
        unsafe { bpf_probe_read_kernel(sk.add(offsets.sk_num as usize) as *const u16)? };
    let device = match PORTS.get(local_port as u32) {
        Some(&d) if d != 0 => d - 1,
        _ => return Ok(()),
    };
    let mut attributed = false;
    if offsets.valid != OFFSETS_SOCK_ONLY {
        let skb: *const u8 = ctx.arg(2);
        // SAFETY (this block and the next reads): probe reads of the skb's fields at
        // offsets from the kernel's BTF; a bad pointer makes the helper fail, not fault.
        let head: *const u8 = unsafe {
            bpf_probe_read_kernel(skb.add(offsets.skb_head as usize) as *const *const u8)?
        };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let network: u16 = unsafe {
            bpf_probe_read_kernel(skb.add(offsets.skb_network_header as usize) as *const u16)?
        };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let transport: u16 = unsafe {
            bpf_probe_read_kernel(skb.add(offsets.skb_transport_header as usize) as *const u16)?
        };
        // SAFETY: pointer arithmetic only; the result is only probe-read.
        let ip = unsafe { head.add(network as usize) };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let udp: [u8; UDP_HLEN] = unsafe {
            bpf_probe_read_kernel(head.add(transport as usize) as *const [u8; UDP_HLEN])?
        };
        // SAFETY: a probe read at a BTF offset (faults are caught by the helper).
        let version: u8 = unsafe { bpf_probe_read_kernel(ip)? } >> 4;
        let mut addr = [0u8; 16];
        let family = if version == 4 {
            // SAFETY: a probe read of the IPv4 source address.
            let a: [u8; 4] = unsafe { bpf_probe_read_kernel(ip.add(12) as *const [u8; 4])? };
            addr[..4].copy_from_slice(&a);
            FAMILY_IPV4
        } else {
            // SAFETY: a probe read of the IPv6 source address.
            addr = unsafe { bpf_probe_read_kernel(ip.add(8) as *const [u8; 16])? };
            FAMILY_IPV6
        };
        let key = EndpointKey {
            device,
            family,
            port: u16::from_be_bytes([udp[0], udp[1]]),
            addr,
        };
        let bytes = (u16::from_be_bytes([udp[4], udp[5]]) as u64).saturating_sub(UDP_HLEN as u64);
        if let Some(entry) = ENDPOINTS.get_ptr_mut(&key) {
            // SAFETY: this CPU's slot of a per-CPU hash value.
            let entry = unsafe { &mut *entry };
            entry.stats.socket_drops += 1;
            entry.stats.socket_drop_bytes += bytes;
            announce(&key, entry);
            attributed = true;
        }
    }
    if !attributed {
        bump_global(|g| g.unattributed_drops += 1);
    }
    Ok(())
}
