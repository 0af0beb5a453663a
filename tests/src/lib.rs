//! End-to-end test harness for wgpulse: network namespaces joined by veth pairs,
//! real WireGuard (wireguard-go) in them, tshark captures as the wire oracle and
//! `wg show` as WireGuard's own. Every guard removes what it created on drop, also
//! when the test panics; names are unique per process so suites can run side by side.

pub mod capture;
pub mod netns;
pub mod process;
pub mod wireguard;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique on this host for this process: `<prefix><pid % 10000><n>`,
/// at most 15 characters (IFNAMSIZ - 1).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// A small number unique per process and call, for address blocks (1..=250).
pub fn unique_octet() -> u8 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ((std::process::id().wrapping_mul(7) + n * 13) % 250 + 1) as u8
}

/// Panics with a clear message unless running as root with every tool the
/// end-to-end tests use.
pub fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests must run as root"
    );
    for tool in [
        "ip",
        "wg",
        "wireguard-go",
        "tshark",
        "ping",
        "iperf3",
        "python3",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "{tool} is not installed: run `cargo xtask setup`");
    }
}
