//! Userspace WireGuard (wireguard-go, boringtun) over the UAPI socket
//! `<socket_dir>/<dev>.sock`: `get=1`, then `key=value` lines up to a blank line.
//!
//! The reply carries the device's private key and the peers' preshared keys: the
//! private key is used only to derive the public key and is wiped at once; preshared
//! keys are reduced to "configured or not". Neither is kept, logged or returned.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use zeroize::Zeroize as _;

use super::{Device, DeviceKind, Peer, PublicKey};

/// How long one device may take to answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors talking to or parsing a UAPI socket.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// Connecting, writing or reading failed (dead daemon, timeout).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with a non-zero errno.
    #[error("device {device}: UAPI get failed with errno={errno}")]
    Errno {
        /// The device.
        device: String,
        /// The errno it reported.
        errno: i64,
    },
    /// A line could not be parsed.
    #[error("device {device}: line {line}: {message}")]
    Parse {
        /// The device.
        device: String,
        /// 1-based line of the reply.
        line: usize,
        /// What is wrong (never the value of a secret key).
        message: String,
    },
    /// The reply ended without `errno=`.
    #[error("device {device}: reply ended without errno (truncated)")]
    Truncated {
        /// The device.
        device: String,
    },
}

/// Names of the devices that have a socket in `socket_dir` (`<name>.sock`).
pub fn list_sockets(socket_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(socket_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sock"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// Reads one device over its socket.
pub fn read_device(socket_dir: &Path, name: &str) -> Result<Device, UapiError> {
    let path = socket_dir.join(format!("{name}.sock"));
    let io = |op| {
        let path = path.clone();
        move |source| UapiError::Io { op, path, source }
    };
    let mut stream = UnixStream::connect(&path).map_err(io("connecting to"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("configuring"))?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(io("configuring"))?;
    stream.write_all(b"get=1\n\n").map_err(io("writing to"))?;
    let mut reply = String::new();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).map_err(io("reading from"))?;
        let end = read == 0 || line == "\n";
        reply.push_str(&line);
        line.zeroize();
        if end {
            break;
        }
    }
    let result = parse_get_response(name, &reply);
    reply.zeroize();
    result
}

/// Parses a `get=1` reply into a device.
pub fn parse_get_response(name: &str, reply: &str) -> Result<Device, UapiError> {
    let parse_error = |line: usize, message: String| UapiError::Parse {
        device: name.to_owned(),
        line,
        message,
    };
    let mut device = Device {
        name: name.to_owned(),
        kind: DeviceKind::Userspace,
        public_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
    };
    let mut errno = None;
    let mut peer: Option<Peer> = None;
    let mut handshake_sec = 0u64;
    let mut handshake_nsec = 0u32;
    for (index, raw) in reply.lines().enumerate() {
        let line = index + 1;
        if raw.is_empty() {
            break;
        }
        let (key, value) = raw
            .split_once('=')
            .ok_or_else(|| parse_error(line, "expected key=value".into()))?;
        let number = |what: &str| -> Result<u64, UapiError> {
            value
                .parse::<u64>()
                .map_err(|_| parse_error(line, format!("{what} is not a number")))
        };
        match key {
            "private_key" => {
                let mut secret = [0u8; 32];
                if hex::decode_to_slice(value, &mut secret).is_err() {
                    return Err(parse_error(line, "private_key is not 32 hex bytes".into()));
                }
                if secret != [0u8; 32] {
                    let static_secret = x25519_dalek::StaticSecret::from(secret);
                    device.public_key = Some(PublicKey(
                        *x25519_dalek::PublicKey::from(&static_secret).as_bytes(),
                    ));
                }
                secret.zeroize();
            }
            "listen_port" => device.listen_port = number("listen_port")? as u16,
            "fwmark" => device.fwmark = number("fwmark")? as u32,
            "public_key" => {
                if let Some(done) = peer.take() {
                    device
                        .peers
                        .push(finish(done, handshake_sec, handshake_nsec));
                }
                handshake_sec = 0;
                handshake_nsec = 0;
                let public_key = PublicKey::from_hex(value)
                    .map_err(|e| parse_error(line, format!("public_key: {e}")))?;
                peer = Some(Peer::new(public_key));
            }
            "errno" => {
                errno = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| parse_error(line, "errno is not a number".into()))?,
                );
            }
            _ => {
                let Some(current) = peer.as_mut() else {
                    // Device-level keys we do not use (e.g. protocol extensions).
                    continue;
                };
                match key {
                    "preshared_key" => {
                        current.has_preshared_key = value.bytes().any(|b| b != b'0');
                    }
                    "endpoint" => {
                        current.endpoint = Some(value.parse::<SocketAddr>().map_err(|_| {
                            parse_error(line, format!("endpoint {value:?} is not ip:port"))
                        })?);
                    }
                    "allowed_ip" => current.allowed_ips.push(value.to_owned()),
                    "persistent_keepalive_interval" => {
                        current.persistent_keepalive =
                            number("persistent_keepalive_interval")? as u16
                    }
                    "last_handshake_time_sec" => handshake_sec = number("last_handshake_time_sec")?,
                    "last_handshake_time_nsec" => {
                        handshake_nsec = number("last_handshake_time_nsec")? as u32
                    }
                    "rx_bytes" => current.rx_bytes = number("rx_bytes")?,
                    "tx_bytes" => current.tx_bytes = number("tx_bytes")?,
                    _ => {}
                }
            }
        }
    }
    if let Some(done) = peer.take() {
        device
            .peers
            .push(finish(done, handshake_sec, handshake_nsec));
    }
    match errno {
        None => Err(UapiError::Truncated {
            device: name.to_owned(),
        }),
        Some(0) => Ok(device),
        Some(errno) => Err(UapiError::Errno {
            device: name.to_owned(),
            errno,
        }),
    }
}

fn finish(mut peer: Peer, sec: u64, nsec: u32) -> Peer {
    if sec != 0 || nsec != 0 {
        peer.last_handshake = Some(SystemTime::UNIX_EPOCH + Duration::new(sec, nsec));
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply recorded from wireguard-go 0.0.20220316 (`get=1` on a device with three
    /// peers), with the private and preshared keys replaced by throwaway test keys.
    const RECORDED: &str = include_str!("testdata/wireguard-go-get.txt");
    /// `wg pubkey` of the throwaway private key in the recording.
    const RECORDED_PUBLIC_KEY: &str = include_str!("testdata/wireguard-go-get.pubkey");

    #[test]
    fn recorded_reply_parses_every_field() {
        let device = parse_get_response("wgrec0", RECORDED).unwrap();
        assert_eq!(device.kind, DeviceKind::Userspace);
        assert_eq!(
            device.public_key.unwrap().to_base64(),
            RECORDED_PUBLIC_KEY.trim()
        );
        assert_eq!(device.listen_port, 51999);
        assert_eq!(device.fwmark, 0x42);
        assert_eq!(device.peers.len(), 3);
        let v4 = &device.peers[0];
        assert_eq!(v4.endpoint, Some("192.0.2.10:51820".parse().unwrap()));
        assert_eq!(v4.allowed_ips, ["10.77.0.2/32", "10.78.0.0/16"]);
        assert_eq!(v4.persistent_keepalive, 25);
        assert!(!v4.has_preshared_key);
        let v6 = &device.peers[1];
        assert_eq!(v6.endpoint, Some("[2001:db8::10]:51821".parse().unwrap()));
        assert_eq!(v6.allowed_ips, ["10.77.0.3/32", "fd77::3/128"]);
        let psk = &device.peers[2];
        assert_eq!(psk.endpoint, None);
        assert!(psk.has_preshared_key);
        assert_eq!(psk.last_handshake, None);
        assert_eq!((psk.rx_bytes, psk.tx_bytes), (0, 0));
    }

    #[test]
    fn nothing_returned_carries_secret_material() {
        let device = parse_get_response("wgrec0", RECORDED).unwrap();
        let shown = format!("{device:?}");
        for line in RECORDED.lines() {
            if let Some(secret) = line
                .strip_prefix("private_key=")
                .or_else(|| line.strip_prefix("preshared_key="))
            {
                assert!(!shown.contains(secret), "hex secret leaked");
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(secret, &mut bytes).unwrap();
                assert!(
                    !shown.contains(&PublicKey(bytes).to_base64()),
                    "base64 secret leaked"
                );
            }
        }
    }

    #[test]
    fn handshake_time_and_counters_are_read() {
        let reply = "listen_port=1\npublic_key=0000000000000000000000000000000000000000000000000000000000000001\n\
            last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\nerrno=0\n\n";
        let device = parse_get_response("d", reply).unwrap();
        let peer = &device.peers[0];
        assert_eq!(
            peer.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!((peer.rx_bytes, peer.tx_bytes), (10, 20));
        assert_eq!(device.public_key, None);
    }

    #[test]
    fn malformed_replies_give_clear_errors() {
        let cases = [
            ("listen_port=1\n\n", "without errno"),
            ("listen_port=1\nerrno=2\n\n", "errno=2"),
            ("public_key=zz\nerrno=0\n\n", "line 1: public_key"),
            (
                "public_key=0000000000000000000000000000000000000000000000000000000000000001\nendpoint=nowhere\nerrno=0\n\n",
                "line 2: endpoint",
            ),
            ("listen_port=many\nerrno=0\n\n", "listen_port is not a number"),
            ("garbage\n\n", "line 1: expected key=value"),
        ];
        for (reply, expected) in cases {
            let err = parse_get_response("d", reply).unwrap_err().to_string();
            assert!(err.contains(expected), "{reply:?}: {err}");
        }
    }

    #[test]
    fn missing_socket_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_device(dir.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("nope.sock"), "{err}");
        assert!(list_sockets(dir.path()).is_empty());
    }
}
