//! Userspace WireGuard (wireguard-go, boringtun) over the UAPI socket
//! `<socket_dir>/<dev>.sock`: `get=1`, then `key=value` lines up to a blank line.
//!
//! The reply carries the device's private key and the peers' preshared keys: the
//! private key is used only to derive the public key and is wiped at once; preshared
//! keys are reduced to "configured or not". Neither is kept, logged or returned, and
//! no error message ever quotes their lines.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use zeroize::{Zeroize as _, Zeroizing};

use super::{Device, DeviceKind, Peer, PublicKey};

/// How long one device may take to answer, in total.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest reply line accepted (the longest real one, an IPv6 endpoint or allowed
/// IP, is under 100 bytes); a longer one is garbage.
const MAX_LINE: usize = 4096;
/// Most peers accepted from one device (wireguard-go holds at most 65536; kernel
/// WireGuard has no limit, and a million is far past what one host runs).
const MAX_PEERS: usize = 1 << 20;

/// Errors talking to or parsing a UAPI socket.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// Connecting, writing or reading failed (dead daemon, timeout).
    #[error("device {device}: {op} {path}: {source}")]
    Io {
        /// The device.
        device: String,
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon did not finish its reply in time, or sent far too much.
    #[error("device {device}: {path}: {problem}")]
    Reply {
        /// The device.
        device: String,
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        problem: &'static str,
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

/// Names of the devices that have a socket in `socket_dir` (`<name>.sock`), sorted.
/// A missing or unreadable directory means no userspace devices.
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
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// Reads one device over its socket (at most 2 s in total).
pub fn read_device(socket_dir: &Path, name: &str) -> Result<Device, UapiError> {
    read_device_within(socket_dir, name, IO_TIMEOUT)
}

fn read_device_within(
    socket_dir: &Path,
    name: &str,
    timeout: Duration,
) -> Result<Device, UapiError> {
    let path = socket_dir.join(format!("{name}.sock"));
    // The reply is parsed as it arrives, a line at a time: no copy of the whole
    // text (17 MB at 50k peers) is held, and the partial line waiting for its end is
    // a zeroizing buffer (the reply holds secrets).
    let mut parser = Parser::new(name);
    let mut parse_error = None;
    let exchanged = exchange(&path, timeout, |raw| match parser.feed(raw) {
        Ok(next) => next,
        Err(err) => {
            parse_error = Some(err);
            Next::Stop
        }
    });
    if let Some(err) = parse_error {
        return Err(err);
    }
    exchanged.map_err(|failure| match failure {
        Failure::Io(op, source) => UapiError::Io {
            device: name.to_owned(),
            op,
            path: path.clone(),
            source,
        },
        Failure::Reply(problem) => UapiError::Reply {
            device: name.to_owned(),
            path: path.clone(),
            problem,
        },
    })?;
    parser.finish()
}

enum Failure {
    Io(&'static str, std::io::Error),
    Reply(&'static str),
}

/// What the exchange does after a line.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Read on.
    More,
    /// The reply is complete (its blank line), or parsing failed: stop reading.
    Stop,
}

/// Sends `get=1` and hands each line of the reply (without its newline) to `line`
/// until it says stop (the blank line) or the daemon closes. A line cut off by the
/// close is dropped (the parser then finds no `errno`: truncated). Every buffer that
/// held reply bytes is wiped.
fn exchange(
    path: &Path,
    timeout: Duration,
    mut line: impl FnMut(&[u8]) -> Next,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(path).map_err(|e| Failure::Io("connecting to", e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| Failure::Io("configuring", e))?;
    stream
        .write_all(b"get=1\n\n")
        .map_err(|e| Failure::Io("writing to", e))?;
    // The bytes of a line whose end has not arrived yet.
    let mut pending = Zeroizing::new(Vec::with_capacity(256));
    let mut chunk = Zeroizing::new(vec![0u8; 64 * 1024]);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Reply("no complete reply within the time limit"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| Failure::Io("configuring", e))?;
        let read = match stream.read(&mut chunk[..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Failure::Reply("no complete reply within the time limit"))
            }
            Err(e) => return Err(Failure::Io("reading from", e)),
        };
        let mut rest = &chunk[..read];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if pending.len() + end > MAX_LINE {
                return Err(Failure::Reply("a reply line longer than 4 KiB"));
            }
            let next = if pending.is_empty() {
                line(&rest[..end])
            } else {
                append_zeroizing(&mut pending, &rest[..end]);
                let next = line(&pending);
                // Wipes the whole capacity and empties it.
                pending.zeroize();
                next
            };
            if next == Next::Stop {
                return Ok(());
            }
            rest = &rest[end + 1..];
        }
        if pending.len() + rest.len() > MAX_LINE {
            return Err(Failure::Reply("a reply line longer than 4 KiB"));
        }
        append_zeroizing(&mut pending, rest);
    }
}

/// Appends without letting `Vec` reallocate: a grown copy is made by hand so the old
/// allocation is wiped (by `Zeroizing`) instead of freed with secrets in it.
fn append_zeroizing(buffer: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    let needed = buffer.len() + data.len();
    if needed > buffer.capacity() {
        let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(2 * buffer.capacity())));
        bigger.extend_from_slice(buffer);
        *buffer = bigger;
    }
    buffer.extend_from_slice(data);
}

/// Parses a `get=1` reply (the text up to and including the blank line) into a device.
/// A last line without its newline counts as cut off (truncated). Unknown keys are
/// ignored; secret values are validated but never kept.
pub fn parse_get_response(name: &str, reply: &str) -> Result<Device, UapiError> {
    let mut parser = Parser::new(name);
    for piece in reply.split_inclusive('\n') {
        // A last line without its newline was cut off: the reply is truncated.
        let Some(raw) = piece.strip_suffix('\n') else {
            break;
        };
        if parser.feed(raw.as_bytes())? == Next::Stop {
            break;
        }
    }
    parser.finish()
}

/// The state of a parse: the device so far and the peer whose lines are being read.
struct Parser {
    device: Device,
    peer: Option<OpenPeer>,
    errno: Option<i64>,
    /// Lines read so far (for errors, 1-based).
    lines: usize,
}

/// A peer still being read; the handshake time comes in two lines.
struct OpenPeer {
    peer: Peer,
    handshake: Option<SystemTime>,
    handshake_sec: u64,
    handshake_nsec: u32,
}

impl OpenPeer {
    fn finish(mut self) -> Peer {
        self.peer.last_handshake = self.handshake;
        self.peer
    }

    /// Recomputes the handshake time after either half changed; 0/0 means never.
    fn set_handshake(&mut self) -> Result<(), String> {
        self.handshake = if self.handshake_sec == 0 && self.handshake_nsec == 0 {
            None
        } else {
            let since_epoch = Duration::new(self.handshake_sec, self.handshake_nsec);
            Some(
                SystemTime::UNIX_EPOCH
                    .checked_add(since_epoch)
                    .ok_or("last_handshake_time_sec out of range")?,
            )
        };
        Ok(())
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{key}={value:?} is not a number in range"))
}

/// Decodes a 64-digit hex key into a buffer the caller wipes. The error never
/// quotes the value.
fn secret_hex(key: &str, value: &str, out: &mut [u8; 32]) -> Result<(), String> {
    hex::decode_to_slice(value, out).map_err(|_| format!("{key} is not 32 hex-encoded bytes"))
}

impl Parser {
    fn new(name: &str) -> Self {
        Self {
            device: Device {
                name: name.to_owned(),
                kind: DeviceKind::Userspace,
                public_key: None,
                listen_port: 0,
                fwmark: 0,
                peers: Vec::new(),
            },
            peer: None,
            errno: None,
            lines: 0,
        }
    }

    /// One line of the reply, without its newline: [`Next::Stop`] at the blank line
    /// that ends it.
    fn feed(&mut self, raw: &[u8]) -> Result<Next, UapiError> {
        self.lines += 1;
        if raw.is_empty() {
            return Ok(Next::Stop);
        }
        let parsed = match std::str::from_utf8(raw) {
            Ok(text) => self.line(text),
            Err(_) => Err("not UTF-8".into()),
        };
        parsed.map_err(|message| UapiError::Parse {
            device: self.device.name.clone(),
            line: self.lines,
            message,
        })?;
        Ok(Next::More)
    }

    /// The device, once the reply ended.
    fn finish(self) -> Result<Device, UapiError> {
        let Parser {
            mut device,
            peer,
            errno,
            ..
        } = self;
        if let Some(open) = peer {
            device.peers.push(open.finish());
        }
        match errno {
            None => Err(UapiError::Truncated {
                device: device.name,
            }),
            Some(0) => Ok(device),
            Some(errno) => Err(UapiError::Errno {
                device: device.name,
                errno,
            }),
        }
    }

    fn line(&mut self, raw: &str) -> Result<(), String> {
        let (key, value) = raw.split_once('=').ok_or("expected key=value")?;
        match key {
            "private_key" => {
                let mut secret = [0u8; 32];
                let decoded = secret_hex(key, value, &mut secret);
                if decoded.is_ok() && secret != [0u8; 32] {
                    // StaticSecret wipes itself on drop.
                    let static_secret = x25519_dalek::StaticSecret::from(secret);
                    self.device.public_key = Some(PublicKey(
                        *x25519_dalek::PublicKey::from(&static_secret).as_bytes(),
                    ));
                }
                secret.zeroize();
                decoded?;
            }
            "listen_port" => self.device.listen_port = number(key, value)?,
            "fwmark" => self.device.fwmark = number(key, value)?,
            "errno" => self.errno = Some(number(key, value)?),
            "public_key" => {
                let public_key =
                    PublicKey::from_hex(value).map_err(|e| format!("public_key: {e}"))?;
                if let Some(done) = self.peer.take() {
                    self.device.peers.push(done.finish());
                }
                if self.device.peers.len() >= MAX_PEERS {
                    return Err(format!("more than {MAX_PEERS} peers"));
                }
                self.peer = Some(OpenPeer {
                    peer: Peer::new(public_key),
                    handshake: None,
                    handshake_sec: 0,
                    handshake_nsec: 0,
                });
            }
            // Without an open peer: device-level keys we do not use (protocol
            // extensions).
            _ => {
                if let Some(open) = self.peer.as_mut() {
                    peer_line(open, key, value)?;
                }
            }
        }
        Ok(())
    }
}

fn peer_line(open: &mut OpenPeer, key: &str, value: &str) -> Result<(), String> {
    let peer = &mut open.peer;
    match key {
        "preshared_key" => {
            let mut secret = [0u8; 32];
            let decoded = secret_hex(key, value, &mut secret);
            peer.has_preshared_key = secret != [0u8; 32];
            secret.zeroize();
            decoded?;
        }
        "endpoint" => {
            peer.endpoint = Some(
                value
                    .parse::<SocketAddr>()
                    .map_err(|_| format!("endpoint {value:?} is not ip:port or [ipv6]:port"))?,
            );
        }
        "allowed_ip" => {
            let (address, prefix) = value
                .split_once('/')
                .ok_or_else(|| format!("allowed_ip {value:?} is not address/prefix"))?;
            let address: std::net::IpAddr = address
                .parse()
                .map_err(|_| format!("allowed_ip {value:?}: bad address"))?;
            let prefix: u8 = number(key, prefix)?;
            if prefix > if address.is_ipv4() { 32 } else { 128 } {
                return Err(format!("allowed_ip {value:?}: prefix too long"));
            }
            peer.allowed_ips.push(format!("{address}/{prefix}"));
        }
        "persistent_keepalive_interval" => peer.persistent_keepalive = number(key, value)?,
        "last_handshake_time_sec" => {
            open.handshake_sec = number(key, value)?;
            open.set_handshake()?;
        }
        "last_handshake_time_nsec" => {
            let nsec: u32 = number(key, value)?;
            if nsec >= 1_000_000_000 {
                return Err(format!("{key}={value} is not below one second"));
            }
            open.handshake_nsec = nsec;
            open.set_handshake()?;
        }
        "rx_bytes" => peer.rx_bytes = number(key, value)?,
        "tx_bytes" => peer.tx_bytes = number(key, value)?,
        // protocol_version (always 1) and future keys: ignored, as `wg` does.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
#[path = "uapi_tests.rs"]
mod tests;
