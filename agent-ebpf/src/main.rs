//! The wgpulse datapath: TC classifiers that count every datagram on a WireGuard UDP
//! port per remote endpoint, follow WireGuard session indices to tell completed
//! handshakes from attempts (and time their round trips), follow each session's
//! transport counters (loss and reordering), and a BTF tracepoint that counts datagrams the UDP socket
//! dropped before WireGuard could read them; and, where kernel WireGuard runs, a kprobe
//! that reads each peer's own counters (kernel-mode attribution).
//!
//! The classifiers observe only: whatever happens they return `TC_ACT_PIPE`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod account;
#[cfg(target_arch = "bpf")]
mod classifiers;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod kernel_peers;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod paths;
#[cfg(target_arch = "bpf")]
mod sessions;

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs only exist for the BPF target; agent/build.rs builds them with aya-build.
}
