//! End-to-end test harness for wgpulse: network namespaces joined by veth pairs,
//! real WireGuard (wireguard-go) in them, tshark captures as the wire oracle and
//! `wg show` as WireGuard's own. Every guard removes what it created on drop, also
//! when the test panics; names are unique per process so suites can run side by side.
//!
//! ```no_run
//! use wgpulse_tests::capture::Capture;
//! use wgpulse_tests::wireguard::{Underlay, WgPair};
//!
//! wgpulse_tests::require_root_and_tools();
//! let pair = WgPair::new(Underlay::V4);
//! let capture = Capture::with_filter(&pair.b, &pair.link.b.name, "udp");
//! wgpulse_tests::traffic::ping(&pair.a, pair.tunnel_addr_b(false), 3);
//! let packets = capture.stop();
//! assert!(packets.iter().any(|p| p.payload == 148 && p.first_byte == Some(1)));
//! assert!(pair.wg_a.peer(&pair.wg_b.keys.public).latest_handshake > 0);
//! ```

pub mod agent;
pub mod capture;
pub mod kernel_wg;
pub mod names;
pub mod nats;
pub mod netns;
pub mod process;
pub mod receiver;
pub mod relay;
pub mod tmpfs;
pub mod traffic;
pub mod wgshow;
pub mod wireguard;

pub use names::{unique_name, unique_octet};

/// The tools the harness and the end-to-end tests run.
pub const TOOLS: &[&str] = &[
    "ip",
    "wg",
    "wireguard-go",
    "tshark",
    "ping",
    "iperf3",
    "ss",
    "timeout",
    "python3",
];

/// Panics with a clear message unless running as root with every tool in [`TOOLS`]
/// on `PATH`, naming the first one missing.
pub fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests must run as root (euid is {euid})"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in TOOLS {
        let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
        assert!(
            found,
            "`{tool}` is not installed (or not on PATH): the end-to-end tests need it; run `cargo xtask setup`"
        );
    }
}
