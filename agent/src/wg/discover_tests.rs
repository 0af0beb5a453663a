//! Tests of [`discover`](super::discover)'s combining rules with fake UAPI daemons.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixListener;
use std::path::Path;

use super::*;

/// A minimal valid `get=1` reply with one peer.
const REPLY: &[u8] =
    b"private_key=0000000000000000000000000000000000000000000000000000000000000001\n\
listen_port=4242\n\
public_key=0000000000000000000000000000000000000000000000000000000000000002\n\
allowed_ip=10.0.0.2/32\n\
errno=0\n\n";

/// Answers every connection on `<dir>/<name>.sock` with `REPLY`.
fn serve(dir: &Path, name: &str) {
    let listener = UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 7];
            if stream.read_exact(&mut request).is_ok() {
                let _ = stream.write_all(REPLY);
            }
        }
    });
}

/// A socket file nobody listens on any more (connection refused).
fn dead(dir: &Path, name: &str) {
    drop(UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap());
}

fn kernel(name: &str) -> Device {
    Device {
        name: name.into(),
        kind: DeviceKind::Kernel,
        public_key: None,
        listen_port: 51820,
        fwmark: 0,
        peers: Vec::new(),
    }
}

fn names(devices: &[Device]) -> Vec<(&str, DeviceKind)> {
    devices.iter().map(|d| (d.name.as_str(), d.kind)).collect()
}

#[test]
fn combines_sorts_filters_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path(), "wgb");
    serve(dir.path(), "wgd");
    serve(dir.path(), "wgelsewhere");
    dead(dir.path(), "wgbroken");
    serve(dir.path(), "wga");
    let here = ["wga", "wgb", "wgd", "wgbroken", "wgk"];
    let options = DiscoveryOptions {
        socket_dir: dir.path().into(),
        only: Vec::new(),
    };
    let devices = combine(&options, vec![kernel("wgk"), kernel("wga")], |n| {
        here.contains(&n)
    });
    assert_eq!(
        names(&devices),
        [
            ("wga", DeviceKind::Kernel),
            ("wgb", DeviceKind::Userspace),
            ("wgd", DeviceKind::Userspace),
            ("wgk", DeviceKind::Kernel),
        ],
        "sorted; other namespace and broken device skipped, the rest kept"
    );
    let wgb = &devices[1];
    assert_eq!(wgb.listen_port, 4242);
    assert_eq!(wgb.peers.len(), 1);
    assert!(wgb.public_key.is_some());

    let only = DiscoveryOptions {
        only: vec!["wgd".into(), "wgk".into(), "wgelsewhere".into()],
        ..options
    };
    let devices = combine(&only, vec![kernel("wgk"), kernel("wga")], |n| {
        here.contains(&n)
    });
    assert_eq!(
        names(&devices),
        [("wgd", DeviceKind::Userspace), ("wgk", DeviceKind::Kernel)]
    );
}

#[test]
fn missing_socket_dir_means_kernel_devices_only() {
    let options = DiscoveryOptions {
        socket_dir: "/nonexistent/wgpulse".into(),
        only: Vec::new(),
    };
    let devices = combine(&options, vec![kernel("wg0")], |_| true);
    assert_eq!(names(&devices), [("wg0", DeviceKind::Kernel)]);
}

/// Whole discovery in this namespace on a kernel without WireGuard: no error.
#[test]
fn discover_runs_here() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiscoveryOptions {
        socket_dir: dir.path().into(),
        only: Vec::new(),
    };
    let devices = discover(&options).unwrap();
    if !Path::new("/sys/module/wireguard").exists() {
        assert!(devices.is_empty());
    }
}

/// Against live devices: `WGPULSE_LIVE_DISCOVER=<dev>[,<dev>...]` lists the devices
/// expected in the current namespace (empty: none), e.g. run under `ip netns exec`.
#[test]
#[ignore = "needs WGPULSE_LIVE_DISCOVER and running devices"]
fn live_discover() {
    let expected = std::env::var("WGPULSE_LIVE_DISCOVER").expect("WGPULSE_LIVE_DISCOVER");
    let devices = discover(&DiscoveryOptions::default()).unwrap();
    eprintln!("{devices:#?}");
    let found: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    let expected: Vec<&str> = expected.split(',').filter(|n| !n.is_empty()).collect();
    assert_eq!(found, expected);
}

#[test]
fn a_device_that_does_not_answer_is_unreadable_not_gone() {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path(), "wga");
    dead(dir.path(), "wgstopped");
    let options = DiscoveryOptions {
        socket_dir: dir.path().into(),
        only: Vec::new(),
    };
    let found = combine_all(&options, Vec::new(), |_| true);
    assert_eq!(names(&found.devices), [("wga", DeviceKind::Userspace)]);
    assert_eq!(found.unreadable, ["wgstopped"]);
}
