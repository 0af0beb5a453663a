//! Tests of the UAPI reader: a recorded wireguard-go reply, malformed replies, secret
//! hygiene, and the socket I/O against fake daemons.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixListener;

use super::*;

/// A real `get=1` reply of wireguard-go v0.0.20220316 (Debian), device configured with
/// `wg set` (listen-port 51999, fwmark 0x42, three peers), peers in the order it listed
/// them; private and preshared key replaced by throwaway keys made for the fixture.
const RECORDED: &str = include_str!("testdata/wireguard-go-get.txt");
/// `wg pubkey` of the throwaway private key in the recording.
const RECORDED_PUBLIC_KEY: &str = include_str!("testdata/wireguard-go-get.pubkey");
/// The throwaway preshared key of the third peer (hex).
const RECORDED_PSK: &str = "5ee140162e40c5934d13e9c1d06787ab02b4af7ab599de5caf624c3973910258";

fn key(base64: &str) -> PublicKey {
    base64.parse().unwrap()
}

#[test]
fn recorded_reply_parses_every_field() {
    let device = parse_get_response("wgrec0", RECORDED).unwrap();
    assert_eq!(device.name, "wgrec0");
    assert_eq!(device.kind, DeviceKind::Userspace);
    assert_eq!(
        device.public_key,
        Some(key(RECORDED_PUBLIC_KEY.trim())),
        "public key derived from the private key"
    );
    assert_eq!(device.listen_port, 51999);
    assert_eq!(device.fwmark, 0x42);
    let expected = [
        Peer {
            public_key: key("pWqCbwIcPSJGiE2L5d6VcAwrorUmUrEscysq86rF1Es="),
            endpoint: Some("[2001:db8::10]:51821".parse().unwrap()),
            allowed_ips: vec!["10.77.0.3/32".into(), "fd77::3/128".into()],
            ..Peer::new(key("pWqCbwIcPSJGiE2L5d6VcAwrorUmUrEscysq86rF1Es="))
        },
        Peer {
            has_preshared_key: true,
            allowed_ips: vec!["10.77.0.4/32".into()],
            ..Peer::new(key("nBzNdO1A4YbPoJz8ZcpwxopJRzb11g5WPADXLB0E1no="))
        },
        Peer {
            endpoint: Some("192.0.2.10:51820".parse().unwrap()),
            allowed_ips: vec!["10.77.0.2/32".into(), "10.78.0.0/16".into()],
            persistent_keepalive: 25,
            ..Peer::new(key("geI/4c7B9yFnHHruWj5L+d4dJ7Mki5thCq7kLkBVqyw="))
        },
    ];
    assert_eq!(device.peers, expected);
    for peer in &device.peers {
        assert_eq!(peer.last_handshake, None, "0/0 means never");
        assert_eq!((peer.rx_bytes, peer.tx_bytes), (0, 0));
    }
}

#[test]
fn handshake_time_and_counters_are_read() {
    let reply = "listen_port=1\n\
        public_key=0000000000000000000000000000000000000000000000000000000000000001\n\
        last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
        rx_bytes=10\ntx_bytes=20\nunknown_future_key=x\nerrno=0\n\n";
    let device = parse_get_response("d", reply).unwrap();
    let peer = &device.peers[0];
    assert_eq!(
        peer.last_handshake,
        Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
    );
    assert_eq!((peer.rx_bytes, peer.tx_bytes), (10, 20));
    assert_eq!(device.public_key, None, "no private key, no public key");
}

#[test]
fn malformed_replies_give_clear_errors() {
    const PEER: &str =
        "public_key=0000000000000000000000000000000000000000000000000000000000000001\n";
    let truncated = &RECORDED[..RECORDED.len() / 2];
    let cases: Vec<(String, &str)> = vec![
        ("listen_port=1\n\n".into(), "reply ended without errno"),
        (truncated.into(), "reply ended without errno"),
        (String::new(), "reply ended without errno"),
        ("listen_port=1\nerrno=2\n\n".into(), "errno=2"),
        ("public_key=zz\nerrno=0\n\n".into(), "line 1: public_key"),
        (
            "private_key=12\nerrno=0\n\n".into(),
            "line 1: private_key is not 32 hex",
        ),
        (
            format!("{PEER}preshared_key=xyz\nerrno=0\n\n"),
            "line 2: preshared_key is not 32 hex",
        ),
        (
            format!("{PEER}endpoint=nowhere\nerrno=0\n\n"),
            "line 2: endpoint \"nowhere\"",
        ),
        (
            format!("{PEER}endpoint=1.2.3.4\nerrno=0\n\n"),
            "line 2: endpoint",
        ),
        (
            format!("{PEER}allowed_ip=10.0.0.1\nerrno=0\n\n"),
            "line 2: allowed_ip",
        ),
        (
            format!("{PEER}allowed_ip=10.0.0.1/33\nerrno=0\n\n"),
            "prefix too long",
        ),
        (
            format!("{PEER}rx_bytes=-1\nerrno=0\n\n"),
            "line 2: rx_bytes",
        ),
        (
            format!("{PEER}last_handshake_time_nsec=1000000000\nerrno=0\n\n"),
            "below one second",
        ),
        (
            format!("{PEER}last_handshake_time_sec=18446744073709551615\nerrno=0\n\n"),
            "out of range",
        ),
        (
            "listen_port=many\nerrno=0\n\n".into(),
            "listen_port=\"many\" is not a number",
        ),
        (
            "listen_port=70000\nerrno=0\n\n".into(),
            "listen_port=\"70000\"",
        ),
        ("errno=x\n\n".into(), "line 1: errno"),
        ("garbage\n\n".into(), "line 1: expected key=value"),
    ];
    for (reply, expected) in cases {
        let err = parse_get_response("wgx", &reply).unwrap_err().to_string();
        assert!(err.contains(expected), "{reply:?}: {err}");
        assert!(err.starts_with("device wgx: "), "{err}");
    }
}

/// The secrets in every form someone might print them: hex, base64.
fn secret_forms(hex_secret: &str) -> [String; 2] {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_secret, &mut bytes).unwrap();
    [hex_secret.to_owned(), PublicKey(bytes).to_base64()]
}

fn recorded_secrets() -> Vec<String> {
    let private = RECORDED
        .lines()
        .find_map(|l| l.strip_prefix("private_key="))
        .unwrap();
    assert!(RECORDED.contains(RECORDED_PSK));
    let mut forms = secret_forms(private).to_vec();
    forms.extend(secret_forms(RECORDED_PSK));
    forms
}

#[test]
fn nothing_returned_carries_secret_material() {
    let device = parse_get_response("wgrec0", RECORDED).unwrap();
    let mut shown = format!("{device:?} {device:#?}");
    for peer in &device.peers {
        shown.push_str(&format!("{} {:?}", peer.public_key, peer));
    }
    // Errors on secret lines name the key, never the value.
    let broken_private = format!("private_key=zz{}", &RECORDED["private_key=zz".len()..]);
    let broken_psk = RECORDED.replace(RECORDED_PSK, &RECORDED_PSK.replace('5', "g"));
    for broken in [broken_private, broken_psk] {
        let err = parse_get_response("wgrec0", &broken).unwrap_err();
        shown.push_str(&format!("{err} {err:?}"));
    }
    for secret in recorded_secrets() {
        assert!(!shown.contains(&secret), "secret leaked into {shown}");
    }
    let secret_prefix = &RECORDED_PSK[..16];
    assert!(!shown.contains(secret_prefix), "part of a secret leaked");
}

/// Serves one connection on `<dir>/<name>.sock` with `reply` after reading the request.
fn fake_daemon(
    dir: &Path,
    name: &str,
    reply: &'static [u8],
    close: bool,
) -> std::thread::JoinHandle<Vec<u8>> {
    let listener = UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 7];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(reply).unwrap();
        if !close {
            std::thread::sleep(Duration::from_secs(3));
        }
        request.to_vec()
    })
}

#[test]
fn reads_a_device_over_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    // Stays open after the blank line, like wireguard-go: the blank line ends the read.
    let daemon = fake_daemon(dir.path(), "wgsock0", RECORDED.as_bytes(), false);
    let device = read_device(dir.path(), "wgsock0").unwrap();
    assert_eq!(device.peers.len(), 3);
    assert_eq!(device.listen_port, 51999);
    assert_eq!(list_sockets(dir.path()), ["wgsock0"]);
    drop(daemon);
}

#[test]
fn request_is_get() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fake_daemon(dir.path(), "wgreq0", b"errno=0\n\n", true);
    read_device(dir.path(), "wgreq0").unwrap();
    assert_eq!(daemon.join().unwrap(), b"get=1\n\n");
}

#[test]
fn hung_daemon_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let _daemon = fake_daemon(dir.path(), "wghung0", b"listen_port=1\n", false);
    let started = Instant::now();
    let err = read_device_within(dir.path(), "wghung0", Duration::from_millis(300)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains("device wghung0") && text.contains("wghung0.sock"),
        "{text}"
    );
    assert!(text.contains("time limit"), "{text}");
}

#[test]
fn daemon_closing_early_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let _daemon = fake_daemon(dir.path(), "wgshort0", b"listen_port=1\npublic_key=", true);
    let err = read_device(dir.path(), "wgshort0").unwrap_err().to_string();
    assert!(err.contains("wgshort0"), "{err}");
}

#[test]
fn missing_socket_is_an_io_error_naming_device_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_device(dir.path(), "nope").unwrap_err().to_string();
    assert!(
        err.contains("device nope") && err.contains("nope.sock"),
        "{err}"
    );
    assert!(list_sockets(dir.path()).is_empty());
    assert!(list_sockets(&dir.path().join("missing")).is_empty());
}

#[test]
fn a_device_with_more_than_16_mib_of_reply_is_read_in_full() {
    // 60 000 peers (wireguard-go holds up to 65 536): about 18 MB of reply, parsed
    // as it arrives; lines straddle the read chunks.
    let mut reply = String::from("private_key=0000000000000000000000000000000000000000000000000000000000000000\nlisten_port=51820\n");
    for i in 0..60_000u32 {
        reply.push_str(&format!(
            "public_key={i:064x}\npreshared_key={:064x}\nendpoint=10.0.{}.{}:{}\nallowed_ip=10.100.{}.{}/32\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes={i}\nrx_bytes=0\npersistent_keepalive_interval=0\nprotocol_version=1\n",
            i + 1,
            i / 256 % 256,
            i % 256,
            20_000 + i % 40_000,
            i / 256 % 256,
            i % 256,
        ));
    }
    reply.push_str("errno=0\n\n");
    assert!(reply.len() > 16 << 20, "{} bytes", reply.len());
    let dir = tempfile::tempdir().unwrap();
    let daemon = fake_daemon(dir.path(), "wgbig0", reply.leak().as_bytes(), false);
    let device = read_device_within(dir.path(), "wgbig0", Duration::from_secs(60)).unwrap();
    assert_eq!(device.peers.len(), 60_000);
    let last = &device.peers[59_999];
    assert_eq!(last.tx_bytes, 59_999);
    assert!(last.has_preshared_key);
    assert_eq!(last.allowed_ips, ["10.100.234.95/32"]);
    drop(daemon);
}

#[test]
fn an_endless_line_is_refused() {
    let long: &'static str =
        format!("listen_port=1\nfwmark={}\nerrno=0\n\n", "1".repeat(5000)).leak();
    let dir = tempfile::tempdir().unwrap();
    let _daemon = fake_daemon(dir.path(), "wglong0", long.as_bytes(), true);
    let err = read_device(dir.path(), "wglong0").unwrap_err().to_string();
    assert!(
        err.contains("longer than 4 KiB") && err.contains("wglong0"),
        "{err}"
    );
}

#[test]
fn appending_keeps_the_bytes() {
    let mut buffer = Zeroizing::new(Vec::with_capacity(2));
    for _ in 0..100 {
        append_zeroizing(&mut buffer, b"abc");
    }
    assert_eq!(buffer.len(), 300);
    assert!(buffer.chunks(3).all(|c| c == b"abc"));
}

/// Against a live daemon: `WGPULSE_LIVE_UAPI=<dev> cargo test ... -- --ignored live_uapi`
/// (run where `/var/run/wireguard/<dev>.sock` exists).
#[test]
#[ignore = "needs a running wireguard-go device named in WGPULSE_LIVE_UAPI"]
fn live_uapi_device() {
    let name = std::env::var("WGPULSE_LIVE_UAPI").expect("WGPULSE_LIVE_UAPI");
    let device = read_device(Path::new("/var/run/wireguard"), &name).unwrap();
    eprintln!("{device:#?}");
    assert!(device.public_key.is_some());
}
