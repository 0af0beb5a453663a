//! tshark captures: the independent oracle for what crossed the wire.
//!
//! tshark (through dumpcap) writes a pcapng file; it is read back once stopped with
//! `tshark -r -T fields`. "Capturing on" is printed before dumpcap has opened the
//! interface and dumpcap only flushes its file now and then, so both ends of a
//! capture are bracketed with marker datagrams (a unique token, to UDP port 9): the
//! capture is live once a marker shows up in the file, and everything sent before
//! the last marker is on disk once that one does. Markers are sent from this
//! process (a thread that enters the namespace), either to the all-nodes multicast
//! address of the captured link (link-scoped: it never leaves the test's
//! namespaces) or to an address given by the caller; they are left out of the
//! result.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::process::ChildGuard;

/// The port marker datagrams go to (discard).
pub const MARKER_PORT: u16 = 9;

/// How long tshark may take to start, or to flush a marker to its file.
const MARKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long reading a capture back may take.
const READ_TIMEOUT_SECS: &str = "600";

/// The start of every marker's payload.
const MARKER_MAGIC: &[u8] = b"wgpulse-capture-marker";

/// A running capture on one interface of a namespace; tshark is stopped and the
/// file deleted on drop.
pub struct Capture {
    tshark: ChildGuard,
    file: PathBuf,
    marker: Option<Marker>,
    scanned: u64,
    sent: u32,
}

/// Where marker datagrams are sent from and to.
struct Marker {
    from_ns: String,
    /// Unicast destination, or `None` for ff02::1 on `iface`.
    to: Option<IpAddr>,
    iface: String,
}

/// One captured UDP datagram (fragments reassembled; ICMP errors quoting UDP are
/// not datagrams and are left out).
#[derive(Clone, Debug, PartialEq)]
pub struct Datagram {
    /// Capture time, Unix seconds.
    pub time: f64,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// UDP payload length in bytes.
    pub payload: u64,
    /// First payload byte (the WireGuard message type), `None` for an empty payload.
    pub first_byte: Option<u8>,
    /// The first 16 payload bytes (fewer if the payload is shorter): a data
    /// message's type, receiver index (4..8) and counter (8..16).
    pub head: Vec<u8>,
}

impl Datagram {
    /// A transport data message's receiver index and counter, as tshark captured them.
    pub fn data_counter(&self) -> Option<(u32, u64)> {
        if self.first_byte != Some(4) || self.head.len() < 16 {
            return None;
        }
        let index = u32::from_le_bytes(self.head[4..8].try_into().expect("4 bytes"));
        let counter = u64::from_le_bytes(self.head[8..16].try_into().expect("8 bytes"));
        Some((index, counter))
    }
}

/// All datagrams a capture saw, in capture order.
pub type Packets = Vec<Datagram>;

/// Packets and payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Datagrams.
    pub packets: u64,
    /// UDP payload bytes.
    pub bytes: u64,
}

impl Totals {
    fn add(&mut self, d: &Datagram) {
        self.packets += 1;
        self.bytes += d.payload;
    }
}

impl Capture {
    /// Captures UDP datagrams to or from `port` on `iface` in `ns` and returns once
    /// the capture is live. Markers go from namespace `probe_from` to
    /// `probe_to`:9 (an address on the far side of `iface`, so that they cross it).
    pub fn start(ns: &NetNs, iface: &str, port: u16, probe_from: &NetNs, probe_to: IpAddr) -> Self {
        let filter = format!("udp port {port}");
        Self::launch(
            ns,
            iface,
            &filter,
            Marker {
                from_ns: probe_from.name().to_owned(),
                to: Some(probe_to),
                iface: iface.to_owned(),
            },
        )
    }

    /// Captures what the BPF capture filter `filter` (pcap-filter(7) syntax, e.g.
    /// `udp port 51820`; empty for everything) lets through on `iface` in `ns`, and
    /// returns once the
    /// capture is live. Markers go from `ns` to ff02::1 on `iface`; if the interface
    /// has no IPv6 the capture relies on tshark's "Capture started" instead.
    pub fn with_filter(ns: &NetNs, iface: &str, filter: &str) -> Self {
        Self::launch(
            ns,
            iface,
            filter,
            Marker {
                from_ns: ns.name().to_owned(),
                to: None,
                iface: iface.to_owned(),
            },
        )
    }

    fn launch(ns: &NetNs, iface: &str, filter: &str, marker: Marker) -> Self {
        let file = std::env::temp_dir().join(format!("{}.pcapng", crate::unique_name("cap")));
        // An empty filter captures everything, markers included.
        let full_filter = if filter.trim().is_empty() {
            String::new()
        } else {
            format!("({filter}) or (udp dst port {MARKER_PORT})")
        };
        // -q: no per-packet output; -n: no name lookups; -B: a 64 MiB kernel buffer
        // so bursts (iperf3) are not dropped while dumpcap writes.
        let path = file.to_str().expect("UTF-8 temp dir");
        let mut args = vec!["tshark", "-q", "-n", "-B", "64", "-i", iface, "-w", path];
        if !full_filter.is_empty() {
            args.extend(["-f", &full_filter]);
        }
        let tshark = ns.spawn(&args);
        let mut capture = Self {
            tshark,
            file,
            marker: Some(marker),
            scanned: 0,
            sent: 0,
        };
        capture.wait_started();
        capture.bracket();
        capture
    }

    /// Waits until tshark says the capture started and dumpcap wrote the file header.
    fn wait_started(&mut self) {
        let deadline = Instant::now() + MARKER_TIMEOUT;
        loop {
            if let Some(status) = self.tshark.try_wait() {
                panic!(
                    "tshark exited ({status}) before capturing: {}",
                    self.tshark.log()
                );
            }
            let log = self.tshark.log();
            let size = std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
            if (log.contains("Capture started") || log.contains("Capturing on")) && size > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tshark did not start capturing within {MARKER_TIMEOUT:?}: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends markers until one of them is in the capture file.
    fn bracket(&mut self) {
        let Some(marker) = self.marker.take() else {
            return;
        };
        let deadline = Instant::now() + MARKER_TIMEOUT;
        loop {
            let token = format!(
                "{}-{}-{}",
                String::from_utf8_lossy(MARKER_MAGIC),
                std::process::id(),
                self.sent
            );
            self.sent += 1;
            if let Err(e) = marker.send(token.as_bytes()) {
                assert!(
                    marker.to.is_none(),
                    "sending a capture marker from netns {} to {:?}: {e}",
                    marker.from_ns,
                    marker.to
                );
                eprintln!(
                    "no capture markers on {} ({e}): relying on tshark's start message",
                    marker.iface
                );
                return;
            }
            let sent_at = Instant::now();
            // dumpcap flushes its file at least every few hundred milliseconds.
            while sent_at.elapsed() < Duration::from_secs(1) {
                if self.file_contains(token.as_bytes()) {
                    self.marker = Some(marker);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(status) = self.tshark.try_wait() {
                panic!("tshark exited ({status}): {}", self.tshark.log());
            }
            assert!(
                Instant::now() < deadline,
                "no capture marker reached {} within {MARKER_TIMEOUT:?}: {}",
                self.file.display(),
                self.tshark.log()
            );
        }
    }

    /// Whether `token` occurs in the file past what earlier calls scanned.
    fn file_contains(&mut self, token: &[u8]) -> bool {
        let Ok(mut file) = File::open(&self.file) else {
            return false;
        };
        let start = self.scanned.saturating_sub(token.len() as u64);
        if file.seek(SeekFrom::Start(start)).is_err() {
            return false;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return false;
        }
        self.scanned = start + bytes.len() as u64;
        bytes.windows(token.len()).any(|w| w == token)
    }

    /// Makes sure everything sent so far is in the file (a last marker), stops
    /// tshark with SIGINT and returns every captured datagram, markers left out.
    /// Panics if tshark reports dropped packets: the oracle would be incomplete.
    pub fn stop(mut self) -> Packets {
        self.bracket();
        self.tshark.signal(libc::SIGINT);
        let status = self.tshark.wait_timeout(MARKER_TIMEOUT);
        let log = self.tshark.log();
        let by_sigint =
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGINT);
        assert!(
            status.success() || by_sigint,
            "tshark ended with {status}: {log}"
        );
        if let Some(line) = log.lines().find(|l| dropped_count(l) > 0) {
            panic!("tshark dropped packets ({line}): the capture is incomplete");
        }
        read_pcap(&self.file)
    }

    /// The capture file (deleted when the capture is dropped).
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.tshark.stop();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The number in lines like "3 packets dropped from eth0", else 0.
fn dropped_count(line: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| {
            w[1].starts_with("packet")
                && w[2].trim_end_matches(|c: char| !c.is_alphabetic()) == "dropped"
        })
        .and_then(|w| w[0].trim_start_matches('(').parse().ok())
        .unwrap_or(0)
}

impl Marker {
    /// Sends one datagram from a thread that enters the source namespace.
    fn send(&self, payload: &[u8]) -> std::io::Result<()> {
        let path = format!("/var/run/netns/{}", self.from_ns);
        let to = self.to;
        let iface = self.iface.clone();
        let payload = payload.to_vec();
        std::thread::spawn(move || -> std::io::Result<()> {
            let ns = File::open(&path)?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let (bind, dst): (SocketAddr, SocketAddr) = match to {
                Some(ip @ IpAddr::V4(_)) => (
                    "0.0.0.0:0".parse().unwrap(),
                    SocketAddr::new(ip, MARKER_PORT),
                ),
                Some(ip @ IpAddr::V6(_)) => {
                    ("[::]:0".parse().unwrap(), SocketAddr::new(ip, MARKER_PORT))
                }
                None => {
                    let index = nix::net::if_::if_nametoindex(iface.as_str())?;
                    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                    (
                        "[::]:0".parse().unwrap(),
                        SocketAddrV6::new(all_nodes, MARKER_PORT, 0, index).into(),
                    )
                }
            };
            UdpSocket::bind(bind)?.send_to(&payload, dst).map(drop)
        })
        .join()
        .expect("marker thread panicked")
    }
}

/// Reads a capture file back: every UDP datagram in it, capture markers left out.
///
/// `-Y 'udp and not icmp and not icmpv6'` keeps reassembled datagrams (one line, on
/// the last fragment) and drops ICMP errors that quote a UDP header;
/// `-E occurrence=f` takes the outer header's value where a field repeats.
/// `udp.payload` is filled whatever dissector (e.g. `wg` on 51820) handles it.
pub fn read_pcap(path: &std::path::Path) -> Packets {
    let path_text = path.to_str().expect("UTF-8 path");
    let mut args = vec![
        READ_TIMEOUT_SECS,
        "tshark",
        "-n",
        "-r",
        path_text,
        "-Y",
        "udp and not icmp and not icmpv6",
        "-T",
        "fields",
        "-E",
        "separator=,",
        "-E",
        "occurrence=f",
    ];
    for field in [
        "frame.time_epoch",
        "ip.src",
        "ipv6.src",
        "udp.srcport",
        "ip.dst",
        "ipv6.dst",
        "udp.dstport",
        "udp.length",
        "udp.payload",
    ] {
        args.extend(["-e", field]);
    }
    let mut child = Command::new("timeout")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting tshark -r {path_text}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let marker_hex: String = MARKER_MAGIC.iter().map(|b| format!("{b:02x}")).collect();
    let mut packets = Vec::new();
    // Streamed: payload hex of a large capture need not fit in memory at once.
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.unwrap_or_else(|e| panic!("reading tshark -r {path_text}: {e}"));
        if line.trim().is_empty() {
            continue;
        }
        let (datagram, payload_hex) = parse_line(&line);
        if datagram.dst.port() == MARKER_PORT && payload_hex.starts_with(&marker_hex) {
            continue;
        }
        packets.push(datagram);
    }
    let status = child.wait().expect("waiting for tshark -r");
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "`tshark -r {path_text}` failed ({status}): {stderr}"
    );
    packets
}

/// Parses one line of [`read_pcap`]'s tshark output; returns the payload hex too.
fn parse_line(line: &str) -> (Datagram, &str) {
    let f: Vec<&str> = line.split(',').collect();
    assert_eq!(f.len(), 9, "unexpected tshark line {line:?}");
    let ip = |v4: &str, v6: &str| -> IpAddr {
        let text = if v4.is_empty() { v6 } else { v4 };
        text.parse()
            .unwrap_or_else(|_| panic!("bad address {text:?} in tshark line {line:?}"))
    };
    let number = |text: &str| -> u64 {
        text.parse()
            .unwrap_or_else(|_| panic!("bad number {text:?} in tshark line {line:?}"))
    };
    let port = |text: &str| u16::try_from(number(text)).expect("port fits in u16");
    let udp_length = number(f[7]);
    let payload_hex = f[8].trim();
    let datagram = Datagram {
        time: f[0]
            .parse()
            .unwrap_or_else(|_| panic!("bad time in tshark line {line:?}")),
        src: SocketAddr::new(ip(f[1], f[2]), port(f[3])),
        dst: SocketAddr::new(ip(f[4], f[5]), port(f[6])),
        payload: udp_length
            .checked_sub(8)
            .unwrap_or_else(|| panic!("UDP length below 8 in {line:?}")),
        first_byte: payload_hex.get(..2).map(|hex| {
            u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad payload in {line:?}"))
        }),
        head: (0..16)
            .map_while(|i| payload_hex.get(i * 2..i * 2 + 2))
            .map(|hex| {
                u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad payload in {line:?}"))
            })
            .collect(),
    };
    (datagram, payload_hex)
}

/// Sums datagrams to and from `local_port` per remote endpoint: (received, sent).
pub fn per_endpoint(
    datagrams: &[Datagram],
    local_port: u16,
) -> HashMap<SocketAddr, (Totals, Totals)> {
    let mut out: HashMap<SocketAddr, (Totals, Totals)> = HashMap::new();
    for d in datagrams {
        if d.dst.port() == local_port {
            out.entry(d.src).or_default().0.add(d);
        } else if d.src.port() == local_port {
            out.entry(d.dst).or_default().1.add(d);
        }
    }
    out
}

/// Which way a datagram went, seen from the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// To one of the namespace's addresses.
    Rx,
    /// From one of the namespace's addresses.
    Tx,
}

/// A local port, a remote endpoint and a direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// The port on the namespace's side.
    pub local_port: u16,
    /// The other side's address and port.
    pub remote: SocketAddr,
    /// Which way.
    pub direction: Direction,
}

/// Sums packets and payload bytes per flow, given the namespace's own addresses;
/// datagrams with neither end local are left out.
pub fn per_flow(datagrams: &[Datagram], local_addrs: &[IpAddr]) -> BTreeMap<Flow, Totals> {
    let mut out: BTreeMap<Flow, Totals> = BTreeMap::new();
    for d in datagrams {
        let flow = if local_addrs.contains(&d.src.ip()) {
            Flow {
                local_port: d.src.port(),
                remote: d.dst,
                direction: Direction::Tx,
            }
        } else if local_addrs.contains(&d.dst.ip()) {
            Flow {
                local_port: d.dst.port(),
                remote: d.src,
                direction: Direction::Rx,
            }
        } else {
            continue;
        };
        out.entry(flow).or_default().add(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_lines() {
        let (d, hex) = parse_line("1700000000.5,10.1.1.1,,51821,10.1.1.2,,51820,156,01000000aa");
        assert_eq!(d.src, "10.1.1.1:51821".parse().unwrap());
        assert_eq!(d.dst, "10.1.1.2:51820".parse().unwrap());
        assert_eq!((d.payload, d.first_byte), (148, Some(1)));
        assert_eq!(hex, "01000000aa");
        let (d, _) = parse_line("1.0,,fd00::1,1,,fd00::2,2,8,");
        assert_eq!(d.dst, "[fd00::2]:2".parse().unwrap());
        assert_eq!((d.payload, d.first_byte), (0, None));
    }

    #[test]
    fn sums_per_flow_and_endpoint() {
        let (tx, _) = parse_line("1.0,10.0.0.1,,5,10.0.0.2,,6,108,04");
        let (rx, _) = parse_line("1.1,10.0.0.2,,6,10.0.0.1,,5,40,04");
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        let flows = per_flow(&[tx.clone(), rx.clone(), rx.clone()], &[local]);
        let remote = "10.0.0.2:6".parse().unwrap();
        let key = |direction| Flow {
            local_port: 5,
            remote,
            direction,
        };
        assert_eq!(
            flows[&key(Direction::Tx)],
            Totals {
                packets: 1,
                bytes: 100
            }
        );
        assert_eq!(
            flows[&key(Direction::Rx)],
            Totals {
                packets: 2,
                bytes: 64
            }
        );
        let ends = per_endpoint(&[tx, rx], 5);
        assert_eq!(
            ends[&remote].0,
            Totals {
                packets: 1,
                bytes: 32
            }
        );
        assert_eq!(
            ends[&remote].1,
            Totals {
                packets: 1,
                bytes: 100
            }
        );
    }

    #[test]
    fn reads_drop_counts() {
        assert_eq!(dropped_count("3 packets dropped from eth0"), 3);
        assert_eq!(dropped_count("12 packets captured"), 0);
        assert_eq!(dropped_count("(1 packet dropped)"), 1);
    }
}
